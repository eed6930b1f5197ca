"""What the benchmarks share: the configurations, the execution modes, random weights, interleaved timing."""
from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from adm.hub import build_preset
from official_style import official_style

# Configurations: the paper's 64x64 ImageNet pair, and the small demo pair (32x32 grey, 10 classes).
CONFIGS = {
    "small": ("ADM_demo_fashion_mnist", "ADM_classifier_demo_fashion_mnist"),
    "64x64": ("ADM_diffusion_64_conditioned", "ADM_classifier_64"),
}


@dataclass(frozen=True)
class Mode:
    """One way of running the same weights."""

    name: str
    dtype: torch.dtype = torch.float32  # autocast dtype; float32 = no autocast
    channels_last: bool = False         # weights and activations in NHWC
    compile: bool = False               # torch.compile (eager fallback when no compiler works)
    official: bool = False              # benchmarks.official_style: guided-diffusion's forward pass
    fp16_weights: bool = False          # convert_to_fp16(): the official scripts' use_fp16 path
    tf32: bool = False                  # CUDA: TF32 tensor cores for float32 convolutions and matmuls
    note: str = ""

    @property
    def autocast(self) -> bool:
        return self.dtype != torch.float32


MODES = {m.name: m for m in [
    Mode("official-fp32", official=True, note="guided-diffusion's forward pass emulated (einsum attention)"),
    Mode("official-bf16", torch.bfloat16, official=True, note="the same under bf16 autocast"),
    Mode("official-fp16", official=True, fp16_weights=True, note="convert_to_fp16 (use_fp16 True), CUDA"),
    Mode("fp32", note="adm, eager"),
    Mode("fp32-cl", channels_last=True, note="adm, channels-last"),
    Mode("fp32-compile", compile=True, note="adm, torch.compile"),
    Mode("tf32", tf32=True, note="adm, float32 with TF32 tensor cores (CUDA)"),
    Mode("bf16", torch.bfloat16, note="adm, bf16 autocast"),
    Mode("bf16-cl", torch.bfloat16, channels_last=True, note="adm, bf16 autocast, channels-last"),
    Mode("bf16-compile", torch.bfloat16, compile=True, note="adm, bf16 autocast, torch.compile"),
    Mode("bf16-cl-compile", torch.bfloat16, channels_last=True, compile=True),
    Mode("fp16", torch.float16, note="adm, fp16 autocast (CUDA)"),
    Mode("fp16-cl", torch.float16, channels_last=True),
    Mode("fp16-compile", torch.float16, compile=True),
    Mode("fp16-cl-compile", torch.float16, channels_last=True, compile=True),
]}

BASELINE = "official-fp32"


def default_modes(device: torch.device, config: str, task: str) -> list[str]:
    """The modes each table compares by default (each costs time: the CPU run stays a few minutes)."""
    if device.type == "cuda":  # compiled modes: the closing table of run.py (they take longest)
        modes = {
            "forward": ["official-fp32", "official-fp16", "fp32", "tf32", "bf16", "fp16", "bf16-cl", "fp16-cl"],
            "sample": ["official-fp32", "official-fp16", "fp32", "fp16", "fp16-cl"],
            "train": ["official-fp32", "fp32", "bf16", "bf16-cl"],
        }[task]
        if config == "small":  # launch-bound on a GPU: fewer modes
            modes = [m for m in modes if m in ("official-fp32", "official-fp16", "fp32", "fp16", "bf16")]
    else:
        modes = {
            "forward": ["official-fp32", "official-bf16", "fp32", "fp32-cl", "bf16", "bf16-cl",
                        "fp32-compile", "bf16-compile"],
            "sample": ["official-fp32", "official-bf16", "fp32", "bf16", "bf16-cl", "bf16-compile"],
            "train": ["official-fp32", "official-bf16", "fp32", "bf16", "bf16-cl", "bf16-compile"],
        }[task]
        # Inductor needs minutes per graph on 2 CPU cores (and again for each new batch size):
        # compiled modes are opt-in on the CPU (--modes), see BENCHMARKS.md for their figures.
        modes = [m for m in modes if not MODES[m].compile]
    return modes


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------

