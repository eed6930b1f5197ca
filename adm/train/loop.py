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
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from torch import nn

from adm.diffusion.process import Diffusion
from adm.errors import AdmError, CheckpointError, ConfigError, DataError
from adm.nn import network_class
from adm.runtime import atomic_write_bytes, autocast, compile_with_fallback, keep_cpu_memory
from adm.train import state as ckpt
from adm.train.config import TrainConfig, config_differences, read_run_config
from adm.train.data import BatchOrder, TensorData, load_tensor_data
from adm.train.distributed import DistContext, all_reduce_sum, barrier, gather_objects, setup, teardown
from adm.train.ema import EMA, rate_key
from adm.train.objectives import QUARTERS, make_objective

# Data sets smaller than this live on the GPU, indexed there (no loader, no host copies).
DEVICE_DATA_BYTES = 4 * 2**30


class TrainingDiverged(AdmError):
    """Too many non-finite steps in a row."""


def train(cfg: TrainConfig, run_dir: str | Path, *, device: str | None = None, force: bool = False,
          progress: bool = True, data: TensorData | None = None,
          init: dict[str, torch.Tensor] | None = None) -> Path:
    """Train (or resume) the run in run_dir until cfg.max_steps; returns run_dir.

    Under torchrun each process calls this; only rank 0 writes. `data` replaces loading cfg.data.
    `init`: a state_dict a new run starts from (the model and every EMA copy; a fresh optimiser);
    ignored when run_dir holds a checkpoint to resume.
    """
    ctx = setup(device)
    if ctx.device.type == "cpu":
        keep_cpu_memory()
    try:
        return _train(cfg, Path(run_dir), ctx, force, progress, data, init)
    finally:
        teardown(ctx)


def check_init_fits(init: dict[str, torch.Tensor], model_cfg, source: str = "") -> None:
    """ConfigError when the run's network has other tensors (names or shapes) than the weights `init`."""
    with torch.device("meta"):  # shapes only, no memory
        want = {k: tuple(v.shape) for k, v in network_class(model_cfg.kind)(model_cfg).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in init.items()}
    diffs = [f"{k}: missing" for k in want if k not in have] + [f"{k}: unexpected" for k in have if k not in want]
    diffs += [f"{k}: {have[k]} (weights) vs {want[k]} (run)" for k in want if k in have and have[k] != want[k]]
    if diffs:
        raise ConfigError(f"--init-from {source or 'weights'}: the weights do not fit this run's network "
                          f"({len(diffs)} tensors differ, e.g. " + "; ".join(diffs[:2]) + "); drop --preset / "
                          "--set to train the weights' own config")


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


class _Interrupt:
    """SIGINT / SIGTERM while training: remember it, so that the loop saves a checkpoint at the end of the
    step and stops (a second Ctrl-C stops at once). Handlers are installed in the main thread only."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "_Interrupt":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # the second one: no more waiting for the step to end
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT / SIGTERM after saving the checkpoint of `step`."""

    def __init__(self, step: int, run_dir: Path):
        super().__init__(f"interrupted at step {step}: checkpoint saved in {run_dir}; "
                         "run the same command again to resume from it")
        self.step = step


def _train(cfg: TrainConfig, run_dir: Path, ctx: DistContext, force: bool, progress: bool,
           data: TensorData | None, init: dict[str, torch.Tensor] | None = None) -> Path:
    with _Interrupt() as interrupt:  # from the start: a signal during set-up stops after the first step
        _Run(cfg, run_dir, ctx, force, progress, data, init).loop(interrupt)
    return run_dir


