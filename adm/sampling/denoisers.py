"""ADM models as denoisers in the sigma frame of Karras et al. 2022 ("EDM"), in k-diffusion's
convention: D(x, sigma, **model_kwargs) -> the x_0 estimate, like x.

The variance-preserving x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps divided by sqrt(abar) is the
variance-exploding x = x_0 + sigma eps with
    sigma = sqrt((1 - abar) / abar),   x = x_t sqrt(1 + sigma^2),   D(x, sigma) = x - sigma eps.
Every sigma-frame sampler (adm.sampling.karras, k-diffusion's) then runs on any ADM model.
"""
from __future__ import annotations

from typing import Callable

import torch

from adm.diffusion.process import Diffusion, MeanType
from adm.errors import ConfigError
from adm.sampling.model import ModelFn

Denoiser = Callable[..., torch.Tensor]  # D(x [N, C, H, W], sigma [N], **model_kwargs) -> x_0 estimate like x


def batch_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """sigma as a [N] tensor on x's device and in x's dtype (a scalar is repeated for the batch)."""
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma.reshape(x.shape[0])


def expand_like(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, 1, ..., 1] to broadcast against x."""
    return v.reshape(-1, *([1] * (x.ndim - 1)))


class EpsDenoiser:
    """An ADM model (eps or x_0 prediction; learned-variance channels dropped) as a denoiser D(x, sigma).

    sigmas: the discrete noise levels of `diffusion` (respaced or not), sqrt((1 - abar) / abar),
    ascending as in k-diffusion. A sigma maps to a position in that table by linear interpolation
    of log sigma (quantize=True: the nearest entry), and the position to the timestep the model
    receives exactly as the adm samplers give it at that step: timestep_map (interpolated between
    neighbouring kept steps when fractional), scaled to 0..1000 when the process rescales timesteps.
    Sigmas outside the table are clamped to its ends. The model sees x_t = x / sqrt(1 + sigma^2).
    """

    def __init__(self, model: ModelFn, diffusion: Diffusion, quantize: bool = False):
        if diffusion.mean_type not in (MeanType.EPSILON, MeanType.START_X):
            raise ConfigError(f"a denoiser needs a model predicting eps or x_0, not {diffusion.mean_type.name}")
        self.model = model
        self.diffusion = diffusion
        self.quantize = bool(quantize)
        self._log_sigmas = diffusion.schedule.sqrt_recipm1_alphas_cumprod.log()  # float64 [K], ascending
        self.sigmas = diffusion.schedule.sqrt_recipm1_alphas_cumprod.float()     # float32 [K], ascending
        self.sigma_min = float(diffusion.schedule.sqrt_recipm1_alphas_cumprod[0])
        self.sigma_max = float(diffusion.schedule.sqrt_recipm1_alphas_cumprod[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Position of each sigma [N] in the table (float64 on the CPU; int64 when quantized)."""
        log_sigma = torch.as_tensor(sigma).detach().to("cpu", torch.float64).reshape(-1).log()
        table = self._log_sigmas
        if self.quantize:
            return (log_sigma[:, None] - table[None, :]).abs().argmin(dim=1)
        if table.shape[0] == 1:
            return torch.zeros_like(log_sigma)
        hi = torch.searchsorted(table, log_sigma).clamp(1, table.shape[0] - 1)
        lo = hi - 1
        w = ((log_sigma - table[lo]) / (table[hi] - table[lo])).clamp(0, 1)
        return lo + w

    def timesteps(self, sigma: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
        """The timesteps [N] the model (and a noisy classifier) receives at noise level sigma [N]."""
        device = torch.as_tensor(sigma).device if device is None else device
        t = self.sigma_to_t(sigma)
        if self.quantize:  # the samplers' own mapping, bit for bit
            return self.diffusion.model_timesteps(t.to(device))
        schedule = self.diffusion.schedule
        tmap = schedule.timestep_map.double()
        lo = t.floor().long()
        hi = (lo + 1).clamp(max=len(tmap) - 1)
        steps = (tmap[lo] + (t - lo) * (tmap[hi] - tmap[lo])).float().to(device)
        if self.diffusion.rescale_timesteps:
            steps = steps * (1000.0 / schedule.original_num_steps)
        return steps

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, **model_kwargs) -> torch.Tensor:
        """D(x, sigma): the x_0 estimate [N, C, H, W] from x = x_0 + sigma eps [N, C, H, W], sigma [N]."""
        sigma = batch_sigma(sigma, x)
        s = expand_like(sigma, x)
        out = self.model(x * (1 / (s ** 2 + 1).sqrt()), self.timesteps(sigma, x.device), **model_kwargs)
        out, _ = self.diffusion.split_output(out, x.shape[1])
        out = out.to(x.dtype)
        if self.diffusion.mean_type == MeanType.START_X:
            return out
        return x - s * out


__all__ = ["Denoiser", "EpsDenoiser", "batch_sigma", "expand_like"]
