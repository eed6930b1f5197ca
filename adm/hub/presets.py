"""The paper's model family as named presets: typed configs, OpenAI's released files, and the paper's
sampling settings; adm's own Fashion-MNIST demo pair, whose weights ship in the package.

This module is data: building and loading live in adm.hub.load. The configs equal what
guided-diffusion's README flags give (tests/test_presets.py checks each one through adm.compat).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adm.diffusion.config import DiffusionConfig
from adm.errors import lookup
from adm.nn.config import ADMConfig, ADMUConfig, ClassifierConfig

RELEASE_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"

# SHA-256 of released files where a public digest is known; the others are recorded at their first
# download and checked on every later use of the cached file (adm.hub.download).
KNOWN_SHA256 = {
    "256x256_diffusion_uncond.pt": "983e3de6f95c88c81b2ca7ebb2c217933be1973b1ff058776b970f901584613a",
}


@dataclass(frozen=True)
class Preset:
    name: str
    config: ADMConfig | ADMUConfig | ClassifierConfig
    file: str | None = None          # the released file, None where nothing was released
    sample: dict[str, Any] = field(default_factory=dict)  # sampler, steps, classifier, classifier_scale
    closest: str | None = None       # a released preset to suggest where this one has no weights
    shipped: str | None = None       # weights shipped inside the package (adm/weights/<shipped>/)

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def url(self) -> str | None:
        return RELEASE_URL + self.file if self.file else None

    @property
    def sha256(self) -> str | None:
        return KNOWN_SHA256.get(self.file) if self.file else None


# -- the released architectures ----------------------------------------------------------------------
_LINEAR_LS = DiffusionConfig(learn_sigma=True)
_COSINE_LS = DiffusionConfig(noise_schedule="cosine", learn_sigma=True)
_MULT_256 = (1, 1, 2, 2, 4, 4)
_MULT_512 = (0.5, 1, 1, 2, 2, 4, 4)

_UNET_64 = ADMConfig(model_channels=192, num_res_blocks=3, dropout=0.1, num_head_channels=64,
                     use_new_attention_order=True, diffusion=_COSINE_LS)
_UNET_128 = ADMConfig(image_size=128, model_channels=256, channel_mult=(1, 1, 2, 3, 4), diffusion=_LINEAR_LS)
_UNET_256 = ADMConfig(image_size=256, model_channels=256, channel_mult=_MULT_256, num_head_channels=64,
                      diffusion=_LINEAR_LS)
_UNET_512 = _UNET_256.replace(image_size=512, channel_mult=_MULT_512)
_IMAGENET = 1000


def _guided(classifier: str, scale: float) -> dict:
    """The paper's ADM-G setting: 250 DDPM steps with this classifier and scale."""
    return {"sampler": "ddpm", "steps": 250, "classifier": classifier, "classifier_scale": scale}


_DDPM_250 = {"sampler": "ddpm", "steps": 250}
_DDPM_1000 = {"sampler": "ddpm", "steps": 1000}

# adm's own demo models: 32x32 grey Fashion-MNIST, class-conditional with a null label for
# classifier-free guidance, and their noisy classifier, sized for training on 2 CPU cores.
_DEMO_DIFFUSION = DiffusionConfig(noise_schedule="cosine", learn_sigma=True, rescale_learned_sigmas=True)
DEMO_MODEL = ADMConfig(image_size=32, in_channels=1, model_channels=64, num_res_blocks=1, attention_resolutions=(16, 8),
                       channel_mult=(1, 1, 2), num_classes=10, null_class=True, num_head_channels=32,
                       diffusion=_DEMO_DIFFUSION)
DEMO_CLASSIFIER = ClassifierConfig(image_size=32, in_channels=1, model_channels=32, attention_resolutions=(16, 8),
                                   channel_mult=(1, 2, 2, 2), num_classes=10, num_head_channels=32,
                                   diffusion=_DEMO_DIFFUSION)
# What `adm demo` and `adm sample --model ADM_demo_fashion_mnist --classifier auto` use (docs/demo.md).
DEMO_SAMPLING = {"sampler": "ddim", "steps": 25, "classifier": "ADM_classifier_demo_fashion_mnist",
                 "classifier_scale": 2.0}

