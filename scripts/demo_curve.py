"""The demo model's learning curve: FID / precision / recall / clean-classifier accuracy against images seen.

    python3 scripts/demo_curve.py evaluate RUN_DIR --classifier CLF --clean clean_clf.pt --json docs/demo_curve.json \
        [--steps 2000,4000] [--num 2000] [--samples DIR] [--run-name NAME]
    python3 scripts/demo_curve.py report docs/demo_curve.json --plot docs/demo_curve.png

`evaluate` takes the training checkpoints of RUN_DIR (RUN_DIR/checkpoints/step_*.pt; `--keep-every` keeps
them) at the given steps (default: all), the EMA weights each exports (the run's first rate), and samples
`--num` images with the demo preset's own settings (adm.hub.presets.DEMO_SAMPLING: sampler, model calls,
guidance), seeds 0..N-1 with label = seed mod 10, as docs/guidance.md does. Each point is measured with the
real FID Inception against the Fashion-MNIST test set, plus the accuracy of an independently trained clean
classifier (`scripts/guidance_sweep.py clean-classifier`). Points are keyed by images seen; those already in
the JSON are kept. A run that started from earlier weights (`adm train --init-from`, as the campaign does when
its run directory is gone) counts the images those weights had seen (its config's init_images_seen).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch

import adm
import adm.data
from adm.hub import load
from adm.hub.presets import DEMO_SAMPLING
from adm.train.state import list_checkpoints

HERE = Path(__file__).resolve().parent


def _sweep_module():
    spec = importlib.util.spec_from_file_location("guidance_sweep", HERE / "guidance_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sample(model, classifier, settings: dict, num: int, batch_size: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC samples of seeds 0..num-1 (label = seed mod 10) and their labels."""
    from adm.runtime import autocast

    guided = adm.ADM_G(model, classifier, scale=settings["classifier_scale"])
    seeds = list(range(num))
    labels = torch.tensor([s % 10 for s in seeds])
    chunks = []
    for i in range(0, num, batch_size):
        with autocast("cpu", dtype):
            x = guided.sample(labels[i:i + batch_size], steps=settings["steps"], sampler=settings["sampler"],
                              seed=seeds[i:i + batch_size])
        chunks.append(adm.data.to_uint8(x))
    return np.concatenate(chunks), labels.numpy()


def cmd_evaluate(args) -> None:
    from adm import eval as ev

    sweep = _sweep_module()
    clean = sweep.CleanCNN()
    clean.load_state_dict(torch.load(args.clean, weights_only=True)["state_dict"])
    clean.eval()
    classifier = load(args.classifier, ("ADM_classifier",)).model.eval()
    out = Path(args.json)
    results = json.loads(out.read_text()) if out.exists() else {"settings": DEMO_SAMPLING, "points": {}}
    run_cfg = json.loads((Path(args.run) / "config.json").read_text())
    wanted = {int(s) for s in args.steps.split(",")} if args.steps else None
    ref = ev.open_fashion_mnist("test")
    for step, path in list_checkpoints(Path(args.run)):
        seen = run_cfg.get("init_images_seen", 0) + step * run_cfg["batch_size"]
        if (wanted is not None and step not in wanted) or str(seen) in results["points"]:
            continue
        kept = Path(args.samples) / f"images_{seen:09d}.npz" if args.samples else None
        if kept is not None and kept.is_file() and len(np.load(kept)["images"]) == args.num:
            data = np.load(kept)  # sampled by an earlier (interrupted) evaluation: measured as they are
            images, labels, seconds = data["images"], data["labels"], None
        else:
            model = load(path, ("ADM",)).model.eval()
            t0 = time.time()
            images, labels = sample(model, classifier, DEMO_SAMPLING, args.num, args.batch_size, args.dtype)
            seconds = round(time.time() - t0, 1)
            if kept is not None:
                kept.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(kept, images=images, labels=labels)
        with torch.no_grad():
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
            acc = float((clean(x).argmax(-1).numpy() == labels).mean())
        r = ev.evaluate(ref, ev.from_array(images, f"step {step}"), device="cpu", batch_size=100, progress=False)
        row = {"run": args.run_name or Path(args.run).name, "step": step, "images_seen": seen,
               "init_from": run_cfg.get("init_from", ""), "ema_rate": run_cfg["ema"][0],
               "num": len(images), "fid": r.fid, "sfid": r.sfid, "precision": r.precision, "recall": r.recall,
               "clean_accuracy": acc, "sampling_seconds": seconds, "dtype": args.dtype}
        print(json.dumps(row), flush=True)
        results["points"][str(seen)] = row
        out.write_text(json.dumps(results, indent=2) + "\n")


def cmd_report(args) -> None:
    """Markdown table and a PNG of the metrics against images seen."""
    from PIL import Image, ImageDraw, ImageFont

    res = json.loads(Path(args.json).read_text())
    points = sorted(res["points"].values(), key=lambda r: r["images_seen"])
    print("| images seen | run, step | FID | sFID | precision | recall | clean accuracy |")
    print("|---|---|---|---|---|---|---|")
    for r in points:
        print(f"| {r['images_seen']:,} | {r.get('run', '')} {r['step']} | {r['fid']:.2f} | {r['sfid']:.2f} | "
              f"{r['precision']:.3f} | {r['recall']:.3f} | {r['clean_accuracy']:.3f} |")
    if args.plot and points:
        sweep = _sweep_module()
        img = Image.new("RGB", (960, 420), "white")
        d = ImageDraw.Draw(img)
        font = ImageFont.load_default()
        labels = [f"{r['images_seen'] / 1000:.0f}k" for r in points]
        sweep._panel(d, (60, 40, 450, 350), labels, {"FID": ((31, 119, 180), [r["fid"] for r in points])},
                     "FID (lower is better; target <= 15)", font)
        sweep._panel(d, (540, 40, 930, 350), labels,
                     {"precision": ((44, 160, 44), [r["precision"] for r in points]),
                      "recall": ((214, 39, 40), [r["recall"] for r in points]),
                      "clean accuracy": ((31, 119, 180), [r["clean_accuracy"] for r in points])},
                     "precision / recall / accuracy", font)
        d.text((400, 400), "training images seen", fill="black", font=font)
        img.save(args.plot)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("evaluate")
    e.add_argument("run")
    e.add_argument("--classifier", default="ADM_classifier_demo_fashion_mnist")
    e.add_argument("--clean", required=True)
    e.add_argument("--json", required=True)
    e.add_argument("--steps", default="", help="comma-separated checkpoint steps (default: all)")
    e.add_argument("--num", type=int, default=2000)
    e.add_argument("--batch-size", type=int, default=100)
    e.add_argument("--dtype", default="bf16", help="fp32, or bf16 autocast (what the CPU measurements used)")
    e.add_argument("--run-name", default="", help="how the table names the run (default: RUN_DIR's name)")
    e.add_argument("--samples", help="keep the samples here (one .npz per step); samples found there are "
                   "measured instead of drawn again")
    r = sub.add_parser("report")
    r.add_argument("json")
    r.add_argument("--plot")
    args = p.parse_args()
    {"evaluate": cmd_evaluate, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
