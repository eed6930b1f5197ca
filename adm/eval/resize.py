"""The preprocessing that the paper's TF Inception graph did inside, redone exactly in torch."""
from __future__ import annotations

import torch

INCEPTION_SIZE = 299


def _legacy_taps(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower index [out], upper index [out] and weight of the upper [out] of TF1's legacy bilinear resize."""
    # TF1 ResizeBilinear (align_corners=False, half_pixel_centers=False): src = dst * (in / out) in
    # float32, lower = floor(src), upper = min(ceil(src), in - 1), lerp = src - floor(src).
    scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    src = torch.arange(out_size, dtype=torch.float32) * scale
    lower = src.floor()
    upper = src.ceil().clamp(max=in_size - 1)
    return lower.long().to(device), upper.long().to(device), (src - lower).to(device)


def tf_resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize an [N x C x H x W] float tensor to [N x C x size] as tf.compat.v1.image.resize_bilinear does."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x  # src = dst exactly: the identity
    y0, y1, ly = _legacy_taps(h, size[0], x.device)
    x0, x1, lx = _legacy_taps(w, size[1], x.device)
    top, bottom = x[..., y0, :], x[..., y1, :]
    tl, tr, bl, br = top[..., x0], top[..., x1], bottom[..., x0], bottom[..., x1]
    # The same three float32 lerps, in the same order, as TF's compute_lerp.
    t = tl + (tr - tl) * lx
    b = bl + (br - bl) * lx
    return t + (b - t) * ly[:, None]


def to_float_nchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N x H x W x C] (C = 1 or 3) -> float32 [N x 3 x H x W] in [0, 255], grey copied to 3 channels."""
    x = images.permute(0, 3, 1, 2).float()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def inception_preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N x H x W x C] -> float32 [N x 3 x 299 x 299] in [-1, 1): TF bilinear resize, then (x - 128) / 128."""
    x = tf_resize_bilinear(to_float_nchw(images), (INCEPTION_SIZE, INCEPTION_SIZE))
    return (x - 128) / 128
