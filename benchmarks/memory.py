"""Peak memory of one training step (forward, backward, AdamW), with and without gradient checkpointing.

CUDA: `torch.cuda.max_memory_allocated` around the step. CPU: each variant runs in a fresh
subprocess (`python3 benchmarks/memory.py --variant ...`), which resets the kernel's peak-RSS
counter (VmHWM, via /proc/self/clear_refs) just before the step and reads it after; where that
counter cannot be reset, `ru_maxrss` of the process is used instead. No tracemalloc: it would not see
PyTorch's allocations and would slow the step down.

Reported per variant: `step_peak` (everything alive at the peak: weights, gradients, AdamW state,
activations and temporaries) and `activations` (the peak minus what was allocated before the step,
when the weights, their gradients and the AdamW state already exist).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
VARIANTS = {  # name: (official-style forward, gradient checkpointing, autocast dtype)
    "official": (True, False, None),
    "official-ckpt": (True, True, None),
    "adm": (False, False, None),
    "adm-ckpt": (False, True, None),
    "adm-bf16": (False, False, "bf16"),
    "adm-bf16-ckpt": (False, True, "bf16"),
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes(reset_ok: bool) -> int:
    if reset_ok:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_in_process(config: str, variant: str, batch: int, device: torch.device) -> dict:
    """Build the network with the variant's settings, warm the optimiser up (its state exists from
    the first step on), then measure a second step."""
    from common import CONFIGS, MODES, Variants, build_model
    from tasks import TrainStep

    official, ckpt, dtype = VARIANTS[variant]
    mode_name = ("official-" if official else "") + ("bf16" if dtype == "bf16" else "fp32")
    model = build_model(CONFIGS[config][0], device, use_checkpoint=ckpt)
    mode = MODES[mode_name]
    step = TrainStep(Variants(model, device).module(mode), list(model.parameters()), mode, batch, device)
    model.train()
    step.set_to_none = False  # the gradients stay allocated: the step's extra memory is activations
    step()  # AdamW state and the gradients exist from here on
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated()
        method = "torch.cuda.max_memory_allocated"
    else:
        gc.collect()
        _trim_heap()  # hand freed heap pages back, so that RSS counts live memory only
        before = _rss_bytes()
        reset = _reset_peak_rss()
        t0 = time.perf_counter()
        step()
        seconds = time.perf_counter() - t0
        peak = _peak_rss_bytes(reset)
        method = "VmHWM after clear_refs" if reset else "ru_maxrss"
    del step, model
    return {"variant": variant, "config": config, "batch": batch, "device": str(device),
            "step_peak": peak, "activations": max(0, peak - before), "before": before,
            "seconds": seconds, "method": method}


def measure_subprocess(config: str, variant: str, batch: int, threads: int | None = None,
                       timeout: float = 900) -> dict:
    """measure_in_process on the CPU in a fresh interpreter (so no other allocation skews the peak)."""
    cmd = [sys.executable, str(HERE / "memory.py"), "--config", config, "--variant", variant,
           "--batch", str(batch), "--device", "cpu"]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode:
        return {"variant": variant, "config": config, "batch": batch, "error": r.stderr.strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="small")
    p.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(json.dumps(measure_in_process(a.config, a.variant, a.batch, torch.device(a.device))))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
