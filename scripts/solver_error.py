"""How far few-step samplers land from the exact solution of the guided probability-flow ODE.

    python3 scripts/solver_error.py [--num 32] [--calls 6,8,10,12,15] [--scale 2] [--json out.json]

The demo diffusion model and classifier (classifier guidance at --scale), the same starting noise
for every sampler; the reference is DPM-Solver++(2M) with --ref-calls model calls on the log-SNR
spacing. Printed: the mean absolute difference to the reference in 8-bit levels, for DDIM (its
paper's stride) and DPM-Solver++ on evenly spaced timesteps ("N+1") and on the log-SNR spacing
("logsnrN+1"). This is how adm chose the log-SNR spacing for DPM-Solver++ (docs/guidance.md); FID
remains the measure of quality, this only measures the solver.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import adm
from adm.hub import build_preset
from adm.diffusion.process import Diffusion
from adm.sampling import classifier_guidance, get_sampler


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num", type=int, default=32)
    p.add_argument("--calls", default="6,8,10,12,15")
    p.add_argument("--ddim", default="10,25", help="DDIM step counts to compare")
    p.add_argument("--ref-calls", type=int, default=200)
    p.add_argument("--scale", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args()

    model = build_preset("ADM_demo_fashion_mnist", pretrained=True).eval()
    clf = build_preset("ADM_classifier_demo_fashion_mnist", pretrained=True).eval()
    cfg = model.config
    x_T = torch.randn(args.num, cfg.in_channels, cfg.image_size, cfg.image_size,
                      generator=torch.Generator().manual_seed(args.seed))
    y = torch.arange(args.num) % cfg.num_classes
    cond_fn = classifier_guidance(clf, args.scale, labels=y) if args.scale > 0 else None

    def run(sampler: str, spec: str) -> torch.Tensor:
        diffusion = Diffusion.from_config(cfg.diffusion, spec)
        return get_sampler(sampler)(model, diffusion, x_T.clone(), cond_fn=cond_fn, model_kwargs={"y": y}).clamp(-1, 1)

    t0 = time.time()
    ref = run("dpmpp2m", f"logsnr{args.ref_calls + 1}")
    print(f"reference: DPM-Solver++ logsnr{args.ref_calls + 1} ({time.time() - t0:.0f} s)", flush=True)
    err = lambda x: float((x - ref).abs().mean() * 127.5)
    rows = []
    for n in [int(v) for v in args.ddim.split(",") if v]:
        rows.append({"sampler": "ddim", "spacing": f"ddim{n}", "calls": n, "levels": err(run("ddim", f"ddim{n}"))})
        print(rows[-1], flush=True)
    for n in [int(v) for v in args.calls.split(",") if v]:
        for spacing in (str(n + 1), f"logsnr{n + 1}"):
            rows.append({"sampler": "dpmpp2m", "spacing": spacing, "calls": n, "levels": err(run("dpmpp2m", spacing))})
            print(rows[-1], flush=True)
    print("\n| sampler | spacing | model calls | mean difference to the reference (8-bit levels) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | `{r['spacing']}` | {r['calls']} | {r['levels']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "adm": adm.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    with torch.no_grad():
        main()
