"""`adm sample`: images from a preset, checkpoint or run directory, guided by a classifier (ADM-G) or
classifier-free, optionally upsampled by ADM-U (the paper's cascade); PNGs, a grid and the paper's .npz."""
from __future__ import annotations

import argparse
import math

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
    parse_labels,
    parse_seeds,
    png_name,
    produce,
    split_flags,
    writable_dir,
    write_json_file,
)
from adm.runtime import autocast, parse_device, parse_dtype
from adm.sampling import SAMPLERS
from adm.sampling.registry import names as sampler_names
from adm.data.images import save_png
from adm.errors import ConfigError

# The upsampler of a cascade draws its noise from seed + this, a stream apart from the base image's.
UPSAMPLE_SEED_OFFSET = 1 << 32
# Autoguidance's weight w when --guide-model comes without --scale: adm's choice (w = 1 would be no
# guidance); no sweep of w has been run here.
DEFAULT_GUIDE_SCALE = 2.0

EPILOG = """examples:
  # the paper's ADM-G at 256x256: 250 DDPM steps, classifier scale 1.0 (downloads both checkpoints)
  adm sample --preset ADM_diffusion_256_conditioned --pretrained --classifier ADM_classifier_256 --scale 1.0 \\
      --num 16 --labels 207,360,387,974 --out samples/adm256

  # official files with guided-diffusion's flag strings
  adm sample --checkpoint 64x64_diffusion.pt --flags "$MODEL_FLAGS" \\
      --classifier 64x64_classifier.pt --classifier-flags "$CLASSIFIER_FLAGS" --scale 1.0 --num 64

  # a training run directory (its exported EMA model), classes 0-9, 100 fixed seeds, 25 DDIM steps
  adm sample --model runs/fmnist --labels 0-9 --seed 0-99 --sampler ddim --steps 25 --out samples/fmnist

  # classifier-free guidance (a model trained with label dropout)
  adm sample --model runs/fmnist --cfg-scale 3 --num 64 --sampler ddim --steps 50

  # EDM's Heun sampler (35 model calls = 18 steps), classifier guidance only at sigma in [0.3, 5]
  adm sample --preset ADM_diffusion_64_conditioned --pretrained --classifier ADM_classifier_64 --scale 1.0 \\
      --sampler heun --steps 35 --guidance-interval 0.3,5 --num 16

  # autoguidance by a weaker model of the same family (weight w = --scale), EDM's stochastic sampler
  adm sample --model runs/fmnist --guide-model runs/fmnist-small --scale 2 --sampler edm --steps 63 --churn 10

  # the cascade ADM-G 128 + ADM-U 128->512 in one call
  adm sample --preset ADM_diffusion_128_conditioned --pretrained --classifier ADM_classifier_128 --scale 0.5 \\
      --upsample ADM_U_128_512 --num 8

  # 50,000 images for FID on 8 GPUs (the same images as one process; a rerun resumes)
  torchrun --nproc_per_node 8 -m adm sample --preset ADM_diffusion_64_conditioned --pretrained \\
      --classifier ADM_classifier_64 --num 50000 --batch-size 256 --out samples/fid64

Output: OUT/<seed>.png (e.g. 000042.png), OUT/grid.png, OUT/samples_NxHxWxC.npz (arr_0 uint8 NHWC,
arr_1 labels) and OUT/samples.json (settings and the label of each seed). Image i uses its own seed,
so --seed 0-63 gives the same images with any --batch-size or number of processes.
"""


