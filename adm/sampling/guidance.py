"""Guidance as composable functions: classifier guidance (a cond_fn for any sampler), classifier-free
guidance and autoguidance (wrappers of the model function), and guidance intervals for all three.

A guidance interval (Kynkaenniemi et al. 2024, "Applying guidance in a limited interval") is a closed
range [lo, hi] of the noise level sigma = sqrt((1 - abar) / abar) (the sigma frame of
adm.sampling.denoisers): guidance applies at the timesteps whose sigma lies in it, and elsewhere the
sampler runs unguided: no classifier gradient (the cond_fn returns None, which every adm sampler reads
as "no guidance at this step"), the conditional model alone for classifier-free guidance, the good
model alone for autoguidance. Without an interval every function here is what it was before intervals
existed, operation for operation.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from adm.diffusion.schedule import extract
from adm.diffusion.process import Diffusion
from adm.errors import ConfigError
from adm.sampling.model import CondFn, ModelFn

Interval = tuple[float, float]  # (sigma_lo, sigma_hi), closed; None: every sigma


def _check_scale(scale: float) -> float:
    scale = float(scale)
    if not scale >= 0:  # also rejects NaN
        raise ConfigError(f"the guidance scale must be >= 0, got {scale}")
    return scale


def check_interval(interval: Interval | None) -> Interval | None:
    """(lo, hi) as floats with 0 <= lo <= hi (hi may be inf), or None; ConfigError otherwise."""
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ConfigError(f"a guidance interval is two noise levels (sigma_lo, sigma_hi), got {interval!r}") from None
    if not 0 <= lo <= hi:  # also rejects NaN
        raise ConfigError(f"a guidance interval needs 0 <= sigma_lo <= sigma_hi, got ({lo:g}, {hi:g})")
    return lo, hi


class TimestepSigma:
    """sigma(t) = sqrt((1 - abar) / abar) [N] (float64) of the timesteps t [N] a model receives from
    `diffusion` (its model_timesteps: original timesteps, scaled to 0..1000 when rescale_timesteps).

    At a step of the process that is its table's sigma exactly; between two steps (the fractional
    timesteps of adm.sampling.denoisers.EpsDenoiser) log sigma is interpolated linearly, the inverse of
    the denoiser's mapping on the unrespaced process (pass that one: Diffusion.from_config(cfg, ""))."""

    def __init__(self, diffusion: Diffusion):
        n = diffusion.num_timesteps
        self.nodes = diffusion.model_timesteps(torch.arange(n)).to(torch.float64)  # ascending
        self.sigmas = diffusion.schedule.sqrt_recipm1_alphas_cumprod.to(torch.float64)
        self._log = self.sigmas.log()

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).detach().to("cpu", torch.float64).reshape(-1)
        if len(self.nodes) == 1:
            return self.sigmas.expand(len(t)).clone()
        hi = torch.searchsorted(self.nodes, t).clamp(1, len(self.nodes) - 1)
        lo = hi - 1
        w = ((t - self.nodes[lo]) / (self.nodes[hi] - self.nodes[lo])).clamp(0, 1)
        between = (self._log[lo] + w * (self._log[hi] - self._log[lo])).exp()
        return torch.where(w == 0, self.sigmas[lo], torch.where(w == 1, self.sigmas[hi], between))


def timesteps_in_interval(t: torch.Tensor, interval: Interval, sigma_of: Callable[[torch.Tensor], torch.Tensor],
                device=None) -> torch.Tensor:
    """[N] bool: the sigma of each timestep t [N] lies in the closed interval."""
    sigma = sigma_of(t)
    on = (sigma >= interval[0]) & (sigma <= interval[1])
    return on.to(torch.as_tensor(t).device if device is None else device)


