"""One loader for every way a user names a network: a preset (its released, shipped or given weights),
a saved model directory, a training run directory, a .safetensors / .pt file (official, converted or
an `adm train` checkpoint), with an optional config or guided-diffusion flags for a bare state_dict.

`load(source, kinds)` returns a `Loaded`: the network (float32 as stored, CPU) and what is known of it
(preset, class names, training step). `ADM.from_pretrained` and the command line both come here.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from adm.errors import CheckpointError, ConfigError
from adm.hub import presets
from adm.hub.download import download
from adm.nn import KINDS, build, config_from_dict
from adm.nn.serialization import (
    WEIGHTS_NAME,
    extract_state_dict,
    is_model_dir,
    read_model_config,
    read_state_dict,
    read_torch_file,
)
from adm.train.state import exported_weights, list_checkpoints


@dataclass
class Loaded:
    """A network with what is known about where it came from."""

    model: nn.Module
    source: str                               # how the user named it (recorded with samples)
    preset: str | None = None                 # the preset it is (for the paper's sampling settings)
    class_names: list[str] = field(default_factory=list)
    step: int | None = None                   # training step, for adm's own runs
    extra: dict = field(default_factory=dict)  # what config.json's "extra" records (training settings)

    def sample_settings(self) -> dict:
        """The paper's (or the demo's) sampling settings of its preset ({} when unknown)."""
        return dict(presets.PRESETS[self.preset].sample) if self.preset in presets.PRESETS else {}


# -- presets ---------------------------------------------------------------------------------------
def preset_weights(name: str) -> Path:
    """The weights file of a preset: shipped in the package, or the verified download of its release."""
    p = presets.get(name)
    if p.shipped:
        return Path(str(presets.shipped_weights(p.shipped)))
    if p.file is None:
        raise CheckpointError(f"OpenAI released no weights for {name}; the closest released preset is {p.closest!r}")
    return download(p.url, p.file, sha256=p.sha256)


def build_preset(name: str, pretrained: bool | str | os.PathLike = False, **overrides) -> nn.Module:
    """Preset `name` with random weights, or its weights: True = shipped / released, a path = that file."""
    p = presets.get(name)
    model = build(p.config.replace(**overrides) if overrides else p.config)
    if pretrained:
        path = preset_weights(name) if pretrained is True else Path(pretrained)
        load_weights(model, read_state_dict(path), str(path))
    return model


_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {}


def preset_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """key -> shape of a preset's state_dict (built on the meta device: no memory)."""
    if name not in _SHAPES:
        with torch.device("meta"):
            model = build(presets.get(name).config)
        _SHAPES[name] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return _SHAPES[name]


def identify(state_dict: dict[str, torch.Tensor], kinds: tuple[str, ...] = KINDS) -> str | None:
    """The preset (released ones first) whose keys and shapes equal this state_dict's, else None."""
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    ordered = sorted(presets.PRESETS.values(), key=lambda p: p.file is None)
    return next((p.name for p in ordered if p.kind in kinds and preset_shapes(p.name) == got), None)


_IGNORED = ("diffusion", "dropout", "use_checkpoint", "kind", "extra")


def preset_of_config(config: dict) -> str | None:
    """The preset whose network config equals this dict's (diffusion settings and dropout aside)."""
    cfg = {k: v for k, v in config.items() if k not in _IGNORED}
    for name, p in presets.PRESETS.items():
        d = {k: v for k, v in p.config.to_dict().items() if k not in _IGNORED}
        if p.kind == config.get("kind") and d == cfg:
            return name
    return None


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Strict load; a mismatch names the differing keys and the preset that the weights would fit."""
    try:
        model.load_checked(state_dict, source)
    except CheckpointError as e:
        fit = identify(state_dict)
        raise CheckpointError(f"{e}; it fits the preset {fit!r}" if fit else str(e)) from None


# -- files and directories ---------------------------------------------------------------------------
def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict | None, int | None]:
    """(state_dict, network config dict or None, training step or None) of a .pt / .safetensors file."""
    if path.suffix == ".safetensors":
        return read_state_dict(path), None, None
    obj = read_torch_file(path)
    found = exported_weights(obj)
    if found is not None:
        net, sd, step = found
        return sd, net, step
    return extract_state_dict(obj, path), None, None


def _step_of(path: Path) -> int:
    nums = re.findall(r"\d+", path.name)
    return int(nums[-1]) if nums else -1


def model_dirs_in(run_dir: Path, kinds: tuple[str, ...] | None = None) -> list[Path]:
    """Saved model directories in a training run directory, best first: RUN_DIR/model (the exported
    EMA weights), then the other EMA exports, then by step."""
    run_dir = Path(run_dir)
    found = [p for p in sorted(run_dir.rglob(WEIGHTS_NAME)) if len(p.relative_to(run_dir).parts) <= 4]
    dirs = [p.parent for p in found if is_model_dir(p.parent)]
    if kinds is not None:
        dirs = [d for d in dirs if read_model_config(d).get("kind") in kinds]

    def rank(d: Path) -> tuple:
        rel = str(d.relative_to(run_dir)).lower()
        return (rel == "model", "ema" in rel, _step_of(d), d.stat().st_mtime)

    return sorted(dirs, key=rank, reverse=True)


def _expect(kind: str, kinds: tuple[str, ...], what: str, source) -> None:
    if kind not in kinds:
        raise ConfigError(f"{what} {source} is a {kind}; expected {' or '.join(kinds)}")


def _config_object(config, kinds: tuple[str, ...]):
    """A config object from a config object, a config dict with "kind", or guided-diffusion flags."""
    if config is None or not isinstance(config, dict):
        return config
    if "kind" in config:
        return config_from_dict(config)
    from adm.compat.script_util import config_from_flags  # flags are the compatibility layer's language

    return config_from_flags(config, kind=kinds[0])


def _from_model_dir(d: Path, kinds: tuple[str, ...], what: str) -> Loaded:
    meta = read_model_config(d)
    _expect(meta["kind"], kinds, what, d)
    extra = meta.pop("extra", None) or {}
    model = build(config_from_dict(meta))
    load_weights(model, read_state_dict(d / WEIGHTS_NAME), str(d / WEIGHTS_NAME))
    preset = extra.get("preset") if extra.get("preset") in presets.PRESETS else preset_of_config(meta)
    return _with_record(model, str(d), preset, extra)


def _with_record(model: nn.Module, source: str, preset: str | None, extra: dict | None) -> Loaded:
    """A Loaded network with what its config.json's "extra" records (training step, class names, ...)."""
    extra = dict(extra or {})
    step = extra.get("step") if isinstance(extra.get("step"), int) else None
    return Loaded(model, source, preset, [str(n) for n in extra.get("class_names") or []], step, extra)


