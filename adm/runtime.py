"""Where and how computations run, and how files are written: one place for each rule.

- devices: `parse_device("auto" | "cpu" | "cuda" | "cuda:1" | "mps")`, for sampling and training alike;
- precision: `DTYPES`, `parse_dtype`, `autocast(device, dtype)` (nothing for fp32),
  `cast_weights_once(modules, device)` (autocast's weight cache for frozen networks);
- `torch.compile` with an eager fallback (`CompiledWithFallback`, `compile_with_fallback`);
- memory layout: `channels_last(modules)` for a block, `prefers_channels_last` (where it is faster);
- the CPU allocator: `keep_cpu_memory()` (glibc keeps freed activations for the next step);
- atomic writes: `atomic_write(path, write)` and its two users' shapes, `atomic_write_bytes` and
  `atomic_torch_save`. A file written through them is whole or absent, never truncated.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import IO, Any, Callable

import torch

from adm.errors import ConfigError

# -- devices --------------------------------------------------------------------------------------
DEVICE_HELP = "cpu, cuda, cuda:N, mps or auto"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def parse_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) -> cuda when available, else mps, else cpu; an unavailable device raises ConfigError."""
    if isinstance(device, torch.device):
        text = str(device)
    else:
        text = (device or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"unknown device {text!r} (use {DEVICE_HELP})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {text!r} requested but CUDA is not available (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {text!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not _mps_available():
            raise ConfigError("device 'mps' requested but it is not available (use --device cpu)")
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {text!r} (use {DEVICE_HELP})")
    return dev


# -- the CPU memory allocator ---------------------------------------------------------------------
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit
_allocator_tuned = False


def keep_cpu_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of returning it to the system (once per process).

    A training or sampling step on the CPU frees and allocates the same few-MB activations every step;
    by default glibc hands blocks above its threshold back to the kernel, and each new one costs page
    faults and zeroing: about 10% of a demo training step (BENCHMARKS.md). Raises the mmap threshold to
    its maximum and the trim threshold out of reach; peak memory stays what it was, but freed memory
    is kept. A no-op (False) off glibc or with ADM_KEEP_CPU_MEMORY=0.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if os.environ.get("ADM_KEEP_CPU_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1 and ok
    ok = mallopt(_M_TOP_PAD, 64 * 1024 * 1024) == 1 and ok
    _allocator_tuned = ok
    return ok


# -- precision ------------------------------------------------------------------------------------
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """fp32 | bf16 | fp16 (also float32, bfloat16, float16, half, or a torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ConfigError(f"unsupported dtype {dtype}; choose fp32, bf16 or fp16")
        return dtype
    key = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if key not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose fp32, bf16 or fp16")
    return DTYPES[key]


def autocast(device: torch.device | str, dtype: str | torch.dtype) -> contextlib.AbstractContextManager:
    """torch.autocast for bf16 / fp16 on the device's type; nothing for fp32 (weights stay float32)."""
    dtype = parse_dtype(dtype)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


# -- memory layout ---------------------------------------------------------------------------------
# Sampling networks at least this wide run faster channels-last under bf16 / fp16 on the CPU (oneDNN's
# AMX convolutions take NHWC); narrower ones slower, as group norm's channels-last backward (the
# classifier gradient) costs more than the convolutions gain. Measured (BENCHMARKS.md, one thread):
# the 64x64 preset (192 channels) guided DDIM 1.2x, forward 1.5x at batch 8; the demo pair (64 and 32
# channels) guided DDIM 0.64x.
CHANNELS_LAST_MIN_WIDTH = 128


def low_precision(device: torch.device | str) -> bool:
    """Whether bf16 / fp16 autocast is active for the device's type."""
    kind = torch.device(device).type
    return torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) in (torch.bfloat16, torch.float16)


def prefers_channels_last(modules, device: torch.device | str) -> bool:
    """The layout `channels_last=None` ("auto") picks for sampling: channels-last under bf16 / fp16
    autocast on CUDA, and on the CPU for networks of at least CHANNELS_LAST_MIN_WIDTH base channels."""
    device = torch.device(device)
    if device.type not in ("cpu", "cuda") or not low_precision(device):
        return False
    if device.type == "cuda":
        return True
    widths = [getattr(getattr(m, "config", None), "model_channels", 0) for m in modules if m is not None]
    return bool(widths) and min(widths) >= CHANNELS_LAST_MIN_WIDTH


@contextlib.contextmanager
def channels_last(modules, enabled: bool = True):
    """Within the block the 4-d weights of `modules` are channels-last (activations follow them through
    every convolution); afterwards the layout they had. Values, names and state_dicts are unchanged."""
    modules = [m for m in modules if m is not None]
    if not enabled:
        yield
        return
    before = []
    for m in modules:
        p = next((t for t in m.parameters() if t.dim() == 4), None)
        already = p is not None and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        before.append(already)
        if not already:
            m.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for m, already in zip(modules, before):
            if not already:
                m.to(memory_format=torch.contiguous_format)


@contextlib.contextmanager
def cast_weights_once(modules, device: torch.device | str):
    """Within the block, bf16 / fp16 autocast casts each weight of `modules` once, not at every call.

    Autocast keeps the low-precision copy of a weight until its outermost context ends, but only for
    leaf tensors that require grad. Networks frozen for inference (`requires_grad_(False)`, as the CLI
    loads them and as users freeze them) had every weight cast again at every forward pass: a quarter
    of a 64x64 bf16 forward on the CPU (BENCHMARKS.md). Their frozen parameters require grad for the
    block only (gradients are still computed only for what a caller asks `torch.autograd.grad` for);
    afterwards each parameter is as it was. Nothing changes without low-precision autocast.
    """
    frozen = []
    if low_precision(device):
        frozen = [p for m in modules if m is not None for p in m.parameters()
                  if not p.requires_grad and p.is_floating_point()]
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


# -- torch.compile with an eager fallback ---------------------------------------------------------
class CompiledWithFallback:
    """Calls `torch.compile(module)`; if a call fails, the same call is repeated eagerly.

    Where no compiler works (no C++ compiler for inductor on the CPU, no Triton for the GPU, an
    unsupported platform) the eager call succeeds, so the failure was the compiler's: a warning names it
    and every later call is eager. When the eager call fails too, that error (the caller's, e.g. a wrong
    input shape) propagates, as it would without compiling. Attributes (config, no_sync, ...) are the
    module's.
    """

    def __init__(self, module: Callable, **compile_kwargs: Any):
        self.module = module
        self.compiled = torch.compile(module, **compile_kwargs)
        self.failure: BaseException | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failure is not None:
            return self.module(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as compiled_error:  # noqa: BLE001 - classified by the eager retry below
            out = self.module(*args, **kwargs)  # raises the caller's own error, if it is one
            self.failure = compiled_error
            warnings.warn(f"torch.compile failed ({_describe(compiled_error)}); "
                          f"running {type(self.module).__name__} eagerly", RuntimeWarning, stacklevel=2)
            return out

    @property
    def is_compiled(self) -> bool:
        """False once the compiler has failed and calls run eagerly."""
        return self.failure is None

    def __getattr__(self, name: str) -> Any:
        if name in ("module", "compiled", "failure"):  # not set yet (during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.module, name)


def _describe(error: BaseException) -> str:
    """'BackendCompilerFailed: RuntimeError: <first line of the cause>' (dynamo wraps the compiler's error)."""
    cause = getattr(error, "inner_exception", None) or error.__cause__
    names = type(error).__name__ + (f": {type(cause).__name__}" if cause is not None else "")
    first_line = (str(cause if cause is not None else error).strip().splitlines() or [""])[0][:300]
    return f"{names}: {first_line}"


def compile_with_fallback(module: Callable, enabled: bool = True, **compile_kwargs: Any) -> Callable:
    """`module` itself when not enabled, else a CompiledWithFallback around it."""
    return CompiledWithFallback(module, **compile_kwargs) if enabled else module


# -- atomic writes --------------------------------------------------------------------------------
def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through `write(f)` into a temporary file, fsync it, rename it, fsync the directory:
    a crash at any moment leaves the new file or the old one, never a truncated one. On an error the
    temporary file is removed and the error raised (the old file is untouched)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """`data` written atomically to `path`."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save written atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f))