def _where(on: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(on.view(-1, *([1] * (a.ndim - 1))), a, b)


def _interval_args(interval: Interval | None, sigma_of) -> Interval | None:
    interval = check_interval(interval)
    if interval is not None and sigma_of is None:
        raise ConfigError("a guidance interval needs sigma_of (TimestepSigma(diffusion)) to read sigma from t")
    return interval


def limit_to_interval(cond_fn: CondFn, interval: Interval | None,
                      sigma_of: Callable[[torch.Tensor], torch.Tensor] | None = None) -> CondFn:
    """cond_fn restricted to a guidance interval: at timesteps whose sigma (sigma_of(t)) is outside it
    the gradient is not computed and the function returns None (every image outside) or zeros for
    those images. interval None: cond_fn itself."""
    interval = _interval_args(interval, sigma_of)
    if interval is None:
        return cond_fn

    def limited(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor | None:
        on = timesteps_in_interval(t, interval, sigma_of, x.device)
        if not bool(on.any()):
            return None
        grad = cond_fn(x, t, **kwargs)
        if grad is None or bool(on.all()):
            return grad
        return _where(on, grad, torch.zeros_like(grad))

    return limited


def classifier_guidance(classifier, scale: float = 1.0, labels: torch.Tensor | None = None) -> CondFn:
    """cond_fn(x, t, y=None) = scale * grad_x log p_phi(y | x_t, t) (paper section 4.1).

    The labels are `labels` when given, else the `y` of the model kwargs. `t` is what the model sees
    (the original timesteps), so a classifier trained on the full chain works with any respacing.
    """
    scale = _check_scale(scale)
    num_classes = getattr(getattr(classifier, "config", None), "num_classes", None)
    if labels is not None and num_classes is not None and labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ConfigError(
                f"label {lo if lo < 0 else hi} does not exist for a classifier of {num_classes} classes (0..{num_classes - 1})"
            )

    def cond_fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **_) -> torch.Tensor:
        target = labels if labels is not None else y
        if target is None:
            raise ConfigError("classifier guidance needs labels (pass labels= or y in the model kwargs)")
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(classifier(x_in, t), dim=-1)
            selected = log_probs[torch.arange(len(log_probs), device=x.device), target.view(-1).to(x.device)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * scale

    return cond_fn


def condition_mean(diffusion: Diffusion, cond_fn: CondFn, p_mean_var: dict, x: torch.Tensor,
                   t: torch.Tensor, model_kwargs: dict | None = None) -> torch.Tensor:
    """mu + Sigma * g, g = cond_fn(x_t) (Algorithm 1: the DDPM step's mean shifted along the gradient);
    the mean unchanged when cond_fn returns None (outside its guidance interval)."""
    grad = cond_fn(x, diffusion.model_timesteps(t), **(model_kwargs or {}))
    if grad is None:
        return p_mean_var["mean"]
    return p_mean_var["mean"].float() + p_mean_var["variance"] * grad.float()


def condition_score(diffusion: Diffusion, cond_fn: CondFn, p_mean_var: dict, x: torch.Tensor,
                    t: torch.Tensor, model_kwargs: dict | None = None) -> dict:
    """eps' = eps - sqrt(1 - alpha_bar) g (Algorithm 2), and the x_0 prediction and mean it implies;
    p_mean_var itself when cond_fn returns None (outside its guidance interval)."""
    grad = cond_fn(x, diffusion.model_timesteps(t), **(model_kwargs or {}))
    if grad is None:
        return p_mean_var
    alpha_bar = extract(diffusion.schedule.alphas_cumprod, t, x.ndim)
    eps = diffusion.predict_eps(x, t, p_mean_var["pred_xstart"])
    eps = eps - (1 - alpha_bar).sqrt() * grad
    out = dict(p_mean_var)
    out["pred_xstart"] = diffusion.predict_xstart(x, t, eps)
    out["mean"], _, _ = diffusion.q_posterior_mean_variance(out["pred_xstart"], x, t)
    return out


def classifier_free_guidance(model: ModelFn, scale: float, null_label: int, interval: Interval | None = None,
                             sigma_of: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ModelFn:
    """A model function with eps = eps(x | null) + w (eps(x | y) - eps(x | null)) (Ho & Salimans 2021).

    Conditional and unconditional halves run as one doubled batch; the variance channels (if any) are
    the conditional ones. w = 1 is plain conditional sampling, w = 0 unconditional. With an interval,
    timesteps whose sigma (sigma_of(t)) is outside it get the conditional model alone (one batch).
    """
    w = _check_scale(scale)
    interval = _interval_args(interval, sigma_of)

    def guided(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if y is None:
            raise ConfigError("classifier-free guidance needs class labels y")
        on = None if interval is None else timesteps_in_interval(t, interval, sigma_of, x.device)
        if on is not None and not bool(on.any()):
            return model(x, t, y=y, **kwargs)
        n, c = x.shape[:2]
        doubled = {k: torch.cat([v, v]) if torch.is_tensor(v) and v.shape[:1] == (n,) else v for k, v in kwargs.items()}
        out = model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, torch.full_like(y, null_label)]), **doubled)
        cond, uncond = out[:n], out[n:]
        eps = uncond[:, :c] + w * (cond[:, :c] - uncond[:, :c])
        if on is not None and not bool(on.all()):
            eps = _where(on, eps, cond[:, :c])
        return torch.cat([eps, cond[:, c:]], dim=1)

    return guided


def autoguidance(model: ModelFn, guide: ModelFn, scale: float, interval: Interval | None = None,
                 sigma_of: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ModelFn:
    """A model function guided by a bad version of itself (Karras et al. 2024, "Guiding a diffusion model
    with a bad version of itself"): eps = eps_bad + w (eps_good - eps_bad), i.e. D_bad + w (D_good - D_bad)
    in the sigma frame (D is affine in eps), computed as eps_good + (w - 1) (eps_good - eps_bad).

    `guide` is the weaker model of the same family (same image size, classes and diffusion), called with
    the same inputs; only its first C channels are read, and the variance channels (if any) are the good
    model's. w = 1, or a timestep whose sigma (sigma_of(t)) is outside the interval, is the good model
    alone, exactly, without calling the guide.
    """
    w = _check_scale(scale)
    interval = _interval_args(interval, sigma_of)

    def guided(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        good = model(x, t, **kwargs)
        on = None if interval is None else timesteps_in_interval(t, interval, sigma_of, x.device)
        if w == 1 or (on is not None and not bool(on.any())):
            return good
        c = x.shape[1]
        bad = guide(x, t, **kwargs)[:, :c].to(good.dtype)
        eps = good[:, :c] + (w - 1) * (good[:, :c] - bad)
        if on is not None and not bool(on.all()):
            eps = _where(on, eps, good[:, :c])
        return torch.cat([eps, good[:, c:]], dim=1)

    return guided
