"""The training checkpoint format, read and written here only: RUN_DIR/checkpoints/step_XXXXXXXX.pt.

A checkpoint is a dict (`checkpoint_state` builds it): "model" (raw weights), "ema" ({repr(rate):
state_dict}), "optimizer", "scaler", "rng", "timestep_sampler", "data", "world_size", "config" (the
TrainConfig as JSON, whose "model" entry is the network config with its "kind") and "step".
`exported_weights` reads the network back out of one (the first EMA rate, else the raw weights).

Files are written atomically (adm.runtime.atomic_write: a crash leaves the new file or none) and hold
only tensors, numbers, strings and containers, so they load with torch.load(weights_only=True).
"""
from __future__ import annotations

import errno
import json
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adm.errors import CheckpointError
from adm.runtime import atomic_write

CKPT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d{8})(\.keep)?\.pt$")  # .keep: survives later saves


def checkpoint_path(run_dir: Path, step: int, keep: bool = False) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step_{step:08d}{'.keep' if keep else ''}.pt"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints, oldest first (temporary files are ignored)."""
    d = Path(run_dir) / CKPT_DIR
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete the temporary files a killed save left behind."""
    d = Path(run_dir) / CKPT_DIR
    for p in d.glob(".*.tmp") if d.is_dir() else ():
        p.unlink(missing_ok=True)


def _dump(obj: Any, f) -> None:
    """Serialise obj into the open file f (a seam for tests that simulate a full disk)."""
    torch.save(obj, f)


def save_checkpoint(run_dir: Path, step: int, state: dict, keep: bool = False) -> Path:
    """Write step's checkpoint, then drop the previous ones that are not kept.

    A failed write (a full disk) raises CheckpointError and leaves the earlier checkpoints as they were.
    """
    path = checkpoint_path(run_dir, step, keep)
    previous = list_checkpoints(run_dir)
    try:
        atomic_write(path, lambda f: _dump({**state, "step": step}, f))
    except OSError as e:
        last = f"step {previous[-1][0]}" if previous else "none"
        why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise CheckpointError(
            f"could not save the checkpoint of step {step} to {path.parent}: {why}; "
            f"the previous checkpoint ({last}) is intact"
        ) from None
    for old_step, old in previous:
        if old != path and not old.name.endswith(".keep.pt"):
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's contents (CPU tensors); CheckpointError if it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0][:160]})") from None


def checkpoint_state(*, model: dict, ema: dict, optimizer: dict, scaler: dict, rng: dict, timestep_sampler: dict,
                     data: dict, world_size: int, config: dict) -> dict:
    """A checkpoint's contents (the step is added by save_checkpoint)."""
    return {"model": model, "ema": ema, "optimizer": optimizer, "scaler": scaler, "rng": rng,
            "timestep_sampler": timestep_sampler, "data": data, "world_size": world_size,
            "config": json.dumps(config)}


def exported_weights(obj: Any) -> tuple[dict, dict, int] | None:
    """(network config dict with "kind", its state_dict: the first EMA rate's, else the raw weights, step)
    of a training checkpoint's contents; None for anything that is not one."""
    if not (isinstance(obj, dict) and isinstance(obj.get("config"), str) and isinstance(obj.get("model"), dict)):
        return None
    try:
        cfg = json.loads(obj["config"])
    except json.JSONDecodeError:
        return None
    net = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(net, dict) or not isinstance(net.get("kind"), str):
        return None
    emas = obj.get("ema") if isinstance(obj.get("ema"), dict) else {}
    rates = [repr(float(r)) for r in cfg.get("ema") or []]
    sd = emas.get(rates[0]) if rates and rates[0] in emas else next(iter(emas.values()), None)
    return net, sd if isinstance(sd, dict) and sd else obj["model"], int(obj.get("step", 0))


def load_latest(run_dir: Path) -> dict | None:
    """The newest readable checkpoint of a run (older ones are tried if the newest is damaged)."""
    errors = []
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path)
        except CheckpointError as e:
            errors.append(str(e))
    if errors:
        raise CheckpointError(f"no readable checkpoint in {run_dir}: {errors[0]}")
    return None


# -- random number generator states --------------------------------------------------------------
def rng_state() -> dict:
    """This process's global RNG states (torch CPU and CUDA, numpy, python) as checkpoint-safe values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
