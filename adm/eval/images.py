"""Image batches to evaluate, read lazily: .npz in the paper's format, image folders, Fashion-MNIST."""
from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from adm.data.folder import GREY_MODES
from adm.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class ImageSource:
    """N uint8 images [H x W x C] (C = 1 or 3) read in batches; shape is None when sizes vary."""

    description: str
    num: int
    shape: tuple[int, int, int] | None
    fingerprint: str  # changes whenever the images may have changed (keys the feature cache)
    _batches: Callable[[int], Iterator[np.ndarray]]
    labels: list[int | None] | None = None  # class label of each image, where the source records them

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Consecutive uint8 [B x H x W x C] batches (B <= batch_size; smaller where sizes change)."""
        return self._batches(batch_size)

    def head(self, n: int) -> "ImageSource":
        """The first n images only; DataError when there are fewer than n."""
        if n < 1:
            raise DataError(f"the number of images must be at least 1, got {n}")
        if n > self.num:
            raise DataError(f"{self.description}: holds {self.num} images, fewer than the {n} asked for")
        if n == self.num:
            return self

        def batches(batch_size: int) -> Iterator[np.ndarray]:
            left = n
            for b in self._batches(min(batch_size, n)):
                yield b[:left]
                left -= len(b[:left])
                if left == 0:
                    return

        labels = None if self.labels is None else self.labels[:n]
        return ImageSource(f"{self.description}", n, self.shape, f"{self.fingerprint}:head={n}", batches, labels)


def from_array(images: np.ndarray, description: str = "array") -> ImageSource:
    """An ImageSource over an in-memory uint8 [N x H x W x C] array (C = 1 or 3)."""
    images = np.asarray(images)
    _check_array_format(images.shape, images.dtype, description)
    digest = hashlib.sha1(np.ascontiguousarray(images).view(np.uint8)).hexdigest()
    return ImageSource(description, len(images), tuple(images.shape[1:]), f"array:{digest}",
                       lambda bs: (images[i:i + bs] for i in range(0, len(images), bs)))


def _check_array_format(shape: tuple, dtype: np.dtype, what: str) -> None:
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise DataError(f"{what}: expected images as uint8 [N x H x W x C] with C = 1 or 3, got shape {tuple(shape)}")
    if dtype != np.uint8:
        raise DataError(f"{what}: expected uint8 pixels in [0, 255], got {dtype} "
                        f"(for [-1, 1] floats: ((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8))")
    if shape[0] == 0:
        raise DataError(f"{what}: holds no images")


def _file_fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def npz_keys(path: str | os.PathLike) -> list[str]:
    """Names of the arrays in an .npz file."""
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None


def _read_npy_header(f) -> tuple[tuple, bool, np.dtype] | None:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    return None


def _read_exact(f, size: int) -> bytearray:
    data = bytearray()  # writable, so torch.from_numpy of it needs no copy and gives no warning
    while len(data) < size:
        chunk = f.read(size - len(data))
        if not chunk:
            raise DataError(f"truncated .npz file: expected {size} bytes, got {len(data)}")
        data += chunk
    return data


def open_npz(path: str | os.PathLike, key: str = "arr_0") -> ImageSource:
    """The images `key` of an .npz file, streamed from the archive batch by batch (50k images need no RAM)."""
    path = Path(path)
    if key not in npz_keys(path):
        raise DataError(f"{path}: no '{key}' image array (it holds {', '.join(npz_keys(path)) or 'nothing'}); "
                        f"expected the paper's format: arr_0 = uint8 [N x H x W x C]")
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
        header = _read_npy_header(f)
    if header is None or header[1]:  # unusual .npy version or Fortran order: load it whole
        arr = np.load(path)[key]
        source = from_array(arr, f"{path}")
        source.fingerprint = _file_fingerprint(path)
        return source
    shape, _, dtype = header
    _check_array_format(shape, dtype, str(path))
    row = int(np.prod(shape[1:]))

    def batches(batch_size: int) -> Iterator[np.ndarray]:
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
            _read_npy_header(f)
            for i in range(0, shape[0], batch_size):
                n = min(batch_size, shape[0] - i)
                yield np.frombuffer(_read_exact(f, n * row), np.uint8).reshape(n, *shape[1:])

    return ImageSource(str(path), shape[0], tuple(shape[1:]), _file_fingerprint(path), batches)


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im if im.mode in ("L", "RGB") else im.convert("L" if im.mode in GREY_MODES else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    return arr[..., None] if arr.ndim == 2 else arr


MANIFEST_NAME = "samples.json"  # what `adm sample` / `adm upsample` write beside their PNGs


def _manifest_files(root: Path) -> tuple[list[Path], list[int | None]] | None:
    """The PNGs (and labels) an `adm sample` / `adm upsample` directory's samples.json lists, in key
    order; None when `root` is not such a directory. grid.png and low_res/ are not samples."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    record = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(record, dict):
        return None  # some other samples.json: read the folder as a plain folder
    try:
        record = {int(k): v for k, v in record.items()}
    except ValueError:
        raise DataError(f"{path}: its labels must be keyed by image number, got {sorted(record)[:3]}") from None
    keys = sorted(record)
    if not keys:
        raise DataError(f"{path}: lists no images")
    files = [root / f"{k:06d}.png" for k in keys]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{root}: {len(missing)} of the {len(files)} images its {MANIFEST_NAME} lists are missing "
                        f"(e.g. {missing[0].name}): an unfinished run? rerun the same command to finish it")
    return files, [record[k] for k in keys]


