"""Fashion-MNIST (Xiao et al. 2017) from the Debian package dataset-fashion-mnist, read with numpy."""
from __future__ import annotations

import functools
import gzip
import os
import struct
from pathlib import Path

import numpy as np

from adm.errors import ConfigError, DataError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_DIR = "ADM_FASHION_MNIST_DIR"  # overrides DEFAULT_DIR, e.g. for files downloaded by hand
PACKAGE = "dataset-fashion-mnist"
INSTALL = f"sudo apt-get update && sudo apt-get install -y {PACKAGE}"
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
SPLITS = {"train": ("train", 60000), "test": ("t10k", 10000)}
_IDX_DTYPES = {0x08: np.uint8}  # the idx type code for unsigned bytes, the only one Fashion-MNIST uses


def data_dir() -> Path:
    """Where the files are looked for: $ADM_FASHION_MNIST_DIR, else /usr/share/datasets/fashion-mnist."""
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR)


def _find(root: Path, name: str) -> Path:
    """root/name.gz or root/name (uncompressed); DataError naming the package when neither exists."""
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"Fashion-MNIST not found: {root / (name + '.gz')} does not exist. "
        f"Install the Debian package {PACKAGE} ({INSTALL}) "
        f"or point ${ENV_DIR} at a folder holding the four idx files"
    )


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (LeCun's MNIST format, optionally gzipped) -> uint8 array of its dimensions."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e}); reinstall {PACKAGE} ({INSTALL})") from e
    # Header: two zero bytes, a type code, the number of dimensions, then each dimension (big-endian u32).
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an idx file of unsigned bytes")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated idx header")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: expected {int(np.prod(shape))} values for shape {shape}, found {data.size}")
    return data.reshape(shape)


@functools.lru_cache(maxsize=2)
def _load_cached(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split, read once per process."""
    prefix, count = SPLITS[split]
    images = read_idx(_find(Path(root), f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(Path(root), f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"Fashion-MNIST {split} files in {root} disagree: images {images.shape}, labels {labels.shape}")
    if images.shape[0] != count:
        raise DataError(f"Fashion-MNIST {split} in {root}: expected {count} images, found {images.shape[0]}")
    if labels.max(initial=0) >= len(CLASSES):
        raise DataError(f"Fashion-MNIST {split} in {root}: label {int(labels.max())} out of range 0..9")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """One split -> (uint8 [N, 28, 28] images, uint8 [N] labels in 0..9); read-only, cached."""
    if split not in SPLITS:
        raise ConfigError(f"Fashion-MNIST has splits {', '.join(SPLITS)}; got {split!r}")
    return _load_cached(str(data_dir()), split)
