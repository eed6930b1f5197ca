"""adm benchmarks: UNet forward, classifier-guided DDIM sampling, training step, peak memory.

    python3 benchmarks/run.py                     # CPU, small config and the 64x64 preset (minutes)
    python3 benchmarks/run.py --quick             # small config only, few repetitions
    python3 benchmarks/run.py --device cuda       # < 2 minutes on an H100
    python3 benchmarks/run.py --only forward,sample --json out.json

Every table compares execution modes of the same random weights, timed interleaved in one process;
"x official" is the median over repetitions of (official-style time / mode time), where official-style
is guided-diffusion's forward pass emulated on the same modules (benchmarks/official_style.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import torch  # noqa: E402

import memory  # noqa: E402
import report  # noqa: E402
from common import (BASELINE, MODES, Variants, build_pair, compiler_available, default_modes,  # noqa: E402
                    interleaved, quiet_compile_warnings, supported)
from tasks import (forward_flops, forward_task, guided_step_flops, sample_task, train_flops,  # noqa: E402
                   train_task)

TASKS = ("forward", "sample", "train", "memory", "profile")
COMPILE_RESERVE_S = 70.0  # budget left that the torch.compile table needs (inductor's first compile)


@dataclass
class Plan:
    """What to run for one configuration on one device."""

    forward_batches: list[int]
    forward_reps: list[int]             # repetitions per forward batch
    sample_batch: int
    sample_steps: int
    sample_reps: int
    train_batch: int
    train_reps: int
    memory_batch: int
    min_time: float = 0.0               # seconds per timed repetition (GPU: several calls)
    compiled: list[str] = field(default_factory=list)  # modes of the closing torch.compile table
    compiled_batch: int = 8


def plan_for(config: str, device: torch.device, quick: bool, reps: int | None) -> Plan:
    if device.type == "cuda":
        p = {"small": Plan([1, 8], [5, 5], 8, 25, 2, 32, 3, 32, min_time=0.05),
             "64x64": Plan([1, 8], [5, 5], 8, 25, 2, 16, 3, 16, min_time=0.1,
                           compiled=["official-fp32", "official-fp16", "fp16-cl", "fp16-cl-compile"])}[config]
    else:
        p = {"small": Plan([1, 8], [5, 5], 4, 10, 3, 8, 3, 8),
             "64x64": Plan([1, 8], [3, 2], 1, 2, 2, 1, 3, 1)}[config]
    if quick:
        p.forward_reps = [3 for _ in p.forward_batches]
        p.sample_reps, p.train_reps = 2, 2
        p.sample_steps = min(p.sample_steps, 5)
    if reps:
        p.forward_reps = [reps for _ in p.forward_batches]
        p.sample_reps = p.train_reps = reps
    return p


class Runner:
    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args, self.device = args, device
        self.t_start = time.perf_counter()
        self.rows: list[dict] = []
        self.memory: list[dict] = []
        self.profiles: dict[str, list] = {}
        self.skipped: list[str] = []
        self.failures: list[dict] = []
        self.peaks = report.card_peaks(device)

    def time_left(self) -> float:
        return (self.args.budget or float("inf")) - (time.perf_counter() - self.t_start)

    # -- helpers ------------------------------------------------------------------------------------
    def over_budget(self, what: str) -> bool:
        if self.args.budget and time.perf_counter() - self.t_start > self.args.budget:
            self.skipped.append(what)
            print(f"  (skipped {what}: over the {self.args.budget:.0f} s budget)", flush=True)
            return True
        return False

    def modes(self, config: str, task: str) -> list[str]:
        wanted = self.args.modes.split(",") if self.args.modes else default_modes(self.device, config, task)
        unknown = [m for m in wanted if m not in MODES]
        if unknown:
            raise SystemExit(f"unknown modes: {', '.join(unknown)} (known: {', '.join(MODES)})")
        modes = [m for m in wanted if supported(MODES[m], self.device)]
        if BASELINE not in modes:
            modes.insert(0, BASELINE)
        return modes

    def timed(self, make, variants: list[Variants], modes: list[str], reps: int, min_time: float) -> dict:
        def on_error(name: str, error: BaseException):
            if not MODES[name].compile:
                return None
            for v in variants:
                v.fall_back(MODES[name], error)
            return make(name)

        fns = {name: make(name) for name in modes}
        return interleaved(fns, self.device, reps=reps, warmup=1, baseline=BASELINE, min_time=min_time,
                           on_error=on_error)

    def add_rows(self, task: str, config: str, batch: int, timings: dict, images_per_call: int,
                 flops: int | None, deviation, fallbacks: dict, extra: dict | None = None) -> None:
        ref = timings.get("fp32") or timings.get(BASELINE)
        for name, tm in timings.items():
            row = {"task": task, "config": config, "batch": batch, "mode": name, "seconds": tm.median,
                   "images_per_s": images_per_call / tm.median if tm.times else None,
                   "x_official": tm.ratio, "first_call_s": tm.first, "reps": len(tm.times),
                   "times": tm.times, "error": tm.error or None, "fallback": fallbacks.get(name)}
            if flops and tm.times:
                row["tflops"] = flops / tm.median / 1e12
                peak = report.peak_for(self.peaks, MODES[name])
                row["peak_fraction"] = row["tflops"] * 1e12 / peak if peak else None
            if ref is not None and ref.output is not None and tm.output is not None:
                row.update(deviation(tm.output, ref.output))
            row.update(extra or {})
            self.rows.append(row)
        report.print_task(self.rows, task, config, batch, self.device)

    # -- tasks --------------------------------------------------------------------------------------
    def guarded(self, what: str, fn, *args) -> None:
        """Run one measurement; a failure is reported and recorded, and the others still run."""
        if self.over_budget(what):
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - one broken table must not lose the others
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            self.failures.append({"what": what, "error": msg})
            print(f"  ({what} failed: {msg})", flush=True)
            if self.args.strict:
                raise

    def run_config(self, config: str) -> None:
        args, dev = self.args, self.device
        plan = plan_for(config, dev, args.quick, args.reps)
        plan.sample_steps = args.steps or plan.sample_steps
        t0 = time.perf_counter()
        model, clf = build_pair(config, dev)
        print(f"\n== {config}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M-parameter UNet, "
              f"{sum(p.numel() for p in clf.parameters()) / 1e6:.1f}M-parameter classifier "
              f"(built in {time.perf_counter() - t0:.1f} s)", flush=True)
        mv = Variants(model, dev, args.compile_mode)
        cv = Variants(clf, dev, args.compile_mode)
        only = set(args.only.split(","))
        if "forward" in only:
            for batch, reps in zip(plan.forward_batches, plan.forward_reps):
                self.guarded(f"{config} forward batch {batch}", self.forward, config, mv, batch, reps, plan.min_time)
        if "sample" in only:
            self.guarded(f"{config} sample", self.sample, config, mv, cv, plan)
        if "train" in only:
            self.guarded(f"{config} train", self.train, config, mv, plan)
            mv.train(False)
        if "profile" in only and config == "64x64" and not args.no_profile:
            batch = 8 if dev.type == "cuda" else 1
            self.guarded("profile", lambda: self.profiles.update(
                report.profile_forward(mv, dev, ["fp32", self.fastest(config)], batch=batch)))
        del cv, clf
        if "memory" in only:
            self.run_memory(config, plan.memory_batch)
        if "forward" in only and plan.compiled and not args.modes:
            if self.time_left() < COMPILE_RESERVE_S:
                self.skipped.append(f"{config} torch.compile table")
                print(f"\n  (skipped the torch.compile table: {max(self.time_left(), 0):.0f} s of budget left; "
                      f"for it run: python3 benchmarks/run.py --device {dev} --configs {config} --only forward "
                      f"--modes {','.join(plan.compiled)})", flush=True)
            else:
                self.guarded(f"{config} torch.compile table", self.forward, config, mv, plan.compiled_batch,
                             plan.forward_reps[-1], plan.min_time, plan.compiled, "compiled")
        del mv, model
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    def forward(self, config: str, mv: Variants, batch: int, reps: int, min_time: float,
                modes: list[str] | None = None, task: str = "forward") -> None:
        modes = [m for m in modes if supported(MODES[m], self.device)] if modes else self.modes(config, "forward")
        flops = forward_flops(mv.base, batch, self.device)
        tms = self.timed(forward_task(mv, batch, self.device), [mv], modes, reps, min_time)
        self.add_rows(task, config, batch, tms, batch, flops, report.output_deviation, mv.fallbacks,
                      {"gflop_per_image": flops / batch / 1e9})

    def sample(self, config: str, mv: Variants, cv: Variants, plan: Plan) -> None:
        b, steps = plan.sample_batch, plan.sample_steps
        flops = guided_step_flops(mv.base, cv.base, b, self.device) * steps
        tms = self.timed(sample_task(mv, cv, b, steps, self.device), [mv, cv], self.modes(config, "sample"),
                         plan.sample_reps, 0.0)
        self.add_rows("sample", config, b, tms, b, flops, report.sample_deviation,
                      {**mv.fallbacks, **cv.fallbacks}, {"steps": steps})

    def train(self, config: str, mv: Variants, plan: Plan) -> None:
        b = plan.train_batch
        flops = train_flops(mv.base, b, self.device)
        tms = self.timed(train_task(mv, b, self.device), [mv], self.modes(config, "train"), plan.train_reps,
                         plan.min_time)
        self.add_rows("train", config, b, tms, b, flops, lambda out, ref: {}, mv.fallbacks)

    def fastest(self, config: str) -> str:
        """The fastest adm mode of the batch-8 forward table whose output stays close to fp32."""
        rows = [r for r in self.rows if r["task"] == "forward" and r["config"] == config and r["times"]
                and not MODES[r["mode"]].official and r.get("rel_error", 1.0) < 2e-2]
        if not rows:
            return "fp32"
        top = max(r["batch"] for r in rows)
        return max((r for r in rows if r["batch"] == top), key=lambda r: r["images_per_s"])["mode"]

    def run_memory(self, config: str, batch: int) -> None:
        for v in ["official", "official-ckpt", "adm", "adm-ckpt"]:
            self.guarded(f"{config} memory {v}", self.memory_variant, config, v, batch)
        report.print_memory([m for m in self.memory if m["config"] == config])

    def memory_variant(self, config: str, variant: str, batch: int) -> None:
        if self.device.type == "cuda":
            r = memory.measure_in_process(config, variant, batch, self.device)
            torch.cuda.empty_cache()
        else:
            r = memory.measure_subprocess(config, variant, batch, threads=torch.get_num_threads())
        self.memory.append(r)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="adm speed and memory benchmarks",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--quick", action="store_true", help="the small configuration only, few repetitions")
    p.add_argument("--only", default="forward,sample,train,memory,profile",
                   help="comma-separated subset of: " + ", ".join(TASKS))
    p.add_argument("--configs", default=None, help="comma-separated: small, 64x64 (default: both; --quick: small)")
    p.add_argument("--modes", default=None, help="comma-separated modes instead of the defaults: " + ", ".join(MODES))
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps of the sampling table")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--compile-mode", default=None, help='torch.compile mode, e.g. "max-autotune-no-cudagraphs"')
    p.add_argument("--budget", type=float, default=None,
                   help="seconds after which remaining measurements are skipped (default: 110 on CUDA)")
    p.add_argument("--no-profile", action="store_true", help="skip the torch.profiler table")
    p.add_argument("--strict", action="store_true", help="stop at the first failing measurement")
    p.add_argument("--json", default=None, help="write every number to this file")
    args = p.parse_args(argv)
    bad = set(args.only.split(",")) - set(TASKS)
    if bad:
        p.error(f"--only: unknown {', '.join(sorted(bad))}")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.budget is None and device.type == "cuda":
        args.budget = 100.0  # the whole run stays under 2 minutes
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    quiet_compile_warnings()
    # On a GPU the 64x64 preset first: it is what the budget is for.
    default = ["64x64", "small"] if device.type == "cuda" else ["small", "64x64"]
    configs = args.configs.split(",") if args.configs else (["small"] if args.quick else default)

    runner = Runner(args, device)
    ok, compiler = compiler_available(device)
    meta = {"device": report.device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "compiler": compiler if ok else f"none ({compiler})",
            "peaks_tflops": {k: v / 1e12 for k, v in runner.peaks.items()}, "argv": sys.argv[1:],
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    report.print_header(meta)
    load = meta["load_average"][0] if meta["load_average"] else 0.0
    if device.type == "cpu" and torch.get_num_threads() > 1 and load > (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: with {torch.get_num_threads()} threads "
              "each parallel operator waits for descheduled OpenMP workers and timings swing by 10x or more; "
              "--threads 1 measures the same ratios reliably")
    try:
        for config in configs:
            runner.guarded(f"{config}", runner.run_config, config)
    finally:  # whatever was measured is printed and saved
        meta["seconds"] = time.perf_counter() - runner.t_start
        meta["skipped"], meta["failures"] = runner.skipped, runner.failures
        report.print_summary(runner.rows, runner.memory, runner.profiles, meta)
        write_json(args.json, meta, runner)


def write_json(path: str | None, meta: dict, runner: Runner) -> None:
    if path:
        with open(path, "w") as f:
            json.dump({"meta": meta, "rows": runner.rows, "memory": runner.memory, "profiles": runner.profiles},
                      f, indent=1, default=str)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
