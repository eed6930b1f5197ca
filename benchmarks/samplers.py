"""Guided sampling throughput of DDIM and DPM-Solver++ at their step counts, on the demo models.

    python3 benchmarks/samplers.py [--num 100] [--runs ddim:25,dpmpp2m:8,dpmpp2m:7] [--dtype bf16] [--reps 2]

Both samplers cost one UNet forward plus the classifier gradient per model call; this measures
what the fewer calls buy end to end (ADM_G.sample, classifier scale 2, the shipped weights).
Prints images/s per run (best of --reps, the runs interleaved) and the ratio to the first run.
"""
from __future__ import annotations

import argparse
import time

import torch

import adm
from adm.hub import build_preset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num", type=int, default=100)
    p.add_argument("--runs", default="ddim:25,dpmpp2m:8,dpmpp2m:7", help="sampler:steps, comma-separated")
    p.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    model = build_preset("ADM_demo_fashion_mnist", pretrained=True).to(dev).eval()
    clf = build_preset("ADM_classifier_demo_fashion_mnist", pretrained=True).to(dev).eval()
    guided = adm.ADM_G(model, clf, scale=2.0)
    labels = torch.arange(args.num) % 10
    runs = [(r.split(":")[0], int(r.split(":")[1])) for r in args.runs.split(",")]
    times: dict = {r: [] for r in runs}
    for _ in range(args.reps):
        for sampler, steps in runs:
            t0 = time.perf_counter()
            with torch.autocast(dev.type, torch.bfloat16, enabled=args.dtype == "bf16"):
                guided.sample(labels, steps=steps, sampler=sampler, seed=0, device=dev)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[(sampler, steps)].append(time.perf_counter() - t0)
    base = args.num / min(times[runs[0]])
    print(f"| sampler | model calls | images/s | x {runs[0][0]}-{runs[0][1]} |")
    print("|---|---|---|---|")
    for (sampler, steps), ts in times.items():
        ips = args.num / min(ts)
        print(f"| {sampler} | {steps} | {ips:.2f} | {ips / base:.2f} |")


if __name__ == "__main__":
    main()
