"""adm: "Diffusion Models Beat GANs on Image Synthesis" (Dhariwal & Nichol 2021) in PyTorch.

Networks `ADM`, `ADM_classifier`, `ADM_U`; guided sampling `ADM_G`; the paper's presets
(`ADM_diffusion_256_conditioned(pretrained=True)`, ...); `adm.compat` for guided-diffusion code.
"""
from adm.errors import AdmError, CheckpointError, ConfigError, DataError
from adm.hub import convert_checkpoint
from adm.hub.load import build_preset
from adm.hub.presets import PRESETS
from adm.nn import ADM, ADM_U, ADM_classifier, ADMConfig, ADMUConfig, ClassifierConfig

__version__ = "0.1.0"


def _preset_fn(name: str):
    def fn(pretrained: bool | str = False, **overrides):
        return build_preset(name, pretrained=pretrained, **overrides)

    preset = PRESETS[name]
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = (f"{preset.kind} preset {name} ({preset.file or 'shipped weights' if preset.shipped else 'no released weights'}); "
                  "pretrained=True loads its weights, pretrained='path' a local file.")
    return fn


# One constructor per preset: adm.ADM_diffusion_64_conditioned(pretrained=True), ...
globals().update({name: _preset_fn(name) for name in PRESETS})


def __getattr__(name: str):
    if name == "ADM_G":  # imported lazily: sampling pulls in the diffusion math
        from adm.guided import ADM_G

        return ADM_G
    raise AttributeError(f"module 'adm' has no attribute {name!r}")


__all__ = ["ADM", "ADM_G", "ADM_U", "ADM_classifier", "ADMConfig", "ADMUConfig", "AdmError", "CheckpointError",
           "ClassifierConfig", "ConfigError", "DataError", "convert_checkpoint", *PRESETS]
