"""Training settings (one frozen dataclass), model configs from presets plus overrides, resume checks."""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from adm.diffusion.config import DiffusionConfig
from adm.errors import ConfigError

TRAINERS = ("diffusion", "classifier", "upsampler")
MODEL_KIND = {"diffusion": "ADM", "classifier": "ADM_classifier", "upsampler": "ADM_U"}
DTYPES = ("fp32", "bf16", "fp16")
ANNEALS = ("none", "linear", "cosine")
# Settings that define the run: a resumed run must agree on them (the rest may change between runs).
RESUME_FIELDS = ("trainer", "model", "data", "batch_size", "seed", "ema", "label_dropout", "random_flip", "noised",
                 "timestep_sampler")
TIMESTEP_SAMPLERS = ("uniform", "loss-second-moment")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the output directory (saved as RUN_DIR/config.json)."""

    trainer: str = "diffusion"             # diffusion | classifier | upsampler
    model: dict = field(default_factory=dict)  # the network's config dict (with "kind")
    data: str = "fashion-mnist"            # fashion-mnist, an image folder or an .npz file
    batch_size: int = 64                   # global batch (all processes, all micro-batches)
    microbatch: int = 0                    # per-process micro-batch for gradient accumulation (0: whole)
    lr: float = 1e-4                       # AdamW learning rate (the paper's 1e-4 for diffusion)
    weight_decay: float = 0.0              # AdamW decoupled weight decay
    warmup: int = 0                        # steps of linear learning-rate warm-up
    anneal: str = "none"                   # none | linear | cosine decay to 0 at anneal_steps
    anneal_steps: int = 0                  # 0: max_steps
    ema: tuple[float, ...] = (0.9999,)     # EMA rates (the first is exported as RUN_DIR/model)
    dtype: str = "fp32"                    # fp32 | bf16 | fp16 autocast (fp16 with a GradScaler)
    grad_clip: float = 0.0                 # max gradient norm (0: no clipping)
    grad_checkpoint: bool = False          # activation checkpointing in every block
    compile: bool = False                  # torch.compile the training forward/backward
    max_steps: int = 10000                 # training stops at this step
    save_every: int = 1000                 # checkpoint interval (steps)
    keep_every: int = 0                    # also keep the checkpoints at multiples of this (0: latest only)
    log_every: int = 100                   # metrics interval (steps); the only host syncs
    sample_every: int = -1                 # sample-grid interval (-1: at every save, 0: never)
    sample_steps: int = 25                 # DDIM steps of the sample grids
    label_dropout: float = 0.0             # p of replacing a label by the null label (classifier-free guidance)
    random_flip: bool = True               # random horizontal flips
    noised: bool = True                    # classifier: train on x_t (False: on clean x_0 at t = 0)
    timestep_sampler: str = "uniform"      # uniform | loss-second-moment (importance sampling of t)
    max_nonfinite: int = 50                # abort after this many non-finite steps in a row
    seed: int = 0
    init_from: str = ""                    # where a new run's starting weights came from ("": random init)
    init_images_seen: int = 0              # training images those weights had seen (their config's images_seen)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ema", tuple(float(r) for r in self.ema))
        self.validate()

    def validate(self) -> None:
        """ConfigError for settings that cannot work."""
        if self.trainer not in TRAINERS:
            raise ConfigError(f"unknown trainer {self.trainer!r}; choose one of {', '.join(TRAINERS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.timestep_sampler not in TIMESTEP_SAMPLERS:
            raise ConfigError(f"unknown timestep sampler {self.timestep_sampler!r}; choose one of {', '.join(TIMESTEP_SAMPLERS)}")
        if self.anneal not in ANNEALS:
            raise ConfigError(f"unknown anneal {self.anneal!r}; choose one of {', '.join(ANNEALS)}")
        for name in ("batch_size", "max_steps", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.microbatch < 0 or self.microbatch > self.batch_size:
            raise ConfigError(f"microbatch {self.microbatch} must be between 1 and the batch size {self.batch_size} (0: whole batch)")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"label dropout must be in [0, 1), got {self.label_dropout}")
        for r in self.ema:
            if not 0.0 < r < 1.0:
                raise ConfigError(f"EMA rates must be in (0, 1), got {r}")
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ema"] = list(self.ema)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def model_config(self):
        """The network config object of this run."""
        from adm.nn.config import config_from_dict

        return config_from_dict(self.model)


# -- overrides: "--set key=value" --------------------------------------------------------------
def _parse_value(text: str, typ, key: str):
    """A string parsed by a dataclass field's type (tuples comma-separated, bools true/false)."""
    origin = typing.get_origin(typ)
    try:
        if origin is tuple:
            inner = typing.get_args(typ)[0]
            return tuple(_parse_value(p, inner, key) for p in text.replace(" ", "").split(",") if p)
        if typ is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if typ is float:
            return float(text)
        if typ is int:
            return int(text)
        return text
    except ValueError:
        raise ConfigError(f"--set {key}={text}: not a valid {getattr(typ, '__name__', typ)}") from None


def apply_overrides(cfg, overrides: dict[str, str]):
    """cfg with "key=value" overrides applied; diffusion fields by their own name or diffusion.NAME."""
    hints = typing.get_type_hints(type(cfg))
    diff_hints = typing.get_type_hints(DiffusionConfig)
    model_kw, diff_kw = {}, {}
    for key, text in overrides.items():
        name = key.removeprefix("diffusion.")
        if key.startswith("diffusion.") or (name not in hints and name in diff_hints):
            if name not in diff_hints:
                raise ConfigError(f"--set {key}: DiffusionConfig has no field {name!r}")
            diff_kw[name] = _parse_value(text, diff_hints[name], key)
        elif name in hints and name != "diffusion":
            model_kw[name] = _parse_value(text, hints[name], key)
        else:
            known = ", ".join(sorted(set(hints) - {"diffusion"}) + sorted(diff_hints))
            raise ConfigError(f"--set {key}: unknown config field (known: {known})")
    if diff_kw:
        model_kw["diffusion"] = cfg.diffusion.replace(**diff_kw)
    new = cfg.replace(**model_kw) if model_kw else cfg
    new.validate()
    return new


def parse_set(items: list[str] | None) -> dict[str, str]:
    """["a=1", "b=2,3"] -> {"a": "1", "b": "2,3"}."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


# -- resume ------------------------------------------------------------------------------------
def config_differences(saved: TrainConfig, new: TrainConfig) -> list[str]:
    """"field: saved -> new" for the run-defining fields that differ (model fields one by one)."""
    out = []
    for name in RESUME_FIELDS:
        a, b = getattr(saved, name), getattr(new, name)
        if name == "model":
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    if k == "diffusion":
                        da, db = a.get(k) or {}, b.get(k) or {}
                        out += [f"diffusion.{dk}: {da.get(dk)!r} -> {db.get(dk)!r}"
                                for dk in sorted(set(da) | set(db)) if da.get(dk) != db.get(dk)]
                    else:
                        out.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def read_run_config(run_dir: str | Path) -> TrainConfig | None:
    """The TrainConfig saved in RUN_DIR/config.json, or None for a new directory."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise ConfigError(f"{path}: not a readable training config ({e}); use --force to start afresh") from None
