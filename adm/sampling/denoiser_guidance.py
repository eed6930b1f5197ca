"""Guidance as denoiser wrappers: each takes and returns a D(x, sigma, **model_kwargs) (sigma frame,
see adm.sampling.denoisers), so it composes with every sigma-frame sampler and with the others.

Outside its guidance interval (Kynkaenniemi et al. 2024, "Applying guidance in a limited interval")
a wrapper returns the unguided denoiser: the conditional model for classifier-free guidance, the
good model for autoguidance, no gradient for classifier guidance. Intervals are closed, [lo, hi],
in the sigma of the ADM model's own frame (sigma = sqrt((1 - abar) / abar)).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from adm.errors import ConfigError
from adm.sampling.denoisers import Denoiser, batch_sigma, expand_like
from adm.sampling.guidance import Interval, check_interval
from adm.sampling.model import CondFn


def _check_weight(scale: float) -> float:
    scale = float(scale)
    if not 0 <= scale < math.inf:  # also rejects NaN
        raise ConfigError(f"the guidance scale must be finite and >= 0, got {scale}")
    return scale


_check_interval = check_interval  # one rule for intervals, the discrete samplers' too


def in_interval(sigma: torch.Tensor, interval: Interval | None) -> torch.Tensor:
    """[N] bool: sigma [N] in the closed interval (all True for None)."""
    if interval is None:
        return torch.ones(sigma.shape, dtype=torch.bool, device=sigma.device)
    return (sigma >= interval[0]) & (sigma <= interval[1])


class _Wrapper:
    """A denoiser around `inner`; sigmas, sigma_min, sigma_max, timesteps, ... are the inner one's."""

    inner: Denoiser

    def __getattr__(self, name):
        if name == "inner":  # not set yet (unpickling, copy): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


class ClassifierGuided(_Wrapper):
    """Classifier guidance (the paper's section 4, Algorithm 2) in the sigma frame.

    With g = cond_fn(x_t, t) = s * grad_{x_t} log p(y | x_t) (adm.sampling.guidance.classifier_guidance),
    ADM shifts eps by -sqrt(1 - abar) g; as x_0 = x - sigma eps and sqrt(1 - abar) = sigma / sqrt(1 + sigma^2),
        D'(x, sigma) = D(x, sigma) + sigma^2 / sqrt(1 + sigma^2) * g  (= D + sigma^2 s grad_x log p, EDM's form).
    The classifier sees x_t = x / sqrt(1 + sigma^2) and timesteps(sigma): by default the wrapped
    denoiser's own (EpsDenoiser.timesteps, the timesteps the diffusion model receives).
    """

    def __init__(self, denoiser: Denoiser, cond_fn: CondFn, interval: Interval | None = None,
                 timesteps: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.inner = denoiser
        self.cond_fn = cond_fn
        self.interval = _check_interval(interval)
        self._timesteps = timesteps if timesteps is not None else getattr(denoiser, "timesteps", None)
        if self._timesteps is None:
            raise ConfigError("classifier guidance needs the classifier's timesteps: "
                              "pass timesteps=, or wrap an EpsDenoiser")

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, **model_kwargs) -> torch.Tensor:
        sigma = batch_sigma(sigma, x)
        denoised = self.inner(x, sigma, **model_kwargs)
        on = in_interval(sigma, self.interval)
        if not bool(on.any()):
            return denoised
        s = expand_like(sigma, x)
        root = (1 + s ** 2).sqrt()
        grad = self.cond_fn(x / root, self._timesteps(sigma), **model_kwargs)
        if grad is None:  # a cond_fn limited to a guidance interval (adm.sampling.guidance), outside it
            return denoised
        grad = grad.to(x.dtype)
        return torch.where(expand_like(on, x), denoised + s ** 2 / root * grad, denoised)


def _double(kwargs: dict, n: int) -> dict:
    return {k: torch.cat([v, v]) if torch.is_tensor(v) and v.shape[:1] == (n,) else v for k, v in kwargs.items()}