PRESETS: dict[str, Preset] = {p.name: p for p in [
    # ImageNet, class-conditional, guided by the classifier of the same size (paper Table 4 / README):
    Preset("ADM_diffusion_64_conditioned", _UNET_64.replace(num_classes=_IMAGENET), "64x64_diffusion.pt",
           _guided("ADM_classifier_64", 1.0)),          # ADM-G: FID 2.07, precision 0.74, recall 0.63
    Preset("ADM_diffusion_64_unconditioned", _UNET_64, None, _DDPM_250, closest="ADM_diffusion_64_conditioned"),
    Preset("ADM_diffusion_128_conditioned", _UNET_128.replace(num_classes=_IMAGENET), "128x128_diffusion.pt",
           _guided("ADM_classifier_128", 0.5)),         # ADM-G: FID 2.97, precision 0.78, recall 0.59
    Preset("ADM_diffusion_128_unconditioned", _UNET_128, None, _DDPM_250, closest="ADM_diffusion_128_conditioned"),
    Preset("ADM_diffusion_256_conditioned", _UNET_256.replace(num_classes=_IMAGENET), "256x256_diffusion.pt",
           _guided("ADM_classifier_256", 1.0)),         # ADM-G: FID 4.59, precision 0.82, recall 0.52
    Preset("ADM_diffusion_256_unconditioned", _UNET_256, "256x256_diffusion_uncond.pt",
           _guided("ADM_classifier_256", 10.0)),        # unconditional model guided by the classifier (s = 10)
    Preset("ADM_diffusion_512_conditioned", _UNET_512.replace(num_classes=_IMAGENET), "512x512_diffusion.pt",
           _guided("ADM_classifier_512", 4.0)),         # ADM-G: FID 7.72, precision 0.87, recall 0.42
    Preset("ADM_diffusion_512_unconditioned", _UNET_512, None, _DDPM_250, closest="ADM_diffusion_256_unconditioned"),
    # The noisy classifiers (the encoder half, attention pooling):
    Preset("ADM_classifier_64", ClassifierConfig(num_res_blocks=4), "64x64_classifier.pt"),
    Preset("ADM_classifier_128", ClassifierConfig(image_size=128, channel_mult=(1, 1, 2, 3, 4)), "128x128_classifier.pt"),
    Preset("ADM_classifier_256", ClassifierConfig(image_size=256, channel_mult=_MULT_256), "256x256_classifier.pt"),
    Preset("ADM_classifier_512", ClassifierConfig(image_size=512, channel_mult=_MULT_512), "512x512_classifier.pt"),
    # The upsamplers (ADM-U), used after ADM-G 64 / 128:
    Preset("ADM_U_64_256", ADMUConfig(image_size=256, model_channels=192, channel_mult=_MULT_256,
                                      num_classes=_IMAGENET, diffusion=_LINEAR_LS),
           "64_256_upsampler.pt", _DDPM_250),                      # ADM-G + ADM-U at 256: FID 3.94
    Preset("ADM_U_128_512", ADMUConfig(image_size=512, model_channels=192, attention_resolutions=(32, 16),
                                       channel_mult=_MULT_256, num_classes=_IMAGENET, num_head_channels=64,
                                       diffusion=_LINEAR_LS, small_size=128),
           "128_512_upsampler.pt", _DDPM_250),                     # ADM-G + ADM-U at 512: FID 3.85
    # LSUN 256, unconditional, 1000 DDPM steps:
    Preset("ADM_lsun_bedroom", _UNET_256.replace(dropout=0.1), "lsun_bedroom.pt", _DDPM_1000),  # FID 1.90
    Preset("ADM_lsun_cat", _UNET_256.replace(dropout=0.1), "lsun_cat.pt", _DDPM_1000),          # FID 5.57
    Preset("ADM_lsun_horse", _UNET_256.replace(dropout=0.1), "lsun_horse.pt", _DDPM_1000),      # FID 2.57
    Preset("ADM_lsun_horse_nodropout", _UNET_256, "lsun_horse_nodropout.pt", _DDPM_1000),
    # adm's demo pair (weights in the package):
    Preset("ADM_demo_fashion_mnist", DEMO_MODEL, None, DEMO_SAMPLING, shipped="demo_fashion_mnist"),
    Preset("ADM_classifier_demo_fashion_mnist", DEMO_CLASSIFIER, None, shipped="classifier_demo_fashion_mnist"),
]}


def names() -> list[str]:
    return list(PRESETS)


def get(name: str) -> Preset:
    """The preset of this name; an unknown name raises ConfigError with the closest suggestion."""
    return lookup(PRESETS, name, "preset", "see `adm info --presets`")


def shipped_weights(name: str):
    """The safetensors file of a model shipped inside the package (CheckpointError if missing)."""
    from importlib.resources import files

    from adm.errors import CheckpointError

    path = files("adm") / "weights" / name / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"the shipped weights {name} are missing from this installation ({path})")
    return path
