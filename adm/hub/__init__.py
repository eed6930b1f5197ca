"""Model identity and loading: the presets, verified downloads, one loader for every source, and
conversion of official checkpoints. `ADM.from_pretrained` resolves its source through `load`."""
from adm.hub import presets
from adm.hub.convert import convert_checkpoint
from adm.hub.download import cache_dir, download, sha256_file
from adm.hub.load import (
    Loaded,
    build_preset,
    for_inference,
    identify,
    load,
    load_network,
    load_weights,
    model_dirs_in,
    preset_of_config,
    preset_shapes,
    preset_weights,
    read_weights,
)
from adm.nn.serialization import set_loader

set_loader(load_network)

__all__ = ["Loaded", "build_preset", "cache_dir", "convert_checkpoint", "download", "for_inference", "identify",
           "load", "load_network", "load_weights", "model_dirs_in", "preset_of_config", "preset_shapes", "preset_weights",
           "presets", "read_weights", "sha256_file"]
