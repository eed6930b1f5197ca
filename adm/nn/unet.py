"""The ADM UNet (Dhariwal & Nichol 2021, section 3) and its super-resolution variant ADM-U."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adm.errors import ConfigError
from adm.nn.config import ADMConfig, ADMUConfig, ClassifierConfig
from adm.nn.layers import (
    AttentionBlock,
    Downsample,
    EmbedSequential,
    GroupNorm32,
    ResBlock,
    Upsample,
    timestep_embedding,
    zero_module,
)
from adm.nn.serialization import PretrainedMixin


def check_input(x: torch.Tensor, channels: int, size: int, what: str) -> None:
    """One clear error for an input the network was not built for."""
    if x.ndim != 4:
        raise ConfigError(f"{what} expects images [N, C, H, W], got a tensor of shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ConfigError(f"{what} was built for {channels} input channels, got {x.shape[1]}")
    if x.shape[2] != size or x.shape[3] != size:
        raise ConfigError(f"{what} was built for {size}x{size} images, got {x.shape[2]}x{x.shape[3]}")


def check_labels(y: torch.Tensor | None, num_classes: int, n: int, what: str, null_class: bool = False) -> None:
    """Labels present exactly when the model is class-conditional, and in range."""
    if num_classes == 0:
        if y is not None:
            raise ConfigError(f"{what} is unconditional: it takes no class labels y")
        return
    if y is None:
        raise ConfigError(f"{what} is class-conditional ({num_classes} classes): pass labels y")
    if y.shape != (n,):
        raise ConfigError(f"labels y must have shape [{n}], got {tuple(y.shape)}")
    if y.dtype.is_floating_point:
        raise ConfigError("labels y must be an integer tensor")
    if not torch.compiler.is_compiling():
        hi = num_classes + (1 if null_class else 0)
        lo, top = int(y.min()), int(y.max())
        if lo < 0 or top >= hi:
            raise ConfigError(f"class label {lo if lo < 0 else top} out of range for {num_classes} classes (0..{num_classes - 1})")


class Encoder(nn.Module):
    """Time embedding, the UNet's downsampling half and its middle block (shared by UNet and classifier)."""

    def __init__(self, cfg: ADMConfig | ClassifierConfig, in_channels: int, keep_output_heads: bool = False):
        super().__init__()
        ch = int(cfg.channel_mult[0] * cfg.model_channels)
        emb_dim = cfg.model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(cfg.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        self.block_channels = [ch]  # channels after each input block (the skip connections)
        res_kw = dict(
            emb_channels=emb_dim,
            dropout=cfg.dropout,
            use_scale_shift_norm=cfg.use_scale_shift_norm,
            use_checkpoint=cfg.use_checkpoint,
            rescale=cfg.rescale_residuals,
        )
        attn_kw = dict(
            num_heads=cfg.num_heads,
            num_head_channels=cfg.num_head_channels,
            use_checkpoint=cfg.use_checkpoint,
            use_new_attention_order=cfg.use_new_attention_order,
        )
        res = cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, out_channels=int(mult * cfg.model_channels), **res_kw)]
                ch = int(mult * cfg.model_channels)
                if res in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, **attn_kw))
                self.input_blocks.append(EmbedSequential(*layers))
                self.block_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = (
                    ResBlock(ch, out_channels=ch, down=True, **res_kw)
                    if cfg.resblock_updown
                    else Downsample(ch, cfg.conv_resample, out_channels=ch)
                )
                self.input_blocks.append(EmbedSequential(down))
                self.block_channels.append(ch)
                res //= 2
        self.middle_block = EmbedSequential(
            ResBlock(ch, **res_kw), AttentionBlock(ch, **attn_kw), ResBlock(ch, **res_kw)
        )
        self.out_channels = ch
        self.out_resolution = res


