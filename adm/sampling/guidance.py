"""Guidance as composable functions: classifier guidance (a cond_fn for any sampler) and
classifier-free guidance (a wrapper of the model function)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from adm.diffusion.schedule import extract
from adm.diffusion.process import Diffusion
from adm.errors import ConfigError
from adm.sampling.model import CondFn, ModelFn


def _check_scale(scale: float) -> float:
    scale = float(scale)
    if not scale >= 0:  # also rejects NaN
        raise ConfigError(f"the guidance scale must be >= 0, got {scale}")
    return scale


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
    """mu + Sigma * g, g = cond_fn(x_t) (Algorithm 1: the DDPM step's mean shifted along the gradient)."""
    grad = cond_fn(x, diffusion.model_timesteps(t), **(model_kwargs or {}))
    return p_mean_var["mean"].float() + p_mean_var["variance"] * grad.float()


def condition_score(diffusion: Diffusion, cond_fn: CondFn, p_mean_var: dict, x: torch.Tensor,
                    t: torch.Tensor, model_kwargs: dict | None = None) -> dict:
    """eps' = eps - sqrt(1 - alpha_bar) g (Algorithm 2), and the x_0 prediction and mean it implies."""
    alpha_bar = extract(diffusion.schedule.alphas_cumprod, t, x.ndim)
    eps = diffusion.predict_eps(x, t, p_mean_var["pred_xstart"])
    eps = eps - (1 - alpha_bar).sqrt() * cond_fn(x, diffusion.model_timesteps(t), **(model_kwargs or {}))
    out = dict(p_mean_var)
    out["pred_xstart"] = diffusion.predict_xstart(x, t, eps)
    out["mean"], _, _ = diffusion.q_posterior_mean_variance(out["pred_xstart"], x, t)
    return out


def classifier_free_guidance(model: ModelFn, scale: float, null_label: int) -> ModelFn:
    """A model function with eps = eps(x | null) + w (eps(x | y) - eps(x | null)) (Ho & Salimans 2021).

    Conditional and unconditional halves run as one doubled batch; the variance channels (if any) are
    the conditional ones. w = 1 is plain conditional sampling, w = 0 unconditional.
    """
    w = _check_scale(scale)

    def guided(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if y is None:
            raise ConfigError("classifier-free guidance needs class labels y")
        n, c = x.shape[:2]
        doubled = {k: torch.cat([v, v]) if torch.is_tensor(v) and v.shape[:1] == (n,) else v for k, v in kwargs.items()}
        out = model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, torch.full_like(y, null_label)]), **doubled)
        cond, uncond = out[:n], out[n:]
        eps = uncond[:, :c] + w * (cond[:, :c] - uncond[:, :c])
        return torch.cat([eps, cond[:, c:]], dim=1)

    return guided
