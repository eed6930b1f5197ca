"""Helpers shared by the sampling commands: model sources, devices, dtypes, seed and label lists."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from adm.errors import CheckpointError, ConfigError, DataError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
KINDS = ("ADM", "ADM_U", "ADM_classifier")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# -- argparse -------------------------------------------------------------------------------------
def add_parser(subparsers, name: str, help: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """A sub-command parser whose --help keeps the examples' line breaks (the description is wrapped)."""
    import textwrap

    return subparsers.add_parser(
        name, help=help, description=textwrap.fill(description, 100), epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """--device, --dtype and --no-progress."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default: auto)")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="autocast precision (default: fp32)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# -- device and precision -------------------------------------------------------------------------
def parse_device(text: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; an unavailable device raises ConfigError."""
    text = (text or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"unknown device {text!r} (use cpu, cuda, cuda:N, mps or auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {text!r} requested but CUDA is not available (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {text!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError("device 'mps' requested but it is not available (use --device cpu)")
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device {text!r} (use cpu, cuda, cuda:N, mps or auto)")
    return device


def parse_dtype(text: str) -> torch.dtype:
    """fp32 | bf16 | fp16 (also float32, bfloat16, float16, half) -> torch dtype."""
    aliases = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
    key = aliases.get(text.lower(), text.lower())
    if key not in DTYPES:
        raise ConfigError(f"unknown dtype {text!r}; choose fp32, bf16 or fp16")
    return DTYPES[key]


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """torch.autocast for bf16/fp16, nothing for fp32 (weights stay float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


# -- model sources --------------------------------------------------------------------------------
def read_config(directory: Path) -> dict:
    """config.json of a directory, as a dict ({} when absent); bad JSON raises CheckpointError."""
    path = directory / CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def is_model_dir(path: Path) -> bool:
    """A save_pretrained directory: config.json with a network kind, and model.safetensors."""
    return (path / WEIGHTS_NAME).is_file() and read_config(path).get("kind") in KINDS


def _step_of(path: Path) -> int:
    nums = re.findall(r"\d+", path.name)
    return int(nums[-1]) if nums else -1


def model_dirs_in(run_dir: Path, kinds: tuple[str, ...] | None = None) -> list[Path]:
    """Saved model directories in a training run directory, best first: RUN_DIR/model (the exported
    EMA weights), then other EMA exports, then the latest step."""
    found = [p for p in sorted(run_dir.rglob(WEIGHTS_NAME)) if len(p.relative_to(run_dir).parts) <= 4]
    dirs = [p.parent for p in found if is_model_dir(p.parent)]
    if kinds is not None:
        dirs = [d for d in dirs if read_config(d).get("kind") in kinds]

    def rank(d: Path) -> tuple:
        rel = str(d.relative_to(run_dir)).lower()
        return (rel == "model", "ema" in rel, _step_of(d), d.stat().st_mtime)

    return sorted(dirs, key=rank, reverse=True)


def resolve_model_dir(path: Path, kinds: tuple[str, ...] | None = None) -> Path:
    """The saved model directory `path` is, or the best one inside a run directory."""
    if is_model_dir(path):
        kind = read_config(path).get("kind")
        if kinds is not None and kind not in kinds:
            raise ConfigError(f"{path} holds a {kind}; expected {' or '.join(kinds)}")
        return path
    dirs = model_dirs_in(path, kinds)
    if not dirs:
        want = f"{' or '.join(kinds)} " if kinds else ""
        raise CheckpointError(
            f"{path} holds no saved {want}model (a directory with config.json and {WEIGHTS_NAME}, "
            "or a training run directory with an exported one)"
        )
    return dirs[0]


def model_class(kind: str) -> type:
    from adm.nn import ADM, ADM_U, ADM_classifier

    return {"ADM": ADM, "ADM_U": ADM_U, "ADM_classifier": ADM_classifier}[kind]


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


@dataclass
class Loaded:
    """A network loaded for sampling, with what is known about where it came from."""

    model: torch.nn.Module
    source: str                               # how the user named it (recorded with the samples)
    preset: str | None = None                 # the preset it is (for the paper's sampling settings)
    class_names: list[str] = field(default_factory=list)

    def sample_settings(self) -> dict:
        """The paper's sampling settings of its preset ({} when unknown)."""
        from adm import presets

        return dict(presets.PRESETS[self.preset].sample) if self.preset in presets.PRESETS else {}


def load_model(
    source: str | None,                      # preset name, saved dir, run dir, or .pt/.safetensors file
    kinds: tuple[str, ...] = ("ADM",),       # acceptable network kinds (first: what a flag string builds)
    flags: dict | None = None,               # guided-diffusion flags (split_flags) for a bare official .pt
    checkpoint: str | None = None,           # weights for a preset given as `source`
    what: str = "model",                     # how errors name this model (e.g. "--classifier")
    device: torch.device | str = "cpu",
) -> Loaded:
    """Load a network for sampling (float32, eval mode); every bad source raises one AdmError line."""
    from adm import presets

    if source is None and checkpoint is None:
        raise ConfigError(f"no {what} given: pass a preset, a model directory or a checkpoint")
    preset, names, label = None, [], source if source is not None else checkpoint
    if source is not None and not os.path.exists(source) and _looks_like_name(source):
        preset = presets.get(source).name
        kind = presets.PRESETS[preset].kind
        if kind not in kinds:
            raise ConfigError(f"{what} {source!r} is a {kind} preset; expected {' or '.join(kinds)}")
        if flags:
            raise ConfigError(f"{what}: flags apply to a .pt checkpoint, not to the preset {source!r}")
        weights = _existing(checkpoint, what) if checkpoint is not None else True
        model = presets.build(preset, pretrained=weights)
        label = f"{preset}:{checkpoint}" if checkpoint is not None else preset
    else:
        path = Path(source if source is not None else checkpoint)
        if not path.exists():
            raise CheckpointError(f"{what} not found: {path}")
        if path.is_dir():
            if flags:
                raise ConfigError(f"{what}: flags apply to a .pt checkpoint, not to the directory {path}")
            d = resolve_model_dir(path, kinds)
            meta = read_config(d)
            model = model_class(meta["kind"]).from_pretrained(d)
            extra = meta.get("extra") or {}
            preset = extra.get("preset") if extra.get("preset") in presets.PRESETS else None
            names = [str(n) for n in extra.get("class_names") or []]
        else:
            model, preset = _load_file(path, kinds, flags, what)
    if isinstance(getattr(model, "dtype", None), torch.dtype) and model.dtype != torch.float32:
        model.convert_to_fp32()
    model = model.float().to(device).eval().requires_grad_(False)
    return Loaded(model, str(label), preset, names)


def _looks_like_name(text: str) -> bool:
    return os.sep not in text and "/" not in text and "." not in text


def _existing(path: str, what: str) -> str:
    if not Path(path).is_file():
        raise CheckpointError(f"{what} checkpoint not found: {path}")
    return path


def training_checkpoint(obj) -> tuple[dict, dict, int] | None:
    """(network config with "kind", the exported EMA (else raw) state_dict, step) of an `adm train`
    checkpoint (RUN_DIR/checkpoints/step_*.pt); None for anything else."""
    if not (isinstance(obj, dict) and isinstance(obj.get("config"), str) and isinstance(obj.get("model"), dict)):
        return None
    try:
        cfg = json.loads(obj["config"])
    except json.JSONDecodeError:
        return None
    net = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(net, dict) or net.get("kind") not in KINDS:
        return None
    emas = obj.get("ema") if isinstance(obj.get("ema"), dict) else {}
    rates = [repr(float(r)) for r in cfg.get("ema") or []]
    sd = emas.get(rates[0]) if rates and rates[0] in emas else next(iter(emas.values()), None)
    return net, sd if isinstance(sd, dict) and sd else obj["model"], int(obj.get("step", 0))


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict | None, int | None]:
    """(state_dict, network config or None, training step or None) of a .pt / .safetensors file."""
    from adm.nn.pretrained import extract_state_dict, read_state_dict, read_torch_file

    if path.suffix == ".safetensors":
        return read_state_dict(path), None, None
    obj = read_torch_file(path)
    found = training_checkpoint(obj)
    if found is not None:
        return found[1], found[0], found[2]
    return extract_state_dict(obj, path), None, None


def _load_file(path: Path, kinds: tuple[str, ...], flags: dict | None, what: str):
    """(network, preset or None) of a weights file: built from flags, a sidecar config.json, a training
    checkpoint's config, or the preset its shapes match."""
    from adm import presets
    from adm.compat import config_from_flags

    side = read_config(path.parent)
    if not flags and side.get("kind") in KINDS and path.name == WEIGHTS_NAME:
        if side["kind"] not in kinds:
            raise ConfigError(f"{what} {path} is a {side['kind']}; expected {' or '.join(kinds)}")
        return model_class(side["kind"]).from_pretrained(path.parent), None
    sd, net, _ = read_weights(path)
    name = None
    if flags:
        model = model_class(kinds[0])(config_from_flags(flags, kind=kinds[0]))
    elif net is not None:
        if net["kind"] not in kinds:
            raise ConfigError(f"{what} {path} holds a {net['kind']}; expected {' or '.join(kinds)}")
        model = model_class(net["kind"]).from_config_dict(net)
    else:
        name = presets.identify(sd)
        if name is None:
            raise CheckpointError(
                f"{path}: its weights match no known preset; pass its guided-diffusion flags "
                f"(e.g. --flags \"$MODEL_FLAGS\") or a preset name"
            )
        kind = presets.PRESETS[name].kind
        if kind not in kinds:
            raise ConfigError(f"{what} {path} is a {kind} ({name}); expected {' or '.join(kinds)}")
        model = presets.build(name)
    model.load_checked(sd, str(path))
    return model, name


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


def save_png_atomic(path: Path, image: np.ndarray) -> None:
    """Write one uint8 [H, W, C] PNG through a temporary name, so an interrupted run leaves no half file."""
    from adm.data import save_png

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_png(tmp, image)
    os.replace(tmp, path)


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
    from adm.nn.pretrained import atomic_write_bytes

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


def num_steps(diffusion_steps: int, respacing: str, sampler: str = "ddpm") -> int:
    """How many model calls `sampler` makes on the steps a respacing spec keeps."""
    from adm.diffusion.schedule import count_timesteps
    from adm.sampling import model_calls

    return model_calls(sampler, count_timesteps(diffusion_steps, respacing))


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
            save_png_atomic(out / png_name(k), image)


def dist_context(device: torch.device):
    """The torchrun process group when WORLD_SIZE > 1 (gloo on CPU, NCCL on GPUs), else this process alone."""
    from adm.train.distributed import DistContext, setup

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return setup(str(device))
    return DistContext(0, 1, 0, device)
