"""guided-diffusion's `script_util` as a thin facade: the official flag names, defaults and factories."""
from __future__ import annotations

import argparse
import difflib
import shlex
from typing import Any, Iterable

from adm.diffusion.config import DiffusionConfig
from adm.errors import ConfigError
from adm.nn.config import ADMConfig, ADMUConfig, ClassifierConfig, default_channel_mult

NUM_CLASSES = 1000


def diffusion_defaults() -> dict[str, Any]:
    """Defaults of the diffusion flags (shared by all models)."""
    return dict(
        learn_sigma=False,
        diffusion_steps=1000,
        noise_schedule="linear",
        timestep_respacing="",
        use_kl=False,
        predict_xstart=False,
        rescale_timesteps=False,
        rescale_learned_sigmas=False,
    )


def classifier_defaults() -> dict[str, Any]:
    """Defaults of the classifier flags, plus adm's extensions (last three)."""
    return dict(
        image_size=64,
        classifier_use_fp16=False,
        classifier_width=128,
        classifier_depth=2,
        classifier_attention_resolutions="32,16,8",
        classifier_use_scale_shift_norm=True,
        classifier_resblock_updown=True,
        classifier_pool="attention",
        classifier_num_classes=NUM_CLASSES,
        classifier_channel_mult="",
        classifier_num_head_channels=64,
    )


def model_and_diffusion_defaults() -> dict[str, Any]:
    """Defaults of the image-model flags and the diffusion flags, plus `num_classes`."""
    res = dict(
        image_size=64,
        num_channels=128,
        num_res_blocks=2,
        num_heads=4,
        num_heads_upsample=-1,
        num_head_channels=-1,
        attention_resolutions="16,8",
        channel_mult="",
        dropout=0.0,
        class_cond=False,
        use_checkpoint=False,
        use_scale_shift_norm=True,
        resblock_updown=False,
        use_fp16=False,
        use_new_attention_order=False,
        num_classes=NUM_CLASSES,
    )
    res.update(diffusion_defaults())
    return res


def classifier_and_diffusion_defaults() -> dict[str, Any]:
    res = classifier_defaults()
    res.update(diffusion_defaults())
    return res


_SR_KEYS = (
    "class_cond", "learn_sigma", "num_channels", "num_res_blocks", "num_heads", "num_head_channels",
    "num_heads_upsample", "attention_resolutions", "dropout", "use_checkpoint", "use_scale_shift_norm",
    "resblock_updown", "use_fp16", "num_classes",
)


def sr_model_and_diffusion_defaults() -> dict[str, Any]:
    """Defaults of the super-resolution flags (large_size / small_size instead of image_size)."""
    base = model_and_diffusion_defaults()
    res = dict(large_size=256, small_size=64)
    res.update({k: base[k] for k in _SR_KEYS})
    res.update(diffusion_defaults())
    return res


# -- flags -> typed configs ------------------------------------------------------------------
def _ints(s: str | Iterable) -> tuple[int, ...]:
    if isinstance(s, str):
        return tuple(int(v) for v in s.split(",") if v.strip())
    return tuple(int(v) for v in s)


def _mult(s: str | Iterable, image_size: int) -> tuple[float, ...]:
    if isinstance(s, str):
        if not s:
            return default_channel_mult(image_size)
        vals = tuple(float(v) for v in s.split(","))
    else:
        vals = tuple(float(v) for v in s)
    return tuple(int(v) if float(v).is_integer() else v for v in vals)


def _diffusion(f: dict) -> DiffusionConfig:
    return DiffusionConfig(
        steps=int(f["diffusion_steps"]),
        noise_schedule=f["noise_schedule"],
        learn_sigma=bool(f["learn_sigma"]),
        sigma_small=False,
        use_kl=bool(f["use_kl"]),
        predict_xstart=bool(f["predict_xstart"]),
        rescale_timesteps=bool(f["rescale_timesteps"]),
        rescale_learned_sigmas=bool(f["rescale_learned_sigmas"]),
        timestep_respacing=f["timestep_respacing"] or "",
    )


