"""Networks: the ADM UNet, the noisy-image classifier and the super-resolution UNet."""
from adm.nn.classifier import ADM_classifier
from adm.nn.config import ADMConfig, ADMUConfig, ClassifierConfig
from adm.nn.layers import timestep_embedding
from adm.nn.unet import ADM, ADM_U

__all__ = ["ADM", "ADM_U", "ADM_classifier", "ADMConfig", "ADMUConfig", "ClassifierConfig", "timestep_embedding"]
