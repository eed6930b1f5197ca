"""What users run, timed end to end: `adm train` on the demo recipe and `adm sample` with guidance.

    python3 benchmarks/product.py                         # both tables, 2 interleaved repetitions (~20 min)
    python3 benchmarks/product.py --only train --steps 40 --reps 3
    python3 benchmarks/product.py --only sample --num 64

Every run is a fresh process (`python -c` calling `adm.cli.main.main`, as the `adm` command does), so
that process-wide settings (threads, the allocator) are what a user gets. Variants:

- `official-fp32`: the networks' forward the official way (benchmarks/official_style.py) in float32,
  what guided-diffusion runs on a CPU (its fp16 path is CUDA-only); adm's loop around it;
- `official-bf16`: the same under adm's bf16 autocast;
- `adm-before`: adm bf16 as it was when the speed issue was filed (ADM_KEEP_CPU_MEMORY=0, the fused
  attention kernel at every length, AdaGN as one broadcasting addcmul);
- `adm-round1`: adm bf16 after the first round of CPU changes (explicit attention up to 128 tokens with
  a float32 softmax, the addcmul AdaGN), emulated by switching this round's changes back;
- `adm-bf16`, `adm-fp32`: the product now;
- `adm-ddp2` (train only, not run by default): `adm train --nproc 2`, two processes (DDP over gloo) that
  share the --threads threads, the same global batch: for a CPU with several cores.

train: images/s of `adm train --preset ADM_demo_fashion_mnist` with the demo campaign's recipe
(scripts/demo_train.sh: batch 64, AdamW, three EMA rates, label dropout) over --steps steps, the
first logging interval (warm-up) left out; the median of the later intervals.
sample: images/s of `adm sample --model ADM_demo_fashion_mnist --classifier auto -n NUM` (the
preset's DDIM-25 with classifier scale 2), wall time of the whole command, start-up included.
Ratios are against official-fp32, paired by repetition (the variants interleaved, the order rotated).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("official-fp32", "official-bf16", "adm-before", "adm-round1", "adm-bf16", "adm-fp32", "adm-ddp2")
TRAIN_ONLY = ("adm-ddp2",)  # `adm sample` has no --nproc
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v not in TRAIN_ONLY)

# One process per run: the variant's switches, then the CLI.
_RUNNER = r"""
import os, sys
variant, argv = sys.argv[1], sys.argv[2:]
if variant in ("adm-before", "adm-round1"):
    import torch
    import adm.nn.layers as L

    def affine(h, weight, bias):  # round 1: AdaGN's broadcasting addcmul on the CPU too
        return torch.addcmul(bias, h, weight)

    def explicit(q, k, v):  # round 1: the softmax through a float32 L x L copy
        weights = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
        return weights.softmax(-1, dtype=torch.float32).to(q.dtype) @ v

    L._low_precision_affine, L._explicit_attention, L.SHORT_ATTENTION = affine, explicit, 128
    if variant == "adm-before":
        os.environ["ADM_KEEP_CPU_MEMORY"] = "0"
        L.SHORT_ATTENTION = 0
import contextlib
ctx = contextlib.nullcontext()
if variant.startswith("official"):
    sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
    from official_style import official_style
    ctx = official_style()
from adm.cli.main import main
with ctx:
    sys.exit(main(argv))
"""

DEMO_RECIPE = ["--preset", "ADM_demo_fashion_mnist", "--batch-size", "64", "--lr", "3e-4", "--warmup", "200",
               "--ema", "0.999,0.9995,0.9999", "--label-dropout", "0.1", "--no-random-flip"]


def dtype_of(variant: str) -> str:
    return "fp32" if variant.endswith("fp32") else "bf16"


def run_variant(variant: str, argv: list[str], threads: int) -> float:
    if variant == "adm-ddp2":  # two processes (torchrun, DDP), the threads shared between them
        argv, threads = [*argv, "--nproc", "2"], max(1, threads // 2)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RUNNER, variant, *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{variant}: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return wall


def train_images_per_s(variant: str, data: str, steps: int, threads: int) -> float:
    log_every = max(1, steps // 4)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run_variant(variant, ["train", "--data", data, "--out", str(run), *DEMO_RECIPE, "--dtype", dtype_of(variant),
                              "--max-steps", str(steps), "--log-every", str(log_every), "--save-every", str(steps),
                              "--sample-every", "0", "--no-progress", "--device", "cpu"], threads)
        rates = [json.loads(line)["images_per_s"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(rates[1:] or rates)


def sample_images_per_s(variant: str, num: int, threads: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        wall = run_variant(variant, ["sample", "--model", "ADM_demo_fashion_mnist", "--classifier", "auto", "--num", str(num),
                                     "--dtype", dtype_of(variant), "--out", str(Path(tmp) / "samples"), "--no-progress",
                                     "--device", "cpu"], threads)
    return num / wall


def table(name: str, measure, variants: list[str], reps: int) -> dict:
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for rep in range(reps):
        order = variants[rep % len(variants):] + variants[:rep % len(variants)]
        for v in order:
            rates[v].append(measure(v))
            print(f"  {name} rep {rep + 1} {v}: {rates[v][-1]:.2f} images/s", file=sys.stderr, flush=True)
    base = "official-fp32" if "official-fp32" in variants else variants[0]
    print(f"\n{name}: images/s (median of {reps}), x {base} (median of paired ratios)")
    print("| variant | images/s | x " + base + " | x adm-before |\n|---|---|---|---|")
    out = {}
    for v in variants:
        ratio = statistics.median(a / b for a, b in zip(rates[v], rates[base]))
        before = (statistics.median(a / b for a, b in zip(rates[v], rates["adm-before"]))
                  if "adm-before" in rates else float("nan"))
        print(f"| {v} | {statistics.median(rates[v]):.2f} | {ratio:.2f} | {before:.2f} |")
        out[v] = {"images_per_s": rates[v], "x_official": ratio, "x_before": before}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="train,sample", help="train, sample or both (comma-separated)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=30, help="training steps per run")
    p.add_argument("--num", type=int, default=32, help="images per sampling run")
    p.add_argument("--data", default="fashion-mnist", help="training data (fashion-mnist needs the Debian package)")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args()
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    print(f"threads {args.threads}; python {sys.version.split()[0]}; variants {', '.join(variants)}")
    results = {}
    only = args.only.split(",")
    if "train" in only:
        results["train"] = table("adm train (demo recipe, batch 64)",
                                 lambda v: train_images_per_s(v, args.data, args.steps, args.threads), variants, args.reps)
    if "sample" in only:
        results["sample"] = table(f"adm sample (demo pair, DDIM-25, classifier scale 2, {args.num} images)",
                                  lambda v: sample_images_per_s(v, args.num, args.threads),
                                  [v for v in variants if v not in TRAIN_ONLY], args.reps)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
