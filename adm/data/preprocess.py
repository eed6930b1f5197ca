"""Preprocessing as in guided-diffusion: BigGAN-style crop and resize, channel conversion, flips."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image



def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL image (palette, alpha, 16-bit, CMYK, ...) to 'L' (channels=1) or 'RGB' (3)."""
    mode = "L" if channels == 1 else "RGB"
    if image.mode == mode:
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I") and mode == "L":
        # 16/32-bit grey: PIL clips instead of scaling, so rescale to 8 bits by hand.
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(arr * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    return image.convert(mode)


def center_crop_resize(image: Image.Image, image_size: int) -> np.ndarray:
    """BigGAN-style resize then center crop of a PIL image -> uint8 [S, S, C] (C=1 for 'L')."""
    # Halve with a box filter while the short side is at least twice the target (anti-aliasing),
    # then one bicubic resize so the short side equals image_size, then crop the centre.
    while min(image.size) >= 2 * image_size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.Resampling.BOX)
    scale = image_size / min(image.size)
    new_size = tuple(max(image_size, round(s * scale)) for s in image.size)
    image = image.resize(new_size, resample=Image.Resampling.BICUBIC)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return np.ascontiguousarray(arr[top : top + image_size, left : left + image_size])


def preprocess_pil(image: Image.Image, image_size: int, channels: int) -> np.ndarray:
    """A decoded PIL image -> uint8 [S, S, channels], converted first, then cropped and resized."""
    return center_crop_resize(to_mode(image, channels), image_size)


def preprocess_array(arr: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """One uint8 [H, W, C] image (C=1 or 3) -> uint8 [S, S, channels]; a no-op when it already fits."""
    if arr.shape[0] == arr.shape[1] == image_size and arr.shape[2] == channels:
        return arr
    if arr.shape[0] == arr.shape[1] == image_size and arr.shape[2] == 1 and channels == 3:
        return np.repeat(arr, 3, axis=2)  # same as PIL's L -> RGB, without the round trip
    image = Image.fromarray(arr[:, :, 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")
    return preprocess_pil(image, image_size, channels)


def pad_to(arr: np.ndarray, image_size: int, value: int = 0) -> np.ndarray:
    """Pad a uint8 [H, W, C] image evenly on all sides to [S, S, C] with a constant (the background)."""
    dh, dw = image_size - arr.shape[0], image_size - arr.shape[1]
    if dh < 0 or dw < 0:
        raise ValueError(f"cannot pad a {arr.shape[0]}x{arr.shape[1]} image to {image_size}x{image_size}")
    pads = ((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2), (0, 0))
    return np.pad(arr, pads, mode="constant", constant_values=value)


def _levels() -> torch.Tensor:
    """float32 [256]: level u -> u / 127.5 - 1, nudged up one ulp where float32 rounding would make
    to_uint8's truncation ((x + 1) * 127.5 -> uint8) return u - 1, so data survive the round trip."""
    u = torch.arange(256, dtype=torch.float32)
    x = u / 127.5 - 1.0
    low = ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8).to(torch.float32) != u
    return torch.where(low, torch.nextafter(x, torch.tensor(2.0)), x)  # changes 63 levels by < 6e-8


_LEVELS = _levels()


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, C] -> float32 [C, H, W] in [-1, 1]: u / 127.5 - 1 as guided-diffusion (to 1 ulp)."""
    arr = np.ascontiguousarray(arr) if arr.flags.writeable else np.array(arr)  # torch wants writable memory
    return _LEVELS[torch.from_numpy(arr).permute(2, 0, 1).contiguous().long()]


# -- reproducible flips ---------------------------------------------------------------------------
