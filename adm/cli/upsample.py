"""`adm upsample`: ADM-U over a batch of low-resolution images (an .npz, a samples directory or a folder)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from adm.cli.common import (
    MANIFEST_NAME,
    Progress,
    add_parser,
    add_runtime_args,
    check_manifest,
    dist_context,
    finish_outputs,
    load_model,
    load_pngs,
    parse_int_list,
    png_name,
    produce,
    read_json_file,
    split_flags,
    writable_dir,
    write_json_file,
)
from adm.runtime import autocast, parse_device, parse_dtype
from adm.sampling import SAMPLERS
from adm.cli.sample import UPSAMPLE_SEED_OFFSET, model_calls, sampler_and_steps
from adm.errors import ConfigError, DataError

EPILOG = """examples:
  # the paper's 64 -> 256 upsampler over base samples in the paper's .npz format (labels from arr_1)
  adm upsample samples/adm64/samples_64x64x64x3.npz --model ADM_U_64_256 --out samples/adm256

  # an `adm sample` output directory: its PNGs and labels (the same images as `adm sample --upsample`)
  adm upsample samples/adm64 --model ADM_U_64_256 --out samples/adm64-up

  # a folder of images (class sub-folders give labels; or set them), 25 DDIM steps
  adm upsample low_res_pngs/ --model models/upsampler --labels 207 --sampler ddim --steps 25

  # an official .pt with guided-diffusion's flags
  adm upsample base.npz --model 64_256_upsampler.pt --flags "$SR_FLAGS"

