"""Ancestral sampling (DDPM; the paper's Algorithm 1 with classifier guidance)."""
from __future__ import annotations

from typing import Callable

import torch

from adm.diffusion.process import Diffusion
from adm.sampling.guidance import condition_mean
from adm.sampling.model import Callback, CondFn, ModelFn, batch_t, denoise, report, step_indices
from adm.sampling.seeds import NoiseFn, draw, global_noise


def ddpm_step(
    model: ModelFn,
    diffusion: Diffusion,
    x: torch.Tensor,                       # [N, C, H, W] x_t
    t: torch.Tensor,                       # [N] respaced step indices
    noise: torch.Tensor | NoiseFn | None = None,  # this step's standard normal draw (or its source)
    *,
    cond_fn: CondFn | None = None,
    model_kwargs: dict | None = None,
    clip_denoised: bool = True,
    denoised_fn: Callable | None = None,
) -> dict[str, torch.Tensor]:
    """x_{t-1} ~ N(mu + Sigma g, Sigma) (Algorithm 1): {"sample", "pred_xstart"}. No noise at t = 0."""
    out = denoise(model, diffusion, x, t, model_kwargs, clip_denoised, denoised_fn)
    noise = draw(noise, x)  # after the model call, in guided-diffusion's order
    if cond_fn is not None:
        out["mean"] = condition_mean(diffusion, cond_fn, out, x, t, model_kwargs)
    nonzero = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))
    sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
    return {"sample": sample, "pred_xstart": out["pred_xstart"]}


def sample_ddpm(
    model: ModelFn,
    diffusion: Diffusion,
    x_T: torch.Tensor,                     # [N, C, H, W] the starting noise
    *,
    noise: NoiseFn = global_noise,         # each step's draw: noise(x) -> standard normal like x
    cond_fn: CondFn | None = None,         # guidance gradient (adm.sampling.guidance)
    model_kwargs: dict | None = None,      # extra model inputs, e.g. {"y": labels}
    clip_denoised: bool = True,            # clamp x_0 predictions to [-1, 1]
    denoised_fn: Callable | None = None,   # applied to x_0 predictions before clipping
    callback: Callback | None = None,      # called after every step (adm.sampling.model.report)
    progress: bool = False,                # tqdm progress bar
) -> torch.Tensor:
    """x_0 by ancestral sampling over every step of the (respaced) process."""
    x = x_T
    with torch.no_grad():
        for k, i in enumerate(step_indices(diffusion, progress, "DDPM")):
            t = batch_t(i, x)
            out = ddpm_step(model, diffusion, x, t, noise, cond_fn=cond_fn, model_kwargs=model_kwargs,
                            clip_denoised=clip_denoised, denoised_fn=denoised_fn)
            report(callback, k, i, x, out)
            x = out["sample"]
    return x
