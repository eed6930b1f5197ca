"""`adm convert` (official .pt -> config.json + model.safetensors) and `adm info` (what a file holds)."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from adm.cli.common import (
    KINDS,
    MANIFEST_NAME,
    WEIGHTS_NAME,
    add_parser,
    is_model_dir,
    model_dirs_in,
    png_name,
    read_config,
    read_json_file,
    read_weights,
    writable_dir,
)
from adm.errors import CheckpointError, ConfigError

CONVERT_EPILOG = """examples:
  adm convert 256x256_diffusion.pt models/adm256            # preset recognised from the weights
  adm convert 64x64_classifier.pt models/cls64 --fp16       # store float16 weights (half the size)
  adm convert my_model.pt models/mine --flags "--image_size 64 --num_channels 128 --class_cond True"
  adm convert lsun_horse_nodropout.pt models/horse --preset ADM_lsun_horse_nodropout
"""

INFO_EPILOG = """examples:
  adm info models/adm256                 # a saved model directory
  adm info 256x256_diffusion.pt          # an official checkpoint (preset recognised from shapes)
  adm info runs/fmnist                   # a training run directory
  adm info ADM_U_64_256                  # a preset
  adm info --presets                     # every preset, its released file and whether weights are here
  adm info samples/fmnist                # an `adm sample` directory: settings, images written so far
  adm info samples/fmnist/samples_64x32x32x1.npz   # an image batch
  adm info models/adm256 --json          # machine-readable
