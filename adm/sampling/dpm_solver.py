"""DPM-Solver++(2M): a second-order multistep solver of the diffusion ODE in data prediction
(Lu et al. 2022, "DPM-Solver++", Algorithm 2), on the respaced discrete schedule."""
from __future__ import annotations

import math
from typing import Callable

import torch

from adm.diffusion.process import Diffusion
from adm.diffusion.schedule import log_snr
from adm.sampling.guidance import condition_score
from adm.sampling.model import Callback, CondFn, ModelFn, batch_t, denoise, report, step_indices
from adm.sampling.seeds import NoiseFn, global_noise


def sample_dpmpp_2m(
    model: ModelFn,
    diffusion: Diffusion,
    x_T: torch.Tensor,                     # [N, C, H, W] the starting noise
    *,
    noise: NoiseFn = global_noise,         # unused: the solver is deterministic (kept for a uniform signature)
    cond_fn: CondFn | None = None,         # classifier guidance, applied to eps as in DDIM (Algorithm 2)
    model_kwargs: dict | None = None,
    clip_denoised: bool = True,            # clamp x_0 predictions to [-1, 1] (DPM-Solver++'s thresholding)
    denoised_fn: Callable | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """x_0 after one model evaluation per respaced step but the last: K steps, K - 1 evaluations.

    With alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t), lambda_t = log(alpha_t / sigma_t)
    and h = lambda_s - lambda_t, a step from t to the next step s is
        x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D,
    with D the 2M extrapolation D = (1 + 1/(2r)) D_t - 1/(2r) D_prev, r = h_prev / h, or D = D_t
    (first order, DDIM) on the first step and on the step into step 0: lambda jumps there, and
    extrapolating over it costs more than it gains (DPM-Solver's "lower order final"; on Gaussian
    data, 20 cosine steps: error 0.007 instead of 0.2). The solution is x at step 0 (the original
    t = 0, sigma about 0.006), read without calling the model there, as DPM-Solver does; a chain of a
    single step returns the model's x_0 prediction. Its steps are best spaced evenly in log-SNR
    (respacing "logsnrK", what ADM_G uses for this sampler: steps=N gives "logsnr{N+1}").
    """
    ab = diffusion.schedule.alphas_cumprod.tolist()  # float64 scalars: every image shares the step
    lam = log_snr(diffusion.schedule.alphas_cumprod).tolist()
    x = x_T
    d_prev, h_prev = None, None
    calls = dpmpp_2m_calls(diffusion.num_timesteps)  # steps N-1 .. 1: step 0 is read, not evaluated
    with torch.no_grad():
        for k, i in enumerate(step_indices(diffusion, progress, "DPM-Solver++(2M)", calls)):
            t = batch_t(i, x)
            out = denoise(model, diffusion, x, t, model_kwargs, clip_denoised, denoised_fn)
            if cond_fn is not None:
                out = condition_score(diffusion, cond_fn, out, x, t, model_kwargs)
                if clip_denoised:
                    # The guided x_0 is x_0 + (1 - alpha_bar) / sqrt(alpha_bar) * g: at high noise a shift of
                    # ~100 g. DDIM pairs it with the matching eps and stays exact; the 2M extrapolation mixes
                    # such terms of two steps and diverges (saturated samples at s = 2). DPM-Solver++
                    # thresholds the data prediction of the guided model: so do we.
                    out = {**out, "pred_xstart": out["pred_xstart"].clamp(-1, 1)}
            d_t = out["pred_xstart"]
            if i == 0:  # a one-step chain
                x_next = d_t
            else:
                s = i - 1
                h = lam[s] - lam[i]
                if d_prev is None or s == 0:
                    d = d_t
                else:
                    r = h_prev / h
                    d = (1 + 1 / (2 * r)) * d_t - (1 / (2 * r)) * d_prev
                sigma_ratio = math.sqrt((1 - ab[s]) / (1 - ab[i]))
                x_next = sigma_ratio * x - math.sqrt(ab[s]) * math.expm1(-h) * d
                if s == 0 and clip_denoised:
                    x_next = x_next.clamp(-1, 1)
                d_prev, h_prev = d_t, h
            report(callback, k, i, x, {"sample": x_next, "pred_xstart": d_t})
            x = x_next
    return x


def dpmpp_2m_calls(num_steps: int) -> int:
    """Model evaluations of sample_dpmpp_2m on a chain of `num_steps` respaced steps: all but step 0
    (one, for a one-step chain)."""
    return max(num_steps - 1, 1)
