"""The Gaussian diffusion as tensor math: q(x_t | x_0), the posterior, predictions, variances.

Every function takes the float64 tables of a `Schedule`, indexes them with a batch of (respaced)
step indices t [N], and computes in float32 (float64 for float64 inputs), as guided-diffusion does.
Equation numbers refer to Ho et al. 2020 (DDPM) and Nichol & Dhariwal 2021 (improved DDPM).
"""
from __future__ import annotations

import torch

from adm.diffusion.schedule import Schedule, extract


def _dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _at(table: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return extract(table, t, x.ndim, _dtype(x))


def q_mean_variance(s: Schedule, x_start: torch.Tensor, t: torch.Tensor):
    """Mean, variance and log-variance of q(x_t | x_0) (eq. 4), each like x_start."""
    mean = _at(s.sqrt_alphas_cumprod, t, x_start) * x_start
    variance = _at(1.0 - s.alphas_cumprod, t, x_start).expand_as(x_start)
    log_variance = _at(s.log_one_minus_alphas_cumprod, t, x_start).expand_as(x_start)
    return mean, variance, log_variance


def q_sample(s: Schedule, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (eq. 4)."""
    if noise.shape != x_start.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must have x_start's shape {tuple(x_start.shape)}")
    return _at(s.sqrt_alphas_cumprod, t, x_start) * x_start + _at(s.sqrt_one_minus_alphas_cumprod, t, x_start) * noise


def q_posterior_mean_variance(s: Schedule, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Mean mu-tilde, variance beta-tilde and clipped log beta-tilde of q(x_{t-1} | x_t, x_0) (eqs. 6-7)."""
    mean = _at(s.posterior_mean_coef1, t, x_t) * x_start + _at(s.posterior_mean_coef2, t, x_t) * x_t
    variance = _at(s.posterior_variance, t, x_t).expand_as(x_t)
    log_variance = _at(s.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
    return mean, variance, log_variance


def predict_xstart_from_eps(s: Schedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar), written as guided-diffusion does."""
    return _at(s.sqrt_recip_alphas_cumprod, t, x_t) * x_t - _at(s.sqrt_recipm1_alphas_cumprod, t, x_t) * eps


def predict_eps_from_xstart(s: Schedule, x_t: torch.Tensor, t: torch.Tensor, x_start: torch.Tensor) -> torch.Tensor:
    """The eps that maps x_0 to x_t (inverse of predict_xstart_from_eps)."""
    return (_at(s.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x_start) / _at(s.sqrt_recipm1_alphas_cumprod, t, x_t)


def predict_xstart_from_xprev(s: Schedule, x_t: torch.Tensor, t: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
    """x_0 from the posterior mean: (mu - coef2 x_t) / coef1."""
    return (_at(1.0 / s.posterior_mean_coef1, t, x_t) * x_prev
            - _at(s.posterior_mean_coef2 / s.posterior_mean_coef1, t, x_t) * x_t)


def fixed_variance(s: Schedule, t: torch.Tensor, x: torch.Tensor, small: bool):
    """(variance, log_variance) like x: beta-tilde_t (small) or beta_t (large; step 0 uses beta-tilde_1
    so that the decoder likelihood stays finite)."""
    if small:
        var, log_var = s.posterior_variance, s.posterior_log_variance_clipped
    else:
        var = torch.cat([s.posterior_variance[1:2], s.betas[1:]])
        log_var = torch.log(var)
    return _at(var, t, x).expand_as(x), _at(log_var, t, x).expand_as(x)


def learned_range_variance(s: Schedule, t: torch.Tensor, v: torch.Tensor):
    """Sigma = exp(v' log beta + (1 - v') log beta-tilde), v' = (v + 1) / 2 (improved DDPM eq. 15)."""
    min_log = _at(s.posterior_log_variance_clipped, t, v)
    max_log = _at(torch.log(s.betas), t, v)
    frac = (v + 1) / 2
    log_var = frac * max_log + (1 - frac) * min_log
    return torch.exp(log_var), log_var


def ddim_sigma(s: Schedule, t: torch.Tensor, x: torch.Tensor, eta: float) -> torch.Tensor:
    """DDIM's sigma_t(eta) between step t and its predecessor (Song et al. 2021, eq. 16)."""
    ab = _at(s.alphas_cumprod, t, x)
    ab_prev = _at(s.alphas_cumprod_prev, t, x)
    return eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
