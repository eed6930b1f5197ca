"""Training: the diffusion model (hybrid loss), the noisy classifier and the upsampler, with EMA,
mixed precision, gradient accumulation, DDP under torchrun, and bit-exact resume.

`adm.train.state` (the checkpoint format) is imported without the loop; the rest on first use."""
from __future__ import annotations

import importlib

_EXPORTS = {"TrainConfig": "config", "BatchOrder": "data", "TensorData": "data", "load_tensor_data": "data",
            "EMA": "ema", "TrainingDiverged": "loop", "train": "loop"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"adm.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'adm.train' has no attribute {name!r}")


__all__ = list(_EXPORTS)
