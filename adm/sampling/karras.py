"""Samplers in the sigma frame (Karras et al. 2022, "Elucidating the design space of diffusion-based
generative models"), with k-diffusion's signature: sampler(denoiser, x, sigmas, extra_args=None,
callback=None, disable=None, ...) -> x at sigmas[-1].

x is x_0 + sigma eps at sigmas[0] (for an ADM model: x_T * sqrt(1 + sigmas[0]^2), see
adm.sampling.denoisers); sigmas [K+1] decrease, usually to 0. `denoiser(x, sigma [N], **extra_args)`
returns the x_0 estimate; `callback` receives {"x", "i", "sigma", "sigma_hat", "denoised"} once per
step; `noise` (an adm.sampling.seeds NoiseFn) draws the standard normals; `disable` turns off the
tqdm bar (None: off unless on a terminal, as tqdm decides).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from adm.diffusion.process import Diffusion
from adm.diffusion.schedule import space_timesteps
from adm.errors import ConfigError
from adm.sampling.denoisers import Denoiser
from adm.sampling.seeds import NoiseFn, global_noise

KCallback = Callable[[dict[str, Any]], None]


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """EDM's schedule (eq. 5): n noise levels from sigma_max down to sigma_min, evenly spaced in
    sigma^(1/rho), then 0: [n+1]."""
    if n < 1 or not 0 < sigma_min <= sigma_max:
        raise ConfigError(f"karras_sigmas needs n >= 1 and 0 < sigma_min <= sigma_max, "
                          f"got {n}, {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device=device, dtype=dtype)


def timestep_sigmas(diffusion: Diffusion, respacing: str | int | None = None, *, steps: Sequence[int] | None = None,
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The sigmas [K+1] of steps of `diffusion`, descending, then 0: every step of its (respaced)
    chain, the steps a respacing spec keeps of it ("ddim10", "25", ...; see space_timesteps), or
    explicit step indices `steps`. Euler on EpsDenoiser(model, diffusion, quantize=True) over them
    is DDIM (eta 0) on those steps."""
    table = diffusion.schedule.sqrt_recipm1_alphas_cumprod  # float64, ascending
    if respacing is not None and steps is not None:
        raise ConfigError("give a respacing spec or explicit steps, not both")
    if respacing is not None:
        steps = space_timesteps(len(table), respacing, diffusion.schedule.alphas_cumprod)
    if steps is not None:
        keep = sorted({int(i) for i in steps})
        if not keep or keep[0] < 0 or keep[-1] >= len(table):
            raise ConfigError(f"steps must be a non-empty subset of 0..{len(table) - 1}")
        table = table[keep]
    return torch.cat([table.flip(0), table.new_zeros(1)]).to(device=device, dtype=dtype)


def _steps(n: int, disable: bool | None):
    if disable is True:
        return range(n)
    from tqdm.auto import trange

    return trange(n, disable=disable)


