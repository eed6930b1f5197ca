"""torch.compile with a fallback: where no compiler works (no C++ compiler for inductor on the CPU,
no Triton for the GPU, an unsupported platform), the model runs eagerly after one warning instead
of the job failing."""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch


class CompiledWithFallback:
    """Calls `torch.compile(module)`; if a call fails, the same call is repeated eagerly.

    When the eager call succeeds the failure was the compiler's: a warning names it and every later
    call is eager. When the eager call fails too, that error (the caller's, e.g. a wrong input
    shape) propagates, as it would without compiling. Attributes (config, no_sync, ...) are the
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
