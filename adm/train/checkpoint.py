"""Training checkpoints in RUN_DIR/checkpoints/step_XXXXXXXX.pt, each written whole or not at all.

A file is written to a temporary name, fsync'ed, renamed, and the directory fsync'ed: a crash at any
moment leaves either the new file or none, never a truncated one. Files hold only tensors, numbers,
strings and containers, so they load with torch.load(weights_only=True).
"""
from __future__ import annotations

import errno
import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adm.errors import CheckpointError

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


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file + fsync + rename; on failure the old file is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            _dump(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_checkpoint(run_dir: Path, step: int, state: dict, keep: bool = False) -> Path:
    """Write step's checkpoint, then drop the previous ones that are not kept.

    A failed write (a full disk) raises CheckpointError and leaves the earlier checkpoints as they were.
    """
    path = checkpoint_path(run_dir, step, keep)
    previous = list_checkpoints(run_dir)
    try:
        atomic_save({**state, "step": step}, path)
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
