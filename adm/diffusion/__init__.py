"""The Gaussian diffusion process as tensor math: schedules, respacing, q, posterior, losses."""
from adm.diffusion.config import DiffusionConfig
from adm.diffusion.losses import (
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
    prior_bpd,
    training_losses,
    vb_terms_bpd,
)
from adm.diffusion.process import Diffusion, LossType, MeanType, VarType
from adm.diffusion.schedule import Schedule, extract, make_betas, space_timesteps
from adm.diffusion.timestep_sampler import (
    LossSecondMomentSampler,
    TimestepSampler,
    UniformSampler,
    create_timestep_sampler,
)

__all__ = [
    "Diffusion",
    "DiffusionConfig",
    "LossSecondMomentSampler",
    "LossType",
    "MeanType",
    "Schedule",
    "TimestepSampler",
    "UniformSampler",
    "VarType",
    "create_timestep_sampler",
    "discretized_gaussian_log_likelihood",
    "extract",
    "make_betas",
    "mean_flat",
    "normal_kl",
    "prior_bpd",
    "space_timesteps",
    "training_losses",
    "vb_terms_bpd",
]
