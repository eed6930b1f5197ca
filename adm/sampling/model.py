"""What every sampler shares: calling the model at respaced steps, and iterating the steps."""
from __future__ import annotations

from typing import Any, Callable

import torch

from adm.diffusion.process import Diffusion

ModelFn = Callable[..., torch.Tensor]   # model(x, t, **model_kwargs) -> output; t the original timesteps
CondFn = Callable[..., torch.Tensor]    # cond_fn(x, t, **model_kwargs) -> grad of log p(y | x_t), like x
                                        # (or None: no guidance at this step, see guidance.limit_to_interval)
Callback = Callable[[dict[str, Any]], None]


def denoise(
    model: ModelFn,
    diffusion: Diffusion,
    x: torch.Tensor,                         # [N, C, H, W] x_t
    t: torch.Tensor,                         # [N] respaced step indices
    model_kwargs: dict | None = None,
    clip_denoised: bool = True,
    denoised_fn: Callable | None = None,
) -> dict[str, torch.Tensor]:
    """p(x_{t-1} | x_t) from the model: {"mean", "variance", "log_variance", "pred_xstart"}."""
    out = model(x, diffusion.model_timesteps(t), **(model_kwargs or {}))
    return diffusion.p_mean_variance(out, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn)


def step_indices(diffusion: Diffusion, progress: bool, desc: str = "sampling", calls: int | None = None):
    """The respaced steps N-1 .. 0 (or only the first `calls` of them), wrapped in a tqdm bar when progress."""
    n = diffusion.num_timesteps
    indices = list(range(n - 1, n - 1 - (n if calls is None else calls), -1))
    if progress:
        from tqdm.auto import tqdm

        return tqdm(indices, desc=desc)
    return indices


def batch_t(i: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)


def report(callback: Callback | None, i: int, t: int, x: torch.Tensor, out: dict) -> None:
    """callback({"i": k-th step from 0, "t": respaced step, "x": x_t, "sample": x_{t-1}, "pred_xstart"})."""
    if callback is not None:
        callback({"i": i, "t": t, "x": x, "sample": out["sample"], "pred_xstart": out["pred_xstart"]})