def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial random weights everywhere (the released networks zero their output layers, which
    would make every output 0): fan-in scaled normal weights, norms near the identity."""
    gens: dict[torch.device, torch.Generator] = {}

    def normal(p: torch.Tensor, std: float, mean: float = 0.0) -> None:
        g = gens.setdefault(p.device, torch.Generator(p.device).manual_seed(seed))
        p.copy_(torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32) * std + mean)

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.GroupNorm):
                normal(m.weight, 0.1, 1.0)
                normal(m.bias, 0.1)
            elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                normal(m.weight, 1 / math.sqrt(m.weight[0].numel()))
                if m.bias is not None:
                    normal(m.bias, 0.02)
            elif isinstance(m, nn.Embedding):
                normal(m.weight, 1.0)
        for name, p in module.named_parameters():
            if name.endswith("positional_embedding"):
                normal(p, 1 / math.sqrt(p.shape[0]))
    return module


def build_model(name: str, device: torch.device, seed: int = 0, **overrides) -> nn.Module:
    """A preset's network with random weights, eval mode, built directly on `device`."""
    with torch.device(device):
        return randomize(build_preset(name, **overrides), seed).eval()


def build_pair(config: str, device: torch.device, seed: int = 0, **overrides) -> tuple[nn.Module, nn.Module]:
    """(diffusion model, classifier) of a configuration."""
    model_name, clf_name = CONFIGS[config]
    return build_model(model_name, device, seed, **overrides), build_model(clf_name, device, seed + 1, **overrides)


# ---------------------------------------------------------------------------------------------
# Modes: preparing a module and the context it runs in
# ---------------------------------------------------------------------------------------------

def compiler_available(device: torch.device) -> tuple[bool, str]:
    """Whether torch.compile can generate code here (inductor needs a C++ compiler on CPU, Triton on CUDA)."""
    if os.environ.get("ADM_BENCH_NO_COMPILE"):
        return False, "disabled by ADM_BENCH_NO_COMPILE"
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:  # pragma: no cover - very old torch
            return False, "no torch.utils._triton"
        return (True, "triton") if has_triton() else (False, "Triton is not installed")
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    return (True, cxx) if cxx else (False, "no C++ compiler on PATH")


class Variants:
    """The modules each mode runs: shared where the weights are the same, copied where a mode changes
    their layout (channels-last) or their dtype (fp16 weights), compiled once per mode."""

    def __init__(self, base: nn.Module, device: torch.device, compile_mode: str | None = None):
        self.base, self.device, self.compile_mode = base, device, compile_mode
        self._layouts: dict[tuple[bool, bool], nn.Module] = {(False, False): base}
        self._compiled: dict[str, nn.Module] = {}
        self.fallbacks: dict[str, str] = {}

    def train(self, flag: bool) -> None:
        for m in self._layouts.values():
            m.train(flag)

    def module(self, mode: Mode) -> nn.Module:
        key = (mode.channels_last, mode.fp16_weights)
        if key not in self._layouts:
            m = copy.deepcopy(self.base)
            if mode.channels_last:
                m = m.to(memory_format=torch.channels_last)
            if mode.fp16_weights:
                m.convert_to_fp16()
            self._layouts[key] = m
        m = self._layouts[key]
        if not mode.compile:
            return m
        if mode.name not in self._compiled:
            ok, why = compiler_available(self.device)
            if ok:
                kw = {"mode": self.compile_mode} if self.compile_mode else {}
                if self.device.type == "cpu" and not kw:  # inference graphs: weights prepacked for oneDNN
                    kw["options"] = {"freezing": True}  # (torch.compile takes a mode or options, not both)
                # Static shapes: each batch size gets its own specialised graph (a new compile).
                self._compiled[mode.name] = torch.compile(m, dynamic=False, **kw)
            else:
                self.fallbacks[mode.name] = why
                self._compiled[mode.name] = m
        return self._compiled[mode.name]

    def fall_back(self, mode: Mode, error: BaseException) -> nn.Module:
        """Replace a compiled module that failed (no working compiler) by its eager module."""
        self.fallbacks[mode.name] = f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
        self._compiled[mode.name] = self._layouts[(mode.channels_last, mode.fp16_weights)]
        return self._compiled[mode.name]


