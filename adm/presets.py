"""The paper's model family as named presets, and the registry of OpenAI's released checkpoints.

Flags are those of guided-diffusion's README (the released hyperparameters). Each preset builds a
model whose config carries its diffusion settings; `sample` holds the paper's sampling settings.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import torch

from adm.compat.script_util import config_from_flags, parse_flags
from adm.errors import CheckpointError, ConfigError

RELEASE_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"

_UNET_256 = (
    "--attention_resolutions 32,16,8 --diffusion_steps 1000 --image_size 256 --learn_sigma True "
    "--noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 "
    "--resblock_updown True --use_fp16 True --use_scale_shift_norm True"
)
_CLASSIFIER = (
    "--classifier_attention_resolutions 32,16,8 --classifier_depth 2 --classifier_width 128 "
    "--classifier_pool attention --classifier_resblock_updown True --classifier_use_scale_shift_norm True "
    "--classifier_use_fp16 True"
)


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str                       # ADM | ADM_U | ADM_classifier
    flags: str                      # guided-diffusion flag string
    file: str | None = None         # official file name, None where nothing was released
    sample: dict[str, Any] = field(default_factory=dict)  # the paper's sampling settings
    closest: str | None = None      # a released preset to suggest where this one has no weights
    note: str = ""
    config_dict: dict | None = None  # a config given directly instead of flags (adm's own models)
    shipped: str | None = None      # weights shipped inside the package (adm/weights/<shipped>/)

    @property
    def url(self) -> str | None:
        return RELEASE_URL + self.file if self.file else None

    def config(self):
        if self.config_dict is not None:
            from adm.nn.config import ADMConfig, ADMUConfig, ClassifierConfig

            cls = {"ADM": ADMConfig, "ADM_U": ADMUConfig, "ADM_classifier": ClassifierConfig}[self.kind]
            return cls.from_dict(self.config_dict)
        return config_from_flags(parse_flags(self.flags), kind=self.kind)


def _p(*args, **kw) -> Preset:
    return Preset(*args, **kw)


# adm's own demo models: 32x32 grey Fashion-MNIST, class-conditional with a null label for
# classifier-free guidance, and their noisy classifier. Weights ship in the package (fp16).
_DEMO_DIFFUSION = dict(steps=1000, noise_schedule="cosine", learn_sigma=True, rescale_learned_sigmas=True)
DEMO_MODEL = dict(  # sized for training on 2 CPU cores (bf16 autocast) within a session
    image_size=32, in_channels=1, model_channels=64, num_res_blocks=1, attention_resolutions=[16, 8],
    channel_mult=[1, 1, 2], dropout=0.0, num_classes=10, null_class=True, num_head_channels=32,
    use_scale_shift_norm=True, resblock_updown=True, diffusion=_DEMO_DIFFUSION,
)
DEMO_CLASSIFIER = dict(
    image_size=32, in_channels=1, model_channels=32, num_res_blocks=2, attention_resolutions=[16, 8],
    channel_mult=[1, 2, 2, 2], num_classes=10, num_head_channels=32, pool="attention", diffusion=_DEMO_DIFFUSION,
)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        _p("ADM_diffusion_64_conditioned", "ADM",
           "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 "
           "--learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
           "--resblock_updown True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True",
           "64x64_diffusion.pt", {"classifier": "ADM_classifier_64", "classifier_scale": 1.0, "timestep_respacing": "250"}),
        _p("ADM_diffusion_64_unconditioned", "ADM",
           "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1 --image_size 64 "
           "--learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
           "--resblock_updown True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True",
           None, {"timestep_respacing": "250"}, closest="ADM_diffusion_64_conditioned"),
        _p("ADM_diffusion_128_conditioned", "ADM",
           "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 --learn_sigma True "
           "--noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 --resblock_updown True "
           "--use_fp16 True --use_scale_shift_norm True",
           "128x128_diffusion.pt", {"classifier": "ADM_classifier_128", "classifier_scale": 0.5, "timestep_respacing": "250"}),
        _p("ADM_diffusion_128_unconditioned", "ADM",
           "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 128 --learn_sigma True "
           "--noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 --resblock_updown True "
           "--use_fp16 True --use_scale_shift_norm True",
           None, {"timestep_respacing": "250"}, closest="ADM_diffusion_128_conditioned"),
        _p("ADM_diffusion_256_conditioned", "ADM", _UNET_256 + " --class_cond True", "256x256_diffusion.pt",
           {"classifier": "ADM_classifier_256", "classifier_scale": 1.0, "timestep_respacing": "250"}),
        _p("ADM_diffusion_256_unconditioned", "ADM", _UNET_256 + " --class_cond False", "256x256_diffusion_uncond.pt",
           {"classifier": "ADM_classifier_256", "classifier_scale": 10.0, "timestep_respacing": "250"}),
        _p("ADM_diffusion_512_conditioned", "ADM", _UNET_256.replace("image_size 256", "image_size 512") + " --class_cond True",
           "512x512_diffusion.pt", {"classifier": "ADM_classifier_512", "classifier_scale": 4.0, "timestep_respacing": "250"}),
        _p("ADM_diffusion_512_unconditioned", "ADM", _UNET_256.replace("image_size 256", "image_size 512") + " --class_cond False",
           None, {"timestep_respacing": "250"}, closest="ADM_diffusion_256_unconditioned"),
        _p("ADM_classifier_64", "ADM_classifier", _CLASSIFIER.replace("depth 2", "depth 4") + " --image_size 64", "64x64_classifier.pt"),
        _p("ADM_classifier_128", "ADM_classifier", _CLASSIFIER + " --image_size 128", "128x128_classifier.pt"),
        _p("ADM_classifier_256", "ADM_classifier", _CLASSIFIER + " --image_size 256", "256x256_classifier.pt"),
        _p("ADM_classifier_512", "ADM_classifier", _CLASSIFIER + " --image_size 512", "512x512_classifier.pt"),
        _p("ADM_U_64_256", "ADM_U",
           "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --large_size 256 --small_size 64 "
           "--learn_sigma True --noise_schedule linear --num_channels 192 --num_heads 4 --num_res_blocks 2 "
           "--resblock_updown True --use_fp16 True --use_scale_shift_norm True",
           "64_256_upsampler.pt", {"timestep_respacing": "250"}),
        _p("ADM_U_128_512", "ADM_U",
           "--attention_resolutions 32,16 --class_cond True --diffusion_steps 1000 --large_size 512 --small_size 128 "
           "--learn_sigma True --noise_schedule linear --num_channels 192 --num_head_channels 64 --num_res_blocks 2 "
           "--resblock_updown True --use_fp16 True --use_scale_shift_norm True",
           "128_512_upsampler.pt", {"timestep_respacing": "250"}),
        _p("ADM_lsun_bedroom", "ADM", _UNET_256 + " --class_cond False --dropout 0.1", "lsun_bedroom.pt", {"timestep_respacing": "1000"}),
        _p("ADM_lsun_cat", "ADM", _UNET_256 + " --class_cond False --dropout 0.1", "lsun_cat.pt", {"timestep_respacing": "1000"}),
        _p("ADM_lsun_horse", "ADM", _UNET_256 + " --class_cond False --dropout 0.1", "lsun_horse.pt", {"timestep_respacing": "1000"}),
        _p("ADM_lsun_horse_nodropout", "ADM", _UNET_256 + " --class_cond False --dropout 0.0", "lsun_horse_nodropout.pt",
           {"timestep_respacing": "1000"}),
        _p("ADM_demo_fashion_mnist", "ADM", "", None,
           {"classifier": "ADM_classifier_demo_fashion_mnist", "classifier_scale": 2.0, "timestep_respacing": "ddim25"},
           config_dict=DEMO_MODEL, shipped="demo_fashion_mnist"),
        _p("ADM_classifier_demo_fashion_mnist", "ADM_classifier", "", None,
           config_dict=DEMO_CLASSIFIER, shipped="classifier_demo_fashion_mnist"),
    ]
}


def names() -> list[str]:
    return list(PRESETS)


def get(name: str) -> Preset:
    """The preset of this name; an unknown name raises ConfigError with the closest suggestion."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint} (see `adm info --presets`)")
    return PRESETS[name]


