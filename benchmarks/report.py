"""Tables, deviations, the accelerator's peak throughput and the profile of a forward pass."""
from __future__ import annotations

import math

import torch
from torch.profiler import ProfilerActivity, profile

from common import MODES, Mode, Variants, running, to_input
from tasks import inputs

# Dense peak TFLOP/s by card (NVIDIA data sheets; no sparsity): float32 on CUDA cores, TF32 and
# bf16 / fp16 on tensor cores. Matched by substring of torch.cuda.get_device_name, first match wins.
CARD_PEAKS = [
    ("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0}),
    ("H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.0}),
    ("H100", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}),   # SXM5
    ("H200", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}),
    ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
    ("L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 366.0}),
    ("A10G", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0}),
    ("4090", {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2}),
]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    name = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def card_peaks(device: torch.device) -> dict[str, float]:
    """Peak FLOP/s of the card by precision ({} where unknown, e.g. on the CPU)."""
    if device.type != "cuda":
        return {}
    name = torch.cuda.get_device_name(device)
    for key, peaks in CARD_PEAKS:
        if key in name:
            return {k: v * 1e12 for k, v in peaks.items()}
    return {}


def peak_for(peaks: dict[str, float], mode: Mode) -> float | None:
    if not peaks:
        return None
    if mode.dtype != torch.float32 or mode.fp16_weights:
        return peaks["bf16"]  # fp16 and bf16 tensor cores have the same peak on these cards
    return peaks["tf32"] if mode.tf32 else peaks["fp32"]


# ---------------------------------------------------------------------------------------------
# How far a mode's result is from adm's fp32 eager result
# ---------------------------------------------------------------------------------------------

