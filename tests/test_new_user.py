"""What a new user's trial ran into, as they ran it: grey folders, `adm evaluate` on `adm sample`'s own
directory, a reference that matches the model, plain warning lines, and usage for a typo'd option."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adm.cli.main import main, plain_warnings
from adm.data import CorruptImageWarning, load_dataset, to_uint8
from adm.eval import open_images

ROOT = Path(__file__).resolve().parents[1]


def adm(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """`python -m adm ARGS` in a subprocess, as a user runs it (one thread: a shared 2-core machine)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "adm", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or ROOT, timeout=timeout)


def run_main(capsys, *args):
    """The CLI in-process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str, *words: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def grey_pngs(folder: Path, n: int, size: int = 6, seed: int = 0, mode: str = "L") -> list[Path]:
    """n small random grey PNGs (class sub-folders a/ and b/ when n > 1), named 0.png, 1.png, ..."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / "ab"[i % 2] / f"{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").convert(mode).save(p)
        paths.append(p)
    return paths


def samples_dir(out: Path, n: int, size: int = 8, channels: int = 3, seed: int = 1, cascade: bool = True) -> np.ndarray:
    """A directory laid out as `adm sample --out` writes it (docs/cli.md): NNNNNN.png per seed, grid.png,
    samples_NxHxWxC.npz, samples.json and, for a cascade, low_res/. Returns the images, uint8 NHWC."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    out.mkdir(parents=True)
    for k, im in enumerate(images):
        Image.fromarray(im[..., 0] if channels == 1 else im).save(out / f"{k:06d}.png")
    Image.new("RGB", (3 * size + 10, 3 * size + 10)).save(out / "grid.png")  # a grid: not a sample
    if cascade:
        (out / "low_res").mkdir()
        for k in range(n):
            Image.new("RGB", (size // 2, size // 2)).save(out / "low_res" / f"{k:06d}.png")
    np.savez(out / f"samples_{n}x{size}x{size}x{channels}.npz", arr_0=images, arr_1=np.arange(n) % 3)
    (out / "samples.json").write_text(json.dumps({"settings": {"model": "m"},
                                                  "labels": {str(k): k % 3 for k in range(n)}}))
    return images


# -- 1. a folder of grey images is a 1-channel data set ---------------------------------------------
@pytest.mark.parametrize("mode", ["L", "LA", "I;16", "1"])
def test_folder_of_grey_images_is_one_channel(tmp_path, mode):
    grey_pngs(tmp_path / "d", 4, mode=mode)
    ds = load_dataset(tmp_path / "d", 8)
    assert ds.channels == 1 and ds[0][0].shape == (1, 8, 8)
    assert load_dataset(tmp_path / "d", 8, channels=3)[0][0].shape == (3, 8, 8)  # asked for: converted


def test_one_colour_image_makes_the_folder_rgb(tmp_path):
    grey_pngs(tmp_path / "d", 4)
    Image.new("RGB", (6, 6), (200, 10, 10)).save(tmp_path / "d" / "a" / "colour.png")
    ds = load_dataset(tmp_path / "d", 8)
    assert ds.channels == 3 and ds[0][0].shape == (3, 8, 8)
    (tmp_path / "p").mkdir()
    Image.new("P", (6, 6)).save(tmp_path / "p" / "palette.png")  # palette: colour, whatever its entries
    assert load_dataset(tmp_path / "p", 8).channels == 3


def test_grey_channel_check_decodes_no_pixels(tmp_path, monkeypatch):
    grey_pngs(tmp_path / "d", 4)
    decoded = []
    original = Image.Image.load

    def counting_load(self):
        decoded.append(self)
        return original(self)

    monkeypatch.setattr(Image.Image, "load", counting_load)
    ds = load_dataset(tmp_path / "d", 8)
    assert ds.channels == 1 and decoded == []  # the modes come from the headers: no pixels decoded
    ds[0]
    assert decoded  # an item is decoded when it is read


# -- 2. `adm evaluate REF samples_dir/` on adm's own output directory --------------------------------
def test_evaluate_reads_exactly_the_samples_an_adm_sample_directory_lists(tmp_path, capsys):
    images = samples_dir(tmp_path / "samples", 6)
    np.savez(tmp_path / "ref.npz", arr_0=samples_dir(tmp_path / "other", 10, seed=2, cascade=False))
    code, out, err = run_main(capsys, "evaluate", tmp_path / "ref.npz", tmp_path / "samples", "--features", "tiny",
                              "--no-progress", "--json", tmp_path / "m.json")
    assert code == 0, err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["num_samples"] == 6 and m["num_ref"] == 10  # not grid.png, not low_res/
    source = open_images(tmp_path / "samples")
    assert source.num == 6 and source.shape == (8, 8, 3) and source.labels == [0, 1, 2, 0, 1, 2]
    np.testing.assert_array_equal(np.concatenate(list(source.batches(4))), images)


def test_an_unfinished_samples_directory_is_one_error_line(tmp_path, capsys):
    samples_dir(tmp_path / "samples", 6)
    (tmp_path / "samples" / "000004.png").unlink()
    np.savez(tmp_path / "ref.npz", arr_0=np.zeros((6, 8, 8, 3), np.uint8))
    code, _, err = run_main(capsys, "evaluate", tmp_path / "ref.npz", tmp_path / "samples", "--features", "tiny")
    assert code == 2
    one_error_line(err, "000004.png", "samples.json", "missing")


def test_a_grid_png_in_a_plain_folder_is_named_in_the_error(tmp_path, capsys):
    samples_dir(tmp_path / "samples", 6, cascade=False)
    (tmp_path / "samples" / "samples.json").unlink()  # copied without its manifest: a plain folder
    np.savez(tmp_path / "ref.npz", arr_0=np.zeros((6, 8, 8, 3), np.uint8))
    code, _, err = run_main(capsys, "evaluate", tmp_path / "ref.npz", tmp_path / "samples", "--features", "tiny")
    assert code == 2
    one_error_line(err, "grid.png looks like a grid", "--resize")


def test_docs_example_make_ref_fashion_mnist_then_evaluate_a_samples_dir(tmp_path):
    # docs/evaluation.md: adm make-ref fashion-mnist fashion_ref.npz; adm evaluate fashion_ref.npz my_samples/
    r = adm("make-ref", "fashion-mnist", tmp_path / "fashion_ref.npz", "--features", "tiny", "--num", 40,
            "--no-progress")
    if r.returncode == 2 and "dataset-fashion-mnist" in r.stderr:
        pytest.skip("Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
    assert r.returncode == 0, r.stderr
    samples_dir(tmp_path / "my_samples", 8, size=32, channels=1)
    r = adm("evaluate", tmp_path / "fashion_ref.npz", tmp_path / "my_samples", "--features", "tiny",
            "--no-progress", "--json", tmp_path / "metrics.json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["num_samples"] == 8


# -- 3. a reference preprocessed as training does; evaluate --num -----------------------------------
def test_make_ref_image_size_applies_the_training_preprocessing(tmp_path, capsys):
    grey_pngs(tmp_path / "fm", 6)  # 6x6 grey: training at --image-size 8 resizes them to 8x8x1
    code, out, err = run_main(capsys, "make-ref", tmp_path / "fm", tmp_path / "ref.npz", "--image-size", 8,
                              "--features", "tiny", "--no-progress")
    assert code == 0, err
    assert "8x8x1" in out
    ds = load_dataset(tmp_path / "fm", 8)  # what `adm train --data fm --image-size 8` trains on
    expected = to_uint8(torch.stack([ds[i][0] for i in range(len(ds))]))
    with np.load(tmp_path / "ref.npz") as ref:
        arr = ref["arr_0"]
    assert arr.shape == (6, 8, 8, 3)  # the paper's format: grey stored as three equal channels
    np.testing.assert_array_equal(arr, np.repeat(expected, 3, axis=3))

    np.savez(tmp_path / "s.npz", arr_0=expected[:5])  # samples of that model: 8x8x1
    code, out, err = run_main(capsys, "evaluate", tmp_path / "ref.npz", tmp_path / "s.npz", "--features", "tiny",
                              "--no-progress")
    assert code == 0, err

    code, out, err = run_main(capsys, "make-ref", tmp_path / "fm", tmp_path / "rgb.npz", "--image-size", 8,
                              "--channels", 3, "--features", "tiny", "--no-progress")
    assert code == 0, err  # (three equal channels still count as grey content in the statistics)
    rgb = load_dataset(tmp_path / "fm", 8, channels=3)
    with np.load(tmp_path / "rgb.npz") as ref:
        np.testing.assert_array_equal(ref["arr_0"], to_uint8(torch.stack([rgb[i][0] for i in range(len(rgb))])))


def test_without_image_size_the_mismatch_error_names_the_fix(tmp_path, capsys):
    grey_pngs(tmp_path / "fm", 6)
    code, _, err = run_main(capsys, "make-ref", tmp_path / "fm", tmp_path / "raw.npz", "--features", "tiny",
                            "--no-progress")
    assert code == 0, err
    np.savez(tmp_path / "s.npz", arr_0=np.zeros((5, 8, 8, 1), np.uint8))
    code, _, err = run_main(capsys, "evaluate", tmp_path / "raw.npz", tmp_path / "s.npz", "--features", "tiny",
                            "--no-progress")
    assert code == 2
    one_error_line(err, "6x6x1", "8x8x1", "--image-size 8", "--resize")


def test_make_ref_option_errors_are_one_line(tmp_path, capsys):
    grey_pngs(tmp_path / "fm", 6)
    code, _, err = run_main(capsys, "make-ref", tmp_path / "fm", tmp_path / "r.npz", "--channels", 1,
                            "--features", "tiny")
    assert code == 2
    one_error_line(err, "--channels needs --image-size")
    code, _, err = run_main(capsys, "make-ref", tmp_path / "fm", tmp_path / "r.npz", "--image-size", 0,
                            "--features", "tiny")
    assert code == 2
    one_error_line(err, "--image-size")
    code, _, err = run_main(capsys, "make-ref", tmp_path / "fm", tmp_path / "r.npz", "--num", 7,
                            "--features", "tiny")
    assert code == 2
    one_error_line(err, "holds 6 images, fewer than the 7")


def test_make_ref_fashion_mnist_image_size_32_is_the_padded_test_set(tmp_path, capsys):
    code, _, err = run_main(capsys, "make-ref", "fashion-mnist", tmp_path / "a.npz", "--features", "tiny",
                            "--num", 8, "--no-progress")
    if code == 2 and "dataset-fashion-mnist" in err:
        pytest.skip("Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
    code, out, err = run_main(capsys, "make-ref", "fashion-mnist", tmp_path / "b.npz", "--features", "tiny",
                              "--num", 8, "--image-size", 32, "--no-progress")
    assert code == 0 and "32x32x1" in out, err
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])


def test_evaluate_num_uses_the_first_n_samples_or_refuses(tmp_path, capsys):
    np.savez(tmp_path / "ref.npz", arr_0=np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), np.uint8))
    samples_dir(tmp_path / "samples", 6)
    code, _, err = run_main(capsys, "evaluate", tmp_path / "ref.npz", tmp_path / "samples", "--num", 4,
                            "--features", "tiny", "--no-progress", "--json", tmp_path / "m.json")
    assert code == 0, err
    assert json.loads((tmp_path / "m.json").read_text())["num_samples"] == 4
    code, _, err = run_main(capsys, "evaluate", tmp_path / "ref.npz", tmp_path / "samples", "--num", 7,
                            "--features", "tiny", "--no-progress")
    assert code == 2
    one_error_line(err, "holds 6 images, fewer than the 7")


# -- 4. warnings: one plain line from the CLI, normal warnings for library users ---------------------
def test_skipped_images_warning_is_one_line_in_the_library(tmp_path):
    grey_pngs(tmp_path / "fm", 4)
    (tmp_path / "fm" / "a" / "bad.png").write_bytes(b"not an image")
    with pytest.warns(CorruptImageWarning) as record:
        ds = load_dataset(tmp_path / "fm", 8)
    text = str(record[0].message)
    assert len(ds) == 4 and "\n" not in text and "skipped 1 unreadable image in" in text
    assert "bad.png: cannot identify image file" in text


def test_plain_warnings_only_while_a_command_runs(capsys):
    shown = []

    def library_user_showwarning(message, category, filename, lineno, file=None, line=None):
        shown.append((str(message), category, filename, lineno))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = library_user_showwarning
        with plain_warnings("train"):
            warnings.warn("skipped 2 unreadable images in fm/ (fm/a/bad.png: cannot identify image file)",
                          CorruptImageWarning)
            warnings.warn_explicit("from elsewhere", UserWarning, "/somewhere/else.py", 7)
        assert warnings.showwarning is library_user_showwarning  # put back when the command ends
        warnings.warn("after the command", CorruptImageWarning)
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["adm train: warning: skipped 2 unreadable images in fm/ "
                                        "(fm/a/bad.png: cannot identify image file)"]
    assert shown[0] == ("from elsewhere", UserWarning, "/somewhere/else.py", 7)  # not adm's: as Python shows it
    assert shown[1][:2] == ("after the command", CorruptImageWarning) and len(shown) == 2


def test_new_user_flow_train_sample_make_ref_evaluate(tmp_path):
    """docs/training.md then docs/evaluation.md on a folder of grey images, one of them broken."""
    grey_pngs(tmp_path / "fm", 8)
    (tmp_path / "fm" / "a" / "bad.png").write_bytes(b"not an image")
    (tmp_path / "fm" / "b" / "worse.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    r = adm("train", "--data", "fm", "--out", "run", "--max-steps", 1, "--image-size", 8, "--num-channels", 32,
            "--set", "attention_resolutions=4", "--set", "channel_mult=1,2", "--batch-size", 2, "--no-progress",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and ".py:" not in r.stderr, r.stderr  # no source lines
    line = next(l for l in r.stderr.splitlines() if "unreadable" in l)
    assert line.startswith("adm train: warning: skipped 2 unreadable images in fm/ (")
    assert "fm/a/bad.png: cannot identify image file" in line and "fm/b/worse.png" in line
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["in_channels"] == 1  # channels follow the (grey) data

    r = adm("sample", "--model", "run", "--num", 5, "--sampler", "ddim", "--steps", 2, "--out", "samples",
            "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "samples" / "grid.png").is_file()
    r = adm("make-ref", "fm", "ref.npz", "--image-size", 8, "--features", "tiny", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0 and "8x8x1" in r.stdout, r.stderr
    r = adm("evaluate", "ref.npz", "samples/", "--num", 4, "--features", "tiny", "--no-progress",
            "--json", "m.json", cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["num_samples"] == 4 and m["num_ref"] == 8


# -- 5. a typo'd option: the sub-command's usage and the closest option ------------------------------
def test_typo_shows_the_sub_command_usage_and_the_closest_option():
    r = adm("sample", "--model", "nowhere", "--smaple", "ddim", timeout=120)
    assert r.returncode == 2
    assert "usage: adm sample" in r.stderr and "usage: adm [-h] COMMAND" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("adm sample: error: unrecognized arguments: --smaple ddim "
                                                 "(did you mean --sampler?)")


def test_typo_in_process_and_without_a_close_match(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "a.npz", "b", "--nmu", "3"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "usage: adm evaluate" in err
    assert err.strip().splitlines()[-1].endswith("unrecognized arguments: --nmu 3 (did you mean --num?)")
    with pytest.raises(SystemExit) as exit_info:
        main(["make-ref", "a", "b.npz", "--zzzzzz"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "usage: adm make-ref" in err
    assert err.strip().splitlines()[-1] == "adm make-ref: error: unrecognized arguments: --zzzzzz"


# -- --set in_channels on an image folder: the data follow on the first run ----------------------------
def test_set_in_channels_converts_the_data_on_the_first_run(tmp_path):
    grey_pngs(tmp_path / "rgb", 4, mode="RGB")
    args = ["train", "--data", "rgb", "--out", "run", "--max-steps", 1, "--image-size", 8, "--num-channels", 32,
            "--set", "attention_resolutions=4", "--set", "channel_mult=1,2", "--batch-size", 2, "--no-progress",
            "--set", "in_channels=1"]
    r = adm(*args, cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["in_channels"] == 1
