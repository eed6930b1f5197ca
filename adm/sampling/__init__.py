"""Samplers as plain functions of a model function and a diffusion process, and guidance."""
from __future__ import annotations

from typing import Callable

from adm.errors import ConfigError
from adm.sampling.ddim import ddim_step, sample_ddim
from adm.sampling.ddpm import ddpm_step, sample_ddpm
from adm.sampling.dpm_solver import dpmpp_2m_calls, sample_dpmpp_2m
from adm.sampling.guidance import (
    classifier_free_guidance,
    classifier_guidance,
    condition_mean,
    condition_score,
)
from adm.sampling.likelihood import bpd_loop
from adm.sampling.model import denoise
from adm.sampling.seeds import SeededNoise, generator_noise, global_noise, initial_noise, make_noise

# name -> sampler(model, diffusion, x_T, *, noise, cond_fn, model_kwargs, clip_denoised, denoised_fn,
#                 callback, progress) -> x_0
SAMPLERS: dict[str, Callable] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp2m": sample_dpmpp_2m,
}


def model_calls(sampler: str, num_steps: int) -> int:
    """How many model evaluations `sampler` makes on a chain of `num_steps` respaced steps."""
    return dpmpp_2m_calls(num_steps) if sampler == "dpmpp2m" else num_steps


def get_sampler(name: str) -> Callable:
    """The sampler called `name` (ConfigError listing the valid names otherwise)."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


__all__ = [
    "SAMPLERS",
    "SeededNoise",
    "bpd_loop",
    "classifier_free_guidance",
    "classifier_guidance",
    "condition_mean",
    "condition_score",
    "ddim_step",
    "ddpm_step",
    "denoise",
    "generator_noise",
    "get_sampler",
    "global_noise",
    "initial_noise",
    "make_noise",
    "model_calls",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
]