def _fill(flags: dict, defaults: dict) -> dict:
    unknown = sorted(set(flags) - set(defaults))
    known_elsewhere = set(model_and_diffusion_defaults()) | set(classifier_and_diffusion_defaults()) | set(
        sr_model_and_diffusion_defaults()
    )
    bad = [k for k in unknown if k not in known_elsewhere]
    if bad:
        raise ConfigError(f"unknown flag(s): {', '.join(bad)}{_suggest(bad[0], known_elsewhere)}")
    out = dict(defaults)
    out.update({k: v for k, v in flags.items() if k in defaults})
    return out


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unet_fields(f: dict) -> dict:
    """The config fields that the diffusion UNet and the super-resolution UNet read the same way."""
    return dict(
        in_channels=3,
        model_channels=int(f["num_channels"]),
        num_res_blocks=int(f["num_res_blocks"]),
        attention_resolutions=_ints(f["attention_resolutions"]),
        dropout=float(f["dropout"]),
        num_classes=int(f["num_classes"]) if f["class_cond"] else 0,
        num_heads=int(f["num_heads"]),
        num_head_channels=int(f["num_head_channels"]),
        num_heads_upsample=int(f["num_heads_upsample"]),
        use_scale_shift_norm=bool(f["use_scale_shift_norm"]),
        resblock_updown=bool(f["resblock_updown"]),
        use_checkpoint=bool(f["use_checkpoint"]),
        diffusion=_diffusion(f),
    )


def unet_config_from_flags(flags: dict) -> ADMConfig:
    f = _fill(flags, model_and_diffusion_defaults())
    size = int(f["image_size"])
    return ADMConfig(
        image_size=size,
        channel_mult=_mult(f["channel_mult"], size),
        use_new_attention_order=bool(f["use_new_attention_order"]),
        **_unet_fields(f),
    )


def sr_config_from_flags(flags: dict) -> ADMUConfig:
    f = _fill(flags, sr_model_and_diffusion_defaults())
    large = int(f["large_size"])
    if large not in (64, 256, 512):
        raise ConfigError(f"unsupported large_size {large} for the super-resolution model (64, 256 or 512)")
    # guided-diffusion's sr_create_model: these multipliers, and the legacy attention order
    channel_mult = (1, 1, 2, 2, 4, 4) if large in (256, 512) else (1, 2, 3, 4)
    return ADMUConfig(image_size=large, small_size=int(f["small_size"]), channel_mult=channel_mult, **_unet_fields(f))


def classifier_config_from_flags(flags: dict) -> ClassifierConfig:
    f = _fill(flags, classifier_and_diffusion_defaults())
    size = int(f["image_size"])
    return ClassifierConfig(
        image_size=size,
        in_channels=3,
        model_channels=int(f["classifier_width"]),
        num_res_blocks=int(f["classifier_depth"]),
        attention_resolutions=_ints(f["classifier_attention_resolutions"]),
        channel_mult=_mult(f["classifier_channel_mult"], size),
        num_classes=int(f["classifier_num_classes"]),
        num_head_channels=int(f["classifier_num_head_channels"]),
        use_scale_shift_norm=bool(f["classifier_use_scale_shift_norm"]),
        resblock_updown=bool(f["classifier_resblock_updown"]),
        pool=f["classifier_pool"],
        diffusion=_diffusion(f),
    )


def kind_of_flags(flags: dict) -> str:
    """The network kind a flag dict describes: ADM_U (large/small size), ADM_classifier (classifier_*
    flags) or ADM."""
    if "large_size" in flags or "small_size" in flags:
        return "ADM_U"
    if any(k.startswith("classifier_") for k in flags):
        return "ADM_classifier"
    return "ADM"