def _from_run_dir(d: Path, kinds: tuple[str, ...], what: str) -> Loaded:
    """The exported weights of a training run, else its latest checkpoint's."""
    dirs = model_dirs_in(d, kinds)
    if dirs:
        loaded = _from_model_dir(dirs[0], kinds, what)
        loaded.source = str(d)
        return loaded
    checkpoints = list_checkpoints(d)
    if checkpoints:
        return _from_file(checkpoints[-1][1], kinds, None, what)
    want = f"{' or '.join(kinds)} " if kinds != KINDS else ""
    raise CheckpointError(
        f"{d} holds no saved {want}model (a directory with config.json and {WEIGHTS_NAME}, "
        "or a training run directory with an exported one or a checkpoint)"
    )


def _from_file(path: Path, kinds: tuple[str, ...], config, what: str) -> Loaded:
    side = read_model_config(path.parent)
    if config is None and side.get("kind") in KINDS and path.name == WEIGHTS_NAME:
        return _from_model_dir(path.parent, kinds, what)
    sd, net, step = read_weights(path)
    preset = None
    if config is not None:
        cfg = _config_object(config, kinds)
        _expect(cfg.kind, kinds, what, path)
    elif net is not None:
        _expect(net["kind"], kinds, what, path)
        cfg = config_from_dict(net)
        preset = preset_of_config(net)
    elif side.get("kind") in KINDS:  # a state_dict beside a config.json
        side.pop("extra", None)
        cfg = config_from_dict(side)
        _expect(cfg.kind, kinds, what, path)
    else:
        preset = identify(sd, KINDS)
        if preset is None:
            raise CheckpointError(
                f"{path}: its weights match no known preset; pass its guided-diffusion flags "
                f"(e.g. --flags \"$MODEL_FLAGS\") or a preset name"
            )
        _expect(presets.PRESETS[preset].kind, kinds, what, f"{path} ({preset})")
        cfg = presets.PRESETS[preset].config
    model = build(cfg)
    load_weights(model, sd, str(path))
    return Loaded(model, str(path), preset, step=step)


def _looks_like_name(text: str) -> bool:
    return os.sep not in text and "/" not in text and "." not in text


def load(source: str | os.PathLike | None, kinds: tuple[str, ...] = KINDS, *, config=None,
         checkpoint: str | os.PathLike | None = None, what: str = "model") -> Loaded:
    """Load a network; every bad source raises one AdmError line.

    source: a preset name, a saved model directory, a run directory or a weights file (None: `checkpoint`);
    kinds: the acceptable network kinds (the first is what guided-diffusion flags build);
    config: a config object, a config dict with "kind" or guided-diffusion flags, for a bare state_dict;
    checkpoint: the weights of a preset given as `source` (instead of its released ones);
    what: how errors name this model (e.g. "--classifier").
    """
    if source is None and checkpoint is None:
        raise ConfigError(f"no {what} given: pass a preset, a model directory or a checkpoint")
    if source is not None and not os.path.exists(source) and isinstance(source, str) and _looks_like_name(source):
        name = presets.get(source).name
        _expect(presets.PRESETS[name].kind, kinds, what, repr(source) + " (preset)")
        if config is not None:
            raise ConfigError(f"{what}: flags apply to a .pt checkpoint, not to the preset {source!r}")
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise CheckpointError(f"{what} checkpoint not found: {checkpoint}")
        model = build_preset(name, pretrained=checkpoint if checkpoint is not None else True)
        if checkpoint is None and presets.PRESETS[name].shipped:  # adm's own weights record how they were trained
            return _with_record(model, name, name, read_model_config(preset_weights(name).parent).get("extra"))
        return Loaded(model, f"{name}:{checkpoint}" if checkpoint is not None else name, name)
    path = Path(source if source is not None else checkpoint)
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}")
    if path.is_dir():
        if config is not None:
            raise ConfigError(f"{what}: flags apply to a .pt checkpoint, not to the directory {path}")
        return _from_model_dir(path, kinds, what) if is_model_dir(path) else _from_run_dir(path, kinds, what)
    return _from_file(path, kinds, config, what)


def load_network(source, kinds: tuple[str, ...] = KINDS, config=None) -> nn.Module:
    """The network of load() alone (what from_pretrained returns)."""
    return load(source, kinds, config=config).model


def for_inference(loaded: Loaded, device: torch.device | str = "cpu") -> Loaded:
    """The network in float32, in eval mode, without gradients, on `device`."""
    model = loaded.model
    if isinstance(getattr(model, "dtype", None), torch.dtype) and model.dtype != torch.float32:
        model.convert_to_fp32()
    loaded.model = model.float().to(device).eval().requires_grad_(False)
    return loaded