def register(subparsers) -> None:
    p = add_parser(
        subparsers, "sample", help="sample images (guided, classifier-free, or the cascade with an upsampler)",
        description="Sample images from a diffusion model: a preset, a saved model or training run directory, or "
        "an official .pt with its flags. Classifier guidance (--classifier, --scale) or classifier-free guidance "
        "(--cfg-scale); --upsample adds ADM-U (the paper's cascade).",
        epilog=EPILOG,
    )
    g = p.add_argument_group("model (one of)")
    g.add_argument("--model", metavar="SRC", help="saved model or training run directory, .pt/.safetensors file, "
                   "or preset name (its released weights)")
    g.add_argument("--preset", metavar="NAME", help="a preset architecture; weights from --pretrained or --checkpoint")
    g.add_argument("--pretrained", action="store_true", help="the preset's released weights (downloaded and cached)")
    g.add_argument("--checkpoint", metavar="PATH", help="weights file (for --preset, or alone with --flags)")
    g.add_argument("--flags", metavar="STR", help='guided-diffusion flags of a .pt: "$MODEL_FLAGS" (may also hold '
                   "$SAMPLE_FLAGS, --model_path, --classifier_scale, --use_ddim: they set the matching options)")
    g = p.add_argument_group("guidance")
    g.add_argument("--classifier", metavar="SRC", help="noisy classifier: preset, directory, .pt file, or 'auto' "
                   "(the preset's recommended one)")
    g.add_argument("--classifier-flags", metavar="STR", help="guided-diffusion CLASSIFIER_FLAGS of a classifier .pt "
                   "(image_size defaults to the model's)")
    g.add_argument("--scale", type=float, help="classifier guidance scale (default: the preset's, else 1.0); with "
                   f"--guide-model the autoguidance weight w (default {DEFAULT_GUIDE_SCALE:g})")
    g.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale w (1: plain conditional)")
    g.add_argument("--guide-model", metavar="SRC", help="autoguidance (Karras et al. 2024): a weaker ADM of the "
                   "same family (same image size, classes and diffusion; loaded as --model); D_bad + w (D - D_bad)")
    g.add_argument("--guidance-interval", metavar="LO,HI", help="guide only at noise levels sigma = "
                   "sqrt((1 - abar) / abar) in [LO, HI] ('0.3,5'; HI may be 'inf'), for every guidance and sampler")
    g = p.add_argument_group("sampling")
    g.add_argument("--sampler", choices=list(SAMPLERS), help="default: the preset's, else ddpm; "
                   + "; ".join(f"{s.name}: {s.description}" for s in SAMPLERS.values()))
    g.add_argument("--steps", help="model calls (int, every sampler), a respacing ('250', 'ddim25', '10,15,20', "
                   "'logsnr11'), 'karrasK' (K Karras noise levels, sigma-frame samplers) or 'all' (default: the "
                   "preset's, else " + ", ".join(f"{s.default_steps} {s.name}" for s in SAMPLERS.values()) + ")")
    g.add_argument("--churn", type=float, help=f"EDM's S_churn for {', '.join(sampler_names(churn=True))} "
                   "(default: 0; edm: 40 per 256 steps, EDM's ImageNet-64 setting)")
    g.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default 0)")
    g.add_argument("--no-clip", action="store_true", help="do not clamp x_0 predictions to [-1, 1] "
                   "(guided-diffusion's --clip_denoised False)")
    g = p.add_argument_group("images")
    g.add_argument("-n", "--num", type=int, help="number of images (seeds S..S+num-1 for --seed S; default 16; "
                   "write -n under torchrun, whose parser mistakes --num)")
    g.add_argument("--seed", help="per-image seeds: S, a list or ranges like 0-63,100 (default 0)")
    g.add_argument("--labels", help="class labels, cycled over the images: '3', '0,3,5', '0-9' or 'random' (default)")
    g.add_argument("--batch-size", type=int, help="images per model call (default 16)")
    g = p.add_argument_group("cascade")
    g.add_argument("--upsample", metavar="SRC",
                   help="ADM-U upsampler (preset, directory or .pt) applied to every image")
    g.add_argument("--upsample-flags", metavar="STR", help="guided-diffusion SR flags of an upsampler .pt")
    g.add_argument("--upsample-sampler", choices=list(SAMPLERS), help="default: ddpm")
    g.add_argument("--upsample-steps", help="upsampler steps (default: the preset's, else the sampler's: "
                   + ", ".join(f"{s.default_steps} {s.name}" for s in SAMPLERS.values()) + ")")
    g = p.add_argument_group("output")
    g.add_argument("--out", default="samples", help="output directory (default ./samples)")
    g.add_argument("--grid", type=int, default=64, help="images in grid.png (default 64, 0: no grid)")
    g.add_argument("--overwrite", action="store_true", help="remake images already in --out (default: skip them)")
    add_runtime_args(p)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model and classifier (eager after a warning if the compiler fails)")
    p.set_defaults(func=run_sample)


