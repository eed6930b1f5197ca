"""The samplers by name, with everything the rest of adm needs to know about each: its function,
its default number of steps, how a step count becomes a respacing spec, how many model calls a chain
costs, and whether it takes DDIM's eta. A new sampler is one entry here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from adm.diffusion.schedule import count_timesteps
from adm.errors import ConfigError
from adm.sampling.ddim import sample_ddim
from adm.sampling.ddpm import sample_ddpm
from adm.sampling.dpm_solver import dpmpp_2m_calls, sample_dpmpp_2m


def _even(n: int, num_steps: int) -> str:
    """N evenly spaced steps (guided-diffusion's section respacing)."""
    count_timesteps(num_steps, str(n))
    return str(n)


def _ddim_stride(n: int, num_steps: int) -> str:
    """The DDIM paper's stride ("ddimN") where it gives N steps, else N evenly spaced steps."""
    try:
        count_timesteps(num_steps, f"ddim{n}")
        return f"ddim{n}"
    except ConfigError:
        return _even(n, num_steps)


def _log_snr_calls(n: int, num_steps: int) -> str:
    """N model calls on steps spaced evenly in log-SNR ("logsnr{N+1}": the solver reads its solution at
    the last step without a call)."""
    if n >= num_steps:
        raise ConfigError(f"DPM-Solver++ makes at most {num_steps - 1} model calls on a {num_steps}-step process "
                          f"(asked for {n})")
    return f"logsnr{n + 1}"


def _one_call_per_step(num_timesteps: int) -> int:
    return num_timesteps


@dataclass(frozen=True)
class Sampler:
    """A sampler: fn(model, diffusion, x_T, *, noise, cond_fn, model_kwargs, clip_denoised, denoised_fn,
    callback, progress[, eta]) -> x_0, and its rules."""

    name: str
    fn: Callable
    default_steps: int                            # model calls when none are asked for
    spec_for: Callable[[int, int], str]           # (N, process steps) -> respacing spec
    calls: Callable[[int], int] = _one_call_per_step  # chain length -> model calls
    takes_eta: bool = False
    description: str = ""

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def respacing(self, steps: int | str | None, num_steps: int) -> str:
        """The respacing spec for `steps`: None = the default count; a string is used as given ("250",
        "ddim25", "10,15,20", "logsnr11", "" for every step); an int N means N model calls."""
        if steps is None:
            steps = min(self.default_steps, num_steps) if self.calls is _one_call_per_step else self.default_steps
        if isinstance(steps, str):
            count_timesteps(num_steps, steps)  # fail early on a bad spec
            return steps
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise ConfigError(f"steps must be a positive integer or a respacing string, got {steps!r}")
        return self.spec_for(int(steps), num_steps)

    def model_calls(self, num_steps: int, respacing: str) -> int:
        """Model evaluations on the chain a respacing spec keeps of a num_steps process."""
        return self.calls(count_timesteps(num_steps, respacing))


SAMPLERS: dict[str, Sampler] = {s.name: s for s in [
    Sampler("ddpm", sample_ddpm, 250, _even, description="ancestral sampling (the paper's 250 steps)"),
    Sampler("ddim", sample_ddim, 25, _ddim_stride, takes_eta=True, description="DDIM (eta 0: deterministic)"),
    Sampler("dpmpp2m", sample_dpmpp_2m, 20, _log_snr_calls, calls=dpmpp_2m_calls,
            description="DPM-Solver++(2M), steps = model calls on log-SNR spacing"),
]}


def get_sampler(name: str) -> Sampler:
    """The sampler called `name` (ConfigError listing the valid names otherwise)."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def model_calls(sampler: str, num_timesteps: int) -> int:
    """How many model evaluations `sampler` makes on a chain of `num_timesteps` respaced steps."""
    return get_sampler(sampler).calls(num_timesteps)
