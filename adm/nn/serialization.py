"""The networks' file formats: config.json + model.safetensors directories, state_dicts in .pt and
.safetensors files, strict loading with explained mismatches.

This module knows no presets, downloads or training runs: `from_pretrained` hands its source to the
loader that `adm.hub` registers (`set_loader`), which resolves preset names, run directories, official
.pt files and training checkpoints, and comes back here for the formats.
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from adm.errors import CheckpointError, ConfigError
from adm.runtime import atomic_write_bytes

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# -- files ------------------------------------------------------------------------------------------
def read_torch_file(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True; unreadable or code-carrying files raise CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled objects other than tensors "
            f"(loading it could run code); only weights are accepted ({str(e).splitlines()[0][:120]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or another format): "
                              f"{str(e).splitlines()[0][:160]}") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj: Any, path: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """The state_dict of an official .pt (a bare dict of tensors) or of a {'state_dict' | 'model': ...}
    wrapper; adm's own training checkpoints are read by adm.train.state."""
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if _is_state_dict(obj.get(key)):
                return obj[key]
    raise CheckpointError(f"{path}: holds no state_dict of tensors")


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from None


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """key -> shape of a safetensors file, read from its header only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state_dict in a .safetensors or .pt file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return extract_state_dict(read_torch_file(path), path)


def read_model_config(directory: str | os.PathLike) -> dict:
    """config.json of a directory as a dict ({} when absent); invalid JSON raises CheckpointError."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def is_model_dir(path: str | os.PathLike) -> bool:
    """A save_pretrained directory: config.json naming a network kind, and model.safetensors."""
    from adm.nn.config import KINDS

    path = Path(path)
    return path.is_dir() and (path / WEIGHTS_NAME).is_file() and read_model_config(path).get("kind") in KINDS


def state_dict_mismatch(expected: dict[str, torch.Size], got: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between the keys/shapes a model expects and a state_dict."""
    problems = []
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [k for k in expected if k in got and tuple(got[k].shape) != tuple(expected[k])]
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    for k in shapes[:3]:
        problems.append(f"{k}: checkpoint {tuple(got[k].shape)} vs model {tuple(expected[k])}")
    if len(shapes) > 3:
        problems.append(f"... and {len(shapes) - 3} more shape mismatches")
    return problems


# -- the loader that from_pretrained uses (registered by adm.hub) -------------------------------------
_LOADER: Callable[..., nn.Module] | None = None


def set_loader(loader: Callable[..., nn.Module]) -> None:
    """Register loader(source, kinds=(kind,), config=...) -> network, used by from_pretrained."""
    global _LOADER
    _LOADER = loader


class PretrainedMixin:
    """save_pretrained / from_pretrained / strict, explained loading, shared by the three networks."""

    config_class: type
    kind: str

    def load_checked(self, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Strict load; a mismatch names the differing keys."""
        expected = {k: v.shape for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        problems = state_dict_mismatch(expected, state_dict)
        if problems:
            raise CheckpointError(f"{source} does not fit this {self.kind} config: {'; '.join(problems)}")
        own = self.state_dict()  # type: ignore[attr-defined]
        with torch.no_grad():
            for k, v in state_dict.items():
                own[k].copy_(v.to(own[k].dtype))

    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None,
                        extra: dict | None = None) -> Path:
        """Write config.json and model.safetensors (optionally cast, e.g. to float16)."""
        from safetensors.torch import save

        directory = Path(directory)
        sd = {
            k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).contiguous().cpu()
            for k, v in self.state_dict().items()  # type: ignore[attr-defined]
        }
        meta = {"kind": self.kind, **self.config.to_dict()}  # type: ignore[attr-defined]
        if extra:
            meta["extra"] = extra
        atomic_write_bytes(directory / WEIGHTS_NAME, save(sd, metadata={"kind": self.kind}))
        atomic_write_bytes(directory / CONFIG_NAME, (json.dumps(meta, indent=2) + "\n").encode())
        return directory

    @classmethod
    def from_config_dict(cls, d: dict):
        kind = d.get("kind", cls.kind)
        if kind != cls.kind:
            raise ConfigError(f"this config describes a {kind}, not a {cls.kind}")
        return cls(cls.config_class.from_dict(d))

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, config=None, device: str | torch.device = "cpu"):
        """Load from a directory (config.json + model.safetensors), a training run directory, a preset
        name (its released or shipped weights), or a .pt / .safetensors file (official or from training).

        For a bare official .pt, `config` (a config object or guided-diffusion flag dict) may be given;
        otherwise the preset is recognised from the state_dict's shapes.
        """
        if _LOADER is None:  # adm.hub registers it; `import adm` imports adm.hub
            raise RuntimeError("adm.hub is not imported: import adm first")
        return _LOADER(source, kinds=cls._kinds(), config=config).to(device)

    @classmethod
    def _kinds(cls) -> tuple[str, ...]:
        """This class's kind and its subclasses' (an ADM_U is an ADM)."""
        kinds, todo = [], [cls]
        while todo:
            c = todo.pop(0)
            if getattr(c, "kind", None) and c.kind not in kinds:
                kinds.append(c.kind)
            todo += c.__subclasses__()
        return tuple(kinds)

    # -- guided-diffusion's mixed precision: body convolutions in float16, the rest in float32 --
    def convert_to_fp16(self) -> None:
        self._convert_body(torch.float16)

    def convert_to_fp32(self) -> None:
        self._convert_body(torch.float32)

    def _convert_body(self, dtype: torch.dtype) -> None:
        for name in ("input_blocks", "middle_block", "output_blocks"):
            part = getattr(self, name, None)
            for m in part.modules() if part is not None else ():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    m.to(dtype)
        self.dtype = dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # type: ignore[attr-defined]