Output: OUT/<index>.png, OUT/grid.png, OUT/upsampled_NxHxWxC.npz (arr_0, arr_1 labels) and
OUT/samples.json. Image k (an input index, or the seed in an `adm sample` directory) draws its noise
from seed S+k+2**32 (S = --seed, default 0); a rerun skips the PNGs already written.
"""


def register(subparsers) -> None:
    p = add_parser(
        subparsers, "upsample", help="upsample low-resolution images with ADM-U",
        description="Upsample a batch of low-resolution images with ADM-U, the paper's super-resolution model: "
        "an .npz (arr_0 uint8 NHWC, arr_1 labels), an `adm sample` output directory, or a folder of images.",
        epilog=EPILOG,
    )
    p.add_argument("input", nargs="?", help=".npz file, `adm sample` output directory, or image folder")
    p.add_argument("--model", metavar="SRC", help="ADM-U: preset, saved directory, run directory or .pt")
    p.add_argument("--flags", metavar="STR", help="guided-diffusion SR flags of a .pt upsampler (may also hold "
                   "--model_path, --base_samples and $SAMPLE_FLAGS: they set the matching options)")
    p.add_argument("--labels", help="labels for a class-conditional upsampler when the input has none: "
                   "'3', '0,3,5' or '0-9', cycled over the images")
    p.add_argument("--num", type=int, help="upsample only the first N images")
    p.add_argument("--seed", type=int, default=0, help="image k draws its noise from seed S+k+2**32, the stream "
                   "`adm sample --upsample` uses (default 0)")
    p.add_argument("--sampler", choices=list(SAMPLERS), help="default: ddpm")
    p.add_argument("--steps", help="model calls, respacing or 'all' (default: the preset's, else the sampler's: "
                   + ", ".join(f"{s.default_steps} {s.name}" for s in SAMPLERS.values()) + ")")
    p.add_argument("--batch-size", type=int, help="images per model call (default 8)")
    p.add_argument("--no-clip", action="store_true", help="do not clamp x_0 predictions to [-1, 1]")
    p.add_argument("--out", default="upsampled", help="output directory (default ./upsampled)")
    p.add_argument("--grid", type=int, default=64, help="images in grid.png (default 64, 0: no grid)")
    p.add_argument("--overwrite", action="store_true", help="remake images already in --out")
    add_runtime_args(p)
    p.set_defaults(func=run_upsample)


def read_low_res(source: str, size: int, channels: int) -> tuple[list[int], np.ndarray, list[int] | None]:
    """(keys, uint8 [N, h, w, C] images, labels or None) of an .npz, an `adm sample` directory or a folder."""
    from adm.data import load_dataset, load_npz, to_uint8

    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (expected an .npz, an `adm sample` directory or images)")
    if path.is_file():
        images, labels = load_npz(path)
        keys = list(range(len(images)))
        labels = None if labels is None else labels.tolist()
    elif (path / MANIFEST_NAME).is_file():
        record = read_json_file(path / MANIFEST_NAME).get("labels") or {}
        keys = sorted(int(k) for k in record if (path / png_name(int(k))).is_file())
        if not keys:
            raise DataError(f"{path}: its {MANIFEST_NAME} lists no images that exist")
        images = load_pngs([path / png_name(k) for k in keys])
        labels = None if record[str(keys[0])] is None else [int(record[str(k)]) for k in keys]
    else:
        data = load_dataset(str(path), size, channels=channels)
        xs = torch.stack([data[i][0] for i in range(len(data))])
        images = to_uint8(xs)
        keys = list(range(len(images)))
        labels = data.labels.tolist() if data.class_names else None
    if len(images) == 0:
        raise DataError(f"{path}: holds no images")
    n, h, w, c = images.shape
    if (h, w, c) != (size, size, channels):
        raise DataError(f"{path}: images are {h}x{w}x{c} but the upsampler takes {size}x{size}x{channels}")
    return keys, images, labels


def run_upsample(args: argparse.Namespace) -> int:
    """Upsample the images of args.input that are not yet in --out, then write the grid and .npz."""
    from adm.data import to_uint8
    from adm.guided import upsample
    from adm.train.distributed import barrier, gather_objects, teardown

    dtype = parse_dtype(args.dtype)
    flags, script = split_flags(args.flags)
    args.model = args.model or script.get("model_path")
    args.input = args.input or script.get("base_samples")
    args.steps = args.steps or script.get("timestep_respacing") or None
    args.sampler = args.sampler or ("ddim" if script.get("use_ddim") else None)
    args.num = args.num if args.num is not None else script.get("num_samples")
    args.batch_size = args.batch_size or script.get("batch_size", 8)
    args.no_clip = args.no_clip or script.get("clip_denoised") is False
    if not args.model:
        raise ConfigError("no upsampler: give --model (a preset such as ADM_U_64_256, a directory or a .pt)")
    if not args.input:
        raise ConfigError("no input: give the low-resolution .npz, samples directory or image folder")
    ctx = dist_context(parse_device(args.device))
    try:
        device = ctx.device
        up = load_model(args.model, ("ADM_U",), flags=flags, what="--model", device=device)
        cfg = up.model.config
        keys, images, labels = read_low_res(args.input, cfg.small_size, cfg.in_channels)
        if args.num is not None:
            if args.num < 1:
                raise ConfigError(f"--num must be at least 1, got {args.num}")
            keys, images = keys[: args.num], images[: args.num]
            labels = labels[: args.num] if labels is not None else None
        if not cfg.num_classes:
            if args.labels:
                raise ConfigError("the upsampler is unconditional: it takes no --labels")
            labels = None
        elif args.labels:
            given = parse_int_list(args.labels, "label")
            labels = [given[i % len(given)] for i in range(len(keys))]
        elif labels is None:
            raise ConfigError(f"the upsampler is class-conditional ({cfg.num_classes} classes) and {args.input} has "
                              "no labels: pass --labels")
        if labels is not None and max(labels) >= cfg.num_classes:
            raise ConfigError(f"label {max(labels)} out of range: the upsampler has {cfg.num_classes} classes "
                              f"(0..{cfg.num_classes - 1})")
        sampler, respacing = sampler_and_steps(args.sampler, args.steps, up, cfg.diffusion.steps)
        label_of = dict(zip(keys, labels if labels is not None else [None] * len(keys)))
        low_of = dict(zip(keys, images))

        out = writable_dir(args.out)
        if out.resolve() == Path(args.input).resolve():
            raise ConfigError("--out must differ from the input directory")
        settings = {"input": str(Path(args.input).resolve()), "model": up.source, "sampler": sampler,
                    "steps": respacing, "seed": args.seed, "clip": not args.no_clip, "dtype": args.dtype}
        manifest = check_manifest(out, settings, label_of, args.overwrite)
        if ctx.is_main:
            write_json_file(out / MANIFEST_NAME, manifest)
        mine = keys[ctx.rank :: ctx.world_size]
        todo = [k for k in mine if args.overwrite or not (out / png_name(k)).is_file()]
        steps = model_calls(sampler, cfg.diffusion.steps, respacing)
        progress = Progress(len(todo), "upsample", enabled=not args.no_progress and ctx.is_main)

        def make(part: list[int], ys: list[int] | None) -> np.ndarray:
            low = torch.from_numpy(np.stack([low_of[k] for k in part]))
            with autocast(device, dtype):
                x = upsample(up.model, low, ys, steps=respacing, sampler=sampler,
                             seed=[args.seed + k + UPSAMPLE_SEED_OFFSET for k in part], clip_denoised=not args.no_clip,
                             callback=progress.callback(len(part), steps), device=device,
                             channels_last=args.channels_last)
            return to_uint8(x)

        produce(out, todo, label_of, args.batch_size, make)
        progress.close()
        made = sum(gather_objects(ctx, len(todo)))
        barrier(ctx)
        if ctx.is_main:
            npz, grid = finish_outputs(out, keys, labels, args.grid, prefix="upsampled")
            print(f"{len(keys)} images upsampled to {cfg.image_size}x{cfg.image_size} in {out} "
                  f"({made} new, {len(keys) - made} already there)")
            if grid is not None:
                print(f"grid: {grid}")
            print(f"npz:  {npz}")
    finally:
        teardown(ctx)
    return 0