def output_deviation(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Relative L2 error and largest absolute error of a network output."""
    return {"rel_error": float((out - ref).norm() / ref.norm().clamp_min(1e-30)),
            "max_abs_error": float((out - ref).abs().max())}


def sample_deviation(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Differences of final samples, in 8-bit levels (images in [-1, 1] -> 0..255)."""
    a, b = ((out + 1) * 127.5).clamp(0, 255), ((ref + 1) * 127.5).clamp(0, 255)
    d = (a.round() - b.round()).abs()
    return {"mean_abs_levels": float((a - b).abs().mean()), "max_abs_levels": float(d.max()),
            "frac_pixels_off_by_gt1": float((d > 1).float().mean())}


# ---------------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------------

def _fmt(v, spec: str = ".3g", none: str = "-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, spec)


def print_header(meta: dict) -> None:
    print(f"device: {meta['device']} | torch {meta['torch']} | compiler: {meta['compiler']}")
    if meta["peaks_tflops"]:
        print("card peaks (dense TFLOP/s): " + ", ".join(f"{k} {v:g}" for k, v in meta["peaks_tflops"].items()))
    if meta.get("load_average"):
        print("load average: " + " ".join(f"{x:.1f}" for x in meta["load_average"]))


def print_task(rows: list[dict], task: str, config: str, batch: int, device: torch.device) -> None:
    rows = [r for r in rows if r["task"] == task and r["config"] == config and r["batch"] == batch]
    title = {"forward": "UNet forward", "sample": "guided DDIM sampling (UNet + classifier gradient)",
             "train": "training step (forward, backward, AdamW)", "compiled": "UNet forward, torch.compile"}[task]
    steps = f", {rows[0]['steps']} steps" if rows and rows[0].get("steps") else ""
    print(f"\n{config} | {title} | batch {batch}{steps}")
    dev_col = {"forward": "rel.err", "compiled": "rel.err", "sample": "Δ levels", "train": ""}[task]
    flop_col = "TFLOP/s (%peak)" if device.type == "cuda" else "GFLOP/s"
    print(f"  {'mode':<18}{'s/call':>10}{'img/s':>10}{'x official':>12}{'1st call s':>12}{flop_col:>18}{dev_col:>12}")
    for r in rows:
        if r["error"]:
            print(f"  {r['mode']:<18}  error: {r['error']}")
            continue
        if device.type == "cuda":
            fl = f"{_fmt(r.get('tflops'), '.1f')} ({_fmt(100 * r['peak_fraction'] if r.get('peak_fraction') else None, '.0f')}%)"
        else:
            fl = _fmt(r["tflops"] * 1e3 if r.get("tflops") else None, ".1f")
        dev = {"forward": _fmt(r.get("rel_error"), ".1e"), "compiled": _fmt(r.get("rel_error"), ".1e"),
               "sample": _fmt(r.get("mean_abs_levels"), ".2f"), "train": ""}[task]
        note = f"  [compile fell back: {r['fallback']}]" if r.get("fallback") else ""
        print(f"  {r['mode']:<18}{_fmt(r['seconds'], '.4g'):>10}{_fmt(r['images_per_s'], '.3g'):>10}"
              f"{_fmt(r['x_official'], '.2f'):>12}{_fmt(r['first_call_s'], '.3g'):>12}{fl:>18}{dev:>12}{note}",
              flush=True)


def print_memory(results: list[dict]) -> None:
    if not results:
        return
    r0 = results[0]
    print(f"\n{r0['config']} | peak memory of a training step | batch {r0['batch']} | {r0.get('method', '')}")
    base = next((r for r in results if r["variant"] == "official" and "error" not in r), None)
    print(f"  {'variant':<16}{'step peak GB':>14}{'activations GB':>16}{'x official':>12}{'act. x official':>17}")
    for r in results:
        if "error" in r:
            print(f"  {r['variant']:<16}  error: {r['error']}")
            continue
        x = r["step_peak"] / base["step_peak"] if base else None
        xa = r["activations"] / base["activations"] if base and base["activations"] else None
        print(f"  {r['variant']:<16}{r['step_peak'] / 1e9:>14.2f}{r['activations'] / 1e9:>16.2f}"
              f"{_fmt(x, '.2f'):>12}{_fmt(xa, '.2f'):>17}", flush=True)


def print_summary(rows: list[dict], memory: list[dict], profiles: dict, meta: dict) -> None:
    print("\n== summary: best adm mode per measurement (x official = official-style fp32 eager time / adm time)")
    keys = sorted({(r["task"], r["config"], r["batch"]) for r in rows}, key=lambda k: (k[1], k[0], k[2]))
    for task, config, batch in keys:
        rs = [r for r in rows if (r["task"], r["config"], r["batch"]) == (task, config, batch) and r["times"]]
        ours = [r for r in rs if not MODES[r["mode"]].official]
        if not ours:
            continue
        best = max(ours, key=lambda r: r["x_official"])
        fp32 = next((r for r in ours if r["mode"] == "fp32"), None)
        extra = f", fp32 eager x{fp32['x_official']:.2f}" if fp32 else ""
        print(f"  {config:<6} {task:<8} batch {batch:<3} {best['mode']:<16} x{best['x_official']:.2f}"
              f" ({best['images_per_s']:.3g} img/s){extra}")
    for name, table in profiles.items():
        print(f"\n== profile: 64x64 forward, {name} (top ops by self time)")
        for op in table:
            print(f"  {op['name'][:56]:<58}{op['percent']:>6.1f}%{op['ms']:>10.2f} ms{op['calls']:>6}")
    for f in meta.get("failures", []):
        print(f"FAILED {f['what']}: {f['error']}")
    print(f"\ntotal {meta['seconds']:.0f} s" + (f"; skipped (budget): {', '.join(meta['skipped'])}" if meta["skipped"] else ""))


# ---------------------------------------------------------------------------------------------
# Where the time goes
# ---------------------------------------------------------------------------------------------

def profile_forward(variants: Variants, device: torch.device, modes: list[str], batch: int = 1,
                    top: int = 12) -> dict[str, list]:
    """torch.profiler's top operators by self time of one forward pass per mode (eager modes only)."""
    out = {}
    x, t, y = inputs(variants.base, batch, device)
    variants.train(False)
    for name in dict.fromkeys(modes):
        mode = MODES[name]
        if mode.compile:
            continue
        module, xi = variants.module(mode), to_input(x, mode)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch.no_grad(), running(mode, device):
            module(xi, t, y)
            with profile(activities=acts) as prof:
                module(xi, t, y)
                if device.type == "cuda":
                    torch.cuda.synchronize()
        attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
        total = sum(getattr(e, attr) for e in events) or 1
        events.sort(key=lambda e: -getattr(e, attr))
        out[f"{name}, batch {batch}"] = [
            {"name": e.key, "percent": 100 * getattr(e, attr) / total, "ms": getattr(e, attr) / 1e3,
             "calls": e.count} for e in events[:top]]
    return out