class _Run:
    """One training run, set up top to bottom in __init__ (run directory, data, networks, optimiser,
    resume), then `loop`: steps, with metrics, checkpoints and sample grids at their intervals."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, ctx: DistContext, force: bool, progress: bool,
                 data: TensorData | None, init: dict[str, torch.Tensor] | None = None):
        self.cfg, self.run_dir, self.ctx = cfg, run_dir, ctx
        device = self.device = ctx.device
        model_cfg = self.model_cfg = cfg.model_config()
        if init is not None:
            check_init_fits(init, model_cfg, cfg.init_from)  # before anything is written

        # -- run directory: resume check, config.json ----------------------------------------------
        if ctx.is_main:
            prepare_run_dir(cfg, run_dir, force, True)
        barrier(ctx)
        if not ctx.is_main:
            prepare_run_dir(cfg, run_dir, False, False)
        if ctx.is_main:
            ckpt.remove_stale_temporaries(run_dir)

        # -- data ----------------------------------------------------------------------------------
        if data is None:
            needs_labels = cfg.trainer == "classifier" or model_cfg.num_classes > 0
            data = load_tensor_data(cfg.data, model_cfg.image_size, model_cfg.in_channels, class_cond=needs_labels)
        check_data(cfg, model_cfg, data)
        if cfg.batch_size % ctx.world_size:
            raise ConfigError(f"batch size {cfg.batch_size} is not divisible by the {ctx.world_size} processes")
        self.local_bs = cfg.batch_size // ctx.world_size
        self.micro = min(cfg.microbatch or self.local_bs, self.local_bs)
        on_device = device.type == "cuda" and data.images.numel() <= DEVICE_DATA_BYTES
        data = data.to(device) if on_device else data
        if device.type == "cuda" and not on_device:
            data = TensorData(data.images.pin_memory(), data.labels.pin_memory(), data.num_classes, data.class_names)
        self.data = data
        self.order = BatchOrder(len(data), cfg.batch_size, cfg.seed, device=data.images.device)

        # -- networks, optimiser, EMA, mixed precision ----------------------------------------------
        torch.manual_seed(cfg.seed)  # the same initial weights on every process
        cls = network_class(cfg.model["kind"])
        self.model = cls(model_cfg.replace(use_checkpoint=cfg.grad_checkpoint)).to(device)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        self.ema = EMA(self.model, cfg.ema)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "fp16")
        self.amp = lambda: autocast(device, cfg.dtype)  # a fresh autocast context per use
        diffusion = _on_device(Diffusion.from_config(model_cfg.diffusion), device)
        self.objective = make_objective(cfg.trainer, diffusion, model_cfg, cfg.noised)
        self.T = diffusion.num_timesteps
        self.gen = torch.Generator(device).manual_seed(cfg.seed)  # per-step draws, identical on all processes
        self.t_sampler, self.t_gen = None, torch.Generator().manual_seed(cfg.seed + 1)
        if cfg.timestep_sampler != "uniform" and cfg.trainer != "classifier":
            from adm.diffusion.timestep_sampler import create_timestep_sampler

            self.t_sampler = create_timestep_sampler(cfg.timestep_sampler, self.T)  # host draws (a sync a step)
        self.null_label = model_cfg.num_classes if getattr(model_cfg, "null_class", False) else None
        self.class_cond = cfg.trainer == "classifier" or model_cfg.num_classes > 0
        # EMA weights for samples and exports (built before the RNG states are seeded or restored:
        # building draws random numbers)
        self.export = cls(model_cfg).to(device) if ctx.is_main else None

        # -- resume --------------------------------------------------------------------------------
        self.step = self._resume(init)
        self.train_model: nn.Module = self.model
        if ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_model = DDP(self.model, device_ids=[device] if device.type == "cuda" else None)
        if cfg.compile:  # fewer kernel launches and no Python per layer: small models stop being CPU-bound
            self.train_model = compile_with_fallback(self.train_model)  # eager where no compiler works

        # -- accumulators (on the device: read only every log_every steps) --------------------------
        self.n_stats = 1 + len(self.objective.stat_names)
        self.sums = torch.zeros(self.n_stats, QUARTERS, device=device, dtype=torch.float64)
        self.counts = torch.zeros(QUARTERS, device=device, dtype=torch.float64)
        self.grad_norm_sum = torch.zeros((), device=device)
        self.nonfinite = torch.zeros((), device=device)
        self.streak = torch.zeros((), device=device)  # non-finite steps in a row
        self.steps_since, self.t_log = 0, time.perf_counter()
        self.bar = None
        if progress and ctx.is_main:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
                            desc=f"train {cfg.trainer}", file=sys.stderr)
        self.params = list(self.model.parameters())

    def _resume(self, init: dict[str, torch.Tensor] | None = None) -> int:
        """Load the latest checkpoint, if any, and return its step (0 for a new run, which starts
        from `init` when given)."""
        cfg, ctx = self.cfg, self.ctx
        state = ckpt.load_latest(self.run_dir)
        if state is None:
            if init is not None:
                self._start_from(init)
            torch.manual_seed(cfg.seed * 7919 + ctx.rank)  # dropout differs per process
            return 0
        step = int(state["step"])
        self.model.load_state_dict(state["model"])
        if cfg.ema:
            self.ema.load_state_dicts(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.gen.set_state(state["rng"]["step_generator"])
        if "timestep_generator" in state["rng"]:
            self.t_gen.set_state(state["rng"]["timestep_generator"])
        if self.t_sampler is not None:
            self.t_sampler.load_state_dict(state["timestep_sampler"])
        ranks = state["rng"]["processes"]
        if len(ranks) == ctx.world_size:
            ckpt.set_rng_state(ranks[ctx.rank])
        else:  # another number of processes: only dropout's stream changes
            torch.manual_seed(cfg.seed * 7919 + ctx.rank + step)
        if ctx.is_main:
            _truncate_metrics(self.run_dir / "metrics.jsonl", step)
            if step < cfg.max_steps:
                _say(None, f"resuming {self.run_dir} from step {step} (its latest checkpoint)")
        return step

    @torch.no_grad()
    def _start_from(self, init: dict[str, torch.Tensor]) -> None:
        """The model and every EMA average set to the weights `init` (checked by check_init_fits)."""
        self.model.load_state_dict(init)
        self.ema = EMA(self.model, self.cfg.ema)
        if self.ctx.is_main:
            _say(None, f"starting {self.run_dir} from the weights of {self.cfg.init_from or 'the given state_dict'}")

    # -- the loop ------------------------------------------------------------------------------------
    def loop(self, interrupt: _Interrupt) -> None:
        cfg = self.cfg
        sample_every = cfg.save_every if cfg.sample_every < 0 else cfg.sample_every
        while self.step < cfg.max_steps:
            self.train_step()
            step = self.step
            logged = step % cfg.log_every == 0 or step == cfg.max_steps
            stop = interrupt.requested and not self.ctx.enabled  # alone: stop at the end of this step
            if logged:
                stop = self.log(step, interrupt.requested) or stop  # several processes agree when they log
            saved = step % cfg.save_every == 0 or step == cfg.max_steps
            if saved or stop:
                self.save(step)
            if sample_every > 0 and (step % sample_every == 0 or step == cfg.max_steps) and not stop:
                self.grid(step)
            if stop:
                if self.bar is not None:
                    self.bar.close()
                raise TrainingInterrupted(step, self.run_dir)
        if self.bar is not None:
            self.bar.close()

    def train_step(self) -> None:
        """One optimiser step on the global batch of self.step."""
        cfg, ctx, device, model_cfg = self.cfg, self.ctx, self.device, self.model_cfg
        step = self.step
        for group in self.opt.param_groups:
            group["lr"] = lr_at(cfg, step)

        # Global batch and its random draws (the same on every process); this process's slice.
        idx = self.order.indices(step)
        B, gen = cfg.batch_size, self.gen
        lo, hi = ctx.rank * self.local_bs, (ctx.rank + 1) * self.local_bs
        if self.t_sampler is None:
            t_all, w_all = torch.randint(0, self.T, (B,), generator=gen, device=device), None
        else:  # importance sampling: p(t) ~ sqrt(E[L_t^2]), each loss weighted by 1 / (T p(t))
            t_all, w_all = (v.to(device) for v in self.t_sampler.sample(B, generator=self.t_gen))
        noise_all = torch.randn((B, model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size),
                                generator=gen, device=device)
        flip_all = torch.rand(B, generator=gen, device=device) < 0.5
        drop_all = torch.rand(B, generator=gen, device=device) < cfg.label_dropout
        x, y = self.data.batch(idx[lo:hi])
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        t, noise = t_all[lo:hi], noise_all[lo:hi]
        w = None if w_all is None else w_all[lo:hi]
        if cfg.random_flip:
            x = torch.where(flip_all[lo:hi, None, None, None], x.flip(3), x)
        if not self.class_cond:
            y = None
        elif self.null_label is not None and cfg.label_dropout > 0:
            y = torch.where(drop_all[lo:hi], torch.full_like(y, self.null_label), y)

        # Forward / backward over micro-batches; the loss is the mean over the global batch.
        local_losses = []
        for m0 in range(0, self.local_bs, self.micro):
            m1 = min(m0 + self.micro, self.local_bs)
            last = m1 == self.local_bs
            sync = contextlib.nullcontext() if (last or not ctx.enabled) else self.train_model.no_sync()
            with sync:
                loss, stats = self.objective.loss(self.train_model, x[m0:m1], None if y is None else y[m0:m1],
                                                  t[m0:m1], noise[m0:m1], self.amp)
                weighted = loss if w is None else loss * w[m0:m1]
                self.scaler.scale(weighted.sum() / self.local_bs).backward()
            local_losses.append(loss.detach())
            q = (t[m0:m1] * QUARTERS) // self.T
            self.sums.index_add_(1, q, torch.stack([loss.detach(), *stats.values()]).double())
            self.counts.index_add_(0, q, torch.ones_like(q, dtype=torch.float64))

        if self.t_sampler is not None:  # every process's finite (t, loss), gathered in rank order
            losses = torch.cat(local_losses)
            ok = torch.isfinite(losses)
            self.t_sampler.update_with_local_losses(t[ok], losses[ok])
        self._optimizer_step()
        self.step += 1
        self.steps_since += 1
        if self.bar is not None:
            self.bar.update(1)

    def _optimizer_step(self) -> None:
        """Clip, step, EMA: skipped on the device (no host sync) when the gradient is not finite."""
        opt, scaler, params = self.opt, self.scaler, self.params
        scaler.unscale_(opt)
        if self.cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip, foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], foreach=True)
        bad = (~torch.isfinite(norm)).float()
        if scaler.is_enabled():
            scaler.step(opt)  # fused AdamW takes the scaler's found_inf: skips without a sync
            scaler.update()
        else:
            # The fused AdamW kernel skips its update where `found_inf` is non-zero: the device-side skip
            # that GradScaler.step uses, through these two attributes of the optimizer (a private protocol
            # of torch.optim's fused implementations), set for this step only.
            opt.found_inf, opt.grad_scale = bad, None
            opt.step()
            del opt.found_inf, opt.grad_scale
        opt.zero_grad(set_to_none=True)
        self.ema.update(self.step)
        self.grad_norm_sum.add_(torch.nan_to_num(norm, nan=0.0, posinf=0.0))
        self.nonfinite.add_(bad)
        self.streak.mul_(bad).add_(bad)

    # -- metrics, checkpoints, exports, grids -------------------------------------------------------
    def log(self, step: int, interrupted: bool = False) -> bool:
        """Append the metrics since the last log to metrics.jsonl; True when any process was interrupted."""
        cfg, ctx = self.cfg, self.ctx
        flags = torch.tensor([float(interrupted)], device=self.device, dtype=torch.float64)
        stats = all_reduce_sum(ctx, torch.cat([self.sums.flatten(), self.counts,
                                               torch.stack([self.nonfinite, self.streak]).double(), flags]))
        stats = stats.cpu()
        stop = bool(stats[-1] > 0)
        stats = stats[:-1]
        if ctx.enabled:
            stats[-1] = stats[-1] / ctx.world_size  # every process has the same streak
        n_stats = self.n_stats
        s = stats[: n_stats * QUARTERS].view(n_stats, QUARTERS)
        c = stats[n_stats * QUARTERS : n_stats * QUARTERS + QUARTERS]
        bad, run = int(stats[-2]) // ctx.world_size, int(stats[-1])
        now = time.perf_counter()
        names = ("loss", *self.objective.stat_names)
        rec = {"step": step, "lr": lr_at(cfg, step - 1)}
        for i, name in enumerate(names):
            rec[name] = float(s[i].sum() / c.sum().clamp(min=1))
            for q in range(QUARTERS):
                if c[q] > 0:
                    rec[f"{name}_q{q}"] = float(s[i, q] / c[q])
        rec["grad_norm"] = float(self.grad_norm_sum) / max(1, self.steps_since)
        rec["images_per_s"] = cfg.batch_size * self.steps_since / max(now - self.t_log, 1e-9)
        rec["nonfinite_steps"] = bad
        if ctx.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            if self.bar is not None:
                post = {"loss": f"{rec['loss']:.4f}", "img/s": f"{rec['images_per_s']:.0f}"}
                if "acc" in rec:
                    post["acc"] = f"{rec['acc']:.3f}"
                self.bar.set_postfix(post, refresh=False)
            if bad:
                _say(self.bar, f"warning: skipped {bad} step(s) with a non-finite loss or gradient before step {step}")
        self.sums.zero_(), self.counts.zero_(), self.grad_norm_sum.zero_(), self.nonfinite.zero_()
        self.steps_since, self.t_log = 0, now
        if run >= cfg.max_nonfinite:
            raise TrainingDiverged(
                f"{run} non-finite steps in a row at step {step}: training diverged; lower --lr, "
                "use --grad-clip or --dtype bf16/fp32, and resume from the last checkpoint"
            )
        return stop

    def save(self, step: int) -> None:
        """Checkpoint (every process's RNG state gathered), then the EMA exports; rank 0 writes."""
        cfg, ctx = self.cfg, self.ctx
        rngs = gather_objects(ctx, ckpt.rng_state())
        if ctx.is_main:
            state = ckpt.checkpoint_state(
                model=self.model.state_dict(), ema=self.ema.state_dicts(), optimizer=self.opt.state_dict(),
                scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {},
                rng={"step_generator": self.gen.get_state(), "timestep_generator": self.t_gen.get_state(),
                     "processes": rngs},
                timestep_sampler=self.t_sampler.state_dict() if self.t_sampler is not None else {},
                data=self.order.position(step), world_size=ctx.world_size, config=cfg.to_dict(),
            )
            keep = bool(cfg.keep_every) and step % cfg.keep_every == 0
            ckpt.save_checkpoint(self.run_dir, step, state, keep=keep)
            try:
                self.export_weights(step)
            except OSError as e:
                raise CheckpointError(
                    f"the checkpoint of step {step} is saved, but exporting the weights to {self.run_dir} failed: "
                    f"{e.strerror or e}"
                ) from None
        barrier(ctx)

    def export_weights(self, step: int) -> None:
        """RUN_DIR/ema_<rate>/ for each rate and RUN_DIR/model/ (the first rate, or the raw weights)."""
        cfg, ema, export = self.cfg, self.ema, self.export
        extra = {"step": step, "trainer": cfg.trainer, "data": cfg.data, "class_names": list(self.data.class_names),
                 "batch_size": cfg.batch_size, "images_seen": cfg.init_images_seen + step * cfg.batch_size}
        if cfg.init_from:
            extra["init_from"] = cfg.init_from
        if cfg.trainer == "diffusion" and self.null_label is not None:
            extra["label_dropout"] = cfg.label_dropout  # 0: the null label was never trained (no CFG)
        for i, rate in enumerate(cfg.ema):
            ema.copy_to(export, i).save_pretrained(self.run_dir / f"ema_{rate_key(rate)}",
                                                   extra={**extra, "ema_rate": rate})
        if cfg.ema:
            ema.copy_to(export, 0)
        else:
            export.load_state_dict(self.model.state_dict())
        export.save_pretrained(self.run_dir / "model", extra={**extra, "ema_rate": cfg.ema[0] if cfg.ema else None})

    def grid(self, step: int) -> None:
        """A sample grid of the exported weights (diffusion models and upsamplers)."""
        if not self.ctx.is_main or self.cfg.trainer == "classifier":
            return
        if self.cfg.ema:
            self.ema.copy_to(self.export, 0)
        else:
            self.export.load_state_dict(self.model.state_dict())
        from adm.train.samples import sample_grid

        path = self.run_dir / "samples" / f"step_{step:08d}.png"
        sample_grid(self.export, self.cfg.trainer, self.data, path, self.cfg.sample_steps, self.cfg.seed, self.amp)


def _on_device(diffusion: Diffusion, device: torch.device) -> Diffusion:
    """The process with its schedule tables moved to the device once (not at every lookup)."""
    s = diffusion.schedule
    tables = {name: value.to(device) for name, value in s.tables().items()}
    return dataclasses.replace(diffusion, schedule=dataclasses.replace(s, **tables))


def _say(bar, msg: str) -> None:
    """One line on stderr (through the progress bar when there is one)."""
    if bar is not None:
        bar.write(msg, file=sys.stderr)
    else:
        print(msg, file=sys.stderr)


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
