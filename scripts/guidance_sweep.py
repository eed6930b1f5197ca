"""The paper's guidance trade-off on Fashion-MNIST: sample with several classifier scales and samplers.

    python3 scripts/guidance_sweep.py sample --out sweep/ [--num 2000] [--only ddim25_s0,...] [--dtype bf16]
    python3 scripts/guidance_sweep.py clean-classifier --out clean_clf.pt
    python3 scripts/guidance_sweep.py evaluate sweep/ --clean clean_clf.pt --json docs/guidance.json

`sample` draws the same seeds (0..N-1, label = seed mod 10) for every configuration and stores
uint8 NHWC arrays, one file per configuration (`sweep/NAME.npz`; existing files are kept, so
several processes can share the list with --only and an interrupted sweep resumes); `evaluate`
computes FID / sFID / precision / recall against the Fashion-MNIST test set and the accuracy of
an independently trained clean classifier on the samples.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import adm
import adm.data
from adm.hub import build_preset

SCALES = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]


def configurations() -> list[dict]:
    """Name, sampler, steps and guidance of each run of the sweep, in the order they are sampled."""
    runs = [dict(name=f"ddim25_s{s:g}", sampler="ddim", steps=25, scale=s) for s in SCALES]
    runs += [dict(name="ddim10_s2", sampler="ddim", steps=10, scale=2.0),
             dict(name="ddim15_s2", sampler="ddim", steps=15, scale=2.0),
             # 250 steps cost ten times DDIM-25: fewer images (--ddpm-num), compared with DDIM-25 on the same seeds.
             dict(name="ddpm250_s2", sampler="ddpm", steps=250, scale=2.0, ddpm=True),
             dict(name="ddpm250_s0", sampler="ddpm", steps=250, scale=0.0, ddpm=True),
             dict(name="ddim25_cfg1.5", sampler="ddim", steps=25, scale=1.5, cfg=True),
             dict(name="ddim25_cfg3", sampler="ddim", steps=25, scale=3.0, cfg=True)]
    # DPM-Solver++ with N model calls on steps spaced evenly in log-SNR (adm's spacing for it). The
    # dpmpp2mN_s2 rows of docs/guidance_128k.json came from the solver of commit d5a11be: N evenly spaced
    # timesteps, the last of them a model call at t = 0.
    runs += [dict(name=f"dpmpp2m{n}_logsnr_s2", sampler="dpmpp2m", steps=n, scale=2.0) for n in (8, 10, 12, 6, 15, 7)]
    # the same comparison under classifier-free guidance (w = 3)
    runs += [dict(name=f"dpmpp2m{n}_logsnr_cfg3", sampler="dpmpp2m", steps=n, scale=3.0, cfg=True) for n in (8, 10)]
    return runs + sampler_configurations()


# docs/samplers.md: the samplers against model calls, each with classifier (s = 2) and classifier-free
# (w = 3) guidance; a guidance interval and autoguidance (--guide-model: an earlier demo checkpoint).
SAMPLER_CALLS = (10, 15, 25, 50)
INTERVAL = (0.3, 5.0)  # sigma range of the guidance-interval runs


def sampler_configurations() -> list[dict]:
    runs = []
    for calls in SAMPLER_CALLS:
        for sampler in ("ddim", "dpmpp2m", "heun", "edm"):
            if sampler == "ddim" and calls == 25:
                continue  # ddim25_s2 / ddim25_cfg3 are in the guidance sweep above
            runs.append(dict(name=f"{sampler}{calls}_s2", sampler=sampler, steps=calls, scale=2.0, group="samplers"))
            runs.append(dict(name=f"{sampler}{calls}_cfg3", sampler=sampler, steps=calls, scale=3.0, cfg=True,
                             group="samplers"))
    runs += [dict(name="heun25_s2_interval", sampler="heun", steps=25, scale=2.0, interval=INTERVAL, group="samplers"),
             dict(name="heun25_cfg3_interval", sampler="heun", steps=25, scale=3.0, cfg=True, interval=INTERVAL,
                  group="samplers"),
             dict(name="heun25_auto2", sampler="heun", steps=25, scale=2.0, guide=True, group="samplers"),
             dict(name="ddim25_auto2", sampler="ddim", steps=25, scale=2.0, guide=True, group="samplers")]
    return runs


def _claim(path: Path | None, lock: Path) -> bool:
    """True when this process may make `path` (not made yet, and `lock` not taken by another process)."""
    if path is not None and path.exists():
        return False
    try:
        fd = os.open(str(lock), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def cmd_sample(args) -> None:
    from adm.runtime import autocast, parse_dtype

    dev = torch.device(args.device)
    dtype = parse_dtype(args.dtype)
    model = (adm.ADM.from_pretrained(args.model) if args.model
             else build_preset("ADM_demo_fashion_mnist", pretrained=True)).to(dev).eval()
    clf = (adm.ADM_classifier.from_pretrained(args.classifier) if args.classifier
           else build_preset("ADM_classifier_demo_fashion_mnist", pretrained=True)).to(dev).eval()
    guide = adm.ADM.from_pretrained(args.guide_model).to(dev).eval() if args.guide_model else None
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for run in configurations():
        if args.only and run["name"] not in args.only.split(","):
            continue
        if not args.only and run.get("group") == "samplers":
            continue  # docs/samplers.md's runs: by name (--only)
        if run.get("guide") and guide is None:
            print(f"{run['name']}: autoguidance needs --guide-model, skipped", flush=True)
            continue
        path = out_dir / f"{run['name']}.npz"
        if not _claim(path, out_dir / f"{run['name']}.lock"):
            print(f"{run['name']}: done or claimed by another process, skipped", flush=True)
            continue
        num = min(args.num, args.ddpm_num) if run.get("ddpm") else args.num
        seeds = list(range(num))
        labels = torch.tensor([s % 10 for s in seeds])
        t0 = time.time()
        # classifier=None with a scale means classifier-free guidance; scale 0 with the classifier is unguided.
        guided = adm.ADM_G(model, None if run.get("cfg") or run.get("guide") else clf, scale=run["scale"],
                           guide_model=guide if run.get("guide") else None)
        chunks = []
        for i in range(0, num, args.batch_size):
            with autocast(dev, dtype):
                x = guided.sample(labels[i:i + args.batch_size].to(dev), steps=run["steps"], sampler=run["sampler"],
                                  seed=seeds[i:i + args.batch_size], guidance_interval=run.get("interval"),
                                  progress=False)
            chunks.append(adm.data.to_uint8(x))
            print(f"  {run['name']}: {i + len(chunks[-1])}/{num} ({time.time() - t0:.0f} s)", flush=True)
        seconds = time.time() - t0
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, images=np.concatenate(chunks), labels=labels.numpy(),
                            meta=json.dumps({**run, "num": num, "dtype": args.dtype, "seconds": seconds,
                                             "device": str(dev), "threads": torch.get_num_threads(),
                                             "model": args.model or "shipped", "guide_model": args.guide_model}))
        tmp.replace(path)
        (out_dir / f"{run['name']}.lock").unlink()
        print(f"{run['name']}: {num} images in {seconds:.1f} s", flush=True)


class CleanCNN(nn.Module):
    """A plain CNN classifier of clean 32x32 grey images (the accuracy judge, trained independently)."""

    def __init__(self):
        super().__init__()
        c = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())
        self.net = nn.Sequential(c(1, 32), c(32, 32), nn.MaxPool2d(2), c(32, 64), c(64, 64), nn.MaxPool2d(2),
                                 c(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _fmnist_tensor(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from adm.data import load_dataset

    ds = load_dataset("fashion-mnist", 32, split=split)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.tensor(ys)


def cmd_clean_classifier(args) -> None:
    dev = torch.device(args.device)
    torch.manual_seed(0)
    x, y = _fmnist_tensor("train")
    xt, yt = _fmnist_tensor("test")
    x, y, xt, yt = x.to(dev), y.to(dev), xt.to(dev), yt.to(dev)
    net = CleanCNN().to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.epochs * (len(x) // 256)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    t0 = time.time()
    for step in range(steps):
        if step % 100 == 0:
            print(f"  step {step}/{steps} ({time.time() - t0:.0f} s)", flush=True)
        idx = torch.randint(0, len(x), (256,), device=dev)
        xb = x[idx]
        xb = torch.where(torch.rand(len(xb), 1, 1, 1, device=dev) < 0.5, xb.flip(-1), xb)
        with torch.autocast(dev.type, torch.bfloat16, enabled=args.bf16):
            loss = nn.functional.cross_entropy(net(xb).float(), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        acc = sum((net(xt[i:i + 1000]).argmax(-1) == yt[i:i + 1000]).sum().item() for i in range(0, len(xt), 1000))
    print(f"clean classifier test accuracy: {acc / len(xt):.4f}")
    torch.save({"state_dict": net.state_dict(), "test_accuracy": acc / len(xt)}, args.out)


def cmd_evaluate(args) -> None:
    from adm import eval as ev

    files = sorted(Path(args.sweep).glob("*.npz"))
    files = [f for f in files if not f.name.endswith(".tmp.npz")]
    clean = CleanCNN()
    ck = torch.load(args.clean, weights_only=True)
    clean.load_state_dict(ck["state_dict"])
    clean.eval()
    results = {"reference": "Fashion-MNIST test set (10,000 images, padded to 32x32)", "features": args.features,
               "clean_classifier_test_accuracy": ck["test_accuracy"], "runs": {}}
    if Path(args.json).exists():
        results["runs"] = json.loads(Path(args.json).read_text()).get("runs", {})
    ref = ev.open_fashion_mnist("test")
    items = []
    for f in files:
        data = np.load(f)
        meta = json.loads(str(data["meta"]))
        items.append((f.stem, data["images"], data["labels"], meta))
    # The 250-step DDPM runs have fewer images: compare them with DDIM-25 on the same first seeds.
    by_name = {name: (imgs, labels, meta) for name, imgs, labels, meta in items}
    for name, imgs, _, meta in list(items):
        twin = by_name.get(f"ddim25_s{meta['scale']:g}")
        if meta.get("ddpm") and twin is not None and len(twin[0]) > len(imgs):
            n = len(imgs)
            items.append((f"ddim25_s{meta['scale']:g}_first{n}", twin[0][:n], twin[1][:n], {**twin[2], "num": n}))
    if args.first:  # the first N images of every run, to compare with a run of N images (DDPM-250)
        items = [(f"{name}_first{args.first}", imgs[:args.first], labels[:args.first], {**meta, "num": args.first})
                 for name, imgs, labels, meta in items if len(imgs) > args.first]
    if args.only:  # these runs, in this order
        order = args.only.split(",")
        items = sorted((it for it in items if it[0] in order), key=lambda it: order.index(it[0]))
    for name, imgs, labels, meta in items:
        done = json.loads(Path(args.json).read_text())["runs"] if Path(args.json).exists() else {}
        if name in done or not _claim(None, Path(args.sweep) / f"{name}.eval.lock"):
            continue  # done, or being evaluated by another process
        with torch.no_grad():
            x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
            acc = float((clean(x).argmax(-1).numpy() == labels).mean())
        r = ev.evaluate(ref, ev.from_array(imgs, name), features=args.features, device=args.device,
                        batch_size=100, progress=False)
        row = {**{k: meta[k] for k in ("sampler", "steps", "scale", "dtype", "seconds")}, "cfg": bool(meta.get("cfg")),
               **{k: meta[k] for k in ("interval", "guide", "guide_model", "model") if meta.get(k) is not None},
               "num": int(len(imgs)), "fid": r.fid, "sfid": r.sfid, "precision": r.precision, "recall": r.recall,
               "clean_accuracy": acc}
        print(name, json.dumps(row), flush=True)
        _add_result(Path(args.json), results, name, row)
        (Path(args.sweep) / f"{name}.eval.lock").unlink()


def _add_result(path: Path, results: dict, name: str, row: dict) -> None:
    """Add one row to the JSON file, merged with what other evaluating processes wrote meanwhile."""
    lock = path.with_suffix(".lock")
    while True:
        try:
            os.close(os.open(str(lock), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            time.sleep(0.2)
    try:
        if path.exists():
            results["runs"].update(json.loads(path.read_text()).get("runs", {}))
        results["runs"][name] = row
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(path)
    finally:
        lock.unlink()


def _panel(draw, box, xs_labels, series, title, font):
    """One line chart in box = (left, top, right, bottom): series {name: (colour, [y per x])}, x categorical."""
    left, top, right, bottom = box
    values = [v for _, ys in series.values() for v in ys if v is not None]
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 or 0.05
    lo, hi = lo - pad, hi + pad
    px = lambda i: left + (i + 0.5) / len(xs_labels) * (right - left)
    py = lambda v: bottom - (v - lo) / (hi - lo) * (bottom - top)
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, top - 16), title, fill="black", font=font)
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        draw.text((left - 44, py(v) - 6), f"{v:.3g}", fill="black", font=font)
    for i, label in enumerate(xs_labels):
        draw.text((px(i) - 8, bottom + 6), label, fill="black", font=font)
    for j, (name, (colour, ys)) in enumerate(series.items()):
        pts = [(px(i), py(v)) for i, v in enumerate(ys) if v is not None]
        draw.line(pts, fill=colour, width=2)
        for x, y in pts:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.line([(left + 120 * j, bottom + 30), (left + 120 * j + 16, bottom + 30)], fill=colour, width=3)
        draw.text((left + 120 * j + 20, bottom + 24), name, fill=colour, font=font)


def _order(name: str) -> tuple[int, bool]:
    """Table order: the configurations' order; a DDIM-25 subset (ddim25_s2_first500) right after the
    DDPM-250 run it is compared with (ddpm250_s2)."""
    subset = "_first" in name
    key = "ddpm250_" + name.split("_")[1] if subset else name
    names = [c["name"] for c in configurations()]
    return (names.index(key) if key in names else len(names), subset)


def cmd_report(args) -> None:
    """The scale sweep as a PNG (FID/sFID, precision/recall/accuracy against the scale) and markdown tables."""
    from PIL import Image, ImageDraw, ImageFont

    res = json.loads(Path(args.json).read_text())
    runs = res["runs"]
    sweep = [(s, runs.get(f"ddim25_s{s:g}")) for s in SCALES]
    sweep = [(s, r) for s, r in sweep if r is not None]
    labels = [f"{s:g}" for s, _ in sweep]
    img = Image.new("RGB", (960, 420), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    blue, orange, green, red = (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)
    _panel(d, (60, 40, 450, 350), labels, {"FID": (blue, [r["fid"] for _, r in sweep]),
                                           "sFID": (orange, [r["sfid"] for _, r in sweep])},
           "FID / sFID (lower is better)", font)
    _panel(d, (540, 40, 930, 350), labels, {"precision": (green, [r["precision"] for _, r in sweep]),
                                            "recall": (red, [r["recall"] for _, r in sweep]),
                                            "clean accuracy": (blue, [r["clean_accuracy"] for _, r in sweep])},
           "precision / recall / accuracy", font)
    d.text((380, 400), "classifier scale s (DDIM, 25 steps)", fill="black", font=font)
    img.save(args.plot)
    if args.samples:  # rows: the scales; columns: seeds 0-9 (one per class), the same seeds in every row
        rows = [np.load(Path(args.samples) / f"ddim25_s{s:g}.npz")["images"][:10] for s, _ in sweep]
        grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)[..., 0]
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(args.grid)
    cols = ("fid", "sfid", "precision", "recall", "clean_accuracy")
    print("| run | sampler | steps | guidance | images | FID | sFID | precision | recall | clean accuracy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in sorted(runs.items(), key=lambda kv: _order(kv[0])):
        kind = ("classifier-free " if r.get("cfg") else "classifier ") + f"s={r['scale']:g}"
        vals = " | ".join(f"{r[c]:.2f}" if c in ("fid", "sfid") else f"{r[c]:.3f}" for c in cols)
        print(f"| {name} | {r['sampler']} | {r['steps']} | {kind} | {r['num']} | {vals} |")


def cmd_samplers(args) -> None:
    """docs/samplers.md's table: every measured run of the JSON files given, by sampler and model calls."""
    rows = {}
    for path in args.json:
        rows.update(json.loads(Path(path).read_text())["runs"])
    print("| run | sampler | model calls | guidance | FID | sFID | precision | recall | clean accuracy | s / 2,000 images |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    names = [c["name"] for c in configurations()]
    for name in sorted(rows, key=lambda n: (rows[n]["steps"], names.index(n) if n in names else len(names))):
        r = rows[name]
        if args.only and name not in args.only.split(","):
            continue
        kind = ("autoguidance w=" if r.get("guide") else "classifier-free w=" if r.get("cfg") else "classifier s=")
        kind += f"{r['scale']:g}" + (f", sigma in [{r['interval'][0]:g}, {r['interval'][1]:g}]" if r.get("interval") else "")
        secs = f"{r['seconds'] * 2000 / r['num']:.0f}" if r.get("seconds") else ""
        print(f"| {name} | {r['sampler']} | {r['steps']} | {kind} | {r['fid']:.2f} | {r['sfid']:.2f} | "
              f"{r['precision']:.3f} | {r['recall']:.3f} | {r['clean_accuracy']:.3f} | {secs} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--out", required=True)
    s.add_argument("--num", type=int, default=2000)
    s.add_argument("--batch-size", type=int, default=100)
    s.add_argument("--ddpm-num", type=int, default=500, help="images of the 250-step DDPM runs")
    s.add_argument("--dtype", default="fp32", help="fp32, or bf16 / fp16 autocast")
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    s.add_argument("--model", default=None, help="model directory (default: the shipped demo model)")
    s.add_argument("--classifier", default=None)
    s.add_argument("--only", default="", help="comma-separated run names")
    s.add_argument("--guide-model", default=None, help="the weak model of the autoguidance runs (an earlier checkpoint)")
    c = sub.add_parser("clean-classifier")
    c.add_argument("--out", required=True)
    c.add_argument("--epochs", type=int, default=8)
    c.add_argument("--bf16", action="store_true", help="bf16 autocast for training (the judge is evaluated in fp32)")
    c.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    e = sub.add_parser("evaluate")
    e.add_argument("sweep")
    e.add_argument("--clean", required=True)
    e.add_argument("--json", required=True)
    e.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    e.add_argument("--only", default="", help="comma-separated run names, evaluated in this order")
    e.add_argument("--features", default="inception", help="inception (the paper's) or tiny (fast, for tests)")
    e.add_argument("--first", type=int, help="evaluate the first N images of each run (rows named NAME_firstN)")
    t = sub.add_parser("samplers", help="docs/samplers.md's table from evaluate's JSON files")
    t.add_argument("json", nargs="+")
    t.add_argument("--only", default="")
    r = sub.add_parser("report")
    r.add_argument("json")
    r.add_argument("--plot", required=True)
    r.add_argument("--samples", help="the sweep directory: also write a grid of the first 10 samples per scale")
    r.add_argument("--grid", default="guidance_samples.png")
    args = p.parse_args()
    {"sample": cmd_sample, "clean-classifier": cmd_clean_classifier, "evaluate": cmd_evaluate,
     "report": cmd_report, "samplers": cmd_samplers}[args.cmd](args)


if __name__ == "__main__":
    main()
