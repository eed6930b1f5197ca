"""The sigma-frame samplers (adm.sampling.karras: EDM's Heun and Euler, Euler ancestral, DPM-Solver++(2M))
run on ADM models with the discrete samplers' signature: fn(model, diffusion, x_T, *, noise, cond_fn,
model_kwargs, clip_denoised, denoised_fn, callback, progress, schedule, churn) -> x_0.

The model becomes a denoiser D(x, sigma) (adm.sampling.denoisers.EpsDenoiser); guidance reaches it as it
reaches every sampler: a cond_fn (classifier guidance, added to D as ClassifierGuided does) and model
functions (classifier-free guidance, autoguidance; adm.sampling.guidance), guidance intervals included.

The noise levels ("schedule"):
  "karrasK"   K levels of EDM's schedule (eq. 5, rho = 7) from min(80, the model's sigma_max) down to its
              sigma_min, then 0; the model gets the interpolated (fractional) timesteps of those sigmas.
  a respacing ("ddim25", "10,15,20", "logsnr11", "" for every step): the sigmas of those steps of
              `diffusion`, then 0, and the model gets exactly the discrete samplers' timesteps there
              (quantized): Euler on DDIM's steps is DDIM (eta 0), Euler ancestral is DDIM with eta 1.
  None        every step of `diffusion`, as the discrete samplers run over every step of theirs.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch

from adm.diffusion.process import Diffusion
from adm.diffusion.schedule import count_timesteps
from adm.errors import ConfigError
from adm.sampling.denoiser_guidance import ClassifierGuided, _Wrapper
from adm.sampling.denoisers import Denoiser, EpsDenoiser, batch_sigma, expand_like
from adm.sampling.karras import karras_sigmas, timestep_sigmas
from adm.sampling.model import Callback, CondFn, ModelFn
from adm.sampling.seeds import NoiseFn, global_noise

KARRAS_RHO = 7.0
KARRAS_SIGMA_MAX = 80.0  # EDM's sigma_max; ADM's own (T = 1000: cosine 2e4, linear 157) is past where images form


def karras_levels(spec) -> int | None:
    """K of a "karrasK" schedule spec; None for anything else (a respacing). ConfigError for "karras" with
    no positive K."""
    if not isinstance(spec, str) or not spec.strip().startswith("karras"):
        return None
    m = re.fullmatch(r"karras(\d+)", spec.strip())
    if m is None or int(m.group(1)) < 1:
        raise ConfigError(f"noise-level schedule {spec!r}: expected 'karrasK' with K >= 1 levels, such as 'karras18'")
    return int(m.group(1))


def schedule_length(num_steps: int, spec: str | None) -> int:
    """Steps (noise levels before the final 0) of a schedule spec on a num_steps process."""
    k = karras_levels(spec)
    return k if k is not None else count_timesteps(num_steps, spec or "")


def schedule_sigmas(diffusion: Diffusion, schedule: str | None = None, device=None,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, bool]:
    """(sigmas [K+1], descending to 0; whether the model's timesteps are quantized to the process's steps)
    of a schedule spec (see the module docstring)."""
    k = karras_levels(schedule)
    if k is None:
        return timestep_sigmas(diffusion, schedule if schedule is not None else "", device=device, dtype=dtype), True
    table = diffusion.schedule.sqrt_recipm1_alphas_cumprod
    sigma_min, sigma_max = float(table[0]), min(KARRAS_SIGMA_MAX, float(table[-1]))
    return karras_sigmas(k, sigma_min, sigma_max, rho=KARRAS_RHO, device=device, dtype=dtype), False


@dataclass(frozen=True)
class Churn:
    """EDM's stochasticity (Algorithm 2): at steps with sigma_i in [s_tmin, s_tmax] the noise level is
    first raised to sigma_i (1 + gamma), gamma = min(S_churn / K, sqrt(2) - 1) over K steps, with fresh
    noise of std s_noise sqrt(sigma_hat^2 - sigma_i^2).

    S_churn is EDM's: the churn of the whole chain, so gamma = S_churn / K per step. `reference_steps`:
    the default s_churn was tuned for that many steps, and is scaled to s_churn K / reference_steps at K
    steps, so that every step churns as much as in the reference run whatever K (gamma = s_churn /
    reference_steps). A churn given explicitly is used as EDM's S_churn, unscaled."""

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    reference_steps: int | None = None

    def settings(self, steps: int, churn: float | None = None) -> dict[str, float]:
        """The k-sampler's keyword arguments {s_churn, s_tmin, s_tmax, s_noise} for a K-step chain."""
        if churn is None:
            s_churn = self.s_churn * steps / self.reference_steps if self.reference_steps else self.s_churn
        else:
            s_churn = float(churn)
            if not 0 <= s_churn < math.inf:
                raise ConfigError(f"churn (EDM's S_churn) must be finite and >= 0, got {churn}")
        return {"s_churn": s_churn, "s_tmin": self.s_tmin, "s_tmax": self.s_tmax, "s_noise": self.s_noise}


