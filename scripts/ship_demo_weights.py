"""Copy the EMA weights of the demo training runs into the package, in float16.

    python3 scripts/ship_demo_weights.py RUN_DIR CLASSIFIER_RUN_DIR

Reads RUN_DIR/model and CLASSIFIER_RUN_DIR/model (save_pretrained directories written by
`adm train` / `adm train-classifier`) and writes adm/weights/{demo_fashion_mnist,classifier_demo_fashion_mnist}/.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from adm.hub import presets
from adm.nn import ADM, ADM_classifier

WEIGHTS = Path(__file__).resolve().parent.parent / "adm" / "weights"


def ship(run_dir: Path, cls, preset: str) -> None:
    src = run_dir / "model"
    model = cls.from_pretrained(src)
    expected = presets.get(preset).config
    if model.config != expected:
        raise SystemExit(f"{src}: config differs from the preset {preset}")
    extra = json.loads((src / "config.json").read_text()).get("extra", {})
    out = WEIGHTS / presets.get(preset).shipped
    model.save_pretrained(out, dtype=torch.float16, extra={"preset": preset, **extra})
    print(f"{preset}: {model.num_parameters():,} parameters, {extra} -> {out}")


if __name__ == "__main__":
    ship(Path(sys.argv[1]), ADM, "ADM_demo_fashion_mnist")
    ship(Path(sys.argv[2]), ADM_classifier, "ADM_classifier_demo_fashion_mnist")