def _to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE, (x - D(x, sigma)) / sigma (EDM eq. 3 with sigma(t) = t)."""
    return (x - denoised) / sigma


def _churn(sigmas: torch.Tensor, i: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """gamma_i of EDM Algorithm 2: min(S_churn / N, sqrt(2) - 1) for sigma_i in [S_tmin, S_tmax], else 0."""
    if s_tmin <= sigmas[i] <= s_tmax:
        return min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1)
    return 0.0


def _report(callback, x, i, sigma, sigma_hat, denoised):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


@torch.no_grad()
def sample_euler(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                 callback: KCallback | None = None, disable: bool | None = None, s_churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                 noise: NoiseFn = global_noise) -> torch.Tensor:
    """EDM Algorithm 2 with Euler steps (Algorithm 1's Euler method when s_churn = 0): one call a step.
    Noise is drawn only at steps that churn (gamma > 0), before the model call."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(len(sigmas) - 1, disable):
        gamma = _churn(sigmas, i, s_churn, s_tmin, s_tmax)
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + noise(x) * s_noise * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
        denoised = denoiser(x, sigma_hat * s_in, **extra_args)
        d = _to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                callback: KCallback | None = None, disable: bool | None = None, s_churn: float = 0.0,
                s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                noise: NoiseFn = global_noise) -> torch.Tensor:
    """EDM Algorithm 2 (stochastic; Algorithm 1, the deterministic 2nd-order Heun sampler, when
    s_churn = 0). The step to sigma = 0 is an Euler step, so K steps ending at 0 make 2K - 1 calls."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(len(sigmas) - 1, disable):
        gamma = _churn(sigmas, i, s_churn, s_tmin, s_tmax)
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:  # Algorithm 2 lines 4-6: raise the noise level to sigma_hat
            x = x + noise(x) * s_noise * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
        denoised = denoiser(x, sigma_hat * s_in, **extra_args)
        d = _to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt  # Euler (line 8); D at sigma = 0 would be x itself
        else:  # the 2nd-order correction (lines 9-11)
            x_2 = x + d * dt
            d_2 = _to_d(x_2, sigmas[i + 1], denoiser(x_2, sigmas[i + 1] * s_in, **extra_args))
            x = x + (d + d_2) / 2 * dt
    return x


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up): the deterministic step goes to sigma_down, then noise of std sigma_up brings
    it to sigma_to. eta = 1 is the DDPM posterior (DDIM eta 1), eta = 0 the Euler step."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - sigma_up ** 2) ** 0.5, sigma_up


@torch.no_grad()
def sample_euler_ancestral(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                           callback: KCallback | None = None, disable: bool | None = None, eta: float = 1.0,
                           s_noise: float = 1.0, noise_sampler: Callable | None = None,
                           noise: NoiseFn = global_noise) -> torch.Tensor:
    """Euler steps to sigma_down plus fresh noise of std sigma_up (ancestral_step): one call a step,
    a draw after each call but the last (on DDIM's steps, eta as in sample_ddim gives its samples).
    noise_sampler(sigma, sigma_next) (k-diffusion's) overrides `noise`."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(len(sigmas) - 1, disable):
        denoised = denoiser(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = x + _to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            z = noise(x) if noise_sampler is None else noise_sampler(sigmas[i], sigmas[i + 1])
            x = x + z * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                    callback: KCallback | None = None, disable: bool | None = None,
                    noise: NoiseFn = global_noise) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in the sigma frame: with lambda = -log sigma and
    h = lambda_next - lambda, x_next = (sigma_next / sigma) x - expm1(-h) D', D' the 2M extrapolation
    (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}, r = h_prev / h; first order on the first step, and the step to
    sigma = 0 returns D_i. One call a step. `noise` is unused (kept for a uniform signature)."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h_last = None, None
    for i in _steps(len(sigmas) - 1, disable):
        denoised = denoiser(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()
            d = denoised
            if old_denoised is not None:
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * d
            h_last = h
        old_denoised = denoised
    return x


# name -> sampler(denoiser, x, sigmas, extra_args=None, callback=None, disable=None, ..., noise=)
KARRAS_SAMPLERS: dict[str, Callable] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
}


def karras_calls(sampler: str, num_steps: int) -> int:
    """Denoiser calls of a KARRAS_SAMPLERS entry over `num_steps` steps ending at sigma = 0 (sigmas of
    length num_steps + 1): 2 num_steps - 1 for Heun, num_steps for the others."""
    if sampler not in KARRAS_SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(KARRAS_SAMPLERS)}")
    return 2 * num_steps - 1 if sampler == "heun" else num_steps


__all__ = ["KARRAS_SAMPLERS", "ancestral_step", "karras_calls", "karras_sigmas", "sample_dpmpp_2m",
           "sample_euler", "sample_euler_ancestral", "sample_heun", "timestep_sigmas"]
