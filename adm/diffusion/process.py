"""A diffusion process: its (respaced) schedule and what the model's output means."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable

import torch

from adm.diffusion import gaussian as G
from adm.diffusion.config import DiffusionConfig
from adm.diffusion.schedule import Schedule
from adm.errors import ConfigError


class MeanType(enum.Enum):
    """What the model's first C output channels predict."""

    PREVIOUS_X = enum.auto()  # the posterior mean mu(x_t, t)
    START_X = enum.auto()     # x_0
    EPSILON = enum.auto()     # the noise eps (the paper's models)


class VarType(enum.Enum):
    """Where the reverse-process variance Sigma comes from."""

    LEARNED = enum.auto()        # the model outputs log Sigma
    FIXED_SMALL = enum.auto()    # beta-tilde_t
    FIXED_LARGE = enum.auto()    # beta_t
    LEARNED_RANGE = enum.auto()  # the model outputs v, interpolating log beta-tilde .. log beta (the paper's)


class LossType(enum.Enum):
    MSE = enum.auto()           # L_simple (+ the unscaled L_vlb when the variance is learned)
    RESCALED_MSE = enum.auto()  # the hybrid L_simple + lambda L_vlb, lambda = 0.001 (paper section 2)
    KL = enum.auto()            # L_vlb alone
    RESCALED_KL = enum.auto()   # L_vlb times T, an estimate of the full bound

    def is_vb(self) -> bool:
        return self in (LossType.KL, LossType.RESCALED_KL)


@dataclass(frozen=True, eq=False)
class Diffusion:
    """A (respaced) Gaussian diffusion: tables plus the meaning of the model output. Step indices t
    index the respaced chain; the model sees `model_timesteps(t)`, the original timesteps."""

    schedule: Schedule
    mean_type: MeanType = MeanType.EPSILON
    var_type: VarType = VarType.FIXED_LARGE
    loss_type: LossType = LossType.MSE
    rescale_timesteps: bool = False  # feed the model t * 1000 / T (float) instead of integer t

    @classmethod
    def from_config(cls, cfg: DiffusionConfig, timestep_respacing: str | None = None) -> "Diffusion":
        """The process a model with these diffusion settings was trained on, respaced by
        `timestep_respacing` (default: the config's own)."""
        respacing = cfg.timestep_respacing if timestep_respacing is None else timestep_respacing
        if cfg.use_kl:
            loss = LossType.RESCALED_KL
        elif cfg.rescale_learned_sigmas:
            loss = LossType.RESCALED_MSE
        else:
            loss = LossType.MSE
        if cfg.learn_sigma:
            var = VarType.LEARNED_RANGE
        else:
            var = VarType.FIXED_SMALL if cfg.sigma_small else VarType.FIXED_LARGE
        return cls(
            schedule=Schedule.create(cfg.noise_schedule, cfg.steps, respacing or ""),
            mean_type=MeanType.START_X if cfg.predict_xstart else MeanType.EPSILON,
            var_type=var,
            loss_type=loss,
            rescale_timesteps=bool(cfg.rescale_timesteps),
        )

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    @property
    def learns_variance(self) -> bool:
        return self.var_type in (VarType.LEARNED, VarType.LEARNED_RANGE)

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timesteps the model (and a classifier) receives for respaced steps t: the original
        timestep, as float scaled to 0..1000 when rescale_timesteps."""
        new_t = self.schedule.timestep_map.to(device=t.device, dtype=t.dtype)[t]
        if self.rescale_timesteps:
            return new_t.float() * (1000.0 / self.schedule.original_num_steps)
        return new_t

    def split_output(self, model_output: torch.Tensor, channels: int):
        """(mean part [N, C, ...], variance part or None) of a model output."""
        if not self.learns_variance:
            return model_output, None
        if model_output.shape[1] != 2 * channels:
            raise ConfigError(
                f"the process learns the variance, so the model must output {2 * channels} channels "
                f"(got {model_output.shape[1]})"
            )
        return model_output[:, :channels], model_output[:, channels:]

    def variance(self, t: torch.Tensor, x: torch.Tensor, var_values: torch.Tensor | None):
        """(variance, log_variance) of p(x_{t-1} | x_t), like x."""
        if self.var_type == VarType.LEARNED:
            return torch.exp(var_values), var_values
        if self.var_type == VarType.LEARNED_RANGE:
            return G.learned_range_variance(self.schedule, t, var_values)
        return G.fixed_variance(self.schedule, t, x, small=self.var_type == VarType.FIXED_SMALL)

    def p_mean_variance(
        self,
        model_output: torch.Tensor,                 # [N, C or 2C, ...] the model's output at (x, t)
        x: torch.Tensor,                            # [N, C, ...] x_t
        t: torch.Tensor,                            # [N] respaced step indices
        clip_denoised: bool = True,                 # clamp the x_0 prediction to [-1, 1]
        denoised_fn: Callable | None = None,        # applied to the x_0 prediction before clipping
    ) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t): {"mean", "variance", "log_variance", "pred_xstart"}, each like x."""
        s = self.schedule
        out, var_values = self.split_output(model_output, x.shape[1])
        variance, log_variance = self.variance(t, x, var_values)

        def process_xstart(x0):
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.mean_type == MeanType.PREVIOUS_X:
            pred_xstart = process_xstart(G.predict_xstart_from_xprev(s, x, t, out))
            mean = out
        else:
            if self.mean_type == MeanType.START_X:
                pred_xstart = process_xstart(out)
            else:
                pred_xstart = process_xstart(G.predict_xstart_from_eps(s, x, t, out))
            mean, _, _ = G.q_posterior_mean_variance(s, pred_xstart, x, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart}

    # Thin conveniences over adm.diffusion.gaussian with this process's schedule.
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return G.q_sample(self.schedule, x_start, t, noise)

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        return G.q_posterior_mean_variance(self.schedule, x_start, x_t, t)

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, x_start: torch.Tensor) -> torch.Tensor:
        return G.predict_eps_from_xstart(self.schedule, x_t, t, x_start)

    def predict_xstart(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return G.predict_xstart_from_eps(self.schedule, x_t, t, eps)
