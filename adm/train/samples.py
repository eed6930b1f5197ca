"""Sample grids during training: a short DDIM run of the EMA model, written as a PNG."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adm.diffusion.process import Diffusion
from adm.data.images import save_grid, to_uint8
from adm.sampling import generator_noise, sample_ddim
from adm.train.data import TensorData

COLUMNS = 8


@torch.no_grad()
def sample_grid(model: nn.Module, trainer: str, data: TensorData, path: Path, steps: int = 25,
                seed: int = 0, autocast=contextlib.nullcontext) -> Path:
    """Write a grid: one row per class (up to 10) for class-conditional models, else 4 rows; for an
    upsampler, rows of low-res input (nearest-upsampled), sample and original."""
    cfg = model.config
    device = next(model.parameters()).device
    diffusion = Diffusion.from_config(cfg.diffusion, timestep_respacing=f"ddim{steps}")
    gen = torch.Generator(device).manual_seed(seed)
    size, ch = cfg.image_size, cfg.in_channels
    row_labels = None
    if trainer == "upsampler":
        idx = torch.arange(min(COLUMNS, len(data)), device=data.images.device)
        x0, y = data.batch(idx)
        x0, y = x0.to(device), y.to(device)
        low = F.interpolate(x0, size=(cfg.small_size, cfg.small_size), mode="area")
        kwargs = {"low_res": low, **({"y": y} if cfg.num_classes else {})}
        n = len(idx)
        row_labels = ["low-res", "sample", "original"]
    elif cfg.num_classes:
        rows = min(cfg.num_classes, 10)
        y = torch.arange(rows, device=device).repeat_interleave(COLUMNS)
        kwargs, n = {"y": y}, len(y)
        names = list(data.class_names) if data.class_names else [str(i) for i in range(rows)]
        row_labels = names[:rows]
    else:
        n, kwargs = 4 * COLUMNS, {}
    noise = generator_noise(gen)
    x_T = torch.randn((n, ch, size, size), generator=gen, device=device)

    def fn(x, t, **kw):
        with autocast():
            return model(x, t, **kw).float()

    was_training = model.training
    model.eval()
    try:
        x = sample_ddim(fn, diffusion, x_T, noise=noise, model_kwargs=kwargs)
    finally:
        model.train(was_training)
    if trainer == "upsampler":
        up = F.interpolate(kwargs["low_res"], size=(size, size), mode="nearest")
        x = torch.cat([up, x, x0])
    images = to_uint8(x)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(path, images, nrow=COLUMNS if trainer != "upsampler" else n, row_labels=row_labels)
    return path
