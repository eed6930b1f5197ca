"""Likelihood terms and training losses of a diffusion process, given the model's output."""
from __future__ import annotations

import math

import torch

from adm.diffusion import gaussian as G
from adm.diffusion.process import Diffusion, LossType, MeanType


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all dimensions but the batch: [N, ...] -> [N]."""
    return x.mean(dim=list(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats (scalars broadcast)."""
    ref = next(a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, torch.Tensor))
    logvar1, logvar2 = (v if isinstance(v, torch.Tensor) else torch.tensor(v).to(ref) for v in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + ((mean1 - mean2) ** 2) * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF (as in Ho et al.'s code)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, *, means: torch.Tensor,
                                        log_scales: torch.Tensor) -> torch.Tensor:
    """log p(x) in nats, elementwise, of a Gaussian discretised to 256 bins over [-1, 1]; the edge bins
    extend to -inf and +inf (the decoder L_0 of Ho et al. section 3.3)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def vb_terms_bpd(diffusion: Diffusion, p_mean_var: dict, x_start: torch.Tensor, x_t: torch.Tensor,
                 t: torch.Tensor) -> torch.Tensor:
    """One term of L_vlb in bits per dimension, [N]: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0,
    the discretised decoder NLL -log p(x_0|x_1) at t = 0 (improved DDPM eqs. 4-6)."""
    true_mean, _, true_log_var = diffusion.q_posterior_mean_variance(x_start, x_t, t)
    kl = normal_kl(true_mean, true_log_var, p_mean_var["mean"], p_mean_var["log_variance"])
    kl = mean_flat(kl) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(
        x_start, means=p_mean_var["mean"], log_scales=0.5 * p_mean_var["log_variance"])
    nll = mean_flat(nll) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


def prior_bpd(diffusion: Diffusion, x_start: torch.Tensor) -> torch.Tensor:
    """KL(q(x_T | x_0) || N(0, I)) in bits per dimension, [N] (L_T; no parameters)."""
    t = torch.full((x_start.shape[0],), diffusion.num_timesteps - 1, device=x_start.device, dtype=torch.long)
    mean, _, log_var = G.q_mean_variance(diffusion.schedule, x_start, t)
    return mean_flat(normal_kl(mean, log_var, 0.0, 0.0)) / math.log(2.0)


def training_losses(
    diffusion: Diffusion,
    model_output: torch.Tensor,   # [N, C or 2C, ...] the model at (x_t, t)
    x_start: torch.Tensor,        # [N, C, ...] x_0
    x_t: torch.Tensor,            # [N, C, ...] q_sample(x_start, t, noise)
    t: torch.Tensor,              # [N] step indices
    noise: torch.Tensor,          # [N, C, ...] the eps that made x_t
) -> dict[str, torch.Tensor]:
    """Per-example loss terms [N]: {"loss"} for the KL losses; {"loss", "mse"} (+ "vb" when the variance
    is learned) for the MSE losses. With RESCALED_MSE this is the paper's hybrid objective
    L_simple + lambda L_vlb with lambda = 0.001, applied as vb * T / 1000."""
    if diffusion.loss_type.is_vb():
        out = diffusion.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        loss = vb_terms_bpd(diffusion, out, x_start, x_t, t)
        if diffusion.loss_type == LossType.RESCALED_KL:
            loss = loss * diffusion.num_timesteps
        return {"loss": loss}

    terms = {}
    mean_out, var_values = diffusion.split_output(model_output, x_t.shape[1])
    if var_values is not None:
        # L_vlb trains only the variance: the mean enters it through a stop-gradient (paper section 2).
        frozen = torch.cat([mean_out.detach(), var_values], dim=1)
        out = diffusion.p_mean_variance(frozen, x_t, t, clip_denoised=False)
        terms["vb"] = vb_terms_bpd(diffusion, out, x_start, x_t, t)
        if diffusion.loss_type == LossType.RESCALED_MSE:
            terms["vb"] = terms["vb"] * (diffusion.num_timesteps / 1000.0)
    if diffusion.mean_type == MeanType.PREVIOUS_X:
        target = diffusion.q_posterior_mean_variance(x_start, x_t, t)[0]
    elif diffusion.mean_type == MeanType.START_X:
        target = x_start
    else:
        target = noise
    terms["mse"] = mean_flat((target - mean_out) ** 2)
    terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
    return terms
