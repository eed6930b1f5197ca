"""The `adm` command line's sampling side, run as a user runs it: `python -m adm ...` in a subprocess,
on tiny models saved into a temporary directory."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adm.data import load_npz
from adm.diffusion.config import DiffusionConfig
from adm.nn import ADM, ADM_U, ADM_classifier

ROOT = Path(__file__).resolve().parent.parent
DIFF = DiffusionConfig(steps=100, noise_schedule="cosine", learn_sigma=True)
TINY = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,), diffusion=DIFF)
# guided-diffusion flags of a tiny unconditional ADM, as one passes them with an official .pt
FLAGS = ("--image_size 16 --num_channels 32 --channel_mult 1,2 --num_res_blocks 1 --attention_resolutions 8 "
         "--class_cond False --diffusion_steps 100 --noise_schedule cosine --learn_sigma True")
BASE = ["--seed", "0-5", "--labels", "0-3", "--sampler", "ddim", "--steps", "3"]


def adm(*args: str, ok: bool = True, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m adm ARGS` (or under a launcher such as torchrun); check the exit status."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, *(launcher or []), "-m", "adm", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def pngs(d: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    return {p.name: np.asarray(Image.open(p)) for p in sorted(d.glob("[0-9]*.png"))}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """Tiny models: M (4 classes + null label), C (classifier), U (16 -> 32 upsampler), x.pt (from FLAGS),
    W (a weaker ADM of M's family: autoguidance's guide), W8 and Wu (of other sizes / classes)."""
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    ADM(image_size=16, num_classes=4, null_class=True, **TINY).save_pretrained(d / "M")
    weak = {**TINY, "channel_mult": (1,), "attention_resolutions": ()}
    ADM(image_size=16, num_classes=4, **weak).save_pretrained(d / "W")
    ADM(image_size=8, num_classes=4, **weak).save_pretrained(d / "W8")
    ADM(image_size=16, **weak).save_pretrained(d / "Wu")
    ADM_classifier(image_size=16, num_classes=4, pool="adaptive", **TINY).save_pretrained(d / "C")
    ADM_U(image_size=32, small_size=16, num_classes=4, **TINY).save_pretrained(d / "U")
    from adm.compat import config_from_flags, parse_flags

    torch.save(ADM(config_from_flags(parse_flags(FLAGS))).state_dict(), d / "x.pt")
    from adm.hub import build_preset, presets

    torch.save(build_preset("ADM_demo_fashion_mnist").state_dict(), d / "demo.pt")  # recognised from its shapes
    # a training run directory: RUN/config.json and the exported EMA model RUN/model
    (d / "run").mkdir()
    (d / "run" / "config.json").write_text(json.dumps({"trainer": "diffusion", "max_steps": 10}))
    shutil.copytree(d / "M", d / "run" / "model")
    cfg = json.loads((d / "M" / "config.json").read_text())
    cfg["extra"] = {"step": 10, "class_names": ["tee", "pants", "coat", "bag"]}
    (d / "run" / "model" / "config.json").write_text(json.dumps(cfg))
    sd = ADM.from_pretrained(d / "M").state_dict()  # and its training checkpoint (as adm.train writes it)
    (d / "run" / "checkpoints").mkdir()
    run_cfg = {"trainer": "diffusion", "model": {k: v for k, v in cfg.items() if k != "extra"}, "ema": [0.9999]}
    torch.save({"model": {k: v * 0 for k, v in sd.items()}, "ema": {"0.9999": sd}, "config": json.dumps(run_cfg),
                "step": 10}, d / "run" / "checkpoints" / "step_00000010.pt")
    return d


@pytest.fixture(scope="module")
def guided(models) -> Path:
    """Classifier-guided samples of seeds 0-5 with batch size 4 (the reference the other tests compare to)."""
    out = models / "A"
    adm("sample", "--model", str(models / "M"), "--classifier", str(models / "C"), "--scale", "2", *BASE,
        "--batch-size", "4", "--out", str(out), "--device", "cpu")
    return out


def test_sample_outputs_npz_and_batch_size_invariance(models, guided):
    a = pngs(guided)
    assert sorted(a) == [f"{s:06d}.png" for s in range(6)]
    assert a["000000.png"].shape == (16, 16, 3)
    images, labels = load_npz(guided / "samples_6x16x16x3.npz")
    assert labels.tolist() == [0, 1, 2, 3, 0, 1]
    assert np.array_equal(images, np.stack(list(a.values())))
    assert (guided / "grid.png").is_file()
    record = json.loads((guided / "samples.json").read_text())
    assert record["labels"] == {str(s): y for s, y in zip(range(6), [0, 1, 2, 3, 0, 1])}
    # the same seeds one at a time, from the run directory (its exported model), with a progress bar
    out = models / "B"
    proc = adm("sample", "--model", str(models / "run"), "--classifier", str(models / "C"), "--scale", "2", *BASE,
               "--batch-size", "1", "--out", str(out), "--device", "cpu")
    assert "img/s" in proc.stderr or "s/img" in proc.stderr
    assert pngs(out).keys() == a.keys()
    for name, image in pngs(out).items():
        assert np.array_equal(image, a[name]), name


def test_resume_skips_written_images(models, guided):
    out = models / "R"
    out.mkdir()
    marker = np.full((16, 16, 3), 255, np.uint8)
    from PIL import Image

    Image.fromarray(marker).save(out / "000001.png")  # a "finished" image: must be kept, not redone
    shutil.copy(guided / "000004.png", out / "000004.png")
    proc = adm("sample", "--model", str(models / "M"), "--classifier", str(models / "C"), "--scale", "2", *BASE,
               "--batch-size", "3", "--out", str(out), "--no-progress")
    assert "4 new, 2 already there" in proc.stdout
    got, ref = pngs(out), pngs(guided)
    assert np.array_equal(got.pop("000001.png"), marker)
    for name, image in got.items():
        assert np.array_equal(image, ref[name]), name
    images, _ = load_npz(out / "samples_6x16x16x3.npz")
    assert np.array_equal(images[1], marker)
    # other settings in the same directory: refused, with a way out
    proc = adm("sample", "--model", str(models / "M"), "--classifier", str(models / "C"), "--scale", "3", *BASE,
               "--out", str(out), ok=False)
    assert proc.returncode == 2 and "other settings (scale" in proc.stderr and "Traceback" not in proc.stderr


def test_torchrun_two_processes_give_the_same_images(models, guided):
    out = models / "D"
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    adm("sample", "--model", str(models / "M"), "--classifier", str(models / "C"), "--scale", "2", *BASE,
        "--batch-size", "2", "--out", str(out), "--device", "cpu", "--no-progress", launcher=launcher)
    ref = pngs(guided)
    assert pngs(out).keys() == ref.keys()
    for name, image in pngs(out).items():
        assert np.array_equal(image, ref[name]), name
    assert np.array_equal(load_npz(out / "samples_6x16x16x3.npz")[0], load_npz(guided / "samples_6x16x16x3.npz")[0])


def test_cascade_equals_sample_then_upsample(models, guided):
    up = ["--model", str(models / "U"), "--sampler", "ddim", "--steps", "2", "--no-progress"]
    cascade = models / "E"
    adm("sample", "--model", str(models / "M"), "--classifier", str(models / "C"), "--scale", "2", *BASE,
        "--upsample", str(models / "U"), "--upsample-sampler", "ddim", "--upsample-steps", "2",
        "--out", str(cascade), "--no-progress")
    big = pngs(cascade)
    assert big["000000.png"].shape == (32, 32, 3)
    assert pngs(cascade / "low_res").keys() == pngs(guided).keys()
    for name, image in pngs(cascade / "low_res").items():
        assert np.array_equal(image, pngs(guided)[name])
    assert load_npz(cascade / "samples_6x32x32x3.npz")[1].tolist() == [0, 1, 2, 3, 0, 1]
    # the base samples' directory, then its .npz, through `adm upsample`: the cascade's images
    for source, out in [(guided, models / "G"), (guided / "samples_6x16x16x3.npz", models / "H")]:
        proc = adm("upsample", str(source), *up, "--out", str(out), "--batch-size", "4")
        assert "upsampled to 32x32" in proc.stdout
        images, labels = load_npz(out / "upsampled_6x32x32x3.npz")
        assert labels.tolist() == [0, 1, 2, 3, 0, 1]
        assert np.array_equal(images, np.stack(list(big.values()))), source


def test_cfg_official_pt_flags_convert_and_info(models, tmp_path):
    # classifier-free guidance, from the run directory
    out = tmp_path / "cfg"
    proc = adm("sample", "--checkpoint", str(models / "run" / "checkpoints" / "step_00000010.pt"), "--cfg-scale", "3",
               "--num", "2", "--labels", "random",
               "--steps", "2", "--out", str(out), "--grid", "0", "--no-progress")
    assert "2 images" in proc.stdout and not (out / "grid.png").exists()
    # an "official" .pt with its flag string: sampled directly, converted, described
    pt = str(models / "x.pt")
    adm("sample", "--checkpoint", pt, "--flags", FLAGS, "--num", "2", "--seed", "5", "--steps", "2",
        "--out", str(tmp_path / "pt"), "--no-progress")
    assert sorted(pngs(tmp_path / "pt")) == ["000005.png", "000006.png"]
    proc = adm("convert", pt, str(tmp_path / "conv"), "--flags", FLAGS, "--fp16")
    assert "custom ADM" in proc.stdout and (tmp_path / "conv" / "model.safetensors").is_file()
    info = json.loads(adm("info", str(tmp_path / "conv"), "--json").stdout)
    assert info["kind"] == "ADM" and info["image_size"] == 16 and info["classes"] == 0
    assert info["parameters"] == sum(v.numel() for v in torch.load(pt, weights_only=True).values())
    run = json.loads(adm("info", str(models / "run"), "--json").stdout)
    assert run["type"] == "training run directory" and run["step"] == 10 and run["classes"] == 4
    ckpt = json.loads(adm("info", str(models / "run" / "checkpoints" / "step_00000010.pt"), "--json").stdout)
    assert ckpt["type"].startswith("training checkpoint") and ckpt["step"] == 10 and ckpt["kind"] == "ADM"
    # a .pt recognised from its shapes: the preset's sampling settings (DDIM) apply
    adm("sample", "--checkpoint", str(models / "demo.pt"), "--num", "1", "--steps", "1", "--out", str(tmp_path / "d"),
        "--no-progress")
    assert json.loads((tmp_path / "d" / "samples.json").read_text())["settings"]["sampler"] == "ddim"
    proc = adm("convert", str(models / "demo.pt"), str(tmp_path / "conv2"))
    assert "ADM_demo_fashion_mnist" in proc.stdout
    proc = adm("info", "--presets")
    assert "ADM_diffusion_256_conditioned" in proc.stdout and "256x256_diffusion.pt" in proc.stdout


def test_demo_with_tiny_models(models, tmp_path):
    proc = adm("demo", "--model", str(models / "run"), "--classifier", str(models / "C"), "--steps", "2",
               "--scales", "0,1,4", "--out", str(tmp_path / "demo"), "--no-progress")
    assert "12 images (4 classes x scales 0, 1, 4" in proc.stdout
    assert str(tmp_path / "demo" / "grid.png") in proc.stdout
    files = sorted(p.name for p in (tmp_path / "demo" / "images").iterdir())
    assert len(files) == 12 and "class1_pants_scale4.png" in files
    from PIL import Image

    with Image.open(tmp_path / "demo" / "grid.png") as grid:
        assert grid.width > 3 * 64 and grid.height > 4 * 64  # 4 rows x 3 columns, drawn 4x, labelled
    proc = adm("demo", "--model", str(models / "run"), "--classifier", str(models / "C"), "--sampler", "dpmpp2m",
               "--steps", "3", "--scales", "2", "--out", str(tmp_path / "dpm"), "--no-progress")
    assert "4 images (4 classes x scales 2; dpmpp2m, 3 model calls)" in proc.stdout


# Each bad input: one line on stderr, exit status 2, no traceback. Run in one interpreter (each case
# goes through adm.cli.main.main exactly as the executable does), plus one through the executable.
def error_cases(m: Path, tmp: Path) -> list[tuple[list[str], str]]:
    blocker = tmp / "file"
    blocker.write_text("x")
    M, C, U = str(m / "M"), str(m / "C"), str(m / "U")
    return [
        (["sample", "--model", str(tmp / "missing")], "not found"),
        (["sample", "--preset", "ADM_diffusion_256_conditiond", "--pretrained"],
         "did you mean 'ADM_diffusion_256_conditioned'"),
        (["sample", "--preset", "ADM_diffusion_64_conditioned"], "needs weights"),
        (["sample", "--checkpoint", str(m / "x.pt")], "match no known preset"),
        (["sample", "--checkpoint", str(m / "x.pt"), "--flags", FLAGS.replace("32", "64")], "does not fit"),
        (["sample", "--checkpoint", str(m / "x.pt"), "--flags", "--imag_size 16"], "unknown flag"),
        (["sample", "--preset", "ADM_demo_fashion_mnist", "--checkpoint", str(m / "x.pt")], "does not fit"),
        (["sample", "--preset", "ADM_demo_fashion_mnist", "--checkpoint", str(tmp / "no.pt")], "not found"),
        (["sample", "--model", M, "--labels", "0-7"], "label 4 out of range"),
        (["sample", "--model", M, "--seed", "3-1"], "end is below the start"),
        (["sample", "--model", M, "--seed", "0-3", "--num", "5"], "disagrees"),
        (["sample", "--model", M, "--scale", "2"], "add --classifier"),
        (["sample", "--model", M, "--classifier", M], "expected ADM_classifier"),
        (["sample", "--model", str(m / "x.pt"), "--flags", FLAGS, "--cfg-scale", "2"], "label dropout"),
        (["sample", "--model", M, "--upsample", C], "expected ADM_U"),
        (["sample", "--model", M, "--steps", "2", "--out", str(blocker / "sub")], "cannot write"),
        (["sample", "--model", M, "--device", "cuda:7"], "device"),
        (["upsample", str(tmp / "none.npz"), "--model", U], "no such file"),
        (["upsample", str(m / "A" / "samples_6x16x16x3.npz"), "--model", U, "--labels", "9"], "out of range"),
        (["convert", str(m / "x.pt"), str(tmp / "c")], "match no known preset"),
        (["convert", str(m / "x.pt"), str(tmp / "c"), "--preset", "ADM_U_64"], "unknown preset"),
        (["info", str(tmp / "nothing.pt")], "no such file or directory"),
        (["demo", "--model", M, "--classifier", str(tmp / "nope"), "--out", str(tmp / "d")], "not found"),
        (["demo", "--scales", "1,x"], "--scales"),
        (["sample", "--model", M, "--guide-model", str(m / "W8")], "--guide-model takes 8x8x3 images"),
        (["sample", "--model", M, "--guide-model", str(m / "Wu")],
         "--guide-model is unconditional but the model has 4 classes"),
        (["sample", "--model", M, "--guide-model", C], "expected ADM"),
        (["sample", "--model", M, "--guide-model", str(m / "W"), "--classifier", C], "do not combine"),
        (["sample", "--model", M, "--guide-model", str(m / "W"), "--cfg-scale", "2"], "do not combine"),
        (["sample", "--model", M, "--cfg-scale", "2", "--guidance-interval", "5,0.3"], "LO (5) is above HI (0.3)"),
        (["sample", "--model", M, "--cfg-scale", "2", "--guidance-interval", "0.3"], "two noise levels"),
        (["sample", "--model", M, "--cfg-scale", "2", "--guidance-interval=-1,2"], ">= 0"),
        (["sample", "--model", M, "--guidance-interval", "0.3,5"], "limits a guidance"),
        (["sample", "--model", M, "--sampler", "euler_a", "--churn", "5"], "--churn applies to --sampler euler / heun"),
        (["sample", "--model", M, "--sampler", "ddim", "--churn", "5"], "--churn applies"),
        (["sample", "--model", M, "--sampler", "heun", "--eta", "0.5"], "--eta applies to --sampler ddim"),
        (["sample", "--model", M, "--sampler", "ddim", "--steps", "karras5"], "noise-level schedule"),
        (["demo", "--model", M, "--classifier", C, "--sampler", "heun", "--steps", "0"], "--steps must be"),
    ]


def test_errors_are_one_line(models, guided, tmp_path):
    cases = error_cases(models, tmp_path)
    script = (
        "import contextlib, io, json, sys\n"
        "from adm.cli.main import main\n"
        "res = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            rc = main(argv)\n"
        "        except SystemExit as e:\n"
        "            rc = e.code\n"
        "    res.append([rc, err.getvalue()])\n"
        "print(json.dumps(res))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps([a for a, _ in cases])], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.splitlines()[-1])
    bad = [(argv, rc, err) for (argv, expected), (rc, err) in zip(cases, results)
           if rc != 2 or expected not in err or len(err.strip().splitlines()) != 1 or "Traceback" in err]
    assert not bad, "\n".join(map(str, bad))
    proc = adm("sample", "--model", str(models / "M"), "--labels", "9", ok=False)
    assert proc.returncode == 2 and proc.stderr.startswith("adm sample: error: label 9 out of range")
    assert "Traceback" not in proc.stderr


def test_help_has_examples():
    script = (
        "import contextlib, io\n"
        "from adm.cli.main import main\n"
        "for c in ['sample', 'upsample', 'convert', 'info', 'demo']:\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            main([c, '--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        "    assert 'examples:' in out.getvalue() and f'adm {c} ' in out.getvalue(), c\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr


def _shipped() -> bool:
    from adm.hub import build_preset, presets
    from adm.errors import CheckpointError

    try:
        presets.shipped_weights("demo_fashion_mnist")
        presets.shipped_weights("classifier_demo_fashion_mnist")
    except CheckpointError:
        return False
    return True


def test_demo_as_the_readme_runs_it(tmp_path):
    """`make demo` runs `python -m adm demo` (in its working directory): 40 labelled images, a grid, and
    the guided samples are of the asked class according to the shipped classifier at low noise."""
    assert _shipped(), "the demo weights must ship in adm/weights"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "adm", "demo"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "adm-demo"
    assert "40 images (10 classes x scales 0, 1, 2, 4" in proc.stdout and "adm-demo/grid.png" in proc.stdout
    from PIL import Image

    images = {p.name: np.asarray(Image.open(p)) for p in (out / "images").glob("*.png")}
    assert len(images) == 40
    import torch

    from adm.hub import build_preset, presets

    clf = build_preset("ADM_classifier_demo_fashion_mnist", pretrained=True).eval()
    names = sorted(n for n in images if n.endswith("_scale4.png"))
    x = torch.stack([torch.from_numpy(images[n].copy()).float().reshape(32, 32, -1)[..., :1].permute(2, 0, 1) for n in names])
    with torch.no_grad():
        pred = clf(x / 127.5 - 1, torch.zeros(len(x), dtype=torch.long)).argmax(-1).tolist()
    asked = [int(n.split("_")[0].removeprefix("class")) for n in names]
    assert sum(p == a for p, a in zip(pred, asked)) >= 8, (pred, asked)


def test_shipped_demo_models(tmp_path):
    proc = adm("demo", "--steps", "2", "--scales", "0,2", "--out", str(tmp_path / "demo"), "--no-progress")
    assert "20 images (10 classes" in proc.stdout and (tmp_path / "demo" / "grid.png").is_file()
    proc = adm("sample", "--model", "ADM_demo_fashion_mnist", "--classifier", "auto", "--num", "2", "--steps", "2",
               "--out", str(tmp_path / "s"), "--no-progress")
    record = json.loads((tmp_path / "s" / "samples.json").read_text())["settings"]
    assert record["classifier"] == "ADM_classifier_demo_fashion_mnist" and record["scale"] == 2.0
    assert record["sampler"] == "ddim" and record["steps"] == "ddim2"


def test_cfg_is_refused_for_a_model_whose_null_label_was_never_trained(models, tmp_path):
    d = tmp_path / "nodrop"
    shutil.copytree(models / "M", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["extra"] = {"step": 5, "trainer": "diffusion", "label_dropout": 0.0}
    (d / "config.json").write_text(json.dumps(cfg))
    proc = adm("sample", "--model", str(d), "--cfg-scale", "3", "--num", "1", "--steps", "1",
               "--out", str(tmp_path / "o"), "--no-progress", ok=False)
    assert proc.returncode == 2 and "never trained" in proc.stderr and "Traceback" not in proc.stderr
    cfg["extra"]["label_dropout"] = 0.1  # trained with label dropout: accepted
    (d / "config.json").write_text(json.dumps(cfg))
    adm("sample", "--model", str(d), "--cfg-scale", "3", "--num", "1", "--steps", "1", "--out", str(tmp_path / "p"),
        "--no-progress")


def test_convert_takes_adms_own_runs_and_checkpoints(models, tmp_path):
    proc = adm("convert", str(models / "run"), str(tmp_path / "a"))
    assert "adm ADM" in proc.stdout
    ref = ADM.from_pretrained(models / "run" / "model").state_dict()
    got = ADM.from_pretrained(tmp_path / "a").state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    proc = adm("convert", str(models / "run" / "checkpoints" / "step_00000010.pt"), str(tmp_path / "b"))
    assert "step 10" in proc.stdout  # the checkpoint's EMA weights
    got = ADM.from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_sigma_samplers_guidance_interval_and_guide_model(models, tmp_path):
    """`adm sample --sampler heun --guidance-interval ... --guide-model ...` end to end: the images ADM_G makes
    with the same settings, the settings in samples.json, any batch size; edm with --churn; demo --sampler heun."""
    from adm.guided import ADM_G, to_uint8

    M, W = str(models / "M"), str(models / "W")
    args = ["sample", "--model", M, "--guide-model", W, "--scale", "2.5", "--sampler", "heun", "--steps", "5",
            "--guidance-interval", "0.3,5", "--seed", "0-3", "--labels", "0-3", "--no-progress"]
    adm(*args, "--batch-size", "3", "--out", str(tmp_path / "h"))
    adm(*args, "--batch-size", "1", "--out", str(tmp_path / "h1"))
    settings = json.loads((tmp_path / "h" / "samples.json").read_text())["settings"]
    assert settings["sampler"] == "heun" and settings["steps"] == "karras3" and settings["churn"] == 0.0
    assert settings["guidance_interval"] == [0.3, 5.0] and settings["guide_model"].endswith("W")
    assert settings["scale"] == 2.5 and settings["classifier"] is None
    guided = ADM_G(ADM.from_pretrained(M).eval(), scale=2.5, guide_model=ADM.from_pretrained(W).eval())
    want = to_uint8(guided.sample([0, 1, 2, 3], steps=5, sampler="heun", seed=[0, 1, 2, 3],
                                  guidance_interval=(0.3, 5.0))).numpy()
    got, one_by_one = pngs(tmp_path / "h"), pngs(tmp_path / "h1")
    assert sorted(got) == [f"{k:06d}.png" for k in range(4)]
    for k, name in enumerate(sorted(got)):
        assert np.abs(got[name].astype(int) - want[k]).max() <= 1, name  # a uint8 step of float rounding at most
        assert np.abs(got[name].astype(int) - one_by_one[name]).max() <= 1, name
    # EDM's stochastic sampler with an explicit churn, classifier-free guided in an open interval
    adm("sample", "--model", M, "--cfg-scale", "3", "--guidance-interval", "0.5,inf", "--sampler", "edm",
        "--steps", "3", "--churn", "10", "--num", "2", "--out", str(tmp_path / "e"), "--no-progress")
    settings = json.loads((tmp_path / "e" / "samples.json").read_text())["settings"]
    assert settings["churn"] == 10.0 and settings["guidance_interval"] == [0.5, None] and "guide_model" not in settings
    proc = adm("demo", "--model", M, "--classifier", str(models / "C"), "--sampler", "heun", "--steps", "4",
               "--scales", "2", "--out", str(tmp_path / "demo"), "--no-progress")
    assert "4 images (4 classes x scales 2; heun, 3 model calls)" in proc.stdout
