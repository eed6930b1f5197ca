"""Training in other processes: SIGKILL at any moment leaves loadable checkpoints and resumes;
two gloo processes (torchrun, DDP) train what one process trains with the same global batch."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from adm.nn import ADM
from adm.train import state as ckpt

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--image-size", "8", "--set", "model_channels=32", "--set", "channel_mult=1,2", "--set", "num_res_blocks=1",
        "--set", "attention_resolutions=4", "--set", "num_head_channels=32", "--set", "steps=50",
        "--set", "dropout=0"]
RUN = ["--no-progress", "--device", "cpu", "--sample-every", "0"]


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    e.pop("WORLD_SIZE", None)
    return e


def adm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "adm", *args]


@pytest.fixture
def npz(tmp_path) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, (rng.random((32, 8, 8, 1)) * 255).astype(np.uint8), np.arange(32) % 3)
    return str(path)


def test_sigkill_never_leaves_an_unloadable_checkpoint(tmp_path, npz):
    out = tmp_path / "run"
    args = ["train", "--data", npz, "--out", str(out), *TINY, *RUN, "--batch-size", "8", "--save-every", "1",
            "--log-every", "1"]
    rng = random.Random(0)
    for round_ in range(2):
        proc = subprocess.Popen(adm_cmd(*args, "--max-steps", "100000"), cwd=ROOT, env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        start = max([s for s, _ in ckpt.list_checkpoints(out)], default=0)
        deadline = time.time() + 60
        while time.time() < deadline and max([s for s, _ in ckpt.list_checkpoints(out)], default=0) < start + 2:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside a step, a save or an export
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        found = ckpt.list_checkpoints(out)
        assert found, "no checkpoint survived"
        for step, path in found:
            state = ckpt.load_checkpoint(path)  # every file on disk loads
            assert state["step"] == step
        ADM.from_pretrained(out / "model")
    last = ckpt.list_checkpoints(out)[-1][0]
    done = subprocess.run(adm_cmd(*args, "--max-steps", str(last + 2)), cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ckpt.list_checkpoints(out)[-1][0] == last + 2
    assert not list((out / "checkpoints").glob(".*.tmp"))


def test_two_gloo_processes_equal_one_process(tmp_path, npz):
    common = ["--data", npz, *TINY, *RUN, "--batch-size", "8", "--max-steps", "3", "--save-every", "3",
              "--log-every", "1", "--label-dropout", "0.2", "--ema", "0.9"]
    one = subprocess.run(adm_cmd("train", "--out", str(tmp_path / "one"), *common, "--microbatch", "2"),
                         cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(adm_cmd("train", "--out", str(tmp_path / "two"), *common, "--nproc", "2"),
                         cwd=ROOT, env=env(), capture_output=True, text=True, timeout=180)
    assert two.returncode == 0, two.stderr
    a = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "one")[-1][1])
    b = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "two")[-1][1])
    assert a["step"] == b["step"] == 3 and b["world_size"] == 2
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    for k, v in a["ema"]["0.9"].items():
        torch.testing.assert_close(b["ema"]["0.9"][k], v, rtol=1e-4, atol=1e-5)
    assert all(st["exp_avg"].abs().sum() > 0 for st in a["optimizer"]["state"].values())  # it did train
    # The logged losses (summed over the processes) agree too.
    la = [json.loads(line)["loss"] for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line)["loss"] for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, rel=1e-5)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_saves_the_step_and_the_rerun_says_where_it_resumes(tmp_path, npz, sig):
    out = tmp_path / "run"
    args = ["train", "--data", npz, "--out", str(out), *TINY, *RUN, "--batch-size", "8", "--save-every", "1000",
            "--log-every", "1000"]
    proc = subprocess.Popen(adm_cmd(*args, "--max-steps", "100000"), cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "config.json").is_file():
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    time.sleep(1.0)  # anywhere: in the set-up or in a step (none of them a save)
    assert ckpt.list_checkpoints(out) == []
    proc.send_signal(sig)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    found = ckpt.list_checkpoints(out)
    assert len(found) == 1, err
    step = found[0][0]
    assert f"interrupted at step {step}: checkpoint saved" in err and "Traceback" not in err
    assert json.loads((out / "model" / "config.json").read_text())["extra"]["step"] == step
    rerun = subprocess.run(adm_cmd(*args, "--max-steps", str(step + 1)), cwd=ROOT, env=env(),
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming {out} from step {step}" in rerun.stderr