"""


def register(subparsers) -> None:
    p = add_parser(
        subparsers, "convert", help="convert an official guided-diffusion .pt into config.json + model.safetensors",
        description="Convert an official guided-diffusion checkpoint (or a state_dict .pt/.safetensors) into an adm "
        "model directory: config.json (the architecture and diffusion settings) + model.safetensors. The preset is "
        "recognised from the weights' shapes; --preset or --flags force it.",
        epilog=CONVERT_EPILOG,
    )
    p.add_argument("checkpoint", help="the .pt (or .safetensors) file")
    p.add_argument("out", help="output directory (created)")
    force = p.add_mutually_exclusive_group()
    force.add_argument("--preset", help="the preset the checkpoint is (see `adm info --presets`)")
    force.add_argument("--flags",
                       help="the guided-diffusion MODEL_FLAGS / CLASSIFIER_FLAGS / SR flags it was trained with")
    p.add_argument("--fp16", action="store_true", help="store float16 weights")
    p.set_defaults(func=run_convert)

    p = add_parser(
        subparsers, "info", help="describe a checkpoint, saved model, run directory or preset",
        description="Show what a checkpoint (.pt/.safetensors, official or from `adm train`), saved model "
        "directory, training run directory or preset holds: kind, preset, parameters, classes, image size, "
        "diffusion settings, training step. Also describes `adm sample` output directories and .npz batches.",
        epilog=INFO_EPILOG,
    )
    p.add_argument("path", nargs="?", help="file, directory or preset name")
    p.add_argument("--presets", action="store_true", help="list the presets")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_info)


# -- convert --------------------------------------------------------------------------------------
def run_convert(args: argparse.Namespace) -> int:
    """Convert one checkpoint and print what it was recognised as."""
    import torch

    from adm.convert import convert_checkpoint

    src = Path(args.checkpoint)
    if not src.is_file():
        raise CheckpointError(f"checkpoint not found: {src}")
    out = writable_dir(args.out)
    preset = args.preset or args.flags
    if args.flags is not None and not args.flags.strip():
        raise ConfigError("--flags is empty")
    if args.preset is not None:
        from adm.presets import get

        get(args.preset)  # unknown names fail here, with a suggestion
    out_dir, what = convert_checkpoint(src, out, preset=preset, dtype=torch.float16 if args.fp16 else None)
    info = describe_model_dir(out_dir)
    print(f"{src} -> {out_dir} ({what}: {_summary(info)})")
    return 0


# -- info -----------------------------------------------------------------------------------------
def run_info(args: argparse.Namespace) -> int:
    """Print a description of args.path (or the preset table)."""
    if args.presets:
        rows = preset_rows()
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(_table(rows, ["name", "kind", "size", "classes", "file", "weights"]))
        return 0
    if not args.path:
        raise ConfigError("give a checkpoint, model directory, run directory or preset name (or --presets)")
    info = describe(args.path)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print(_format(info))
    return 0


def describe(source: str) -> dict:
    """A dict describing a file, saved model directory, run directory or preset name."""
    path = Path(source)
    if path.is_dir():
        if is_model_dir(path):
            return describe_model_dir(path)
        if (path / MANIFEST_NAME).is_file() and not read_config(path):
            return describe_samples_dir(path)
        return describe_run_dir(path)
    if path.is_file():
        return describe_npz(path) if path.suffix == ".npz" else describe_file(path)
    if "/" not in source and "." not in source:
        from adm.presets import get

        try:
            return describe_preset(get(source).name)
        except ConfigError as e:
            raise CheckpointError(f"no file or directory {source!r}, and {e}") from None
    raise CheckpointError(f"no such file or directory: {source}")


def _config_fields(cfg: dict) -> dict:
    """The user-facing fields of a network config dict."""
    out = {"kind": cfg.get("kind"), "image_size": cfg.get("image_size")}
    if cfg.get("kind") == "ADM_U":
        out["small_size"] = cfg.get("small_size")
    out["in_channels"] = cfg.get("in_channels")
    out["classes"] = cfg.get("num_classes", 0)
    if cfg.get("null_class"):
        out["null_class"] = True
    diff = cfg.get("diffusion") or {}
    if diff:
        out["diffusion"] = (
            f"{diff.get('steps')} steps, {diff.get('noise_schedule')} schedule"
            + (", learned sigma" if diff.get("learn_sigma") else "")
        )
    return out


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from None


def _count(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())


def describe_model_dir(path: Path) -> dict:
    """A save_pretrained directory: its config and parameter count."""
    cfg = read_config(path)
    extra = cfg.get("extra") or {}
    info = {"path": str(path), "type": "saved model directory", **_config_fields(cfg)}
    info["preset"] = extra.get("preset") or _identify_dir(path) or "-"
    info["parameters"] = _count(_safetensors_shapes(path / WEIGHTS_NAME))
    for key in ("step", "source"):
        if key in extra:
            info[key] = extra[key]
    return info


_IGNORED = ("diffusion", "dropout", "use_checkpoint", "kind", "extra")


def _identify_dir(path: Path) -> str | None:
    return _preset_of_config(read_config(path))


def _preset_of_config(config: dict) -> str | None:
    """The preset whose network config equals this one (diffusion and dropout aside)."""
    from adm.presets import PRESETS

    cfg = {k: v for k, v in config.items() if k not in _IGNORED}
    for name, p in PRESETS.items():
        d = {k: v for k, v in p.config().to_dict().items() if k not in _IGNORED}
        if p.kind == config.get("kind") and d == cfg:
            return name
    return None


def describe_run_dir(path: Path) -> dict:
    """A training run directory: its config and the saved models inside."""
    cfg = read_config(path)
    models = model_dirs_in(path)
    if not cfg and not models:
        raise CheckpointError(f"{path} is neither a saved model directory nor a training run directory")
    info: dict = {"path": str(path), "type": "training run directory"}
    net = cfg.get("model") if isinstance(cfg.get("model"), dict) else None
    if net is None and models:
        net = read_config(models[0])
    if net:
        info.update(_config_fields(net))
    step = _run_step(path, cfg, models)
    if step is not None:
        info["step"] = step
    if models:
        best = describe_model_dir(models[0])
        info["parameters"] = best["parameters"]
        info["preset"] = best["preset"]
        info["models"] = [str(m.relative_to(path)) for m in models]
    return info


def _run_step(path: Path, cfg: dict, models: list[Path]) -> int | None:
    for key in ("step", "last_step", "global_step"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    for name in ("state.json", "progress.json"):
        data = _read_json(path / name)
        for key in ("step", "last_step", "global_step"):
            if isinstance(data.get(key), int):
                return data[key]
    for m in models:
        extra = read_config(m).get("extra") or {}
        if isinstance(extra.get("step"), int):
            return extra["step"]
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_samples_dir(path: Path) -> dict:
    """An `adm sample` / `adm upsample` output directory: its settings and how many images are done."""
    record = read_json_file(path / MANIFEST_NAME)
    labels = record.get("labels") or {}
    done = sum((path / png_name(int(k))).is_file() for k in labels)
    info: dict = {"path": str(path), "type": "samples directory", "images": f"{done} of {len(labels)} written"}
    info.update({k: v for k, v in (record.get("settings") or {}).items() if v is not None})
    return info


def describe_npz(path: Path) -> dict:
    """A batch of images in the paper's .npz format."""
    from adm.data import load_npz

    images, labels = load_npz(path)
    n, h, w, c = images.shape
    info: dict = {"path": str(path), "type": "image batch (.npz)", "images": n, "shape": f"{h}x{w}x{c} uint8"}
    if labels is not None:
        info["labels"] = f"{len(np.unique(labels))} distinct, {int(labels.min())}..{int(labels.max())}" if n else "none"
    return info


