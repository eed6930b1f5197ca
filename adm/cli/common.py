"""What the commands share: argument groups, seed and label lists, loading for inference, output files."""
from __future__ import annotations

import argparse
import json
import math
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from adm.errors import ConfigError, DataError
from adm.data.images import save_png
from adm.runtime import DTYPES, atomic_write_bytes



# -- argparse -------------------------------------------------------------------------------------
def add_parser(subparsers, name: str, help: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """A sub-command parser whose --help keeps the examples' line breaks (the description is wrapped)."""
    import textwrap

    return subparsers.add_parser(
        name, help=help, description=textwrap.fill(description, 100), epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """--device, --dtype, --channels-last and --no-progress."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default: auto)")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="autocast precision (default: fp32)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="run the networks channels-last (default: where it is faster: bf16/fp16 on CUDA, "
                             "or on the CPU for networks of >= 128 base channels)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# -- seeds and labels -----------------------------------------------------------------------------
_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")
MAX_LIST = 10_000_000  # seeds or labels in one list: far beyond any run, small enough to hold in memory


def parse_int_list(text: str, what: str) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7] (inclusive ranges, non-negative integers)."""
    out: list[int] = []
    for part in str(text).split(","):
        m = _RANGE.match(part)
        if not m:
            raise ConfigError(f"bad {what} {part.strip()!r} in {text!r}: expected N, A-B or a comma list like 0-63,100")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise ConfigError(f"bad {what} range {part.strip()!r}: the end is below the start")
        if len(out) + hi - lo >= MAX_LIST:
            raise ConfigError(f"{what} list {text!r} is too long (at most {MAX_LIST:,} values)")
        out.extend(range(lo, hi + 1))
    return out


def parse_seeds(text: str | None, num: int | None) -> list[int]:
    """The per-sample seeds: a list/range ('0-63,100'), or S..S+num-1 for a single S with --num."""
    if text is None:
        text = "0"
    seeds = parse_int_list(text, "seed")
    if len(seeds) == 1 and num is not None:
        seeds = list(range(seeds[0], seeds[0] + num))
    elif num is not None and num != len(seeds):
        raise ConfigError(f"--num {num} disagrees with the {len(seeds)} seeds of --seed {text!r}; give one of them")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seed {text!r} lists a seed twice; each image needs its own seed")
    if len(seeds) > MAX_LIST:
        raise ConfigError(f"--num {len(seeds)} is too large (at most {MAX_LIST:,} images a run)")
    if any(s >= 2**62 for s in seeds):
        raise ConfigError("seeds must be below 2**62")
    return seeds


def parse_labels(text: str | None, seeds: list[int], num_classes: int, what: str = "the model") -> list[int] | None:
    """One label per seed: None for an unconditional model; 'random' (default), '3', '0,3,5' or '0-9' cycled."""
    if num_classes == 0:
        if text not in (None, "", "none", "random"):
            raise ConfigError(f"{what} is unconditional: it takes no --labels")
        return None
    if text is None or text.strip().lower() == "random":
        from adm.guided import random_labels  # ADM_G's rule, so `adm sample` and ADM_G.sample agree

        return random_labels(list(seeds), num_classes).tolist()
    labels = parse_int_list(text, "label")
    bad = [y for y in labels if y >= num_classes]
    if bad:
        raise ConfigError(f"label {bad[0]} out of range: {what} has {num_classes} classes (0..{num_classes - 1})")
    return [labels[i % len(labels)] for i in range(len(seeds))]


# -- models ---------------------------------------------------------------------------------------
def load_model(source: str | None, kinds: tuple[str, ...] = ("ADM",), flags: dict | None = None,
               checkpoint: str | None = None, what: str = "model", device: torch.device | str = "cpu"):
    """adm.hub.load for sampling: float32, eval mode, no gradients, on `device`."""
    from adm.hub import for_inference, load

    return for_inference(load(source, kinds, config=flags or None, checkpoint=checkpoint, what=what), device)


# guided-diffusion's sampling-script flags, accepted inside --flags strings and applied as options
SCRIPT_FLAGS: dict[str, type] = {
    "classifier_scale": float, "timestep_respacing": str, "use_ddim": bool, "batch_size": int,
    "num_samples": int, "clip_denoised": bool, "model_path": str, "classifier_path": str, "base_samples": str,
}


def split_flags(text: str | None) -> tuple[dict, dict]:
    """A guided-diffusion flag string -> (network/diffusion flags, sampling-script flags), both typed."""
    import shlex

    from adm.compat import parse_flags, str2bool

    if not text:
        return {}, {}
    tokens, rest, script = shlex.split(text), [], {}
    i = 0
    while i < len(tokens):
        name, eq, value = tokens[i][2:].partition("=") if tokens[i].startswith("--") else ("", "", "")
        if name in SCRIPT_FLAGS:
            if not eq:
                if i + 1 >= len(tokens):
                    raise ConfigError(f"flag --{name} has no value")
                value, i = tokens[i + 1], i + 1
            try:
                script[name] = str2bool(value) if SCRIPT_FLAGS[name] is bool else SCRIPT_FLAGS[name](value)
            except (ValueError, argparse.ArgumentTypeError):
                raise ConfigError(f"flag --{name}: {value!r} is not a valid {SCRIPT_FLAGS[name].__name__}") from None
        else:
            rest.append(tokens[i])
        i += 1
    flags = parse_flags(shlex.join(rest))
    flags.pop("timestep_respacing", None)
    return flags, script


# -- output ---------------------------------------------------------------------------------------
def writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and check that it can be written (ConfigError otherwise)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".adm-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to output directory {out}: {e.strerror or e}") from None
    return out


# -- samples on disk: one PNG per image, a manifest of labels and settings, then grid + .npz ----------
MANIFEST_NAME = "samples.json"


def png_name(key: int) -> str:
    """000042.png: images are named by their seed (sample) or input index (upsample)."""
    return f"{key:06d}.png"


def load_pngs(paths: list[Path]) -> np.ndarray:
    """uint8 [N, H, W, C] from PNG files of one size (grey files get C = 1)."""
    from PIL import Image

    arrays = []
    for p in paths:
        try:
            with Image.open(p) as im:
                a = np.asarray(im.convert("L" if im.mode in ("L", "I", "I;16") else "RGB"))
        except OSError as e:
            raise DataError(f"{p}: cannot read the image ({e})") from None
        arrays.append(a[..., None] if a.ndim == 2 else a)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"the images differ in size ({sorted(shapes)}); remove the stale ones or use another --out")
    return np.stack(arrays)


