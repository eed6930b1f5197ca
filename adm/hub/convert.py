"""Checkpoints -> an adm model directory (config.json + model.safetensors): official guided-diffusion
.pt files (the preset recognised from their shapes, or named, or given as flags), adm's own training
checkpoints and run directories."""
from __future__ import annotations

import os
from pathlib import Path

from adm.errors import CheckpointError
from adm.hub import presets
from adm.hub.load import build_preset, identify, load, load_weights, read_weights
from adm.nn import KINDS


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    preset: str | dict | None = None,
    dtype=None,
) -> tuple[Path, str]:
    """Convert `checkpoint` (a file or a training run directory); `preset` is a preset name, a flag
    string/dict, or None (recognised from the file). Returns (out_dir, what it was recognised as)."""
    src = Path(checkpoint)
    if not src.exists():
        raise CheckpointError(f"checkpoint not found: {src}")
    if isinstance(preset, str) and not preset.lstrip().startswith("--"):
        model = build_preset(presets.get(preset).name)
        sd, _, _ = read_weights(src) if src.is_file() else (None, None, None)
        if sd is None:
            raise CheckpointError(f"{src}: --preset applies to a weights file, not to a directory")
        load_weights(model, sd, str(src))
        what = preset
    else:
        config = None
        if preset is not None:
            from adm.compat.script_util import kind_of_flags, parse_flags

            config = parse_flags(preset) if isinstance(preset, str) else dict(preset)
            kinds = (kind_of_flags(config),)
        else:
            kinds = KINDS
        loaded = load(src, kinds, config=config, what="checkpoint")
        model = loaded.model
        if loaded.preset is not None:
            what = loaded.preset
        elif config is not None:
            what = identify(model.state_dict()) or f"custom {model.kind}"
        else:
            what = f"adm {model.kind}" + (f" (step {loaded.step})" if loaded.step is not None else "")
    model.save_pretrained(out_dir, dtype=dtype, extra={"source": os.path.basename(str(checkpoint)), "preset": what})
    return Path(out_dir), what