class _Processed(_Wrapper):
    """D with ADM's post-processing of x_0 predictions: denoised_fn, then the clamp to [-1, 1] (clip)."""

    def __init__(self, denoiser: Denoiser, denoised_fn: Callable | None, clip: bool):
        self.inner, self.denoised_fn, self.clip = denoiser, denoised_fn, clip

    def __call__(self, x: torch.Tensor, sigma, **model_kwargs) -> torch.Tensor:
        x0 = self.inner(x, sigma, **model_kwargs)
        if self.denoised_fn is not None:
            x0 = self.denoised_fn(x0)
        return x0.clamp(-1, 1) if self.clip else x0


class _Reporting(_Wrapper):
    """D that reports every call: callback({"i": call index, "t": the model's timesteps [N], "sigma" [N],
    "x": x_t (the variance-preserving frame, x / sqrt(1 + sigma^2)), "pred_xstart": D's x_0 estimate})."""

    def __init__(self, denoiser: Denoiser, callback: Callback):
        self.inner, self.callback, self.calls = denoiser, callback, 0

    def __call__(self, x: torch.Tensor, sigma, **model_kwargs) -> torch.Tensor:
        sigma = batch_sigma(sigma, x)
        x0 = self.inner(x, sigma, **model_kwargs)
        x_t = x / (1 + expand_like(sigma, x) ** 2).sqrt()
        self.callback({"i": self.calls, "t": self.inner.timesteps(sigma, x.device), "sigma": sigma, "x": x_t,
                       "pred_xstart": x0})
        self.calls += 1
        return x0


def sample_sigma_frame(
    k_sampler: Callable,                   # an adm.sampling.karras sampler(denoiser, x, sigmas, extra_args, ...)
    model: ModelFn,
    diffusion: Diffusion,                  # the process whose steps the model knows (unrespaced for "karrasK")
    x_T: torch.Tensor,                     # [N, C, H, W] ADM's starting noise
    *,
    schedule: str | None = None,           # "karrasK", a respacing, or None (see the module docstring)
    churn_rule: Churn | None = None,       # the sampler's stochasticity (None: it has none)
    churn: float | None = None,            # EDM's S_churn, overriding churn_rule's default
    noise: NoiseFn = global_noise,         # the churn's and ancestral steps' draws
    cond_fn: CondFn | None = None,         # classifier guidance (timesteps and x_t as ADM gives them)
    model_kwargs: dict | None = None,
    clip_denoised: bool = True,            # clamp D's x_0 estimate (before classifier guidance, as DDIM)
    denoised_fn: Callable | None = None,
    callback: Callback | None = None,      # once per model call (_Reporting)
    progress: bool = False,
) -> torch.Tensor:
    """x_0 from a sigma-frame sampler on an ADM model: x = x_T sqrt(1 + sigma_0^2) puts ADM's x_T in the
    sigma frame, so "ddim"-like schedules start from the same point as the discrete samplers."""
    sigmas, quantize = schedule_sigmas(diffusion, schedule, device=x_T.device)
    kwargs: dict = {}
    if churn_rule is not None:
        kwargs = churn_rule.settings(len(sigmas) - 1, churn)
    elif churn is not None:
        raise ConfigError("this sampler has no churn (EDM's S_churn)")
    den: Denoiser = EpsDenoiser(model, diffusion, quantize=quantize)
    if clip_denoised or denoised_fn is not None:
        den = _Processed(den, denoised_fn, clip_denoised)
    if cond_fn is not None:
        den = ClassifierGuided(den, cond_fn)
    if callback is not None:
        den = _Reporting(den, callback)
    x = x_T * (1 + sigmas[0].to(x_T.dtype) ** 2).sqrt()
    return k_sampler(den, x, sigmas, extra_args=model_kwargs or {}, disable=not progress, noise=noise, **kwargs)


__all__ = ["Churn", "KARRAS_RHO", "KARRAS_SIGMA_MAX", "karras_levels", "sample_sigma_frame", "schedule_length",
           "schedule_sigmas"]