class ClassifierFreeGuided(_Wrapper):
    """Classifier-free guidance (Ho & Salimans 2021): D = D(x | y) + (w - 1) (D(x | y) - D(x | null)).

    Equal to the eps form eps_null + w (eps_y - eps_null), as D is affine in eps. The conditional and
    the null-label halves run as one doubled batch; w = 1 (or a sigma outside the interval) calls
    the conditional model alone, and returns it exactly.
    """

    def __init__(self, denoiser: Denoiser, scale: float, null_label: int, interval: Interval | None = None):
        self.inner = denoiser
        self.scale = _check_weight(scale)
        self.null_label = int(null_label)
        self.interval = _check_interval(interval)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, y: torch.Tensor | None = None,
                 **model_kwargs) -> torch.Tensor:
        if y is None:
            raise ConfigError("classifier-free guidance needs class labels y")
        sigma = batch_sigma(sigma, x)
        on = in_interval(sigma, self.interval)
        if self.scale == 1 or not bool(on.any()):
            return self.inner(x, sigma, y=y, **model_kwargs)
        n = x.shape[0]
        both = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]),
                          y=torch.cat([y, torch.full_like(y, self.null_label)]), **_double(model_kwargs, n))
        cond, uncond = both[:n], both[n:]
        return torch.where(expand_like(on, x), cond + (self.scale - 1) * (cond - uncond), cond)


class Autoguided(_Wrapper):
    """Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"):
    D = D_bad + w (D_good - D_bad), computed as D_good + (w - 1) (D_good - D_bad), so w = 1 (or a sigma
    outside the interval) is the good model exactly and skips the bad one. Both get the same kwargs."""

    def __init__(self, good: Denoiser, bad: Denoiser, scale: float, interval: Interval | None = None):
        self.inner = good
        self.bad = bad
        self.scale = _check_weight(scale)
        self.interval = _check_interval(interval)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, **model_kwargs) -> torch.Tensor:
        sigma = batch_sigma(sigma, x)
        good = self.inner(x, sigma, **model_kwargs)
        on = in_interval(sigma, self.interval)
        if self.scale == 1 or not bool(on.any()):
            return good
        bad = self.bad(x, sigma, **model_kwargs)
        return torch.where(expand_like(on, x), good + (self.scale - 1) * (good - bad), good)


def dynamic_threshold(x0: torch.Tensor, percentile: float | None = 0.995) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, section 2.3): per image, s = the percentile of
    |x_0| (linear interpolation, as numpy), s = max(s, 1), x_0 = clamp(x_0, -s, s) / s. None: static
    thresholding, clamp(x_0, -1, 1)."""
    if percentile is None:
        return x0.clamp(-1, 1)
    if not 0 <= percentile <= 1:
        raise ConfigError(f"the thresholding percentile must be in [0, 1], got {percentile}")
    a = x0.detach().abs().flatten(1).sort(dim=1).values  # [N, D]
    pos = percentile * (a.shape[1] - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, a.shape[1] - 1)
    s = (a[:, lo] + (pos - lo) * (a[:, hi] - a[:, lo])).clamp(min=1)
    s = expand_like(s, x0)
    return torch.maximum(torch.minimum(x0, s), -s) / s


class Thresholded(_Wrapper):
    """D with its x_0 estimate thresholded (dynamic_threshold): keeps high guidance scales in range.
    Placed outside a guidance wrapper it thresholds the guided estimate; inside, the unguided one
    (DDIM's clip_denoised with classifier guidance is ClassifierGuided(Thresholded(D, None), ...))."""

    def __init__(self, denoiser: Denoiser, percentile: float | None = 0.995):
        self.inner = denoiser
        self.percentile = percentile
        dynamic_threshold(torch.zeros(1, 1), percentile)  # check the percentile now

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, **model_kwargs) -> torch.Tensor:
        return dynamic_threshold(self.inner(x, sigma, **model_kwargs), self.percentile)


__all__ = ["Autoguided", "ClassifierFreeGuided", "ClassifierGuided", "Interval", "Thresholded",
           "dynamic_threshold", "in_interval"]