def config_from_flags(flags: dict, kind: str = "ADM"):
    """A typed config from a guided-diffusion flag dict, for kind ADM, ADM_U or ADM_classifier."""
    return {"ADM": unet_config_from_flags, "ADM_U": sr_config_from_flags, "ADM_classifier": classifier_config_from_flags}[
        kind
    ](flags)


# -- the factories of the official scripts ----------------------------------------------------
def _diffusion_obj(cfg: DiffusionConfig):
    from adm.compat.diffusion import diffusion_from_config

    return diffusion_from_config(cfg)


def _build(cls, cfg, use_fp16: bool):
    """The network of `cfg`, with guided-diffusion's fp16 body when the flags ask for it."""
    model = cls(cfg)
    if use_fp16:
        model.convert_to_fp16()
    return model


def create_model_and_diffusion(**flags):
    """(ADM, diffusion) from model_and_diffusion_defaults()-style keywords."""
    from adm.nn.unet import ADM

    cfg = unet_config_from_flags(flags)
    return _build(ADM, cfg, flags.get("use_fp16", False)), _diffusion_obj(cfg.diffusion)


def create_model(**flags):
    """The ADM of create_model_and_diffusion, without the diffusion."""
    return create_model_and_diffusion(**flags)[0]


def create_classifier(**flags):
    """ADM_classifier from classifier_defaults()-style keywords (diffusion flags are recorded)."""
    from adm.nn.classifier import ADM_classifier

    return _build(ADM_classifier, classifier_config_from_flags(flags), flags.get("classifier_use_fp16", False))


def create_classifier_and_diffusion(**flags):
    cfg = classifier_config_from_flags(flags)
    return create_classifier(**flags), _diffusion_obj(cfg.diffusion)


def sr_create_model_and_diffusion(**flags):
    """(ADM_U, diffusion) from sr_model_and_diffusion_defaults()-style keywords."""
    from adm.nn.unet import ADM_U

    cfg = sr_config_from_flags(flags)
    return _build(ADM_U, cfg, flags.get("use_fp16", False)), _diffusion_obj(cfg.diffusion)


def create_gaussian_diffusion(**kw):
    from adm.compat.diffusion import create_gaussian_diffusion as create

    return create(**kw)


# -- argparse helpers of the official scripts ---------------------------------------------------
def str2bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {v!r}")


def add_dict_to_argparser(parser: argparse.ArgumentParser, default_dict: dict) -> None:
    for k, v in default_dict.items():
        v_type = type(v)
        if v is None:
            v_type = str
        elif isinstance(v, bool):
            v_type = str2bool
        parser.add_argument(f"--{k}", default=v, type=v_type)


def args_to_dict(args: argparse.Namespace, keys: Iterable[str]) -> dict:
    return {k: getattr(args, k) for k in keys}


def parse_flags(text: str, defaults: dict | None = None) -> dict:
    """Parse a MODEL_FLAGS-style string ("--image_size 64 --class_cond True ...") into typed values."""
    if defaults is None:
        defaults = {**model_and_diffusion_defaults(), **classifier_and_diffusion_defaults(), **sr_model_and_diffusion_defaults()}
        defaults["use_fp16"] = False
    tokens = shlex.split(text)
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            raise ConfigError(f"cannot parse flags at {tok!r}: expected --name value")
        name, eq, value = tok[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens):
                raise ConfigError(f"flag --{name} has no value")
            value = tokens[i + 1]
            i += 1
        i += 1
        if name not in defaults:
            raise ConfigError(f"unknown flag --{name}{_suggest(name, defaults)}")
        d = defaults[name]
        try:
            out[name] = str2bool(value) if isinstance(d, bool) else type(d)(value) if d is not None else value
        except (ValueError, argparse.ArgumentTypeError):
            raise ConfigError(f"flag --{name}: {value!r} is not a valid {type(d).__name__}") from None
    return out