class ADM(PretrainedMixin, nn.Module):
    """ADM: the improved UNet of "Diffusion Models Beat GANs" (model(x, t, y) -> eps [and v])."""

    config_class = ADMConfig
    kind = "ADM"

    def __init__(self, config: ADMConfig | None = None, **overrides):
        super().__init__()
        cfg = (config or self.config_class()).replace(**overrides) if overrides else (config or self.config_class())
        cfg.validate()
        self.config = cfg
        self.dtype = torch.float32
        enc = Encoder(cfg, self._input_channels())
        self.time_embed, self.input_blocks, self.middle_block = enc.time_embed, enc.input_blocks, enc.middle_block
        emb_dim = cfg.model_channels * 4
        if cfg.num_classes:
            self.label_emb = nn.Embedding(cfg.num_classes + (1 if cfg.null_class else 0), emb_dim)
        res_kw = dict(
            emb_channels=emb_dim,
            dropout=cfg.dropout,
            use_scale_shift_norm=cfg.use_scale_shift_norm,
            use_checkpoint=cfg.use_checkpoint,
            rescale=cfg.rescale_residuals,
        )
        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample
        attn_kw = dict(
            num_heads=heads_up,
            num_head_channels=cfg.num_head_channels,
            use_checkpoint=cfg.use_checkpoint,
            use_new_attention_order=cfg.use_new_attention_order,
        )
        skips = list(enc.block_channels)
        ch, res = enc.out_channels, enc.out_resolution
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                out_ch = int(mult * cfg.model_channels)
                layers: list[nn.Module] = [ResBlock(ch + skips.pop(), out_channels=out_ch, **res_kw)]
                ch = out_ch
                if res in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, **attn_kw))
                if level and i == cfg.num_res_blocks:
                    layers.append(
                        ResBlock(ch, out_channels=ch, up=True, **res_kw)
                        if cfg.resblock_updown
                        else Upsample(ch, cfg.conv_resample, out_channels=ch)
                    )
                    res *= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1))
        )

    def _input_channels(self) -> int:
        return self.config.in_channels

    @property
    def null_label(self) -> int | None:
        """The label index that means "no class" (classifier-free guidance), if the model has one."""
        return self.config.num_classes if self.config.null_class else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, C, H, W], t [N] (integer or float timesteps), y [N] labels -> [N, C or 2C, H, W]."""
        cfg = self.config
        check_input(x, self._input_channels(), cfg.image_size, type(self).__name__)
        check_labels(y, cfg.num_classes, x.shape[0], type(self).__name__, cfg.null_class)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, cfg.model_channels))
        if cfg.num_classes:
            emb = emb + self.label_emb(y)
        skips = []
        h = x.to(self.dtype)
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(h, emb, skips.pop())  # concatenates [h, skip] inside the (checkpointed) block
        return self.out(h.to(x.dtype))


class ADM_U(ADM):
    """ADM-U: the super-resolution UNet, model(x_t, t, low_res=..., y=None) (paper section 5, appendix)."""

    config_class = ADMUConfig
    kind = "ADM_U"

    def _input_channels(self) -> int:
        return 2 * self.config.in_channels

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, t: torch.Tensor, low_res: torch.Tensor | None = None, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x [N, C, H, W], low_res [N, C, h, w] (upsampled bilinearly to H, W and concatenated)."""
        cfg = self.config
        if low_res is None:
            raise ConfigError("ADM_U needs the low-resolution images: model(x, t, low_res=..., y=...)")
        check_input(x, cfg.in_channels, cfg.image_size, "ADM_U")
        check_input(low_res, cfg.in_channels, low_res.shape[-1], "ADM_U low_res")
        if low_res.shape[-1] != cfg.small_size or low_res.shape[-2] != cfg.small_size:
            raise ConfigError(
                f"ADM_U was built for {cfg.small_size}x{cfg.small_size} low-resolution inputs, "
                f"got {low_res.shape[-2]}x{low_res.shape[-1]}"
            )
        up = F.interpolate(low_res, x.shape[2:], mode="bilinear")
        return super().forward(torch.cat([x, up], dim=1), t, y)
