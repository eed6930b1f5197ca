"""adm: "Diffusion Models Beat GANs on Image Synthesis" (Dhariwal & Nichol 2021) in PyTorch.

Networks `ADM`, `ADM_classifier`, `ADM_U`; guided sampling `ADM_G`; the paper's presets
(`ADM_diffusion_256_conditioned(pretrained=True)`, ...); `adm.compat` for guided-diffusion code.
"""
from adm.convert import convert_checkpoint
from adm.errors import AdmError, CheckpointError, ConfigError, DataError
from adm.nn import ADM, ADM_U, ADM_classifier, ADMConfig, ADMUConfig, ClassifierConfig
from adm.presets import (
    ADM_classifier_64,
    ADM_classifier_128,
    ADM_classifier_256,
    ADM_classifier_512,
    ADM_diffusion_64_conditioned,
    ADM_diffusion_64_unconditioned,
    ADM_diffusion_128_conditioned,
    ADM_diffusion_128_unconditioned,
    ADM_diffusion_256_conditioned,
    ADM_diffusion_256_unconditioned,
    ADM_diffusion_512_conditioned,
    ADM_diffusion_512_unconditioned,
    ADM_lsun_bedroom,
    ADM_lsun_cat,
    ADM_lsun_horse,
    ADM_lsun_horse_nodropout,
    ADM_U_64_256,
    ADM_U_128_512,
)

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "ADM_G":  # imported lazily: sampling pulls in the diffusion math
        from adm.guided import ADM_G

        return ADM_G
    raise AttributeError(f"module 'adm' has no attribute {name!r}")
