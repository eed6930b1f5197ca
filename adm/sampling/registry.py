"""The samplers by name, with everything the rest of adm needs to know about each: its function, its
frame, its default number of steps, how a step count becomes a schedule spec, how many model calls a
chain costs, whether it takes DDIM's eta or EDM's churn. A new sampler is one entry here.

Every sampler's `steps` counts model calls (a classifier-free or autoguided call, a doubled or paired
UNet batch, counts once). Two frames:
  "discrete"  ddpm, ddim, dpmpp2m: steps of the (respaced) discrete process; the spec is a respacing.
  "sigma"     euler, heun, edm, euler_a, dpmpp2m_sigma: adm.sampling.karras's samplers on the model as a
              denoiser D(x, sigma) (adm.sampling.sigma_frame); the spec is "karrasK" (K noise levels of
              EDM's schedule, what steps=N gives) or a respacing (the sigmas of those discrete steps).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from adm.diffusion.config import DiffusionConfig
from adm.diffusion.process import Diffusion
from adm.diffusion.schedule import count_timesteps
from adm.errors import ConfigError
from adm.sampling.ddim import sample_ddim
from adm.sampling.ddpm import sample_ddpm
from adm.sampling.dpm_solver import dpmpp_2m_calls, sample_dpmpp_2m
from adm.sampling.karras import karras_calls, sample_dpmpp_2m as sigma_dpmpp_2m
from adm.sampling.karras import sample_euler, sample_euler_ancestral, sample_heun
from adm.sampling.sigma_frame import Churn, karras_levels, sample_sigma_frame, schedule_length

FRAMES = ("discrete", "sigma")


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


def _karras(n: int, num_steps: int) -> str:
    """N calls of a one-call-a-step sigma sampler: N levels of EDM's schedule."""
    return f"karras{n}"


def _karras_heun(n: int, num_steps: int) -> str:
    """N calls of Heun: K = (N + 1) // 2 levels, the most steps with 2K - 1 <= N calls (the step to
    sigma = 0 is an Euler step: one call; every other step two)."""
    return f"karras{(n + 1) // 2}"


def _one_call_per_step(num_timesteps: int) -> int:
    return num_timesteps


def _heun_calls(num_steps: int) -> int:
    """2K - 1 calls for K Heun steps ending at sigma = 0."""
    return karras_calls("heun", num_steps)


# EDM's stochastic sampler as EDM samples ImageNet-64 with the ADM architecture (Karras et al. 2022;
# S_churn = 40, S_tmin = 0.05, S_tmax = 50, S_noise = 1.003 over 256 steps). S_churn is scaled to the step count, so
# every step churns as in EDM's run (gamma = 40/256); the sigma bounds are in ADM's own sigma units,
# EDM's too (data in [-1, 1]). EDM's 256 steps are its 511 model calls, this sampler's default.
EDM_CHURN = Churn(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003, reference_steps=256)
NO_CHURN = Churn()  # Algorithm 1 unless a churn is given (then Algorithm 2 at every sigma, s_noise 1)


