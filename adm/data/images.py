"""Image batches on disk: the paper's .npz format (arr_0 uint8 NHWC, arr_1 labels), PNGs and grids."""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from adm.errors import DataError
from adm.runtime import atomic_write

PathLike = str | os.PathLike


# -- tensors <-> uint8 ----------------------------------------------------------------------------
def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C], as guided-diffusion: ((x + 1) * 127.5) truncated."""
    if x.ndim != 4:
        raise ValueError(f"to_uint8 expects an [N, C, H, W] tensor, got shape {tuple(x.shape)}")
    x = ((x.detach().float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


# -- validation -----------------------------------------------------------------------------------
def check_images(images: np.ndarray, where: str = "images") -> np.ndarray:
    """Validate a uint8 [N, H, W, C] array with C = 1 or 3; raise DataError saying what is wrong."""
    if not isinstance(images, np.ndarray):
        raise DataError(f"{where}: expected a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise DataError(
            f"{where}: expected dtype uint8 (values 0..255), got {images.dtype}; "
            "convert [-1, 1] tensors with adm.data.to_uint8"
        )
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        hint = " (grey [N, H, W] arrays need a channel axis: arr[..., None])" if images.ndim == 3 else ""
        raise DataError(f"{where}: expected shape [N, H, W, C] with C = 1 or 3, got {images.shape}{hint}")
    return images


def check_labels(labels: np.ndarray, n: int, where: str = "labels") -> np.ndarray:
    """Validate class labels: n non-negative integers -> int64 [n]; raise DataError otherwise."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise DataError(f"{where}: expected integer class labels, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DataError(f"{where}: expected shape [{n}] (one label per image), got {labels.shape}")
    if n and labels.min() < 0:
        raise DataError(f"{where}: class labels must be non-negative, found {int(labels.min())}")
    return labels.astype(np.int64)


# -- .npz -----------------------------------------------------------------------------------------
def save_npz(path: PathLike, images: np.ndarray, labels: np.ndarray | Sequence[int] | None = None) -> Path:
    """Write uint8 [N, H, W, C] images (arr_0) and optional int labels (arr_1) atomically; returns the path."""
    path = Path(path)
    check_images(images)
    arrays = {"arr_0": images}
    if labels is not None:
        arrays["arr_1"] = check_labels(np.asarray(labels), images.shape[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:  # a file object, so numpy does not append ".npz" to the name
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_npz(path: PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a .npz in the paper's format -> (uint8 [N, H, W, C] images, int64 [N] labels or None)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz archive (expected a zip holding arr_0 = uint8 [N, H, W, C] images)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "arr_0" not in data.files:
                raise DataError(f"{path}: no arr_0 in the archive (found: {', '.join(data.files) or 'nothing'})")
            images = data["arr_0"]
            labels = data["arr_1"] if "arr_1" in data.files else None
    except DataError:
        raise
    except Exception as e:  # a damaged member, a pickled object array, ...
        raise DataError(f"{path}: cannot read the .npz: {e}") from e
    check_images(images, where=f"{path}: arr_0")
    if labels is not None:
        labels = check_labels(labels, images.shape[0], where=f"{path}: arr_1")
    return images, labels


# -- PNGs and grids -------------------------------------------------------------------------------
def _to_pil(image: np.ndarray) -> Image.Image:
    """uint8 [H, W], [H, W, 1] or [H, W, 3] -> a PIL image ('L' or 'RGB')."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(image), "L")
    if image.ndim == 3 and image.shape[2] == 3:
        return Image.fromarray(np.ascontiguousarray(image), "RGB")
    raise ValueError(f"expected an image of shape [H, W], [H, W, 1] or [H, W, 3], got {image.shape}")


def save_png(path: PathLike, image: np.ndarray) -> Path:
    """Write one uint8 [H, W, C] image (C = 1 or 3) as a PNG, atomically (an interrupted run leaves no
    half file); returns the path."""
    pil = _to_pil(image)
    return atomic_write(path, lambda f: pil.save(f, format="PNG"))


def make_grid(images: np.ndarray, nrow: int, pad: int = 2, pad_value: int = 0) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 [rows*(H+pad)+pad, nrow*(W+pad)+pad, C] image, nrow images a row."""
    images = np.asarray(images)
    if images.ndim == 3:  # grey without a channel axis
        images = images[..., None]
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"make_grid expects a non-empty [N, H, W, C] array, got shape {images.shape}")
    if nrow < 1:
        raise ValueError(f"nrow must be at least 1, got {nrow}")
    n, h, w, c = images.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, dtype=images.dtype)
    for i in range(n):
        top, left = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        grid[top : top + h, left : left + w] = images[i]
    return grid


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """Shorten text with '..' until it fits in `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".." if text else ""


def _add_labels(
    grid: Image.Image, h: int, w: int, pad: int, row_labels: list[str], col_labels: list[str]
) -> Image.Image:
    """A grid of HxW cells on a white canvas with row labels on the left and column labels on top."""
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    margin = 4
    # Text is placed from its bounding box (no anchors: the bitmap fallback font has none).
    text_h = max(draw.textbbox((0, 0), s, font=font)[3] for s in ["Ag", *row_labels, *col_labels])
    left = max((int(draw.textlength(s, font=font)) + 2 * margin for s in row_labels), default=0)
    top = text_h + 2 * margin if col_labels else 0
    canvas = Image.new(grid.mode, (grid.width + left, grid.height + top), "white")
    canvas.paste(grid, (left, top))
    draw = ImageDraw.Draw(canvas)
    for r, s in enumerate(row_labels):
        x0, y0, x1, y1 = draw.textbbox((0, 0), s, font=font)
        draw.text((margin, top + pad + r * (h + pad) + (h - y1 - y0) // 2), s, fill="black", font=font)
    for c, s in enumerate(col_labels):
        s = _fit(draw, s, font, w + pad)
        x0, y0, x1, y1 = draw.textbbox((0, 0), s, font=font)
        draw.text((left + pad + c * (w + pad) + (w - x1 - x0) // 2, margin), s, fill="black", font=font)
    return canvas


def save_grid(
    path: PathLike,
    images: np.ndarray,
    nrow: int,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    pad: int = 2,
) -> Path:
    """Write uint8 [N, H, W, C] images as a PNG grid of nrow columns, labels left of rows / above columns."""
    grid = make_grid(images, nrow, pad=pad)
    n, h, w = np.asarray(images).shape[:3]
    cols = min(nrow, n)
    rows = -(-n // cols)
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for {rows} rows")
    if col_labels is not None and len(col_labels) != cols:
        raise ValueError(f"{len(col_labels)} column labels for {cols} columns")
    picture = _to_pil(grid)
    if row_labels or col_labels:
        rows_text, cols_text = [str(s) for s in row_labels or []], [str(s) for s in col_labels or []]
        picture = _add_labels(picture, h, w, pad, rows_text, cols_text)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, format="PNG")
    return path