def describe_file(path: Path) -> dict:
    """A .pt / .safetensors file: recognised preset, kind, parameters (and a training checkpoint's step)."""
    import torch

    from adm.presets import PRESETS, identify

    info: dict = {"path": str(path), "type": "checkpoint file"}
    if path.suffix == ".safetensors":
        if path.name == WEIGHTS_NAME and read_config(path.parent).get("kind") in KINDS:
            return describe_model_dir(path.parent)
        sd, net, step = {k: torch.empty(s, device="meta") for k, s in _safetensors_shapes(path).items()}, None, None
    else:
        sd, net, step = read_weights(path)
    if net is not None:
        info["type"] = "training checkpoint (its exported EMA weights)"
        info.update(_config_fields(net))
        info["preset"] = _preset_of_config(net) or "-"
    elif (name := identify(sd)) is not None:
        info.update(_config_fields({"kind": PRESETS[name].kind, **PRESETS[name].config().to_dict()}))
        info["preset"] = name
    else:
        info["kind"] = "unknown (matches no preset: convert it with --flags)"
        info["preset"] = "-"
    info["parameters"] = sum(v.numel() for v in sd.values())
    info["tensors"] = len(sd)
    if step is not None:
        info["step"] = step
    return info


def describe_preset(name: str) -> dict:
    """A preset: its config, released file, the paper's sampling settings and weight availability."""
    from adm.presets import PRESETS

    p = PRESETS[name]
    cfg = p.config()
    info = {"name": name, "type": "preset", **_config_fields({"kind": p.kind, **cfg.to_dict()})}
    info["parameters"] = _preset_params(name)
    info["file"] = p.file or "-"
    info["weights"] = weights_status(name)
    if p.sample:
        info["sampling"] = ", ".join(f"{k}={v}" for k, v in p.sample.items())
    if p.note:
        info["note"] = p.note
    return info


def _preset_params(name: str) -> int:
    from adm.presets import preset_shapes

    return _count(preset_shapes(name))


def weights_status(name: str) -> str:
    """'shipped', 'cached', 'download' (released, not cached), 'none' (closest: X) or 'missing'."""
    from adm.hub import cache_dir
    from adm.presets import PRESETS

    p = PRESETS[name]
    if p.shipped:
        from importlib.resources import files

        return "shipped" if (files("adm") / "weights" / p.shipped / WEIGHTS_NAME).is_file() else "missing"
    if p.file is None:
        return f"none (closest: {p.closest})" if p.closest else "none"
    return "cached" if (cache_dir() / p.file).is_file() else "download"


def preset_rows() -> list[dict]:
    """One row per preset for `adm info --presets`."""
    from adm.presets import PRESETS

    rows = []
    for name, p in PRESETS.items():
        cfg = p.config()
        size = f"{cfg.image_size}"
        if p.kind == "ADM_U":
            size = f"{cfg.small_size}->{cfg.image_size}"
        rows.append({
            "name": name, "kind": p.kind, "size": size, "classes": cfg.num_classes,
            "file": p.file or "-", "weights": weights_status(name),
        })
    return rows


# -- formatting -----------------------------------------------------------------------------------
def _summary(info: dict) -> str:
    parts = [str(info.get("kind"))]
    if info.get("image_size"):
        parts.append(f"{info['image_size']}x{info['image_size']}")
    parts.append(f"{info['classes']} classes" if info.get("classes") else "unconditional")
    parts.append(f"{info['parameters'] / 1e6:.2f}M parameters")
    return ", ".join(parts)


def _format(info: dict) -> str:
    width = max(len(k) for k in info)
    lines = []
    for k, v in info.items():
        if isinstance(v, int) and not isinstance(v, bool) and k == "parameters":
            v = f"{v:,} ({v / 1e6:.2f}M)"
        elif isinstance(v, list):
            v = ", ".join(map(str, v))
        lines.append(f"{k:<{width}}  {v}")
    return "\n".join(lines)


def _table(rows: list[dict], cols: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    out = ["  ".join(c.ljust(widths[c]) for c in cols)]
    out += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(line.rstrip() for line in out)