# -- choosing models and settings -----------------------------------------------------------------
def apply_script_flags(args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """Split --flags / --classifier-flags / --upsample-flags into network flags, and let the sampling-script
    flags inside them (--model_path, --classifier_scale, $SAMPLE_FLAGS, ...) fill options not given."""
    model_flags, script = split_flags(args.flags)
    clf_flags, clf_script = split_flags(args.classifier_flags)
    up_flags, _ = split_flags(args.upsample_flags)
    script = {**clf_script, **script}
    if not (args.model or args.preset or args.checkpoint):
        args.checkpoint = script.get("model_path")
    args.classifier = args.classifier or script.get("classifier_path")
    if args.scale is None and args.classifier:
        args.scale = script.get("classifier_scale")
    if args.steps is None and script.get("timestep_respacing"):
        args.steps = script["timestep_respacing"]
    if args.sampler is None and script.get("use_ddim"):
        args.sampler = "ddim"
    if args.num is None:
        args.num = script.get("num_samples")
    if args.batch_size is None:
        args.batch_size = script.get("batch_size", 16)
    if script.get("clip_denoised") is False:
        args.no_clip = True
    if clf_flags and "image_size" not in clf_flags and "image_size" in model_flags:
        clf_flags["image_size"] = model_flags["image_size"]  # guided-diffusion shares one --image_size
    return model_flags, clf_flags, up_flags


def load_base(args: argparse.Namespace, flags: dict, device):
    """The diffusion model from --model, --preset (+ --pretrained/--checkpoint) or --checkpoint (+ --flags)."""
    if args.model and (args.preset or args.checkpoint):
        raise ConfigError(
            "give either --model, or --preset with --pretrained/--checkpoint, or --checkpoint with --flags"
        )
    if args.preset:
        if not (args.pretrained or args.checkpoint):
            raise ConfigError(f"--preset {args.preset} needs weights: add --pretrained (download) or --checkpoint FILE")
        if args.pretrained and args.checkpoint:
            raise ConfigError("give --pretrained or --checkpoint, not both")
        return load_model(args.preset, ("ADM",), flags=flags, checkpoint=args.checkpoint, device=device)
    if args.model:
        return load_model(args.model, ("ADM",), flags=flags, device=device)
    if args.checkpoint:
        return load_model(None, ("ADM",), flags=flags, checkpoint=args.checkpoint, device=device)
    raise ConfigError("no model: give --model DIR, --preset NAME --pretrained, or --checkpoint FILE [--flags ...]")


def load_classifier(args: argparse.Namespace, base, flags: dict, device):
    """The noisy classifier of --classifier ('auto': the base preset's recommended one), checked against the model."""
    if not args.classifier:
        if args.classifier_flags:
            raise ConfigError("--classifier-flags needs --classifier FILE.pt")
        return None
    source = args.classifier
    if source == "auto":
        source = base.sample_settings().get("classifier")
        if source is None:
            raise ConfigError("--classifier auto: the model is not a preset with a recommended classifier")
    if flags and "image_size" not in flags:
        flags = {**flags, "image_size": base.model.config.image_size}
    clf = load_model(source, ("ADM_classifier",), flags=flags, what="--classifier", device=device)
    m, c = base.model.config, clf.model.config
    if (c.image_size, c.in_channels) != (m.image_size, m.in_channels):
        raise ConfigError(
            f"the classifier takes {c.image_size}x{c.image_size}x{c.in_channels} images but the model makes "
            f"{m.image_size}x{m.image_size}x{m.in_channels}"
        )
    return clf


def load_guide(args: argparse.Namespace, base, classifier, device):
    """Autoguidance's weaker model of --guide-model (loaded as --model is), checked against the model."""
    if not args.guide_model:
        return None
    if classifier is not None:
        raise ConfigError("--guide-model (autoguidance) and --classifier (classifier guidance) do not combine: "
                          "choose one")
    if args.cfg_scale is not None:
        raise ConfigError("--guide-model (autoguidance, weight --scale) and --cfg-scale do not combine: choose one")
    from adm.guided import check_guide_model

    guide = load_model(args.guide_model, ("ADM",), what="--guide-model", device=device)
    check_guide_model(base.model, guide.model, "--guide-model")
    return guide


def parse_interval(text: str | None) -> tuple[float, float] | None:
    """'0.3,5' -> (0.3, 5.0); HI may be 'inf'. None when not given."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"--guidance-interval {text!r}: expected two noise levels LO,HI such as 0.3,5") from None
    if math.isnan(lo) or math.isnan(hi) or lo < 0:
        raise ConfigError(f"--guidance-interval {text!r}: the noise levels must be numbers >= 0")
    if lo > hi:
        raise ConfigError(f"--guidance-interval {text!r}: LO ({lo:g}) is above HI ({hi:g})")
    return lo, hi


def load_upsampler(args: argparse.Namespace, base, flags: dict, device):
    """The ADM-U of --upsample, checked against the base model's image size."""
    if not args.upsample:
        if args.upsample_flags:
            raise ConfigError("--upsample-flags needs --upsample FILE.pt")
        return None
    up = load_model(args.upsample, ("ADM_U",), flags=flags, what="--upsample", device=device)
    m, u = base.model.config, up.model.config
    if (u.small_size, u.in_channels) != (m.image_size, m.in_channels):
        raise ConfigError(
            f"the upsampler takes {u.small_size}x{u.small_size}x{u.in_channels} images but the model makes "
            f"{m.image_size}x{m.image_size}x{m.in_channels}"
        )
    return up


def sampler_and_steps(sampler: str | None, steps: str | None, loaded, diffusion_steps: int) -> tuple[str, str]:
    """(sampler, respacing spec): the user's choice, else the preset's settings, else the sampler's default."""
    from adm.sampling import get_sampler

    preset = loaded.sample_settings()
    chosen = sampler or preset.get("sampler", "ddpm")
    value: int | str | None = None
    if isinstance(steps, str):
        text = steps.strip().lower()
        value = "" if text == "all" else int(text) if text.isdigit() else steps.strip()
        if value == 0:
            raise ConfigError("--steps must be at least 1 (or 'all')")
    elif chosen == preset.get("sampler"):
        value = preset.get("steps")
    return chosen, get_sampler(chosen).respacing(value, diffusion_steps)


def model_calls(sampler: str, diffusion_steps: int, respacing: str) -> int:
    from adm.sampling import get_sampler

    return get_sampler(sampler).model_calls(diffusion_steps, respacing)


def guidance_scale(args: argparse.Namespace, base, classifier, guide=None) -> float:
    """The scale ADM_G applies: classifier guidance's s, autoguidance's w, or classifier-free w (1.0: none)."""
    if guide is not None:
        scale = DEFAULT_GUIDE_SCALE if args.scale is None else args.scale
        if not scale >= 0:
            raise ConfigError(f"--scale (the autoguidance weight) must be >= 0, got {scale:g}")
        return scale
    if args.scale is not None and classifier is None:
        raise ConfigError("--scale is the classifier guidance scale: add --classifier (or use --cfg-scale, "
                          "or --guide-model for autoguidance)")
    if args.cfg_scale is not None:
        if classifier is not None:
            raise ConfigError("--cfg-scale is classifier-free guidance: drop --classifier (or use --scale)")
        if getattr(base.model, "null_label", None) is None:
            raise ConfigError(
                "--cfg-scale needs a model trained with label dropout (null_class); this one was not: "
                "use --classifier with --scale"
            )
        if base.extra.get("label_dropout") == 0 and args.cfg_scale != 1.0:
            raise ConfigError(
                f"--cfg-scale: {base.source} has a null label but was trained with --label-dropout 0, so the "
                "null label was never trained; retrain with --label-dropout 0.1 or use --classifier with --scale"
            )
        return args.cfg_scale
    if classifier is not None:
        return args.scale if args.scale is not None else float(base.sample_settings().get("classifier_scale", 1.0))
    return 1.0


def sampling_plan(args, base, classifier, up, scale: float,
                  labels: list[int] | None, guide=None) -> dict:
    """The settings of this run (recorded in samples.json), plus the step counts for the progress bar.
    The churn (sigma-frame samplers with one), --guidance-interval and --guide-model are recorded when
    they apply, so that the settings of runs without them read as before."""
    sampler, respacing = sampler_and_steps(args.sampler, args.steps, base, base.model.config.diffusion.steps)
    from adm.sampling import get_sampler

    chosen = get_sampler(sampler)
    if args.eta and not chosen.takes_eta:
        raise ConfigError(f"--eta applies to --sampler {' / '.join(n for n, s in SAMPLERS.items() if s.takes_eta)}")
    if args.churn is not None and chosen.churn is None:
        raise ConfigError(f"--churn applies to --sampler {' / '.join(sampler_names(churn=True))}, not {sampler}")
    if args.churn is not None and not 0 <= args.churn < float("inf"):
        raise ConfigError(f"--churn must be a number >= 0, got {args.churn:g}")
    interval = parse_interval(args.guidance_interval)
    if interval is not None and classifier is None and guide is None and args.cfg_scale is None:
        raise ConfigError("--guidance-interval limits a guidance: add --classifier, --cfg-scale or --guide-model")
    plan = {
        "model": base.source, "classifier": classifier.source if classifier else None,
        "scale": scale if classifier or guide else None, "cfg_scale": args.cfg_scale,
        "sampler": sampler, "steps": respacing, "eta": args.eta, "clip": not args.no_clip, "dtype": args.dtype,
        "upsample": up.source if up else None,
        "base_steps": model_calls(sampler, base.model.config.diffusion.steps, respacing),
    }
    settings = chosen.churn_settings(base.model.config.diffusion.steps, respacing, args.churn)
    if settings is not None:
        plan["churn"] = settings["s_churn"]
    if interval is not None:  # JSON has no infinity: an open end is null
        plan["guidance_interval"] = [v if v != float("inf") else None for v in interval]
    if guide is not None:
        plan["guide_model"] = guide.source
    if up is not None:
        if up.model.config.num_classes and labels is None:
            raise ConfigError("the upsampler is class-conditional but the base samples have no labels")
        up_sampler, up_respacing = sampler_and_steps(args.upsample_sampler, args.upsample_steps, up,
                                                     up.model.config.diffusion.steps)
        plan.update(upsample_sampler=up_sampler, upsample_steps=up_respacing,
                    up_steps=model_calls(up_sampler, up.model.config.diffusion.steps, up_respacing))
    return plan


# -- the command ----------------------------------------------------------------------------------
def batch_maker(args, guided, up, plan: dict, out, device, dtype, progress: Progress):
    """make(seeds, labels) -> uint8 [B, H, W, C]: ADM-G samples, then ADM-U's when there is an upsampler."""
    from adm.data import to_uint8
    from adm.guided import upsample

    share = 0.5 if up is not None else 1.0  # of the progress bar, per stage

    def make(keys: list[int], ys: list[int] | None) -> np.ndarray:
        y = torch.tensor(ys) if ys is not None else None
        with autocast(device, dtype):
            x = guided.sample(y, n=len(keys), steps=plan["steps"], sampler=plan["sampler"], seed=keys, eta=args.eta,
                              churn=args.churn, guidance_interval=parse_interval(args.guidance_interval),
                              clip_denoised=not args.no_clip, device=device, channels_last=args.channels_last,
                              callback=progress.callback(len(keys), plan["base_steps"], share))
        images = to_uint8(x)
        if up is None:
            return images
        for k, image in zip(keys, images):  # ADM-U gets the 8-bit images, as from the paper's .npz
            save_png(out / "low_res" / png_name(k), image)
        with autocast(device, dtype):
            x = upsample(up.model, torch.from_numpy(images), y if up.model.config.num_classes else None,
                         steps=plan["upsample_steps"], sampler=plan["upsample_sampler"],
                         seed=[k + UPSAMPLE_SEED_OFFSET for k in keys], clip_denoised=not args.no_clip,
                         device=device, channels_last=args.channels_last,
                         callback=progress.callback(len(keys), plan["up_steps"], share))
        return to_uint8(x)

    return make


def run_sample(args: argparse.Namespace) -> int:
    """Sample the seeds of this process that are not yet in --out, then (rank 0) the grid and .npz."""
    from adm.guided import ADM_G
    from adm.train.distributed import barrier, gather_objects, teardown

    dtype = parse_dtype(args.dtype)
    model_flags, clf_flags, up_flags = apply_script_flags(args)
    if args.num is not None and args.num < 1:
        raise ConfigError(f"--num must be at least 1, got {args.num}")
    single = args.seed is None or args.seed.strip().isdigit()
    seeds = parse_seeds(args.seed, args.num if args.num is not None else 16 if single else None)
    ctx = dist_context(parse_device(args.device))
    try:
        device = ctx.device
        base = load_base(args, model_flags, device)
        classifier = load_classifier(args, base, clf_flags, device)
        guide = load_guide(args, base, classifier, device)
        up = load_upsampler(args, base, up_flags, device)
        scale = guidance_scale(args, base, classifier, guide)
        guided = ADM_G(base.model, classifier.model if classifier else None, scale=scale, compile=args.compile,
                       guide_model=guide.model if guide else None)
        labels = parse_labels(args.labels, seeds, guided.num_classes, "the classifier" if classifier else "the model")
        plan = sampling_plan(args, base, classifier, up, scale, labels, guide)
        label_of = dict(zip(seeds, labels if labels is not None else [None] * len(seeds)))

        out = writable_dir(args.out)
        settings = {k: v for k, v in plan.items() if k not in ("base_steps", "up_steps")}  # counts aside
        manifest = check_manifest(out, settings, label_of, args.overwrite)
        if ctx.is_main:
            write_json_file(out / MANIFEST_NAME, manifest)
        if up is not None:
            (out / "low_res").mkdir(exist_ok=True)

        mine = seeds[ctx.rank :: ctx.world_size]  # rank r of K makes seeds[r::K]
        todo = [s for s in mine if args.overwrite or not (out / png_name(s)).is_file()]
        desc = f"sample [rank {ctx.rank}/{ctx.world_size}]" if ctx.enabled else "sample"
        progress = Progress(len(todo), desc, enabled=not args.no_progress and ctx.is_main)
        produce(out, todo, label_of, args.batch_size, batch_maker(args, guided, up, plan, out, device, dtype, progress))
        progress.close()
        made = sum(gather_objects(ctx, len(todo)))
        barrier(ctx)
        if ctx.is_main:
            npz, grid = finish_outputs(out, seeds, labels, args.grid)
            n = len(seeds)
            print(f"{n} image{'s' * (n != 1)} in {out} ({made} new, {n - made} already there)")
            if grid is not None:
                print(f"grid: {grid}")
            print(f"npz:  {npz}")
    finally:
        teardown(ctx)
    return 0
