"""`adm info`: what a checkpoint, saved model, run directory, preset, samples directory or .npz holds."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from adm.cli.common import MANIFEST_NAME, add_parser, png_name, read_json_file
from adm.errors import CheckpointError, ConfigError
from adm.hub import presets
from adm.hub.download import cache_dir
from adm.hub.load import identify, model_dirs_in, preset_of_config, preset_shapes, read_weights
from adm.nn.config import KINDS
from adm.nn.serialization import WEIGHTS_NAME, is_model_dir, read_model_config, safetensors_shapes

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
        if (path / MANIFEST_NAME).is_file() and not read_model_config(path):
            return describe_samples_dir(path)
        return describe_run_dir(path)
    if path.is_file():
        return describe_npz(path) if path.suffix == ".npz" else describe_file(path)
    if "/" not in source and "." not in source:
        try:
            return describe_preset(presets.get(source).name)
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


def _count(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())


def describe_model_dir(path: Path) -> dict:
    """A save_pretrained directory: its config and parameter count."""
    cfg = read_model_config(path)
    extra = cfg.get("extra") or {}
    info = {"path": str(path), "type": "saved model directory", **_config_fields(cfg)}
    info["preset"] = extra.get("preset") or preset_of_config(read_model_config(path)) or "-"
    info["parameters"] = _count(safetensors_shapes(path / WEIGHTS_NAME))
    for key in ("step", "source"):
        if key in extra:
            info[key] = extra[key]
    return info


def describe_run_dir(path: Path) -> dict:
    """A training run directory: its config and the saved models inside."""
    cfg = read_model_config(path)
    models = model_dirs_in(path)
    if not cfg and not models:
        raise CheckpointError(f"{path} is neither a saved model directory nor a training run directory")
    info: dict = {"path": str(path), "type": "training run directory"}
    net = cfg.get("model") if isinstance(cfg.get("model"), dict) else None
    if net is None and models:
        net = read_model_config(models[0])
    if net:
        info.update(_config_fields(net))
    step = next((s for m in models if isinstance(s := (read_model_config(m).get("extra") or {}).get("step"), int)),
                None)
    if step is not None:
        info["step"] = step
    if models:
        best = describe_model_dir(models[0])
        info["parameters"] = best["parameters"]
        info["preset"] = best["preset"]
        info["models"] = [str(m.relative_to(path)) for m in models]
    return info


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

    info: dict = {"path": str(path), "type": "checkpoint file"}
    if path.suffix == ".safetensors":
        if path.name == WEIGHTS_NAME and read_model_config(path.parent).get("kind") in KINDS:
            return describe_model_dir(path.parent)
        sd, net, step = {k: torch.empty(s, device="meta") for k, s in safetensors_shapes(path).items()}, None, None
    else:
        sd, net, step = read_weights(path)
    if net is not None:
        info["type"] = "training checkpoint (its exported EMA weights)"
        info.update(_config_fields(net))
        info["preset"] = preset_of_config(net) or "-"
    elif (name := identify(sd)) is not None:
        info.update(_config_fields({"kind": presets.PRESETS[name].kind, **presets.PRESETS[name].config.to_dict()}))
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
    p = presets.PRESETS[name]
    cfg = p.config
    info = {"name": name, "type": "preset", **_config_fields({"kind": p.kind, **cfg.to_dict()})}
    info["parameters"] = _preset_params(name)
    info["file"] = p.file or "-"
    info["weights"] = weights_status(name)
    if p.sample:
        info["sampling"] = ", ".join(f"{k}={v}" for k, v in p.sample.items())
    return info


def _preset_params(name: str) -> int:
    return _count(preset_shapes(name))


def weights_status(name: str) -> str:
    """'shipped', 'cached', 'download' (released, not cached), 'none' (closest: X) or 'missing'."""
    p = presets.PRESETS[name]
    if p.shipped:
        try:
            presets.shipped_weights(p.shipped)
        except CheckpointError:
            return "missing"
        return "shipped"
    if p.file is None:
        return f"none (closest: {p.closest})" if p.closest else "none"
    return "cached" if (cache_dir() / p.file).is_file() else "download"


def preset_rows() -> list[dict]:
    """One row per preset for `adm info --presets`."""
    rows = []
    for name, p in presets.PRESETS.items():
        cfg = p.config
        size = f"{cfg.image_size}"
        if p.kind == "ADM_U":
            size = f"{cfg.small_size}->{cfg.image_size}"
        rows.append({
            "name": name, "kind": p.kind, "size": size, "classes": cfg.num_classes,
            "file": p.file or "-", "weights": weights_status(name),
        })
    return rows


# -- formatting -----------------------------------------------------------------------------------
def summary(info: dict) -> str:
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

