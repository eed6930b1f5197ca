"""Saving and loading networks: config.json + model.safetensors, presets, and official .pt files."""
from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adm.errors import CheckpointError, ConfigError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


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
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or another format): {str(e).splitlines()[0][:160]}") from None


def extract_state_dict(obj: Any, path: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """The state_dict inside an official .pt (a bare dict) or a training checkpoint ({'model': ...})."""
    if isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in ("ema", "model", "state_dict"):
            value = obj.get(key)
            if isinstance(value, dict) and value:
                if key == "ema" and not all(isinstance(v, torch.Tensor) for v in value.values()):
                    value = next(iter(value.values()))  # adm train: {rate: state_dict}, the first rate
                return extract_state_dict(value, path)
    raise CheckpointError(f"{path}: holds no state_dict of tensors")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a .pt or .safetensors file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from None
    return extract_state_dict(read_torch_file(path), path)


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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file through a temporary file and a rename, so it is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class PretrainedMixin:
    """save_pretrained / from_pretrained / strict, explained loading, shared by the three networks."""

    config_class: type
    kind: str

    # -- weights ---------------------------------------------------------------------------
    def load_checked(self, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Strict load; a mismatch names the differing keys and the preset that would fit."""
        expected = {k: v.shape for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        problems = state_dict_mismatch(expected, state_dict)
        if problems:
            from adm.presets import identify

            fit = identify(state_dict)
            hint = f"; it fits the preset {fit!r}" if fit else ""
            raise CheckpointError(
                f"{source} does not fit this {self.kind} config: {'; '.join(problems)}{hint}"
            )
        own = self.state_dict()  # type: ignore[attr-defined]
        with torch.no_grad():
            for k, v in state_dict.items():
                own[k].copy_(v.to(own[k].dtype))

    # -- saving ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None, extra: dict | None = None) -> Path:
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

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_config_dict(cls, d: dict):
        kind = d.get("kind", cls.kind)
        if kind != cls.kind:
            raise ConfigError(f"this config describes a {kind}, not a {cls.kind}")
        return cls(cls.config_class.from_dict(d))

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, config=None, device: str | torch.device = "cpu"):
        """Load from a directory (config.json + model.safetensors), a preset name, or a .pt/.safetensors file.

        For a bare official .pt, `config` (a config object or guided-diffusion flag dict) may be given;
        otherwise the preset is recognised from the state_dict's shapes.
        """
        path = Path(source)
        if path.is_dir():
            cfg_file = path / CONFIG_NAME
            if not cfg_file.is_file():
                raise CheckpointError(f"{path} has no {CONFIG_NAME}: not a saved adm model directory")
            try:
                meta = json.loads(cfg_file.read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
            meta.pop("extra", None)
            model = cls.from_config_dict(meta)
            model.load_checked(read_state_dict(path / WEIGHTS_NAME), str(path / WEIGHTS_NAME))
            return model.to(device)
        if path.suffix in (".pt", ".pth", ".safetensors") or path.exists():
            sd = read_state_dict(path)
            model = cls._model_for_state_dict(sd, config, path)
            model.load_checked(sd, str(path))
            return model.to(device)
        from adm import presets

        if isinstance(source, str) and os.sep not in source and "." not in source:
            return presets.build(source, pretrained=True, expect=cls).to(device)
        raise CheckpointError(f"no such file or directory: {source}")

    @classmethod
    def _model_for_state_dict(cls, sd: dict[str, torch.Tensor], config, path: Path):
        from adm import presets

        if config is None:
            side = path.with_name(CONFIG_NAME)
            if side.is_file():
                meta = json.loads(side.read_text())
                meta.pop("extra", None)
                return cls.from_config_dict(meta)
            name = presets.identify(sd)
            if name is None:
                raise CheckpointError(
                    f"{path}: the state_dict matches no known preset; pass its config or guided-diffusion flags"
                )
            return presets.build(name, expect=cls)
        if isinstance(config, dict):
            from adm.compat.script_util import config_from_flags

            config = config_from_flags(config, kind=cls.kind)
        return cls(config)

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