def check_manifest(out: Path, settings: dict, labels: dict[int, int | None], overwrite: bool) -> dict:
    """The manifest to write: settings + label per key, merged with one from an earlier run of the same
    settings; different settings (or a different label for a key) raise ConfigError unless overwrite."""
    path = out / MANIFEST_NAME
    old = {} if overwrite or not path.is_file() else read_json_file(path)
    if old:
        if old.get("settings") != settings:
            diff = [k for k in sorted(set(settings) | set(old.get("settings", {})))
                    if settings.get(k) != old.get("settings", {}).get(k)]
            raise ConfigError(
                f"{out} holds samples made with other settings ({', '.join(diff)} differ); "
                "use another --out, or --overwrite to replace them"
            )
        previous = {int(k): v for k, v in (old.get("labels") or {}).items()}
        clash = [k for k, v in labels.items() if k in previous and previous[k] != v]
        if clash:
            raise ConfigError(
                f"{out} holds image {png_name(clash[0])} with label {previous[clash[0]]}, not {labels[clash[0]]}; "
                "use another --out, or --overwrite to replace it"
            )
        labels = {**previous, **labels}
    return {"settings": settings, "labels": {str(k): v for k, v in sorted(labels.items())}}


def write_json_file(path: Path, data: dict) -> None:
    """Write JSON atomically."""
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


def read_json_file(path: Path) -> dict:
    """A JSON object from a file; unreadable files raise DataError."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e}); delete it or pass --overwrite") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def finish_outputs(
    out: Path, keys: list[int], labels: list[int] | None, grid: int, prefix: str = "samples"
) -> tuple[Path, Path | None]:
    """Assemble the PNGs of `keys` into the paper's .npz (arr_0 NHWC uint8, arr_1 labels) and a grid PNG."""
    from adm.data import save_grid, save_npz

    images = load_pngs([out / png_name(k) for k in keys])
    n, h, w, c = images.shape
    npz = save_npz(out / f"{prefix}_{n}x{h}x{w}x{c}.npz", images, None if labels is None else np.asarray(labels))
    grid_path = None
    if grid > 0:
        shown = images[:grid]
        grid_path = save_grid(out / "grid.png", shown, nrow=max(1, math.ceil(math.sqrt(len(shown)))))
    return npz, grid_path


class Progress:
    """One tqdm bar over images, advanced a fraction of a batch at every sampler step (images/s, ETA)."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        from tqdm import tqdm

        self.total, self.done = total, 0.0
        self.bar = tqdm(total=total, desc=desc, unit="img", disable=not enabled or total == 0, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]")

    def callback(self, batch: int, steps: int, share: float = 1.0):
        """A sampler callback for a batch of `batch` images over `steps` steps (share: this stage's part)."""
        def cb(_info: dict) -> None:
            self.done = min(self.total, self.done + batch * share / steps)
            self.bar.update(self.done - self.bar.n)

        return cb

    def close(self) -> None:
        self.bar.close()


def produce(
    out: Path,                                   # output directory
    keys: list[int],                             # names of the images to make (seeds or input indices)
    labels: dict[int, int | None],               # label of each key (None: unconditional)
    batch_size: int,
    make: Callable[[list[int], list[int] | None], np.ndarray],  # (keys, labels) -> uint8 [B, H, W, C]
) -> None:
    """Make the images of `keys` in batches and write each as OUT/<key>.png as soon as it exists."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    for lo in range(0, len(keys), batch_size):
        part = keys[lo : lo + batch_size]
        ys = None if labels.get(part[0]) is None else [int(labels[k]) for k in part]
        for k, image in zip(part, make(part, ys)):
            save_png(out / png_name(k), image)


def dist_context(device: torch.device):
    """The torchrun process group when WORLD_SIZE > 1 (gloo on CPU, NCCL on GPUs), else this process alone."""
    from adm.train.distributed import DistContext, setup

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return setup(str(device))
    return DistContext(0, 1, 0, device)
