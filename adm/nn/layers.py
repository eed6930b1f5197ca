"""Building blocks of the ADM networks (Dhariwal & Nichol 2021, section 3; Nichol & Dhariwal 2021).

Parameter names follow openai/guided-diffusion so that the released state_dicts load unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps t [N] -> [N, dim], cosines first."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:  # odd widths get a zero column, as the original
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """Group norm (32 groups) with float32 statistics whatever the input dtype, returned in the input dtype.

    float32 inputs take the plain kernel (nothing to cast). On the CPU, bfloat16 / float16 inputs do
    too: its kernels accumulate in float32 and take float32 affine parameters, which saves the two
    copies of a float32 round trip. Elsewhere low-precision inputs go through float32 as in the
    original code.
    """

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        # No autocast guard needed: autocast leaves group_norm alone on the CPU and keeps it in
        # float32 on CUDA, which is what both branches ask for anyway.
        if x.dtype == torch.float32 or x.device.type == "cpu":
            return F.group_norm(x, self.num_groups, weight, bias, self.eps)
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if w.dtype != torch.float32:  # a network converted wholesale to low precision
            w, b = w.float(), b.float()
        return self._norm(x, w, b)

    def modulate(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """AdaGN (paper section 3): GroupNorm(x) * (1 + scale) + shift, scale / shift [N, C, 1, 1].

        The norm's own affine is folded into the per-sample one, so that the normalised tensor is
        read and written once more (addcmul) instead of three times (affine, multiply, add).
        """
        w, b = self.weight[:, None, None], self.bias[:, None, None]  # [C, 1, 1]
        if x.dtype == w.dtype == scale.dtype == shift.dtype:
            s = 1 + scale
            return torch.addcmul(torch.addcmul(shift, b, s), self._norm(x, None, None), w * s)
        s = 1 + scale.float()  # low precision: fold in float32, round the [N, C, 1, 1] results once
        weight, bias = (w.float() * s).to(x.dtype), torch.addcmul(shift.float(), b.float(), s).to(x.dtype)
        return _low_precision_affine(self._norm(x, None, None), weight, bias)


def _low_precision_affine(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """h * weight + bias in bf16 / fp16, weight and bias [N, C, 1, 1].

    On the CPU a multiply and an in-place add: its broadcasting addcmul in low precision is 2-3x slower
    (BENCHMARKS.md), and the extra rounding of the product stays within the dtype's precision. Elsewhere
    the fused addcmul.
    """
    if h.device.type == "cpu":
        return (h * weight).add_(bias)
    return torch.addcmul(bias, h, weight)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero the parameters of a module (output layers start as the identity residual)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class EmbedSequential(nn.Sequential):
    """A sequence of blocks; those that take the timestep embedding receive it.

    `skip` (a decoder block's skip connection) goes to the first block, which concatenates it to x:
    under gradient checkpointing the concatenation is then recomputed, not stored.
    """

    def forward(self, x: torch.Tensor, emb: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        for i, layer in enumerate(self):
            if isinstance(layer, ResBlock):
                x = layer(x, emb, skip) if i == 0 and skip is not None else layer(x, emb)
            else:
                if i == 0 and skip is not None:
                    x = torch.cat([x, skip], dim=1)
                x = layer(x)
        return x


class Checkpointed(nn.Module):
    """Mixin: run `_forward` under activation checkpointing when enabled and training."""

    use_checkpoint: bool = False

    def forward(self, *args):
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, *args, use_reentrant=False)
        return self._forward(*args)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 convolution."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """2x downsampling: a strided 3x3 convolution or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
        else:
            assert out_channels in (None, channels), "average pooling cannot change the channel count"
            self.op = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(Checkpointed):
    """Residual block conditioned on the timestep embedding.

    With `use_scale_shift_norm` the embedding modulates the second norm (adaptive group norm,
    AdaGN(h, y) = y_s GroupNorm(h) + y_b, paper section 3); otherwise it is added. `up` / `down`
    make it a BigGAN-style resampling block. `rescale` divides the sum by sqrt(2) (Table 1 ablation).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_conv: bool = False,          # 3x3 instead of 1x1 skip convolution when channels change
        use_scale_shift_norm: bool = False,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
        rescale: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.rescale = rescale
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:  # decoder blocks: [h, skip] along channels, as the original UNet.forward
            x = torch.cat([x, skip], dim=1)
        in_norm, in_act, in_conv = self.in_layers
        h = in_act(in_norm(x))
        if self.updown:  # resample between the norm/activation and the convolution
            h, x = self.h_upd(h), self.x_upd(x)
        h = in_conv(h)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]  # [N, C or 2C, 1, 1]
        out_norm, out_act, dropout, out_conv = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_norm.modulate(h, scale, shift)
        else:
            h = out_norm(h + emb_out)
        h = out_conv(dropout(out_act(h)))
        out = self.skip_connection(x) + h
        return out * (1 / math.sqrt(2)) if self.rescale else out


def token_attention(qkv: torch.Tensor, num_heads: int, legacy: bool) -> torch.Tensor:
    """Multi-head self-attention of a token-major fused projection qkv [N, L, 3*H*C] -> [N, L, H*C].

    legacy=True: heads outermost in the 3*H*C features ([H, 3, C], most released models); False:
    q, k, v outermost ("new attention order", [3, H, C], the 64x64 model). softmax(q k^T / sqrt(C)) v
    by scaled_dot_product_attention: token-major q, k, v have unit stride along C, which the fused
    kernels (flash on CPU and CUDA, memory-efficient on CUDA) need; they never form the L x L matrix.
    """
    n, length, width = qkv.shape
    ch = width // (3 * num_heads)
    if legacy:
        q, k, v = qkv.view(n, length, num_heads, 3, ch).unbind(3)  # each [N, L, H, C]
    else:
        q, k, v = qkv.view(n, length, 3, num_heads, ch).unbind(2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [N, H, L, C]
    if length <= SHORT_ATTENTION and q.device.type == "cpu" and q.dtype in _LOW and torch.is_grad_enabled() \
            and q.requires_grad:
        out = _explicit_attention(q, k, v)
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(n, length, num_heads * ch)


# Gradients through attention on the CPU in bf16 / fp16 (training; the classifier gradient of guided
# sampling) at up to 256 tokens: the flash kernel's backward pass is 3-7x slower than two matmuls and a
# softmax (batch 64, 2 heads of 32 channels, forward + backward: 64 tokens 41 against 6 ms, 256 tokens
# 88-108 against 30-42 ms; BENCHMARKS.md). From 512 tokens on the fused kernel wins (and never forms the
# L x L matrix); forward only, it wins at every length.
SHORT_ATTENTION = 256
_LOW = (torch.bfloat16, torch.float16)


def _explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(C)) v with the L x L weights formed.

    The softmax runs in the input dtype: the CPU kernel accumulates in float32 and rounds once, so its
    output equals a float32 softmax rounded to q's dtype, without the float32 L x L copy and its cast
    (2-4x faster here).
    """
    weights = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    return weights.softmax(-1) @ v


def qkv_attention(qkv: torch.Tensor, num_heads: int, legacy: bool) -> torch.Tensor:
    """The same for a channel-major projection (the original layout), qkv [N, 3*H*C, L] -> [N, H*C, L]."""
    return token_attention(qkv.transpose(1, 2), num_heads, legacy).transpose(1, 2)


def pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 Conv1d applied to tokens x [N, L, C_in] -> [N, L, C_out] (the same weights, as a matmul)."""
    return F.linear(x, conv.weight.squeeze(-1), conv.bias)


class AttentionBlock(Checkpointed):
    """Spatial self-attention with a residual connection (Vaswani et al. 2017 over H*W positions)."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,     # if set, heads = channels // num_head_channels
        use_checkpoint: bool = False,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"channels {channels} is not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise ValueError(f"channels {channels} is not divisible by num_heads {self.num_heads}")
        self.use_checkpoint = use_checkpoint
        self.legacy = not use_new_attention_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, *spatial = x.shape
        # Token-major [N, L, C]: a view of channels-last activations, one copy of NCHW ones.
        h = self.norm(x).movedim(1, -1).reshape(n, -1, c)
        h = token_attention(pointwise(self.qkv, h), self.num_heads, self.legacy)  # [N, L, C]
        h = pointwise(self.proj_out, h).reshape(n, *spatial, c).movedim(-1, 1)  # [N, C, *spatial], a view
        return x + h


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean token attends over all positions (classifier head)."""

    def __init__(self, spatial_dim: int, embed_dim: int, num_head_channels: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spatial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim, 1)
        self.num_heads = embed_dim // num_head_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        x = x.reshape(n, c, -1)  # [N, C, L]
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)  # [N, C, L+1]
        x = (x + self.positional_embedding[None].to(x.dtype)).transpose(1, 2)  # [N, L+1, C] tokens
        # Only the first token (the mean) is read out, so only its query is computed.
        # q, k, v outermost in the projection ("new attention order").
        (w_q, w_kv), (b_q, b_kv) = (p.split([c, 2 * c]) for p in (self.qkv_proj.weight.squeeze(-1), self.qkv_proj.bias))
        q = F.linear(x[:, :1], w_q, b_q).view(n, 1, self.num_heads, -1)  # [N, 1, H, C/H]
        k, v = F.linear(x, w_kv, b_kv).view(n, -1, 2, self.num_heads, c // self.num_heads).unbind(2)  # [N, L+1, H, C/H]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # [N, H, 1, C/H]
        return F.linear(out.reshape(n, c), self.c_proj.weight.squeeze(-1), self.c_proj.bias)  # [N, output_dim]
