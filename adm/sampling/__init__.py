"""Samplers as plain functions of a model function and a diffusion process, and guidance."""
from __future__ import annotations

from adm.sampling.ddim import ddim_step, sample_ddim
from adm.sampling.ddpm import ddpm_step, sample_ddpm
from adm.sampling.dpm_solver import sample_dpmpp_2m
from adm.sampling.guidance import (
    TimestepSigma,
    autoguidance,
    classifier_free_guidance,
    classifier_guidance,
    condition_mean,
    condition_score,
    limit_to_interval,
)
from adm.sampling.likelihood import bpd_loop
from adm.sampling.model import denoise
from adm.sampling.registry import SAMPLERS, Sampler, get_sampler, model_calls
from adm.sampling.sigma_frame import sample_sigma_frame
from adm.sampling.seeds import SeededNoise, generator_noise, global_noise, initial_noise, make_noise

__all__ = [
    "SAMPLERS",
    "Sampler",
    "SeededNoise",
    "TimestepSigma",
    "autoguidance",
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
    "limit_to_interval",
    "make_noise",
    "model_calls",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_sigma_frame",
]
