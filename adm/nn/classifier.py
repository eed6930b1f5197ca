"""The noisy-image classifier p(y | x_t) used for guidance (Dhariwal & Nichol 2021, section 4.1)."""
from __future__ import annotations

import torch
from torch import nn

from adm.nn.config import ClassifierConfig
from adm.nn.layers import AttentionPool2d, GroupNorm32, timestep_embedding, zero_module
from adm.nn.serialization import PretrainedMixin
from adm.nn.unet import Encoder, check_input


class ADM_classifier(PretrainedMixin, nn.Module):
    """The UNet's downsampling trunk and middle block, then a pooled head: classifier(x_t, t) -> logits."""

    config_class = ClassifierConfig
    kind = "ADM_classifier"

    def __init__(self, config: ClassifierConfig | None = None, **overrides):
        super().__init__()
        cfg = config or ClassifierConfig()
        cfg = cfg.replace(**overrides) if overrides else cfg
        cfg.validate()
        self.config = cfg
        self.dtype = torch.float32
        enc = Encoder(cfg, cfg.in_channels)
        self.time_embed, self.input_blocks, self.middle_block = enc.time_embed, enc.input_blocks, enc.middle_block
        ch = enc.out_channels
        if cfg.pool == "adaptive":
            self.out = nn.Sequential(
                GroupNorm32(ch), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                zero_module(nn.Conv2d(ch, cfg.num_classes, 1)), nn.Flatten(),
            )
        elif cfg.pool == "attention":
            self.out = nn.Sequential(
                GroupNorm32(ch), nn.SiLU(),
                AttentionPool2d(enc.out_resolution, ch, cfg.num_head_channels, cfg.num_classes),
            )
        else:  # spatial pools: the mean of every block's output, concatenated, then an MLP
            features = sum(enc.block_channels) + ch
            if cfg.pool == "spatial":
                self.out = nn.Sequential(nn.Linear(features, 2048), nn.ReLU(), nn.Linear(2048, cfg.num_classes))
            else:
                self.out = nn.Sequential(
                    nn.Linear(features, 2048), GroupNorm32(2048), nn.SiLU(), nn.Linear(2048, cfg.num_classes)
                )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t [N, C, H, W], t [N] -> logits [N, num_classes]."""
        cfg = self.config
        check_input(x, cfg.in_channels, cfg.image_size, "ADM_classifier")
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, cfg.model_channels))
        spatial = cfg.pool.startswith("spatial")
        means = []
        h = x.to(self.dtype)
        for block in self.input_blocks:
            h = block(h, emb)
            if spatial:
                means.append(h.to(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            means.append(h.to(x.dtype).mean(dim=(2, 3)))
            return self.out(torch.cat(means, dim=-1))
        return self.out(h.to(x.dtype))