def open_folder(path: str | os.PathLike, allow_mixed: bool = False) -> ImageSource:
    """PNG/JPEG files under a folder (recursively, sorted by path), read with Pillow; grey stays 1 channel.

    An `adm sample` / `adm upsample` output directory (it has samples.json) gives exactly the images
    its manifest lists, with their labels: not grid.png, not the cascade's low_res/."""
    from PIL import Image

    root = Path(path)
    listed = _manifest_files(root)
    labels = None
    if listed is not None:
        files, labels = listed
        what = f"{root} (an `adm sample` directory)"
    else:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        what = str(root)
    if not files:
        raise DataError(f"{root}: no PNG or JPEG images found")
    shapes = []
    for p in files:  # headers only: a mixed folder fails before any feature is computed
        try:
            with Image.open(p) as im:
                shapes.append((im.size[1], im.size[0], 1 if im.mode in GREY_MODES else 3))
        except OSError as e:
            raise DataError(f"cannot read image {p}: {e}") from None
    shape = shapes[0]
    odd = next((i for i, s in enumerate(shapes) if s != shape), None)
    if odd is not None and not allow_mixed:
        grid = next((f for f in (files[0], files[odd]) if f.name == "grid.png"), None)
        hint = f" ({grid.name} looks like a grid of samples: move it out)" if grid is not None else ""
        raise DataError(f"{what}: images differ in size or channels ({files[0].relative_to(root)} is "
                        f"{format_shape(shape)}, {files[odd].relative_to(root)} is {format_shape(shapes[odd])})"
                        f"{hint}; pass --resize to feed each to the network at its input size anyway")
    h = hashlib.sha1()
    if listed is not None:
        h.update(f"{_file_fingerprint(root / MANIFEST_NAME)}\n".encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())

    def batches(batch_size: int) -> Iterator[np.ndarray]:
        i = 0
        while i < len(files):  # a batch never mixes shapes
            j = i + 1
            while j < len(files) and j - i < batch_size and shapes[j] == shapes[i]:
                j += 1
            yield np.stack([_load_image(p) for p in files[i:j]])
            i = j

    fingerprint = f"{root.resolve()}:{h.hexdigest()}"
    return ImageSource(str(root), len(files), shape if odd is None else None, fingerprint, batches, labels)


def format_shape(shape: tuple[int, int, int] | None) -> str:
    """Shape as text: 32x32x3, or 'of mixed sizes' for None."""
    return "of mixed sizes" if shape is None else f"{shape[0]}x{shape[1]}x{shape[2]}"


def open_fashion_mnist(split: str = "test", pad: bool = True) -> ImageSource:
    """Fashion-MNIST images, uint8 [N x 32 x 32 x 1] (zero-padded from 28; [N x 28 x 28 x 1] with pad=False)."""
    from adm.data.fashion_mnist import data_dir, load_fashion_mnist

    if split not in ("test", "train"):
        raise DataError(f"Fashion-MNIST split must be 'test' or 'train', got {split!r}")
    images = load_fashion_mnist(split)[0][..., None]
    if pad:
        images = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    source = from_array(images, f"fashion-mnist {split}")
    stem = "t10k" if split == "test" else "train"
    files = [p for p in data_dir().glob(f"{stem}-images-idx3-ubyte*") if p.is_file()]
    source.fingerprint = f"fashion-mnist:{split}:pad={pad}:{_file_fingerprint(files[0]) if files else ''}"
    return source


FASHION_MNIST_SPECS = ("fashion-mnist", "fashion-mnist:test", "fashion-mnist:train")


def open_preprocessed(spec: str | os.PathLike, image_size: int, channels: int | None = None) -> ImageSource:
    """Images exactly as training sees them: `adm.data.load_dataset(spec, image_size, channels=...)`
    (centre crop and resize, channel conversion; Fashion-MNIST zero-padded at 32), back to uint8 NHWC
    with `adm.data.to_uint8`. 'fashion-mnist' is the test set here, 'fashion-mnist:train' the training set."""
    import torch

    from adm.data import load_dataset, to_uint8

    text = str(spec)
    split = "test"
    if text in FASHION_MNIST_SPECS:
        text, split = "fashion-mnist", text.partition(":")[2] or "test"
    elif not Path(spec).exists():
        raise DataError(f"{spec}: no such file or folder (expected an .npz, an image folder or 'fashion-mnist')")
    ds = load_dataset(text, image_size, channels=channels, split=split if text == "fashion-mnist" else "train")
    n, c = len(ds), ds.channels
    if n == 0:
        raise DataError(f"{spec}: holds no images")

    def batches(batch_size: int) -> Iterator[np.ndarray]:
        for i in range(0, n, batch_size):
            yield to_uint8(torch.stack([ds[j][0] for j in range(i, min(n, i + batch_size))]))

    if text == "fashion-mnist":
        base = open_fashion_mnist(split, pad=False).fingerprint
    elif Path(spec).is_dir():
        h = hashlib.sha1()
        for p in getattr(ds, "paths", []):
            st = p.stat()
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        base = f"{Path(spec).resolve()}:{h.hexdigest()}"
    else:
        base = _file_fingerprint(Path(spec))
    labels = ds.labels.tolist() if ds.class_names else None
    return ImageSource(f"{ds.source} at {image_size}x{image_size}x{c}", n, (image_size, image_size, c),
                       f"preprocessed:{image_size}:{c}:{base}", batches, labels)


def open_images(spec: str | os.PathLike, allow_mixed: bool = False, pad: bool = True) -> ImageSource:
    """Images from an .npz (arr_0), a folder, or 'fashion-mnist[:train]' (padded to 32x32 unless pad=False)."""
    text = str(spec)
    if text in FASHION_MNIST_SPECS:
        return open_fashion_mnist(text.partition(":")[2] or "test", pad=pad)
    path = Path(spec)
    if path.is_dir():
        return open_folder(path, allow_mixed)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (expected an .npz, an image folder or 'fashion-mnist')")
    return open_npz(path)
