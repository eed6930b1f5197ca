"""`adm convert`: an official guided-diffusion .pt, an `adm train` checkpoint or run directory ->
config.json + model.safetensors."""
from __future__ import annotations

import argparse
from pathlib import Path

from adm.cli.common import add_parser, writable_dir
from adm.errors import CheckpointError, ConfigError

CONVERT_EPILOG = """examples:
  adm convert 256x256_diffusion.pt models/adm256            # preset recognised from the weights
  adm convert 64x64_classifier.pt models/cls64 --fp16       # store float16 weights (half the size)
  adm convert my_model.pt models/mine --flags "--image_size 64 --num_channels 128 --class_cond True"
  adm convert lsun_horse_nodropout.pt models/horse --preset ADM_lsun_horse_nodropout
  adm convert runs/fmnist models/fmnist                  # an `adm train` run: its exported EMA weights
"""

def register(subparsers) -> None:
    p = add_parser(
        subparsers, "convert", help="convert an official guided-diffusion .pt into config.json + model.safetensors",
        description="Convert an official guided-diffusion checkpoint (or a state_dict .pt/.safetensors) into an adm "
        "model directory: config.json (the architecture and diffusion settings) + model.safetensors. The preset is "
        "recognised from the weights' shapes; --preset or --flags force it.",
        epilog=CONVERT_EPILOG,
    )
    p.add_argument("checkpoint", help="the .pt (or .safetensors) file, or an `adm train` run directory")
    p.add_argument("out", help="output directory (created)")
    force = p.add_mutually_exclusive_group()
    force.add_argument("--preset", help="the preset the checkpoint is (see `adm info --presets`)")
    force.add_argument("--flags",
                       help="the guided-diffusion MODEL_FLAGS / CLASSIFIER_FLAGS / SR flags it was trained with")
    p.add_argument("--fp16", action="store_true", help="store float16 weights")
    p.set_defaults(func=run_convert)


# -- convert --------------------------------------------------------------------------------------
def run_convert(args: argparse.Namespace) -> int:
    """Convert one checkpoint and print what it was recognised as."""
    import torch

    from adm.cli.info import describe_model_dir, summary
    from adm.hub import convert_checkpoint

    src = Path(args.checkpoint)
    if not src.exists():
        raise CheckpointError(f"checkpoint not found: {src}")
    out = writable_dir(args.out)
    preset = args.preset or args.flags
    if args.flags is not None and not args.flags.strip():
        raise ConfigError("--flags is empty")
    if args.preset is not None:
        from adm.hub.presets import get

        get(args.preset)  # unknown names fail here, with a suggestion
    out_dir, what = convert_checkpoint(src, out, preset=preset, dtype=torch.float16 if args.fp16 else None)
    info = describe_model_dir(out_dir)
    print(f"{src} -> {out_dir} ({what}: {summary(info)})")
    return 0
