"""The training loop shared by the three trainers (diffusion model, noisy classifier, upsampler).

Reproducibility: the data order is a function of (seed, epoch); every per-step random draw (t,
noise, flips, label dropout) is made for the whole global batch from one generator that is the same
on every process and saved in checkpoints. So N steps equal N/2 + resume + N/2 bit for bit, and K
processes compute what one process computes with the same global batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

from adm.diffusion.process import Diffusion
from adm.errors import AdmError, CheckpointError, ConfigError, DataError
from adm.nn.compiling import compile_with_fallback
from adm.nn.pretrained import atomic_write_bytes
from adm.train import checkpoint as ckpt
from adm.train.config import TrainConfig, config_differences, read_run_config
from adm.train.data import BatchOrder, TensorData, load_tensor_data
from adm.train.distributed import DistContext, all_reduce_sum, barrier, gather_objects, setup, teardown
from adm.train.ema import EMA, rate_key
from adm.train.objectives import QUARTERS, make_objective

# Data sets smaller than this live on the GPU, indexed there (no loader, no host copies).
DEVICE_DATA_BYTES = 4 * 2**30


class TrainingDiverged(AdmError):
    """Too many non-finite steps in a row."""


def model_class(kind: str) -> type[nn.Module]:
    from adm.nn import ADM, ADM_U, ADM_classifier

    return {"ADM": ADM, "ADM_U": ADM_U, "ADM_classifier": ADM_classifier}[kind]


def train(cfg: TrainConfig, run_dir: str | Path, *, device: str | None = None, force: bool = False,
          progress: bool = True, data: TensorData | None = None) -> Path:
    """Train (or resume) the run in run_dir until cfg.max_steps; returns run_dir.

    Under torchrun each process calls this; only rank 0 writes. `data` replaces loading cfg.data.
    """
    ctx = setup(device)
    try:
        return _train(cfg, Path(run_dir), ctx, force, progress, data)
    finally:
        teardown(ctx)


def prepare_run_dir(cfg: TrainConfig, run_dir: Path, force: bool, is_main: bool) -> None:
    """Check a resumed run's settings against cfg (or clear it with force), then save cfg."""
    saved = read_run_config(run_dir) if not force else None
    if saved is not None:
        diffs = config_differences(saved, cfg)
        if diffs:
            raise ConfigError(
                f"{run_dir} holds a run with other settings ({'; '.join(diffs)}); "
                "run the same command to resume, or add --force to start afresh"
            )
    if not is_main:
        return
    if force:
        for name in (ckpt.CKPT_DIR, "samples", "model"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
        for p in list(run_dir.glob("ema_*")):
            shutil.rmtree(p, ignore_errors=True)
        for name in ("metrics.jsonl", "config.json"):
            (run_dir / name).unlink(missing_ok=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "config.json", (json.dumps(cfg.to_dict(), indent=2) + "\n").encode())
    except OSError as e:
        raise ConfigError(f"cannot write the run directory {run_dir}: {e.strerror or e}") from None


def check_data(cfg: TrainConfig, model_cfg, data: TensorData) -> None:
    """DataError / ConfigError for data the model cannot be trained on."""
    n_model = model_cfg.num_classes
    if cfg.trainer == "classifier" and data.num_classes == 0:
        raise DataError(f"{cfg.data}: has no class labels; a classifier needs labelled data (class sub-folders or labels in the .npz)")
    if n_model and data.num_classes > n_model:
        raise DataError(
            f"{cfg.data}: has {data.num_classes} classes but the model has {n_model}; "
            f"set num_classes (e.g. --set num_classes={data.num_classes})"
        )
    if n_model and len(data) and (int(data.labels.min()) < 0 or int(data.labels.max()) >= n_model):
        raise DataError(f"{cfg.data}: labels outside 0..{n_model - 1}, the model's classes")
    if cfg.label_dropout > 0 and not getattr(model_cfg, "null_class", False):
        raise ConfigError("--label-dropout needs a model with a null label (--set null_class=true, num_classes > 0)")


def _autocast(device: torch.device, dtype: str):
    """A zero-argument callable returning the autocast context of this dtype."""
    if dtype == "fp32":
        return contextlib.nullcontext
    amp = torch.bfloat16 if dtype == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=amp)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of a step: linear warm-up, then none / linear / cosine decay to 0 at anneal_steps."""
    lr = cfg.lr
    if cfg.warmup and step < cfg.warmup:
        lr *= (step + 1) / cfg.warmup
    total = cfg.anneal_steps or cfg.max_steps
    if cfg.anneal != "none":
        frac = min(1.0, max(0.0, (step - cfg.warmup) / max(1, total - cfg.warmup)))
        lr *= (1.0 - frac) if cfg.anneal == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))
    return lr


def _train(cfg: TrainConfig, run_dir: Path, ctx: DistContext, force: bool, progress: bool,
           data: TensorData | None) -> Path:
    device = ctx.device
    model_cfg = cfg.model_config()
    kind = cfg.model["kind"]

    # -- run directory: resume check, config.json -------------------------------------------------
    if ctx.is_main:
        prepare_run_dir(cfg, run_dir, force, True)
    barrier(ctx)
    if not ctx.is_main:
        prepare_run_dir(cfg, run_dir, False, False)
    if ctx.is_main:
        ckpt.remove_stale_temporaries(run_dir)

    # -- data -------------------------------------------------------------------------------------
    if data is None:
        needs_labels = cfg.trainer == "classifier" or model_cfg.num_classes > 0
        data = load_tensor_data(cfg.data, model_cfg.image_size, model_cfg.in_channels, class_cond=needs_labels)
    check_data(cfg, model_cfg, data)
    if cfg.batch_size % ctx.world_size:
        raise ConfigError(f"batch size {cfg.batch_size} is not divisible by the {ctx.world_size} processes")
    local_bs = cfg.batch_size // ctx.world_size
    micro = min(cfg.microbatch or local_bs, local_bs)
    on_device = device.type == "cuda" and data.images.numel() <= DEVICE_DATA_BYTES
    data = data.to(device) if on_device else data
    if device.type == "cuda" and not on_device:
        data = TensorData(data.images.pin_memory(), data.labels.pin_memory(), data.num_classes, data.class_names)
    order = BatchOrder(len(data), cfg.batch_size, cfg.seed, device=data.images.device)

    # -- model, optimiser, EMA, mixed precision ------------------------------------------------------
    torch.manual_seed(cfg.seed)  # the same initial weights on every process
    cls = model_class(kind)
    model = cls(model_cfg.replace(use_checkpoint=cfg.grad_checkpoint)).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    ema = EMA(model, cfg.ema)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "fp16")
    autocast = _autocast(device, cfg.dtype)
    diffusion = _on_device(Diffusion.from_config(model_cfg.diffusion), device)
    objective = make_objective(cfg.trainer, diffusion, model_cfg, cfg.noised)
    T = diffusion.num_timesteps
    gen = torch.Generator(device).manual_seed(cfg.seed)  # per-step draws, identical on all processes
    t_sampler, t_gen = None, torch.Generator().manual_seed(cfg.seed + 1)
    if cfg.timestep_sampler != "uniform" and cfg.trainer != "classifier":
        from adm.diffusion.timestep_sampler import create_timestep_sampler

        t_sampler = create_timestep_sampler(cfg.timestep_sampler, T)  # draws on the host (one sync a step)
    null_label = model_cfg.num_classes if getattr(model_cfg, "null_class", False) else None
    class_cond = cfg.trainer == "classifier" or model_cfg.num_classes > 0

    export = cls(model_cfg).to(device) if ctx.is_main else None  # EMA weights for samples and exports
    # (built before the RNG states are seeded or restored: building draws random numbers)

    # -- resume -----------------------------------------------------------------------------------
    step = 0
    state = ckpt.load_latest(run_dir)
    if state is not None:
        step = int(state["step"])
        model.load_state_dict(state["model"])
        if cfg.ema:
            ema.load_state_dicts(state["ema"])
        opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        gen.set_state(state["rng"]["step_generator"])
        if "timestep_generator" in state["rng"]:
            t_gen.set_state(state["rng"]["timestep_generator"])
        if t_sampler is not None:
            t_sampler.load_state_dict(state["timestep_sampler"])
        ranks = state["rng"]["processes"]
        if len(ranks) == ctx.world_size:
            ckpt.set_rng_state(ranks[ctx.rank])
        else:  # another number of processes: only dropout's stream changes
            torch.manual_seed(cfg.seed * 7919 + ctx.rank + step)
        if ctx.is_main:
            _truncate_metrics(run_dir / "metrics.jsonl", step)
    else:
        torch.manual_seed(cfg.seed * 7919 + ctx.rank)  # dropout differs per process
    train_model: nn.Module = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device] if device.type == "cuda" else None)
    if cfg.compile:  # fewer kernel launches and no Python per layer: small models stop being CPU-bound
        train_model = compile_with_fallback(train_model)  # eager after a warning where no compiler works

    # -- accumulators (on the device: read only every log_every steps) ------------------------------
    n_stats = 1 + len(objective.stat_names)
    sums = torch.zeros(n_stats, QUARTERS, device=device, dtype=torch.float64)
    counts = torch.zeros(QUARTERS, device=device, dtype=torch.float64)
    grad_norm_sum = torch.zeros((), device=device)
    nonfinite = torch.zeros((), device=device)
    streak = torch.zeros((), device=device)  # non-finite steps in a row
    steps_since, t_log = 0, time.perf_counter()
    bar = None
    if progress and ctx.is_main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps, initial=step, unit="step", dynamic_ncols=True,
                   desc=f"train {cfg.trainer}", file=sys.stderr)
    lo, hi = ctx.rank * local_bs, (ctx.rank + 1) * local_bs
    params = [p for p in model.parameters()]

    def export_weights(step: int) -> None:
        """RUN_DIR/ema_<rate>/ for each rate and RUN_DIR/model/ (the first rate, or the raw weights)."""
        extra = {"step": step, "trainer": cfg.trainer, "data": cfg.data, "class_names": list(data.class_names)}
        for i, rate in enumerate(cfg.ema):
            ema.copy_to(export, i).save_pretrained(run_dir / f"ema_{rate_key(rate)}", extra={**extra, "ema_rate": rate})
        if cfg.ema:
            ema.copy_to(export, 0)
        else:
            export.load_state_dict(model.state_dict())
        export.save_pretrained(run_dir / "model", extra={**extra, "ema_rate": cfg.ema[0] if cfg.ema else None})

    def save(step: int) -> None:
        """Checkpoint (every process's RNG state gathered), then the EMA exports; rank 0 writes."""
        rngs = gather_objects(ctx, ckpt.rng_state())
        if ctx.is_main:
            state = {
                "model": model.state_dict(),
                "ema": ema.state_dicts(),
                "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "rng": {"step_generator": gen.get_state(), "timestep_generator": t_gen.get_state(), "processes": rngs},
                "timestep_sampler": t_sampler.state_dict() if t_sampler is not None else {},
                "data": order.position(step),
                "world_size": ctx.world_size,
                "config": json.dumps(cfg.to_dict()),
            }
            keep = bool(cfg.keep_every) and step % cfg.keep_every == 0
            ckpt.save_checkpoint(run_dir, step, state, keep=keep)
            try:
                export_weights(step)
            except OSError as e:
                raise CheckpointError(
                    f"the checkpoint of step {step} is saved, but exporting the weights to {run_dir} failed: "
                    f"{e.strerror or e}"
                ) from None
        barrier(ctx)

    def log(step: int) -> None:
        nonlocal steps_since, t_log
        stats = all_reduce_sum(ctx, torch.cat([sums.flatten(), counts, torch.stack([nonfinite, streak]).double()]))
        stats = stats.cpu()
        if ctx.enabled:
            stats[-1] = stats[-1] / ctx.world_size  # every process has the same streak
        s = stats[: n_stats * QUARTERS].view(n_stats, QUARTERS)
        c = stats[n_stats * QUARTERS : n_stats * QUARTERS + QUARTERS]
        bad, run = int(stats[-2]) // ctx.world_size, int(stats[-1])
        now = time.perf_counter()
        names = ("loss", *objective.stat_names)
        rec = {"step": step, "lr": lr_at(cfg, step - 1)}
        for i, name in enumerate(names):
            rec[name] = float(s[i].sum() / c.sum().clamp(min=1))
            for q in range(QUARTERS):
                if c[q] > 0:
                    rec[f"{name}_q{q}"] = float(s[i, q] / c[q])
        rec["grad_norm"] = float(grad_norm_sum) / max(1, steps_since)
        rec["images_per_s"] = cfg.batch_size * steps_since / max(now - t_log, 1e-9)
        rec["nonfinite_steps"] = bad
        if ctx.is_main:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            if bar is not None:
                post = {"loss": f"{rec['loss']:.4f}", "img/s": f"{rec['images_per_s']:.0f}"}
                if "acc" in rec:
                    post["acc"] = f"{rec['acc']:.3f}"
                bar.set_postfix(post, refresh=False)
            if bad:
                _warn(bar, f"skipped {bad} step(s) with a non-finite loss or gradient before step {step}")
        sums.zero_(), counts.zero_(), grad_norm_sum.zero_(), nonfinite.zero_()
        steps_since, t_log = 0, now
        if run >= cfg.max_nonfinite:
            raise TrainingDiverged(
                f"{run} non-finite steps in a row at step {step}: training diverged; lower --lr, "
                "use --grad-clip or --dtype bf16/fp32, and resume from the last checkpoint"
            )

    def grid(step: int) -> None:
        if not ctx.is_main or cfg.trainer == "classifier":
            return
        ema.copy_to(export, 0) if cfg.ema else export.load_state_dict(model.state_dict())
        path = run_dir / "samples" / f"step_{step:08d}.png"
        from adm.train.samples import sample_grid

        if sample_grid(export, cfg.trainer, data, path, cfg.sample_steps, cfg.seed, autocast) is None:
            _warn(bar, "sample grids skipped: adm.sampling / adm.data.images are not available")

    # -- the loop ---------------------------------------------------------------------------------
    sample_every = cfg.save_every if cfg.sample_every < 0 else cfg.sample_every
    while step < cfg.max_steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)

        # Global batch and its random draws (the same on every process); this process's slice.
        idx = order.indices(step)
        B = cfg.batch_size
        if t_sampler is None:
            t_all, w_all = torch.randint(0, T, (B,), generator=gen, device=device), None
        else:  # importance sampling: p(t) ~ sqrt(E[L_t^2]), each loss weighted by 1 / (T p(t))
            t_all, w_all = (v.to(device) for v in t_sampler.sample(B, generator=t_gen))
        noise_all = torch.randn((B, model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size),
                                generator=gen, device=device)
        flip_all = torch.rand(B, generator=gen, device=device) < 0.5
        drop_all = torch.rand(B, generator=gen, device=device) < cfg.label_dropout
        x, y = data.batch(idx[lo:hi])
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        t, noise = t_all[lo:hi], noise_all[lo:hi]
        w = None if w_all is None else w_all[lo:hi]
        if cfg.random_flip:
            x = torch.where(flip_all[lo:hi, None, None, None], x.flip(3), x)
        if not class_cond:
            y = None
        elif null_label is not None and cfg.label_dropout > 0:
            y = torch.where(drop_all[lo:hi], torch.full_like(y, null_label), y)

        # Forward / backward over micro-batches; the loss is the mean over the global batch.
        local_losses = []
        for m0 in range(0, local_bs, micro):
            m1 = min(m0 + micro, local_bs)
            last = m1 == local_bs
            sync = contextlib.nullcontext() if (last or not ctx.enabled) else train_model.no_sync()
            with sync:
                loss, stats = objective.loss(train_model, x[m0:m1], None if y is None else y[m0:m1],
                                             t[m0:m1], noise[m0:m1], autocast)
                weighted = loss if w is None else loss * w[m0:m1]
                scaler.scale(weighted.sum() / local_bs).backward()
            local_losses.append(loss.detach())
            q = (t[m0:m1] * QUARTERS) // T
            sums.index_add_(1, q, torch.stack([loss.detach(), *stats.values()]).double())
            counts.index_add_(0, q, torch.ones_like(q, dtype=torch.float64))

        if t_sampler is not None:  # every process's finite (t, loss), gathered in rank order
            losses = torch.cat(local_losses)
            ok = torch.isfinite(losses)
            t_sampler.update_with_local_losses(t[ok], losses[ok])

        # Optimiser step: skipped on device (no host sync) when the gradient is not finite.
        scaler.unscale_(opt)
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], foreach=True)
        bad = (~torch.isfinite(norm)).float()
        if scaler.is_enabled():
            scaler.step(opt)  # fused AdamW takes the scaler's found_inf: skips without a sync
            scaler.update()
        else:
            opt.found_inf, opt.grad_scale = bad, None
            opt.step()
            del opt.found_inf, opt.grad_scale
        opt.zero_grad(set_to_none=True)
        ema.update(step)
        grad_norm_sum.add_(torch.nan_to_num(norm, nan=0.0, posinf=0.0))
        nonfinite.add_(bad)
        streak.mul_(bad).add_(bad)
        step += 1
        steps_since += 1
        if bar is not None:
            bar.update(1)

        # Logging, checkpoints, sample grids.
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            log(step)
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            save(step)
        if sample_every > 0 and (step % sample_every == 0 or step == cfg.max_steps):
            grid(step)
    if bar is not None:
        bar.close()
    return run_dir


def _on_device(diffusion: Diffusion, device: torch.device) -> Diffusion:
    """The process with its schedule tables moved to the device once (not at every lookup)."""
    s = diffusion.schedule
    tables = {name: value.to(device) for name, value in s.tables().items()}
    return dataclasses.replace(diffusion, schedule=dataclasses.replace(s, **tables))


def _warn(bar, msg: str) -> None:
    if bar is not None:
        bar.write(f"warning: {msg}", file=sys.stderr)
    else:
        print(f"warning: {msg}", file=sys.stderr)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics after the resumed step (written by a run that was killed before its next save)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    atomic_write_bytes(path, ("\n".join(keep) + "\n").encode() if keep else b"")