def _model_class(kind: str):
    from adm.nn import ADM, ADM_U, ADM_classifier

    return {"ADM": ADM, "ADM_U": ADM_U, "ADM_classifier": ADM_classifier}[kind]


def build(name: str, pretrained: bool | str = False, expect: type | None = None, **overrides):
    """Build preset `name` (random weights), or load its weights: True = official download, str = a local file."""
    preset = get(name)
    cls = _model_class(preset.kind)
    if expect is not None and not issubclass(cls, expect):
        raise ConfigError(f"preset {name!r} is a {preset.kind}, not a {expect.kind}")
    cfg = preset.config()
    model = cls(cfg.replace(**overrides) if overrides else cfg)
    if pretrained:
        from adm.nn.pretrained import read_state_dict

        if pretrained is True and preset.shipped:
            path = shipped_weights(preset.shipped)
        elif pretrained is True:
            if preset.file is None:
                raise CheckpointError(
                    f"OpenAI released no weights for {name}; the closest released preset is {preset.closest!r}"
                )
            from adm.hub import download

            path = download(preset.url, preset.file)
        else:
            path = pretrained
        model.load_checked(read_state_dict(path), str(path))
    return model


def shipped_weights(name: str):
    """The safetensors file of a model shipped inside the package."""
    from importlib.resources import files

    path = files("adm") / "weights" / name / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"the shipped weights {name} are missing from this installation ({path})")
    return path


