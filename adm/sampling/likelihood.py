"""The full variational bound in bits per dimension (guided-diffusion's calc_bpd_loop)."""
from __future__ import annotations

import torch

from adm.diffusion.losses import mean_flat, prior_bpd, vb_terms_bpd
from adm.diffusion.process import Diffusion
from adm.sampling.model import ModelFn, batch_t, denoise, step_indices
from adm.sampling.seeds import NoiseFn, global_noise


def bpd_loop(
    model: ModelFn,
    diffusion: Diffusion,
    x_start: torch.Tensor,             # [N, C, H, W] data in [-1, 1]
    *,
    clip_denoised: bool = True,
    model_kwargs: dict | None = None,
    noise: NoiseFn = global_noise,     # the q(x_t | x_0) draw of every step
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """L_vlb = L_T + sum_t L_t in bits/dim: {"total_bpd" [N], "prior_bpd" [N], "vb" [N, T],
    "xstart_mse" [N, T], "mse" [N, T]}; column j is step T-1-j, as in guided-diffusion."""
    vb, xstart_mse, mse = [], [], []
    for i in step_indices(diffusion, progress, "bpd"):
        t = batch_t(i, x_start)
        eps = noise(x_start)
        x_t = diffusion.q_sample(x_start, t, eps)
        with torch.no_grad():
            out = denoise(model, diffusion, x_t, t, model_kwargs, clip_denoised)
            vb.append(vb_terms_bpd(diffusion, out, x_start, x_t, t))
        xstart_mse.append(mean_flat((out["pred_xstart"] - x_start) ** 2))
        mse.append(mean_flat((diffusion.predict_eps(x_t, t, out["pred_xstart"]) - eps) ** 2))
    vb, xstart_mse, mse = (torch.stack(v, dim=1) for v in (vb, xstart_mse, mse))
    prior = prior_bpd(diffusion, x_start)
    return {"total_bpd": vb.sum(dim=1) + prior, "prior_bpd": prior, "vb": vb, "xstart_mse": xstart_mse, "mse": mse}
