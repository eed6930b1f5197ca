"""Networks: the ADM UNet, the noisy-image classifier and the super-resolution UNet, their typed
configs, and one map from a network kind ("ADM", "ADM_U", "ADM_classifier") to its class."""
from adm.nn.classifier import ADM_classifier
from adm.nn.config import (
    CONFIGS,
    KINDS,
    ADMConfig,
    ADMUConfig,
    ClassifierConfig,
    config_class,
    config_from_dict,
    config_to_dict,
)
from adm.nn.layers import timestep_embedding
from adm.nn.unet import ADM, ADM_U

NETWORKS: dict[str, type] = {cls.kind: cls for cls in (ADM, ADM_U, ADM_classifier)}


def network_class(kind: str) -> type:
    """ADM / ADM_U / ADM_classifier of a network kind (ConfigError for others)."""
    config_class(kind)  # the one error for an unknown kind
    return NETWORKS[kind]


def build(config):
    """A network with random weights for a config object."""
    return NETWORKS[config.kind](config)


__all__ = ["ADM", "ADM_U", "ADM_classifier", "ADMConfig", "ADMUConfig", "CONFIGS", "ClassifierConfig", "KINDS",
           "NETWORKS", "build", "config_class", "config_from_dict", "config_to_dict", "network_class",
           "timestep_embedding"]
