"""guided-diffusion's diffusion object (`GaussianDiffusion` / `SpacedDiffusion`) as a thin facade over
`adm.diffusion` and `adm.sampling`: official names, keywords and semantics; t indexes the respaced
chain, and the model and cond_fn receive the original timesteps (rescaled to 0..1000 when asked)."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from adm.diffusion import gaussian as G
from adm.diffusion.config import DiffusionConfig
from adm.diffusion.losses import training_losses as _training_losses
from adm.diffusion.process import Diffusion, LossType, MeanType, VarType
from adm.diffusion.schedule import Schedule, make_betas, space_timesteps
from adm.sampling import guidance
from adm.sampling.ddim import ddim_step, sample_ddim
from adm.sampling.ddpm import ddpm_step, sample_ddpm
from adm.sampling.likelihood import bpd_loop
from adm.sampling.model import batch_t, denoise, step_indices
from adm.sampling.seeds import generator_noise, global_noise, initial_noise

# guided-diffusion's enum names.
ModelMeanType, ModelVarType = MeanType, VarType
get_named_beta_schedule = make_betas

_TABLES = set(Schedule.__dataclass_fields__) - {"timestep_map", "original_num_steps"}


class GaussianDiffusion:
    """guided-diffusion's GaussianDiffusion: `GaussianDiffusion(betas=..., model_mean_type=...,
    model_var_type=..., loss_type=..., rescale_timesteps=False)`, or `from_process(Diffusion)`."""

    def __init__(self, *, betas, model_mean_type, model_var_type, loss_type, rescale_timesteps=False):
        self._set(Diffusion(Schedule.from_betas(torch.as_tensor(np.asarray(betas, dtype=np.float64))),
                            model_mean_type, model_var_type, loss_type, bool(rescale_timesteps)))

    @classmethod
    def from_process(cls, process: Diffusion, config: DiffusionConfig | None = None) -> "GaussianDiffusion":
        obj = cls.__new__(cls)
        obj._set(process)
        obj.config = config
        return obj

    def _set(self, process: Diffusion) -> None:
        self.process = process
        self.config = getattr(self, "config", None)

    # --- attributes of the official object ---------------------------------------------------------
    @property
    def num_timesteps(self) -> int:
        return self.process.num_timesteps

    @property
    def timestep_map(self) -> list[int]:
        return self.process.schedule.timestep_map.tolist()

    @property
    def use_timesteps(self) -> set[int]:
        return set(self.timestep_map)

    @property
    def original_num_steps(self) -> int:
        return self.process.schedule.original_num_steps

    model_mean_type = property(lambda self: self.process.mean_type)
    model_var_type = property(lambda self: self.process.var_type)
    loss_type = property(lambda self: self.process.loss_type)
    rescale_timesteps = property(lambda self: self.process.rescale_timesteps)

    def __getattr__(self, name):
        # betas, alphas_cumprod, posterior_variance, ...: float64 numpy arrays, as in the original.
        if name in _TABLES:
            return getattr(self.process.schedule, name).numpy()
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _scale_timesteps(self, t):
        return self.process.model_timesteps(t)

    # --- q and the posterior -------------------------------------------------------------------------
    def q_mean_variance(self, x_start, t):
        return G.q_mean_variance(self.process.schedule, x_start, t)

    def q_sample(self, x_start, t, noise=None):
        return self.process.q_sample(x_start, t, torch.randn_like(x_start) if noise is None else noise)

    def q_posterior_mean_variance(self, x_start, x_t, t):
        return self.process.q_posterior_mean_variance(x_start, x_t, t)

    def _predict_xstart_from_eps(self, x_t, t, eps):
        return self.process.predict_xstart(x_t, t, eps)

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return self.process.predict_eps(x_t, t, pred_xstart)

    # --- the model ---------------------------------------------------------------------------------
    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        return denoise(model, self.process, x, t, model_kwargs, clip_denoised, denoised_fn)

    def condition_mean(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        return guidance.condition_mean(self.process, cond_fn, p_mean_var, x, t, model_kwargs)

    def condition_score(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        return guidance.condition_score(self.process, cond_fn, p_mean_var, x, t, model_kwargs)

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.process.q_sample(x_start, t, noise)
        out = model(x_t, self.process.model_timesteps(t), **(model_kwargs or {}))
        return _training_losses(self.process, out, x_start, x_t, t, noise)

    def calc_bpd_loop(self, model, x_start, clip_denoised=True, model_kwargs=None):
        return bpd_loop(model, self.process, x_start, clip_denoised=clip_denoised, model_kwargs=model_kwargs)

    # --- single steps --------------------------------------------------------------------------------
    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None,
                 noise=None):
        return ddpm_step(model, self.process, x, t, noise, cond_fn=cond_fn, model_kwargs=model_kwargs,
                         clip_denoised=clip_denoised, denoised_fn=denoised_fn)

    def ddim_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None,
                    eta=0.0, noise=None):
        return ddim_step(model, self.process, x, t, noise, eta=eta, cond_fn=cond_fn, model_kwargs=model_kwargs,
                         clip_denoised=clip_denoised, denoised_fn=denoised_fn)

    def ddim_reverse_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None, eta=0.0):
        """x_{t+1} by the deterministic DDIM ODE run forwards."""
        if eta != 0.0:
            raise ValueError("the reverse ODE exists only for the deterministic path (eta = 0)")
        out = denoise(model, self.process, x, t, model_kwargs, clip_denoised, denoised_fn)
        eps = self.process.predict_eps(x, t, out["pred_xstart"])
        ab_next = G.extract(self.process.schedule.alphas_cumprod_next, t, x.ndim)
        sample = out["pred_xstart"] * torch.sqrt(ab_next) + torch.sqrt(1 - ab_next) * eps
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    # --- loops ----------------------------------------------------------------------------------------
    def _start(self, model, shape, noise, device, generator):
        assert isinstance(shape, (tuple, list)), "shape must be a tuple or list"
        if device is None:
            params = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
            device = params.device if params is not None else (noise.device if noise is not None else "cpu")
        draw = global_noise if generator is None else generator_noise(generator)
        img = noise if noise is not None else initial_noise(draw, shape, device)
        return img, draw

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                      model_kwargs=None, device=None, progress=False, generator=None):
        img, draw = self._start(model, shape, noise, device, generator)
        return sample_ddpm(model, self.process, img, noise=draw, cond_fn=cond_fn, model_kwargs=model_kwargs,
                           clip_denoised=clip_denoised, denoised_fn=denoised_fn, progress=progress)

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                         model_kwargs=None, device=None, progress=False, eta=0.0, generator=None):
        img, draw = self._start(model, shape, noise, device, generator)
        return sample_ddim(model, self.process, img, eta=eta, noise=draw, cond_fn=cond_fn,
                           model_kwargs=model_kwargs, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                           progress=progress)

    def p_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                  cond_fn=None, model_kwargs=None, device=None, progress=False,
                                  generator=None) -> Iterator[dict]:
        img, draw = self._start(model, shape, noise, device, generator)
        for i in step_indices(self.process, progress):
            with torch.no_grad():
                out = self.p_sample(model, img, batch_t(i, img), clip_denoised, denoised_fn, cond_fn,
                                    model_kwargs, noise=draw)
            yield out
            img = out["sample"]

    def ddim_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                     cond_fn=None, model_kwargs=None, device=None, progress=False, eta=0.0,
                                     generator=None) -> Iterator[dict]:
        img, draw = self._start(model, shape, noise, device, generator)
        for i in step_indices(self.process, progress):
            with torch.no_grad():
                out = self.ddim_sample(model, img, batch_t(i, img), clip_denoised, denoised_fn, cond_fn,
                                       model_kwargs, eta, noise=draw)
            yield out
            img = out["sample"]


class SpacedDiffusion(GaussianDiffusion):
    """guided-diffusion's SpacedDiffusion: `SpacedDiffusion(use_timesteps, betas=..., ...)` keeps only
    `use_timesteps` of the process given by the betas."""

    def __init__(self, use_timesteps, *, betas, model_mean_type, model_var_type, loss_type,
                 rescale_timesteps=False):
        base = Schedule.from_betas(torch.as_tensor(np.asarray(betas, dtype=np.float64)))
        self._set(Diffusion(base.respaced(use_timesteps), model_mean_type, model_var_type, loss_type,
                            bool(rescale_timesteps)))


def diffusion_from_config(cfg: DiffusionConfig, timestep_respacing: str | None = None) -> SpacedDiffusion:
    """The facade for a DiffusionConfig, respaced by `timestep_respacing` (default: the config's)."""
    if timestep_respacing is not None:
        cfg = cfg.replace(timestep_respacing=timestep_respacing)
    return SpacedDiffusion.from_process(Diffusion.from_config(cfg), config=cfg)


def create_gaussian_diffusion(
    *,
    steps=1000,
    learn_sigma=False,
    sigma_small=False,
    noise_schedule="linear",
    use_kl=False,
    predict_xstart=False,
    rescale_timesteps=False,
    rescale_learned_sigmas=False,
    timestep_respacing="",
) -> SpacedDiffusion:
    """guided-diffusion's create_gaussian_diffusion (script_util), same keywords and defaults."""
    cfg = DiffusionConfig(
        steps=int(steps), noise_schedule=noise_schedule, learn_sigma=bool(learn_sigma),
        sigma_small=bool(sigma_small), use_kl=bool(use_kl), predict_xstart=bool(predict_xstart),
        rescale_timesteps=bool(rescale_timesteps), rescale_learned_sigmas=bool(rescale_learned_sigmas),
        timestep_respacing=timestep_respacing or "",
    )
    return diffusion_from_config(cfg)


__all__ = [
    "GaussianDiffusion",
    "LossType",
    "ModelMeanType",
    "ModelVarType",
    "SpacedDiffusion",
    "create_gaussian_diffusion",
    "diffusion_from_config",
    "get_named_beta_schedule",
    "space_timesteps",
]
