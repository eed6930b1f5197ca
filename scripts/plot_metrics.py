"""Plot a training run's metrics.jsonl as a PNG line chart (Pillow only, no plotting library).

    python3 scripts/plot_metrics.py RUN_DIR/metrics.jsonl OUT.png --keys loss,mse [--title T] [--log]
"""
from __future__ import annotations

import argparse
import json
import math

from PIL import Image, ImageDraw, ImageFont

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("metrics")
    p.add_argument("out")
    p.add_argument("--keys", default="loss")
    p.add_argument("--title", default="")
    p.add_argument("--log", action="store_true", help="logarithmic y axis")
    args = p.parse_args()
    rows = [json.loads(line) for line in open(args.metrics) if line.strip()]
    keys = args.keys.split(",")
    series = {k: [(r["step"], r[k]) for r in rows if k in r and r[k] is not None] for k in keys}
    f = (lambda v: math.log10(v)) if args.log else (lambda v: v)
    xs = [s for pts in series.values() for s, _ in pts]
    ys = [f(v) for pts in series.values() for _, v in pts]
    w, h, m = 640, 360, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    y1 = y1 if y1 > y0 else y0 + 1
    px = lambda x: m + (x - x0) / max(x1 - x0, 1) * (w - 2 * m)
    py = lambda y: h - m - (y - y0) / (y1 - y0) * (h - 2 * m)
    d.rectangle([m, m, w - m, h - m], outline="black")
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        label = f"{10 ** yv:.3g}" if args.log else f"{yv:.3g}"
        d.text((4, py(yv) - 5), label, fill="black", font=font)
        xv = x0 + (x1 - x0) * i / 4
        d.text((px(xv) - 10, h - m + 6), f"{xv:.0f}", fill="black", font=font)
    d.text((w // 2 - 20, h - 18), "step", fill="black", font=font)
    d.text((m, 10), args.title, fill="black", font=font)
    for i, (k, pts) in enumerate(series.items()):
        c = COLOURS[i % len(COLOURS)]
        d.line([(px(s), py(f(v))) for s, v in pts], fill=c, width=2)
        d.text((w - m - 120, m + 8 + 14 * i), k, fill=c, font=font)
    img.save(args.out)


if __name__ == "__main__":
    main()
