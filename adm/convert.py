"""Official guided-diffusion .pt checkpoints -> config.json + model.safetensors."""
from __future__ import annotations

import os
from pathlib import Path

from adm import presets
from adm.compat.script_util import config_from_flags, parse_flags
from adm.errors import CheckpointError
from adm.nn.pretrained import read_state_dict


def _kind_of_flags(flags: dict) -> str:
    if "large_size" in flags or "small_size" in flags:
        return "ADM_U"
    if any(k.startswith("classifier_") for k in flags):
        return "ADM_classifier"
    return "ADM"


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    preset: str | dict | None = None,
    dtype=None,
) -> tuple[Path, str]:
    """Convert `checkpoint`; `preset` is a preset name, a flag string/dict, or None (recognised from shapes).

    Returns (out_dir, description of what the checkpoint was recognised as).
    """
    sd = read_state_dict(checkpoint)
    if preset is None:
        name = presets.identify(sd)
        if name is None:
            raise CheckpointError(
                f"{checkpoint}: its state_dict matches no released preset; pass the preset name or its "
                "guided-diffusion flags"
            )
        model, what = presets.build(name), name
    elif isinstance(preset, str) and not preset.lstrip().startswith("--"):
        model, what = presets.build(preset), preset
    else:
        flags = parse_flags(preset) if isinstance(preset, str) else dict(preset)
        kind = _kind_of_flags(flags)
        model = presets._model_class(kind)(config_from_flags(flags, kind=kind))
        what = presets.identify(sd) or f"custom {kind}"
    model.load_checked(sd, str(checkpoint))
    model.save_pretrained(out_dir, dtype=dtype, extra={"source": os.path.basename(str(checkpoint)), "preset": what})
    return Path(out_dir), what
