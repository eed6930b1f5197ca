"""Training data as tensors, and a batch order that is a pure function of (seed, epoch, position).

Data sets that fit (Fashion-MNIST: 60k x 32 x 32 bytes) are held whole as uint8 on the training
device and indexed there: no loader, no copies, and the order is exactly reproducible on resume.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from adm.errors import ConfigError, DataError

# Data sets above this many bytes (as uint8) are refused in memory; a streaming loader is future work.
MAX_IN_MEMORY_BYTES = 16 * 2**30


@dataclass
class TensorData:
    """Images uint8 [N, C, H, W], labels long [N] and the number of classes (0: unlabelled)."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int = 0
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> "TensorData":
        return TensorData(self.images.to(device), self.labels.to(device), self.num_classes, self.class_names)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x float [n, C, H, W] in [-1, 1], y long [n]) for indices idx [n] (on the data's device)."""
        x = self.images[idx].float().div_(127.5).sub_(1.0)
        return x, self.labels[idx]


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> the nearest uint8 levels [0, 255], same layout (how data are held for training)."""
    return ((x.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def load_tensor_data(source: str, image_size: int, channels: int | None, class_cond: bool = True) -> TensorData:
    """Load a data set (fashion-mnist, image folder, .npz) whole, resized to image_size with `channels`
    (None: the data's own)."""
    from adm import data as adm_data

    if source not in ("fashion-mnist",) and not Path(source).exists():
        raise DataError(f"data not found: {source} (give an image folder, an .npz file or 'fashion-mnist')")
    ds = adm_data.load_dataset(source, image_size, channels=channels, split="train", class_cond=class_cond)
    n = len(ds)
    if n == 0:
        raise DataError(f"{source}: holds no images")
    nbytes = n * (channels or 3) * image_size * image_size
    if nbytes > MAX_IN_MEMORY_BYTES:
        raise DataError(
            f"{source}: {n} images of {image_size}x{image_size} need {nbytes / 2**30:.1f} GiB in memory "
            f"(limit {MAX_IN_MEMORY_BYTES / 2**30:.0f} GiB); use a smaller image size or a subset"
        )
    images, labels = _materialise(ds, n)
    num_classes = int(getattr(ds, "num_classes", 0) or 0)
    names = tuple(getattr(ds, "class_names", ()) or ())
    if (channels and images.shape[1] != channels) or images.shape[2] != image_size or images.shape[3] != image_size:
        raise DataError(
            f"{source}: the loader returned images of shape {tuple(images.shape[1:])}, "
            f"expected ({channels or 'C'}, {image_size}, {image_size})"
        )
    return TensorData(images, labels, num_classes, names)


def _materialise(ds, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All items of a map-style data set as (uint8 [N, C, H, W], long [N]), read with a few workers."""
    import os

    from torch.utils.data import DataLoader

    workers = min(8, max(0, (os.cpu_count() or 1) - 1)) if n > 5000 else 0
    loader = DataLoader(ds, batch_size=512, shuffle=False, num_workers=workers)
    xs, ys = [], []
    for x, y in loader:
        xs.append(quantize(x))
        ys.append(torch.as_tensor(y, dtype=torch.long).reshape(-1))
    if not xs:
        raise DataError("the data set holds no readable images")
    return torch.cat(xs), torch.cat(ys)


class BatchOrder:
    """Global batch indices for each step: epoch e is randperm(N) seeded by (seed, e); the last
    incomplete batch of an epoch is dropped. Position = (epoch, batch in epoch) = divmod(step)."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device | str = "cpu"):
        if n < batch_size:
            raise ConfigError(f"the data set holds {n} images, fewer than the batch size {batch_size}")
        self.n, self.batch_size, self.seed, self.device = n, batch_size, seed, torch.device(device)
        self.batches_per_epoch = n // batch_size
        self._epoch, self._perm = -1, None

    def position(self, step: int) -> dict[str, int]:
        """{"epoch", "batch"} of the batch that step `step` trains on."""
        epoch, batch = divmod(step, self.batches_per_epoch)
        return {"epoch": epoch, "batch": batch}

    def indices(self, step: int) -> torch.Tensor:
        """The global batch of step `step`: long [batch_size] on the device."""
        epoch, batch = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.n, generator=g).to(self.device)
            self._epoch = epoch
        return self._perm[batch * self.batch_size : (batch + 1) * self.batch_size]
