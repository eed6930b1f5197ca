"""adm benchmarks: UNet forward, classifier-guided DDIM sampling, training step, peak memory.

    python3 benchmarks/run.py                     # CPU, small config and the 64x64 preset (a few minutes)
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
    extra: dict = field(default_factory=dict)


def plan_for(config: str, device: torch.device, quick: bool, reps: int | None) -> Plan:
    if device.type == "cuda":
        p = {"small": Plan([1, 8], [10, 10], 8, 25, 5, 32, 5, 32, min_time=0.05),
             "64x64": Plan([1, 8], [10, 10], 8, 25, 3, 16, 5, 16, min_time=0.1)}[config]
    else:
        p = {"small": Plan([1, 8], [5, 5], 4, 10, 3, 8, 3, 8),
             "64x64": Plan([1, 8], [3, 1], 1, 2, 2, 1, 2, 1)}[config]
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
        self.peaks = report.card_peaks(device)

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
        ref = timings.get("fp32")
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
    def run_config(self, config: str) -> None:
        args, dev = self.args, self.device
        plan = plan_for(config, dev, args.quick, args.reps)
        t0 = time.perf_counter()
        model, clf = build_pair(config, dev)
        print(f"\n== {config}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M-parameter UNet, "
              f"{sum(p.numel() for p in clf.parameters()) / 1e6:.1f}M-parameter classifier "
              f"(built in {time.perf_counter() - t0:.1f} s)", flush=True)
        mv = Variants(model, dev, args.compile_mode)
        cv = Variants(clf, dev, args.compile_mode)
        only = set(args.only.split(","))

        if "forward" in only:
            modes = self.modes(config, "forward")
            for batch, reps in zip(plan.forward_batches, plan.forward_reps):
                if self.over_budget(f"{config} forward batch {batch}"):
                    break
                flops = forward_flops(model, batch, dev)
                make = forward_task(mv, batch, dev)
                tms = self.timed(make, [mv], modes, reps, plan.min_time)
                self.add_rows("forward", config, batch, tms, batch, flops, report.output_deviation,
                              mv.fallbacks, {"gflop_per_image": flops / batch / 1e9})

        if "sample" in only and not self.over_budget(f"{config} sample"):
            modes = self.modes(config, "sample")
            b, steps = plan.sample_batch, plan.sample_steps
            flops = guided_step_flops(model, clf, b, dev) * steps
            make = sample_task(mv, cv, b, steps, dev)
            tms = self.timed(make, [mv, cv], modes, plan.sample_reps, 0.0)
            self.add_rows("sample", config, b, tms, b, flops, report.sample_deviation,
                          {**mv.fallbacks, **cv.fallbacks}, {"steps": steps})

        if "train" in only and not self.over_budget(f"{config} train"):
            modes = self.modes(config, "train")
            b = plan.train_batch
            flops = train_flops(model, b, dev)
            make = train_task(mv, b, dev)
            tms = self.timed(make, [mv], modes, plan.train_reps, plan.min_time)
            self.add_rows("train", config, b, tms, b, flops, lambda a, b: {}, mv.fallbacks)
            mv.train(False)

        if "profile" in only and config == "64x64" and not args.no_profile and not self.over_budget("profile"):
            self.profiles.update(report.profile_forward(mv, dev, ["fp32", self.fastest(config)]))
        del mv, cv, model, clf
        if dev.type == "cuda":
            torch.cuda.empty_cache()

        if "memory" in only and not self.over_budget(f"{config} memory"):
            self.run_memory(config, plan.memory_batch)

    def fastest(self, config: str) -> str:
        """The fastest adm mode of the batch-8 forward table whose output stays close to fp32."""
        rows = [r for r in self.rows if r["task"] == "forward" and r["config"] == config and r["times"]
                and not MODES[r["mode"]].official and r.get("rel_error", 1.0) < 1e-2]
        if not rows:
            return "fp32"
        top = max(r["batch"] for r in rows)
        return max((r for r in rows if r["batch"] == top), key=lambda r: r["images_per_s"])["mode"]

    def run_memory(self, config: str, batch: int) -> None:
        variants = ["official", "official-ckpt", "adm", "adm-ckpt"]
        for v in variants:
            if self.over_budget(f"{config} memory {v}"):
                break
            if self.device.type == "cuda":
                r = memory.measure_in_process(config, v, batch, self.device)
                torch.cuda.empty_cache()
            else:
                r = memory.measure_subprocess(config, v, batch, threads=torch.get_num_threads())
            self.memory.append(r)
        report.print_memory([m for m in self.memory if m["config"] == config])


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
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--compile-mode", default=None, help='torch.compile mode, e.g. "max-autotune-no-cudagraphs"')
    p.add_argument("--budget", type=float, default=None,
                   help="seconds after which remaining measurements are skipped (default: 110 on CUDA)")
    p.add_argument("--no-profile", action="store_true", help="skip the torch.profiler table")
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
        args.budget = 110.0
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    quiet_compile_warnings()
    configs = args.configs.split(",") if args.configs else (["small"] if args.quick else ["small", "64x64"])

    runner = Runner(args, device)
    ok, compiler = compiler_available(device)
    meta = {"device": report.device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "compiler": compiler if ok else f"none ({compiler})",
            "peaks_tflops": {k: v / 1e12 for k, v in runner.peaks.items()}, "argv": sys.argv[1:],
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    report.print_header(meta)
    for config in configs:
        runner.run_config(config)
    meta["seconds"] = time.perf_counter() - runner.t_start
    meta["skipped"] = runner.skipped
    report.print_summary(runner.rows, runner.memory, runner.profiles, meta)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": runner.rows, "memory": runner.memory, "profiles": runner.profiles},
                      f, indent=1, default=str)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