@contextlib.contextmanager
def tf32(enabled: bool):
    """CUDA float32 math: strict (False, the default of these benchmarks) or on TF32 tensor cores."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def running(mode: Mode, device: torch.device):
    """The context a mode runs in: official-style forward passes, autocast, TF32 or strict float32."""
    with contextlib.ExitStack() as stack:
        if device.type == "cuda":
            stack.enter_context(tf32(mode.tf32))
        if mode.official:
            stack.enter_context(official_style())
        if mode.autocast:
            stack.enter_context(torch.autocast(device.type, dtype=mode.dtype))
        yield


def to_input(x: torch.Tensor, mode: Mode) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if mode.channels_last else x


def supported(mode: Mode, device: torch.device) -> bool:
    if device.type == "cpu" and (mode.dtype == torch.float16 or mode.fp16_weights or mode.tf32):
        return False  # CPU half precision: slow kernels, and nothing the paper's users run
    if device.type == "cuda" and mode.dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    times: list[float] = field(default_factory=list)   # seconds per call, one per repetition
    first: float = float("nan")                         # the first call (compilation included)
    ratios: list[float] = field(default_factory=list)  # baseline time / this time, paired by repetition
    error: str = ""
    output: torch.Tensor | None = None                 # what the first call returned (float32, CPU)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios) if self.ratios else float("nan")


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - t0, result


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, reps: int, warmup: int = 1,
                baseline: str | None = None, min_time: float = 0.0,
                on_error: Callable[[str, BaseException], Callable[[], object] | None] | None = None
                ) -> dict[str, Timing]:
    """Time each fn `reps` times, interleaved (rep 1 of every fn, then rep 2, ... with the order rotated),
    so that a machine whose load changes affects all of them alike. Each repetition calls a fn enough
    times to last `min_time` seconds (GPU kernels are short) and records the time per call."""
    out = {k: Timing() for k in fns}
    inner = {k: 1 for k in fns}
    names = list(fns)
    for k in names:
        for i in range(max(1, warmup)):
            try:
                dt, result = _timed(fns[k], device)
            except Exception as e:  # noqa: BLE001 - a mode that cannot run is reported, not fatal
                replacement = on_error(k, e) if on_error else None
                if replacement is None:
                    out[k].error = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                    break
                fns[k] = replacement
                dt, result = _timed(fns[k], device)
            if i == 0:
                out[k].first = dt
                if torch.is_tensor(result):
                    out[k].output = result.detach().float().cpu()
        if min_time and not out[k].error:
            sync(device)
            t0 = time.perf_counter()
            fns[k]()
            sync(device)
            inner[k] = max(1, math.ceil(min_time / max(time.perf_counter() - t0, 1e-6)))
    live = [k for k in names if not out[k].error]
    for r in range(reps):
        order = live[r % len(live):] + live[: r % len(live)] if live else []
        for k in order:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner[k]):
                fns[k]()
            sync(device)
            out[k].times.append((time.perf_counter() - t0) / inner[k])
    if baseline in out and out[baseline].times:
        for k in live:
            out[k].ratios = [b / t for b, t in zip(out[baseline].times, out[k].times)]
    return out


def quiet_compile_warnings() -> None:
    warnings.filterwarnings("ignore", message=".*TensorFloat32.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="torch._inductor")
