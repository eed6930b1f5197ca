"""Checks of the benchmark harness (run with `python3 -m pytest benchmarks/`): the official-style
emulation computes the official numbers, the harness runs end to end, compile falls back cleanly."""
import json
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from adm.compat.script_util import classifier_config_from_flags, sr_config_from_flags, unet_config_from_flags  # noqa: E402
from adm.nn import ADM, ADM_U, ADM_classifier  # noqa: E402
from adm.nn.layers import AttentionBlock, GroupNorm32, ResBlock  # noqa: E402
from common import interleaved  # noqa: E402
from official_style import official_style  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def _golden(name: str):
    """A golden file's contents: $ADM_GOLDEN's folder where set, else the tests' compact archive."""
    env = os.environ.get("ADM_GOLDEN")
    if env and (Path(env) / name).exists():
        return torch.load(Path(env) / name, weights_only=True)
    archive = HERE.parent / "tests" / "golden" / "compact.py"
    spec = importlib.util.spec_from_file_location("adm_bench_golden_compact", archive)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    golden = module.Golden()
    if name not in golden.names():
        pytest.skip(f"golden file {name} is not in tests/golden")
    return golden.load(name)


@pytest.mark.parametrize("name", ["unet_forward_a.pt", "unet_forward_b.pt"])
def test_official_style_unet_reproduces_the_official_outputs(name):
    d = _golden(name)
    model = ADM(unet_config_from_flags(d["flags"]))
    model.load_state_dict(d["state_dict"])
    i = d["inputs"]
    with torch.no_grad(), official_style():
        out = model.eval()(i["x"], i["t"], i["y"])
    assert (out - d["outputs"]["out"]).abs().max() <= 1e-4


def test_official_style_classifier_and_super_res_reproduce_the_official_outputs():
    d = _golden("classifier.pt")
    clf = ADM_classifier(classifier_config_from_flags(d["flags"]))
    clf.load_state_dict(d["state_dict"])
    i = d["inputs"]
    x = i["x"].clone().requires_grad_(True)
    with official_style():
        logits = clf.eval()(x, i["t"])
        (grad,) = torch.autograd.grad(torch.log_softmax(logits, -1)[torch.arange(len(i["y"])), i["y"]].sum(), x)
    assert (logits - d["outputs"]["logits"]).abs().max() <= 1e-4
    ref = d["outputs"]["grad_log_p_y"]
    assert (grad - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())

    s = _golden("super_res.pt")
    sr = ADM_U(sr_config_from_flags(s["flags"]))
    sr.load_state_dict(s["state_dict"])
    i = s["inputs"]
    with torch.no_grad(), official_style():
        out = sr.eval()(i["x"], i["t"], low_res=i["low_res"], y=i["y"])
    assert (out - s["outputs"]["out"]).abs().max() <= 1e-4


def test_official_style_restores_the_classes_and_checkpoints_like_the_original():
    before = {c: dict(vars(c)) for c in (GroupNorm32, ResBlock, AttentionBlock, ADM)}
    cfg = dict(image_size=16, model_channels=32, num_res_blocks=1, attention_resolutions=(8,), channel_mult=(1, 2),
               num_head_channels=16, num_classes=3)
    torch.manual_seed(0)
    a = ADM(**cfg)
    for p in a.parameters():
        torch.nn.init.normal_(p, std=0.1)
    b = ADM(**cfg, use_checkpoint=True)
    b.load_state_dict(a.state_dict())
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 700]), torch.tensor([0, 2])
    with official_style():
        a(x, t, y).square().mean().backward()
        b(x, t, y).square().mean().backward()  # the original CheckpointFunction
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5, rtol=1e-4), name
    assert {c: dict(vars(c)) for c in before} == before


def test_interleaved_pairs_repetitions_and_reports_failures():
    calls = []
    fns = {"official-fp32": lambda: calls.append("a"), "fast": lambda: calls.append("b"),
           "broken": lambda: 1 / 0}
    out = interleaved(fns, torch.device("cpu"), reps=3, baseline="official-fp32")
    assert len(out["fast"].times) == len(out["fast"].ratios) == 3
    assert out["broken"].error.startswith("ZeroDivisionError") and not out["broken"].times
    assert calls.count("a") == calls.count("b") == 4  # one warm-up call each


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HERE / "run.py"), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def test_run_writes_a_table_and_json_and_falls_back_without_a_compiler(tmp_path):
    out = tmp_path / "b.json"
    r = _run("--quick", "--only", "forward,train", "--reps", "1", "--modes", "official-fp32,fp32,bf16,fp32-compile",
             "--json", str(out), env={"ADM_BENCH_NO_COMPILE": "1"})
    assert r.returncode == 0, r.stderr
    assert "UNet forward" in r.stdout and "x official" in r.stdout
    data = json.loads(out.read_text())
    assert data["meta"]["failures"] == []
    rows = {(row["task"], row["batch"], row["mode"]): row for row in data["rows"]}
    assert rows[("forward", 1, "fp32")]["rel_error"] == 0.0
    assert rows[("forward", 8, "official-fp32")]["rel_error"] < 1e-5
    assert rows[("forward", 8, "bf16")]["rel_error"] < 5e-2
    assert "ADM_BENCH_NO_COMPILE" in rows[("forward", 1, "fp32-compile")]["fallback"]
    assert rows[("train", 8, "fp32")]["images_per_s"] > 0


def test_memory_probe_sees_checkpointing():
    import memory

    plain = memory.measure_subprocess("small", "adm", 8)
    ckpt = memory.measure_subprocess("small", "adm-ckpt", 8)
    assert "error" not in plain and "error" not in ckpt
    assert ckpt["activations"] < plain["activations"]