_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {}


def preset_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """key -> shape of a preset's state_dict (built on the meta device: no memory)."""
    if name not in _SHAPES:
        with torch.device("meta"):
            model = build(name)
        _SHAPES[name] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return _SHAPES[name]


def identify(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The released preset whose keys and shapes equal this state_dict's (None if none does)."""
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    for name, preset in PRESETS.items():
        if preset.file and preset_shapes(name) == got:
            return name
    for name in PRESETS:
        if preset_shapes(name) == got:
            return name
    return None


def _preset_fn(name: str):
    def fn(pretrained: bool | str = False, **overrides):
        return build(name, pretrained=pretrained, **overrides)

    fn.__name__ = fn.__qualname__ = name
    preset = PRESETS[name]
    fn.__doc__ = f"{preset.kind} preset {name} ({preset.file or 'no released weights'}); pretrained=True|path loads weights."
    return fn


ADM_diffusion_64_conditioned = _preset_fn("ADM_diffusion_64_conditioned")
ADM_diffusion_64_unconditioned = _preset_fn("ADM_diffusion_64_unconditioned")
ADM_diffusion_128_conditioned = _preset_fn("ADM_diffusion_128_conditioned")
ADM_diffusion_128_unconditioned = _preset_fn("ADM_diffusion_128_unconditioned")
ADM_diffusion_256_conditioned = _preset_fn("ADM_diffusion_256_conditioned")
ADM_diffusion_256_unconditioned = _preset_fn("ADM_diffusion_256_unconditioned")
ADM_diffusion_512_conditioned = _preset_fn("ADM_diffusion_512_conditioned")
ADM_diffusion_512_unconditioned = _preset_fn("ADM_diffusion_512_unconditioned")
ADM_classifier_64 = _preset_fn("ADM_classifier_64")
ADM_classifier_128 = _preset_fn("ADM_classifier_128")
ADM_classifier_256 = _preset_fn("ADM_classifier_256")
ADM_classifier_512 = _preset_fn("ADM_classifier_512")
ADM_U_64_256 = _preset_fn("ADM_U_64_256")
ADM_U_128_512 = _preset_fn("ADM_U_128_512")
ADM_lsun_bedroom = _preset_fn("ADM_lsun_bedroom")
ADM_lsun_cat = _preset_fn("ADM_lsun_cat")
ADM_lsun_horse = _preset_fn("ADM_lsun_horse")
ADM_lsun_horse_nodropout = _preset_fn("ADM_lsun_horse_nodropout")
