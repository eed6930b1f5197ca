"""Copy trained demo weights into the package, in float16.

    python3 scripts/ship_demo_weights.py --model RUN_DIR_OR_CHECKPOINT [--ema RATE] [--classifier RUN_DIR_OR_CHECKPOINT]

Each source is anything adm.hub.load takes: a run directory (its exported EMA weights, RUN_DIR/model), a
training checkpoint (RUN_DIR/checkpoints/step_*.pt: its first EMA rate, or --ema RATE) or a saved model directory. The
config must equal the preset's; the step, images seen and EMA rate go into config.json's "extra". The
weights land in adm/weights/{demo_fashion_mnist,classifier_demo_fashion_mnist}/.

A run started from other weights (`adm train --init-from`, what scripts/demo_train.sh does when its run
directory is new) counts the images those weights had seen too: images_seen = the run's init_images_seen
+ step x batch, and init_from records where they came from.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from adm.hub import load, presets
from adm.train.state import load_checkpoint

WEIGHTS = Path(__file__).resolve().parent.parent / "adm" / "weights"


def _training(source: Path, state: dict | None, ema_rate: float | None) -> dict:
    """What the run says about these weights: data, batch, EMA rate, step, images seen ({} for a bare
    model directory). `state`: the training checkpoint `source` holds, if it is one."""
    if state is not None:
        cfg, step = json.loads(state["config"]), int(state["step"])
    elif (source / "model" / "config.json").is_file():  # a run directory
        cfg = json.loads((source / "config.json").read_text())
        step = int(json.loads((source / "model" / "config.json").read_text())["extra"]["step"])
    else:
        return {}
    out = {"trainer": cfg["trainer"], "data": cfg["data"], "step": step, "batch_size": cfg["batch_size"],
           "images_seen": cfg.get("init_images_seen", 0) + step * cfg["batch_size"],
           "ema_rate": ema_rate if ema_rate is not None else (cfg.get("ema") or [None])[0]}
    if cfg.get("init_from"):
        out["init_from"] = cfg["init_from"]
    if cfg["trainer"] == "diffusion":
        out["label_dropout"] = cfg.get("label_dropout", 0.0)
    return out


def ship(source: str, kind: str, preset: str, ema: float | None = None) -> None:
    path = Path(source)
    state = load_checkpoint(path) if path.is_file() and path.suffix == ".pt" else None
    loaded = load(source, (kind,))
    if ema is not None:  # another EMA rate of a training checkpoint than its first
        averages = (state or {}).get("ema", {})
        rate = next((k for k in averages if float(k) == ema), None)
        if rate is None:
            raise SystemExit(f"{source}: --ema needs a training checkpoint with EMA rate {ema:g} "
                             f"(it has: {', '.join(map(str, averages)) or 'none'})")
        loaded.model.load_state_dict(averages[rate])
    expected = presets.get(preset).config
    if loaded.model.config != expected:
        raise SystemExit(f"{source}: config differs from the preset {preset}")
    shipped = json.loads((WEIGHTS / presets.get(preset).shipped / "config.json").read_text())["extra"]
    extra = {"preset": preset, **_training(path, state, ema),
             "class_names": loaded.class_names or list(shipped.get("class_names", []))}
    out = WEIGHTS / presets.get(preset).shipped
    loaded.model.save_pretrained(out, dtype=torch.float16, extra=extra)
    print(f"{preset}: {loaded.model.num_parameters():,} parameters, {extra} -> {out}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="the diffusion model's run directory, checkpoint or model directory")
    p.add_argument("--ema", type=float, help="the EMA rate to ship from a training checkpoint (default: its first)")
    p.add_argument("--classifier", help="the noisy classifier's (default: keep the shipped one)")
    args = p.parse_args()
    if args.model:
        ship(args.model, "ADM", "ADM_demo_fashion_mnist", args.ema)
    if args.classifier:
        ship(args.classifier, "ADM_classifier", "ADM_classifier_demo_fashion_mnist")
