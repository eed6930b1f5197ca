"""Training data as a torch Dataset: Fashion-MNIST, image folders and .npz arrays, preprocessed alike.

Augmentation (random flips) is the training loop's, drawn from its own saved generator."""
from __future__ import annotations

import operator
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from adm.data import fashion_mnist
from adm.data.folder import FolderIndex, describe_error, report_skipped, scan_folder
from adm.data.images import load_npz
from adm.data.preprocess import pad_to, preprocess_array, preprocess_pil, to_tensor
from adm.errors import ConfigError, DataError

FASHION_MNIST_NAMES = ("fashion-mnist", "fashion_mnist", "fashionmnist")


class ImageDataset(Dataset):
    """Items (x, y): x float32 [C, H, W] in [-1, 1], y int64 class index (0 when unlabelled)."""

    def __init__(
        self,
        labels: np.ndarray,           # int64 [N] class indices (zeros when unlabelled)
        class_names: list[str],       # one name per class; empty when unlabelled
        channels: int,                # 1 (grey) or 3 (RGB)
        image_size: int,              # output height and width
        source: str = "",             # where the data came from, for messages
    ):
        self.labels = labels
        self.class_names = list(class_names)
        self.channels = channels
        self.image_size = image_size
        self.source = source

    @property
    def num_classes(self) -> int:
        """Number of classes; 0 when the data are unlabelled."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item index -> (float32 [C, H, W] in [-1, 1], int64 [] label)."""
        index = operator.index(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        arr, label = self._load(index)
        return to_tensor(arr), torch.tensor(label, dtype=torch.int64)

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        """One preprocessed image uint8 [S, S, C] and its label."""
        raise NotImplementedError

    def __repr__(self) -> str:
        classes = f"{self.num_classes} classes" if self.num_classes else "unlabelled"
        return (
            f"{type(self).__name__}({self.source!r}, {len(self)} images, "
            f"{self.channels}x{self.image_size}x{self.image_size}, {classes})"
        )


class ArrayImageDataset(ImageDataset):
    """Images held in memory as uint8 [N, H, W, C] (Fashion-MNIST, .npz files)."""

    def __init__(self, images: np.ndarray, *args, pad: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.images = images  # uint8 [N, H, W, C]
        self.pad = pad  # pad with the background (0) to image_size instead of resizing

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        arr = self.images[index]
        if self.pad:
            arr = pad_to(arr, self.image_size, value=0)
        return preprocess_array(arr, self.image_size, self.channels), int(self.labels[index])


class FolderImageDataset(ImageDataset):
    """Image files decoded on access; an unreadable file is reported and replaced by the next one."""

    def __init__(self, index: FolderIndex, *args, on_error: str = "skip", **kwargs):
        super().__init__(*args, **kwargs)
        self.paths = index.paths
        self.skipped = index.skipped  # (path, reason) of every file left out
        self.on_error = on_error
        self._undecodable: set[int] = set()  # reported once, then passed over

    def _decode(self, index: int) -> np.ndarray | None:
        """One file -> uint8 [S, S, C]; None (reported) or DataError when it cannot be decoded."""
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                image.load()  # the first frame of an animation
                return preprocess_pil(image, self.image_size, self.channels)
        except Exception as e:
            why = describe_error(e, path)
            if self.on_error == "raise":
                raise DataError(f"{path}: unreadable image ({why})") from e
            self._undecodable.add(index)
            self.skipped.append((path, why))
            report_skipped(self.skipped[-1:], self.source)
            return None

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        # A file that passed the index-time check but fails to decode is replaced by the next readable
        # one together with that one's own label, so an image never carries another image's label.
        for k in range(len(self)):
            i = (index + k) % len(self)
            arr = None if i in self._undecodable else self._decode(i)
            if arr is not None:
                return arr, int(self.labels[i])
        raise DataError(f"{self.source}: none of the {len(self)} images can be decoded")


def load_dataset(
    source: str | os.PathLike,
    image_size: int,
    *,
    channels: int | None = None,
    split: str = "train",
    on_error: str = "skip",
    class_cond: bool = True,
) -> ImageDataset:
    """'fashion-mnist', an image folder or a .npz -> dataset of (float32 [C, S, S] in [-1, 1], int64 label).

    channels=None keeps the source's own: 1 for Fashion-MNIST, C of an .npz, and for a folder 1 when
    every image is grey (PIL mode L, LA, I, I;16, 1, read from the headers), else 3.
    """
    try:
        size = 0 if isinstance(image_size, bool) else operator.index(image_size)
    except TypeError:
        size = 0
    if size < 1:
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
    image_size = size
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1 (grey), 3 (RGB) or None (the source's own), got {channels!r}")
    if on_error not in ("skip", "raise"):
        raise ConfigError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    common = dict(image_size=image_size)
    if str(source).lower() in FASHION_MNIST_NAMES:
        return _fashion_mnist(split, channels or 1, class_cond, common)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (expected an image folder, a .npz file or 'fashion-mnist')")
    if split != "train":
        raise ConfigError(f"split={split!r} applies to fashion-mnist only; give the folder or file of that split")
    if path.is_dir():
        index = scan_folder(path, on_error=on_error)
        labels = np.asarray(index.labels if class_cond else [0] * len(index.paths), dtype=np.int64)
        names = index.class_names if class_cond else []
        # channels=None: the data's own, from the files' headers (1 when every image is grey, else 3)
        return FolderImageDataset(index, labels, names, channels or index.channels, source=str(path),
                                  on_error=on_error, **common)
    if path.suffix.lower() == ".npz" or zipfile.is_zipfile(path):
        images, labels = load_npz(path)
        if labels is None or not class_cond:
            labels, names = np.zeros(len(images), dtype=np.int64), []
        else:
            names = [str(i) for i in range(int(labels.max(initial=-1)) + 1)]
        if len(images) == 0:
            raise DataError(f"{path}: holds no images")
        return ArrayImageDataset(images, labels, names, channels or images.shape[-1], source=str(path), **common)
    raise DataError(f"{path}: not an image folder or a .npz file")


def _fashion_mnist(split: str, channels: int, class_cond: bool, common: dict) -> ArrayImageDataset:
    """Fashion-MNIST 28x28 grey: padded with the background to 32x32, resized to other sizes."""
    images, labels = fashion_mnist.load_fashion_mnist(split)
    names = list(fashion_mnist.CLASSES) if class_cond else []
    labels = labels.astype(np.int64) if class_cond else np.zeros(len(labels), dtype=np.int64)
    return ArrayImageDataset(
        images[..., None], labels, names, channels, source=f"fashion-mnist ({split})",
        pad=common["image_size"] == 32, **common,
    )  # fmt: skip