@dataclass(frozen=True)
class Sampler:
    """A sampler and its rules. Called as sampler(model, diffusion, x_T, *, noise, cond_fn, model_kwargs,
    clip_denoised, denoised_fn, callback, progress, **options) -> x_0 in either frame; options are what
    `options()` gives (eta; the schedule and churn of a sigma-frame sampler)."""

    name: str
    fn: Callable                                  # discrete: the sampler; sigma: an adm.sampling.karras one
    default_steps: int                            # model calls when none are asked for
    spec_for: Callable[[int, int], str]           # (N model calls, process steps) -> schedule spec
    calls: Callable[[int], int] = _one_call_per_step  # chain length -> model calls
    takes_eta: bool = False
    description: str = ""
    frame: str = "discrete"                       # "discrete" | "sigma"
    churn: Churn | None = None                    # sigma frame: EDM's churn rule (None: takes no churn)

    def __post_init__(self):
        if self.frame not in FRAMES:
            raise ValueError(f"frame must be one of {FRAMES}, got {self.frame!r}")

    def __call__(self, model, diffusion, x_T, **kwargs):
        if self.frame == "sigma":
            return sample_sigma_frame(self.fn, model, diffusion, x_T, churn_rule=self.churn, **kwargs)
        return self.fn(model, diffusion, x_T, **kwargs)

    def respacing(self, steps: int | str | None, num_steps: int) -> str:
        """The schedule spec for `steps`: None = the default count; a string is used as given ("250",
        "ddim25", "10,15,20", "logsnr11", "" for every step; "karras18" for a sigma-frame sampler); an
        int N means N model calls."""
        if steps is None:
            steps = min(self.default_steps, num_steps) if self.calls is _one_call_per_step and \
                self.frame == "discrete" else self.default_steps
        if isinstance(steps, str):
            if karras_levels(steps) is not None:
                if self.frame != "sigma":
                    raise ConfigError(f"{steps!r} is a noise-level schedule of the sigma-frame samplers "
                                      f"({', '.join(names('sigma'))}); {self.name} takes a timestep respacing")
                return steps.strip()
            count_timesteps(num_steps, steps)  # fail early on a bad spec
            return steps
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise ConfigError(f"steps must be a positive integer or a respacing string, got {steps!r}")
        return self.spec_for(int(steps), num_steps)

    def process(self, config: DiffusionConfig, spec: str) -> Diffusion:
        """The process the sampler runs on: respaced by `spec` (discrete), or every step of it (sigma: the
        spec picks noise levels, not the process)."""
        return Diffusion.from_config(config, "" if self.frame == "sigma" else spec)

    def chain_length(self, num_steps: int, spec: str) -> int:
        """Steps of the chain a spec gives on a num_steps process (noise levels before 0, sigma frame)."""
        if self.frame == "sigma":
            return schedule_length(num_steps, spec)
        return count_timesteps(num_steps, spec)

    def model_calls(self, num_steps: int, respacing: str) -> int:
        """Model evaluations on the chain a spec keeps of a num_steps process."""
        return self.calls(self.chain_length(num_steps, respacing))

    def churn_settings(self, num_steps: int, spec: str, churn: float | None = None) -> dict[str, float] | None:
        """{s_churn, s_tmin, s_tmax, s_noise} the sampler runs with (None: it has no churn)."""
        self._check_churn(churn)
        if self.churn is None:
            return None
        return self.churn.settings(self.chain_length(num_steps, spec), churn)

    def _check_churn(self, churn: float | None) -> None:
        if churn is not None and self.churn is None:
            raise ConfigError(f"churn applies to the {', '.join(names(churn=True))} samplers "
                              f"(sampler is {self.name!r})")

    def options(self, spec: str, *, eta: float = 0.0, churn: float | None = None) -> dict:
        """The sampler-specific keyword arguments for a chain of `spec`, checked: eta (DDIM), the schedule
        and churn (sigma frame)."""
        if eta and not self.takes_eta:
            raise ConfigError(f"eta applies to the {' and '.join(n for n, s in SAMPLERS.items() if s.takes_eta)} "
                              f"sampler only (sampler is {self.name!r})")
        self._check_churn(churn)
        out: dict = {"eta": eta} if self.takes_eta else {}
        if self.frame == "sigma":
            out["schedule"] = spec
            if self.churn is not None:
                out["churn"] = churn
        return out


SAMPLERS: dict[str, Sampler] = {s.name: s for s in [
    Sampler("ddpm", sample_ddpm, 250, _even, description="ancestral sampling (the paper's 250 steps)"),
    Sampler("ddim", sample_ddim, 25, _ddim_stride, takes_eta=True, description="DDIM (eta 0: deterministic)"),
    Sampler("dpmpp2m", sample_dpmpp_2m, 20, _log_snr_calls, calls=dpmpp_2m_calls,
            description="DPM-Solver++(2M), steps = model calls on log-SNR spacing"),
    Sampler("euler", sample_euler, 25, _karras, frame="sigma", churn=NO_CHURN,
            description="Euler on EDM's sigma schedule (DDIM's update; on DDIM's steps it is DDIM)"),
    Sampler("heun", sample_heun, 35, _karras_heun, calls=_heun_calls, frame="sigma", churn=NO_CHURN,
            description="EDM's Heun (Algorithm 1; 2 calls a step, 1 for the last): N calls = (N+1)//2 steps"),
    Sampler("edm", sample_heun, 511, _karras_heun, calls=_heun_calls, frame="sigma", churn=EDM_CHURN,
            description="EDM's stochastic Heun (Algorithm 2, churn 40 / 256 steps, ImageNet-64 ADM settings)"),
    Sampler("euler_a", sample_euler_ancestral, 25, _karras, frame="sigma",
            description="Euler ancestral (eta 1: on DDIM's steps it is DDIM with eta 1)"),
    Sampler("dpmpp2m_sigma", sigma_dpmpp_2m, 20, _karras, frame="sigma",
            description="DPM-Solver++(2M) in the sigma frame on EDM's schedule"),
]}


def names(frame: str | None = None, churn: bool = False) -> list[str]:
    """The samplers' names (of one frame; only those with churn)."""
    return [n for n, s in SAMPLERS.items()
            if (frame is None or s.frame == frame) and (not churn or s.churn is not None)]


def get_sampler(name: str) -> Sampler:
    """The sampler called `name` (ConfigError listing the valid names otherwise)."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def model_calls(sampler: str, num_timesteps: int) -> int:
    """How many model evaluations `sampler` makes on a chain of `num_timesteps` steps (respaced steps, or
    noise levels before 0 for a sigma-frame sampler)."""
    return get_sampler(sampler).calls(num_timesteps)
