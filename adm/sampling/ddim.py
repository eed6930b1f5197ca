"""DDIM sampling (Song et al. 2021; the paper's Algorithm 2 with classifier guidance)."""
from __future__ import annotations

from typing import Callable

import torch

from adm.diffusion import gaussian as G
from adm.diffusion.process import Diffusion
from adm.diffusion.schedule import extract
from adm.sampling.guidance import condition_score
from adm.sampling.model import Callback, CondFn, ModelFn, batch_t, denoise, report, step_indices
from adm.sampling.seeds import NoiseFn, draw, global_noise


def ddim_step(
    model: ModelFn,
    diffusion: Diffusion,
    x: torch.Tensor,                       # [N, C, H, W] x_t
    t: torch.Tensor,                       # [N] respaced step indices
    noise: torch.Tensor | NoiseFn | None = None,  # this step's standard normal draw (or its source)
    *,
    eta: float = 0.0,                      # 0: deterministic DDIM; 1: DDPM-like variance
    cond_fn: CondFn | None = None,
    model_kwargs: dict | None = None,
    clip_denoised: bool = True,
    denoised_fn: Callable | None = None,
) -> dict[str, torch.Tensor]:
    """One DDIM step to the previous respaced step: {"sample", "pred_xstart"}."""
    out = denoise(model, diffusion, x, t, model_kwargs, clip_denoised, denoised_fn)
    if cond_fn is not None:
        out = condition_score(diffusion, cond_fn, out, x, t, model_kwargs)
    # Re-derive eps from the (clipped, guided) x_0 prediction, whatever the model predicts.
    eps = diffusion.predict_eps(x, t, out["pred_xstart"])
    s = diffusion.schedule
    alpha_bar_prev = extract(s.alphas_cumprod_prev, t, x.ndim)
    sigma = G.ddim_sigma(s, t, x, eta)
    noise = draw(noise, x)  # after the model call, in guided-diffusion's order
    # DDIM eq. 12: x_{t-1} = sqrt(a_prev) x_0 + sqrt(1 - a_prev - sigma^2) eps + sigma z.
    mean_pred = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps
    nonzero = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))
    return {"sample": mean_pred + nonzero * sigma * noise, "pred_xstart": out["pred_xstart"]}


def sample_ddim(
    model: ModelFn,
    diffusion: Diffusion,
    x_T: torch.Tensor,                     # [N, C, H, W] the starting noise
    *,
    eta: float = 0.0,
    noise: NoiseFn = global_noise,         # drawn every step (even with eta 0, as guided-diffusion does)
    cond_fn: CondFn | None = None,
    model_kwargs: dict | None = None,
    clip_denoised: bool = True,
    denoised_fn: Callable | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """x_0 by DDIM over every step of the (respaced) process."""
    x = x_T
    with torch.no_grad():
        for k, i in enumerate(step_indices(diffusion, progress, "DDIM")):
            t = batch_t(i, x)
            out = ddim_step(model, diffusion, x, t, noise, eta=eta, cond_fn=cond_fn, model_kwargs=model_kwargs,
                            clip_denoised=clip_denoised, denoised_fn=denoised_fn)
            report(callback, k, i, x, out)
            x = out["sample"]
    return x
