"""`adm train`, `adm train-classifier`, `adm train-upsampler`: thin wrappers over adm.train.train."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from adm.errors import ConfigError
from adm.nn.config import config_class, config_from_dict, config_to_dict
from adm.runtime import DEVICE_HELP, parse_device

EXAMPLES = {
    "diffusion": """\
Trains an ADM diffusion model with the paper's hybrid loss. RUN_DIR gets config.json, checkpoints/,
metrics.jsonl, samples/*.png and model/ (the EMA weights: ADM.from_pretrained("RUN_DIR/model")).
Running the same command again resumes where the last checkpoint stopped.

examples:
  adm train --data fashion-mnist --out runs/fm --max-steps 20000 --save-every 1000 --dtype bf16
  adm train --data my_images/ --out runs/mine --image-size 64 --set channel_mult=1,2,3 --batch-size 64
  adm train --data fashion-mnist --out runs/cfg --label-dropout 0.1 --ema 0.9999,0.999
  adm train --data imgs.npz --out runs/ddp --nproc 4            # 4 processes (torchrun), DDP
""",
    "classifier": """\
Trains the noisy classifier p(y | x_t, t) for classifier guidance: cross-entropy on x_t ~ q(x_t | x_0)
with t uniform over the schedule; metrics.jsonl reports accuracy by quarter of t (acc_q0 .. acc_q3).

examples:
  adm train-classifier --data fashion-mnist --out runs/fm-clf --max-steps 10000 --dtype bf16
""",
    "upsampler": """\
Trains an ADM-U super-resolution model: the low-resolution input is the image area-downsampled to
small_size (as guided-diffusion). Without --preset: the demo model with small_size = image_size / 4.

examples:
  adm train-upsampler --data fashion-mnist --out runs/fm-up --max-steps 10000 --small-size 8
""",
}
COMMANDS = {"diffusion": "train", "classifier": "train-classifier", "upsampler": "train-upsampler"}
DEFAULT_PRESET = {"diffusion": "ADM_demo_fashion_mnist", "classifier": "ADM_classifier_demo_fashion_mnist",
                  "upsampler": "ADM_demo_fashion_mnist"}
# Trainer-specific defaults (the rest: TrainConfig's); guided-diffusion's classifier recipe.
TRAINER_DEFAULTS = {"classifier": {"lr": 3e-4, "weight_decay": 0.05, "ema": ()}}


def register(subparsers) -> None:
    for trainer, name in COMMANDS.items():
        intro, examples = EXAMPLES[trainer].split("\n\n", 1)
        p = subparsers.add_parser(name, help=f"train a {'diffusion model' if trainer == 'diffusion' else trainer}",
                                  description=intro, epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_arguments(p, trainer)
        p.set_defaults(func=run, trainer=trainer, _parser=p)


def _add_arguments(p: argparse.ArgumentParser, trainer: str) -> None:
    # Every training option defaults to None: "not given" (a new run takes the default, a resumed
    # run keeps what config.json says).
    a = p.add_argument
    a("--data", help="fashion-mnist, an image folder (class sub-folders = labels) or an .npz (arr_0 images, arr_1 labels)")
    a("--out", required=True, metavar="RUN_DIR", help="run directory (created; resumed when it holds a run)")
    m = p.add_argument_group("model (default: the Fashion-MNIST demo preset, adapted to the data's channels and classes)")
    m.add_argument("--preset", help="a preset name, e.g. ADM_diffusion_64_conditioned")
    m.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, repeatable: --set model_channels=64 --set channel_mult=1,2 --set noise_schedule=cosine")
    m.add_argument("--init-from", metavar="WEIGHTS",
                   help="start a new run from these weights (a preset, a model or run directory, a weights file): "
                        "the model and its EMA copies, with a fresh optimiser; its config is the run's unless --preset is given")
    m.add_argument("--image-size", type=int, help="image size (the data are resized to it)")
    m.add_argument("--num-channels", type=int, help="base width (model_channels)")
    if trainer == "upsampler":
        m.add_argument("--small-size", type=int, help="low-resolution input size (default: image size / 4)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=int, help="global batch size (default 64)")
    o.add_argument("--microbatch", type=int, help="per-process micro-batch for gradient accumulation (default: whole batch)")
    o.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-4; classifier 3e-4)")
    o.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0; classifier 0.05)")
    o.add_argument("--warmup", type=int, help="linear learning-rate warm-up steps (default 0)")
    o.add_argument("--anneal", choices=("none", "linear", "cosine"), help="learning-rate decay to 0 at --anneal-steps (default none)")
    o.add_argument("--anneal-steps", type=int, help="step where the decay reaches 0 (default: --max-steps)")
    o.add_argument("--ema", help="EMA rates, comma-separated, or 'none' (default 0.9999; classifier none)")
    o.add_argument("--grad-clip", type=float, help="clip the gradient norm (default: no clipping)")
    o.add_argument("--label-dropout", type=float, help="p of training with the null label (classifier-free guidance; needs null_class)")
    o.add_argument("--random-flip", action=argparse.BooleanOptionalAction, default=None, help="random horizontal flips (default on)")
    if trainer == "classifier":
        o.add_argument("--noised", action=argparse.BooleanOptionalAction, default=None, help="train on noisy x_t (default on)")
    if trainer != "classifier":
        o.add_argument("--timestep-sampler", choices=("uniform", "loss-second-moment"),
                       help="how t is drawn (default uniform; loss-second-moment: importance sampling, for L_vlb)")
    o.add_argument("--seed", type=int, help="seed of the weights, data order and noise (default 0)")
    r = p.add_argument_group("run")
    r.add_argument("--max-steps", type=int, help="stop at this step (default 10000)")
    r.add_argument("--save-every", type=int, help="checkpoint every N steps (default 1000)")
    r.add_argument("--keep-every", type=int, help="keep the checkpoints at multiples of N (default: only the latest)")
    r.add_argument("--log-every", type=int, help="metrics every N steps (default 100)")
    r.add_argument("--sample-every", type=int, help="sample grid every N steps (default: at each save; 0: never)")
    r.add_argument("--sample-steps", type=int, help="DDIM steps of the sample grids (default 25)")
    r.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), help="autocast precision (default fp32; fp16 uses a GradScaler)")
    r.add_argument("--grad-checkpoint", action=argparse.BooleanOptionalAction, default=None, help="activation checkpointing (less memory, ~30%% slower)")
    r.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model (faster steps after a minute of compiling)")
    r.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: auto)")
    r.add_argument("--nproc", type=int, help="launch N processes with torch.distributed.run (DDP)")
    r.add_argument("--force", action="store_true", help="delete RUN_DIR's run and start afresh")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")


_TRAIN_FLAGS = ("batch_size", "microbatch", "lr", "weight_decay", "warmup", "anneal", "anneal_steps", "grad_clip",
                "label_dropout", "random_flip", "noised", "seed", "max_steps", "save_every", "keep_every",
                "log_every", "sample_every", "sample_steps", "dtype", "grad_checkpoint", "compile",
                "timestep_sampler")


def parse_ema(text: str) -> tuple[float, ...]:
    if text.strip().lower() in ("", "none", "0"):
        return ()
    try:
        return tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise ConfigError(f"--ema expects rates like 0.9999,0.999 or 'none', got {text!r}") from None


def build_config(args: argparse.Namespace):
    """(TrainConfig, TensorData, init state_dict or None): saved settings (on resume) or defaults,
    then the flags given."""
    from adm.train.config import TrainConfig, read_run_config
    from adm.train.data import load_tensor_data

    trainer = args.trainer
    saved = None if args.force else read_run_config(args.out)
    if saved is not None and saved.trainer != trainer:
        raise ConfigError(f"{args.out} holds a {saved.trainer} run, not a {trainer} run; use another --out or --force")
    train_kw = saved.to_dict() if saved else {"trainer": trainer, **TRAINER_DEFAULTS.get(trainer, {})}
    for name in _TRAIN_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            train_kw[name] = value
    if args.ema is not None:
        train_kw["ema"] = parse_ema(args.ema)
    if args.data is not None:
        train_kw["data"] = _canonical_data(args.data)
    elif saved is None:
        raise ConfigError("--data is required for a new run (fashion-mnist, an image folder or an .npz file)")

    init = None
    if getattr(args, "init_from", None) and saved is None:  # a resumed run continues from its checkpoint
        loaded = _init_weights(args.init_from, trainer)
        init = loaded.model
        train_kw["init_from"] = args.init_from
        train_kw["init_images_seen"] = images_seen(loaded.extra)
    model_cfg, data = _model_and_data(args, trainer, saved, train_kw["data"], load_tensor_data,
                                      None if init is None else init.config)
    train_kw["model"] = config_to_dict(model_cfg)
    return TrainConfig.from_dict(train_kw), data, None if init is None else init.state_dict()


def _init_weights(source: str, trainer: str):
    """The network --init-from names (any source adm.hub.load reads), checked for the trainer's kind."""
    from adm.hub import load
    from adm.train.config import MODEL_KIND

    return load(source, (MODEL_KIND[trainer],), what="--init-from")


def images_seen(extra: dict) -> int:
    """The training images weights have seen, from their config's "extra" (0 when it does not say)."""
    if isinstance(extra.get("images_seen"), int):
        return extra["images_seen"]
    step, batch = extra.get("step"), extra.get("batch_size")
    return step * batch if isinstance(step, int) and isinstance(batch, int) else 0


def _canonical_data(text: str) -> str:
    if text == "fashion-mnist":
        return text
    return str(Path(text).expanduser().resolve())


def _model_and_data(args, trainer: str, saved, source: str, load, init_cfg=None):
    """The model config (preset / saved / --init-from's / default adapted to the data, then overrides)
    and the data."""
    from adm.hub import presets
    from adm.train.config import MODEL_KIND, apply_overrides, parse_set

    kind = MODEL_KIND[trainer]
    overrides = parse_set(args.set)
    for flag, key in (("image_size", "image_size"), ("num_channels", "model_channels"), ("small_size", "small_size")):
        if getattr(args, flag, None) is not None:
            overrides[key] = str(getattr(args, flag))
    adapt = False
    if args.preset:
        preset = presets.get(args.preset)
        if preset.kind != kind:
            raise ConfigError(f"preset {args.preset!r} is a {preset.kind}; `adm {COMMANDS[trainer]}` trains an {kind}")
        base = preset.config
    elif saved is not None:
        base = config_from_dict(saved.model)
    elif init_cfg is not None:
        base = init_cfg
    else:
        base = presets.get(DEFAULT_PRESET[trainer]).config
        if kind == "ADM_U":
            d = base.to_dict()
            size = int(overrides.get("image_size", d["image_size"]))
            base = config_class("ADM_U").from_dict({**d, "small_size": size // 4})
        adapt = source != "fashion-mnist"
    size = int(overrides.get("image_size", base.image_size))
    needs_labels = trainer == "classifier" or base.num_classes > 0
    if "in_channels" in overrides:  # the data are converted to the channels asked for
        channels = int(apply_overrides(base, {"in_channels": overrides["in_channels"]}).in_channels)
    else:
        channels = None if adapt else base.in_channels
    data = load(source, size, channels, class_cond=needs_labels)
    if adapt:  # the default model follows the data: its channels and classes
        channels = int(data.images.shape[1])
        changes = {"in_channels": channels}
        if trainer == "classifier":
            changes["num_classes"] = max(1, data.num_classes)
        else:
            changes["num_classes"] = data.num_classes
            if not data.num_classes:
                changes["null_class"] = False
        base = base.replace(**changes)
    return apply_overrides(base, overrides), data


def run(args: argparse.Namespace) -> int:
    from adm.train import train

    if args.nproc is not None and "WORLD_SIZE" not in os.environ:
        from adm.train.distributed import launch

        return launch(args.nproc, _argv_without_nproc(args))
    cfg, data, init = build_config(args)
    from adm.train.loop import TrainingInterrupted

    device = parse_device(args.device)
    try:
        train(cfg, args.out, device=device, force=args.force, progress=not args.no_progress, data=data, init=init)
    except TrainingInterrupted as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"adm {COMMANDS[args.trainer]}: {e}", file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") == "0":
        print(f"trained to step {cfg.max_steps}: {args.out} (weights: {Path(args.out) / 'model'})")
    return 0


def _argv_without_nproc(args: argparse.Namespace) -> list[str]:
    """The command line of this call without --nproc (for the processes that torchrun starts)."""
    parser: argparse.ArgumentParser = args._parser
    argv = [COMMANDS[args.trainer]]
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "nproc"):
            continue
        value = getattr(args, action.dest, None)
        if value is None or value is False and isinstance(action, argparse._StoreTrueAction):
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            argv.append(flag)
        elif isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(action, argparse._AppendAction):
            for v in value:
                argv += [flag, str(v)]
        else:
            argv += [flag, str(value)]
    return argv
