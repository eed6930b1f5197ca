"""Typed, frozen configurations of the three networks; each records its diffusion settings."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import ClassVar

from adm.diffusion.config import DiffusionConfig
from adm.errors import ConfigError

# Channel multipliers of the released models by resolution (guided-diffusion's defaults).
CHANNEL_MULT_BY_SIZE: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


def default_channel_mult(image_size: int) -> tuple[float, ...]:
    """The released models' channel multipliers for an image size (ConfigError for others)."""
    if image_size not in CHANNEL_MULT_BY_SIZE:
        raise ConfigError(
            f"no default channel_mult for image size {image_size} (known: "
            f"{sorted(CHANNEL_MULT_BY_SIZE)}); give channel_mult explicitly, e.g. '1,2,2'"
        )
    return CHANNEL_MULT_BY_SIZE[image_size]


def _check_common(cfg) -> None:
    levels = len(cfg.channel_mult)
    if cfg.image_size % (2 ** (levels - 1)):
        raise ConfigError(
            f"image_size {cfg.image_size} is not divisible by 2**{levels - 1} ({levels} levels of channel_mult)"
        )
    for mult in cfg.channel_mult:
        if int(mult * cfg.model_channels) % 32:
            raise ConfigError(
                f"channel width {int(mult * cfg.model_channels)} (model_channels {cfg.model_channels} x {mult}) "
                "is not a multiple of 32, the number of group-norm groups"
            )
    for res in cfg.attention_resolutions:
        if cfg.image_size % res:
            raise ConfigError(f"attention resolution {res} does not divide image_size {cfg.image_size}")


class _ConfigIO:
    """to_dict / from_dict with tuples and the nested DiffusionConfig."""

    def __post_init__(self) -> None:
        # Accept lists and a dict for the diffusion settings (as read from JSON); store tuples.
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))
            elif f.name == "diffusion" and isinstance(v, dict):
                object.__setattr__(self, f.name, DiffusionConfig.from_dict(v))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(names) - {"kind"})
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
        kw = {}
        for k, v in d.items():
            if k == "kind":
                continue
            if k == "diffusion":
                v = v if isinstance(v, DiffusionConfig) else DiffusionConfig.from_dict(v)
            elif isinstance(v, list):
                v = tuple(v)
            kw[k] = v
        return cls(**kw)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ADMConfig(_ConfigIO):
    """The ADM UNet (paper section 3; released 64/128/256/512 and LSUN models)."""

    kind: ClassVar[str] = "ADM"
    image_size: int = 64
    in_channels: int = 3                                   # image channels (output: same, or 2x if learn_sigma)
    model_channels: int = 128                              # base width ("num_channels")
    num_res_blocks: int = 2                                # residual blocks per resolution
    attention_resolutions: tuple[int, ...] = (32, 16, 8)   # resolutions (pixels) that get self-attention
    channel_mult: tuple[float, ...] = (1, 2, 3, 4)         # width multiplier per resolution (0.5 allowed)
    dropout: float = 0.0
    num_classes: int = 0                                   # 0: unconditional
    null_class: bool = False                               # extra embedding row num_classes = "no label" (CFG)
    num_heads: int = 4                                     # heads, unless num_head_channels is set
    num_head_channels: int = -1                            # fixed channels per head (64 in the paper's best)
    num_heads_upsample: int = -1                           # heads in the decoder (-1: num_heads)
    use_scale_shift_norm: bool = True                      # AdaGN (True) or additive timestep embedding
    resblock_updown: bool = True                           # BigGAN residual up/down blocks, else conv resampling
    conv_resample: bool = True                             # learned conv in plain up/down sampling
    use_new_attention_order: bool = False                  # qkv layout: q/k/v outermost (64x64 model)
    rescale_residuals: bool = False                        # residual sums times 1/sqrt(2) (Table 1 ablation)
    use_checkpoint: bool = False                           # gradient checkpointing of every block
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.diffusion.learn_sigma else 1)

    @property
    def class_cond(self) -> bool:
        return self.num_classes > 0

    def validate(self) -> None:
        _check_common(self)
        if self.null_class and not self.num_classes:
            raise ConfigError("null_class needs a class-conditional model (num_classes > 0)")


@dataclass(frozen=True)
class ADMUConfig(ADMConfig):
    """ADM-U, the super-resolution UNet: x_t concatenated with the bilinearly upsampled low_res."""

    kind: ClassVar[str] = "ADM_U"
    small_size: int = 64                                   # resolution of the low-resolution input

    def validate(self) -> None:
        super().validate()
        if self.small_size >= self.image_size:
            raise ConfigError(f"small_size {self.small_size} must be below image_size {self.image_size}")


@dataclass(frozen=True)
class ClassifierConfig(_ConfigIO):
    """The noisy-image classifier: the UNet's encoder half and a pooled head (paper section 4)."""

    kind: ClassVar[str] = "ADM_classifier"
    image_size: int = 64
    in_channels: int = 3
    model_channels: int = 128                              # "classifier_width"
    num_res_blocks: int = 2                                # "classifier_depth"
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    channel_mult: tuple[float, ...] = (1, 2, 3, 4)
    num_classes: int = 1000
    dropout: float = 0.0
    num_heads: int = 1
    num_head_channels: int = 64
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True
    use_new_attention_order: bool = False
    rescale_residuals: bool = False
    pool: str = "attention"                                # adaptive | attention | spatial | spatial_v2
    use_checkpoint: bool = False
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    POOLS = ("adaptive", "attention", "spatial", "spatial_v2")

    def validate(self) -> None:
        _check_common(self)
        if self.pool not in self.POOLS:
            raise ConfigError(f"unknown classifier pool {self.pool!r}; choose one of {', '.join(self.POOLS)}")
        if self.num_classes < 1:
            raise ConfigError("a classifier needs num_classes >= 1")


# -- one map from a network kind to its config class ------------------------------------------------
CONFIGS: dict[str, type] = {c.kind: c for c in (ADMConfig, ADMUConfig, ClassifierConfig)}
KINDS = tuple(CONFIGS)


def config_class(kind: str) -> type:
    """ADMConfig / ADMUConfig / ClassifierConfig of a network kind (ConfigError for others)."""
    if kind not in CONFIGS:
        raise ConfigError(f"unknown network kind {kind!r}; expected one of {', '.join(KINDS)}")
    return CONFIGS[kind]


def config_from_dict(d: dict):
    """A config object from a dict carrying "kind" (as config.json and training runs store it)."""
    return config_class(d.get("kind", "ADM")).from_dict(d)


def config_to_dict(cfg) -> dict:
    """A config object as a dict carrying "kind"."""
    return {"kind": cfg.kind, **cfg.to_dict()}
