"""What each trainer minimises, per example: the hybrid diffusion loss, the noisy classifier's
cross-entropy, and the upsampler's diffusion loss conditioned on an area-downsampled image."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from adm.diffusion.losses import training_losses
from adm.diffusion.process import Diffusion

QUARTERS = 4  # metrics are also reported by quarter of the noise schedule (t < T/4, ...)


class Objective:
    """loss(model, x0, y, t, noise) -> (loss [n] float32, {stat name: [n] float32})."""

    stat_names: tuple[str, ...] = ()

    def __init__(self, diffusion: Diffusion, model_config):
        self.diffusion = diffusion
        self.config = model_config

    def loss(self, model: nn.Module, x0: torch.Tensor, y: torch.Tensor | None, t: torch.Tensor,
             noise: torch.Tensor, autocast=contextlib.nullcontext) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError


class DiffusionObjective(Objective):
    """The paper's hybrid objective L_simple + lambda L_vlb (or whatever the config's loss is)."""

    stat_names = ("mse", "vb")

    def model_kwargs(self, x0: torch.Tensor, y: torch.Tensor | None) -> dict:
        return {"y": y} if y is not None else {}

    def loss(self, model, x0, y, t, noise, autocast=contextlib.nullcontext):
        d = self.diffusion
        x_t = d.q_sample(x0, t, noise)
        with autocast():
            out = model(x_t, d.model_timesteps(t), **self.model_kwargs(x0, y))
        terms = training_losses(d, out.float(), x0, x_t, t, noise)
        stats = {k: terms[k].detach() for k in self.stat_names if k in terms}
        return terms["loss"], stats


class UpsamplerObjective(DiffusionObjective):
    """ADM-U: the diffusion loss on x_0 given low_res = area-downsampled x_0 (as guided-diffusion)."""

    def model_kwargs(self, x0, y):
        small = self.config.small_size
        kw = {"low_res": F.interpolate(x0, size=(small, small), mode="area")}
        if y is not None:
            kw["y"] = y
        return kw


class ClassifierObjective(Objective):
    """Cross-entropy of p(y | x_t, t) on x_t ~ q(x_t | x_0), t uniform over the schedule (section 4.1)."""

    stat_names = ("acc",)

    def __init__(self, diffusion: Diffusion, model_config, noised: bool = True):
        super().__init__(diffusion, model_config)
        self.noised = noised

    def loss(self, model, x0, y, t, noise, autocast=contextlib.nullcontext):
        d = self.diffusion
        if self.noised:
            x_t = d.q_sample(x0, t, noise)
        else:
            t = torch.zeros_like(t)
            x_t = x0
        with autocast():
            logits = model(x_t, d.model_timesteps(t))
        logits = logits.float()
        loss = F.cross_entropy(logits, y, reduction="none")
        acc = (logits.argmax(dim=-1) == y).float()
        return loss, {"acc": acc}


def make_objective(trainer: str, diffusion: Diffusion, model_config, noised: bool = True) -> Objective:
    if trainer == "classifier":
        return ClassifierObjective(diffusion, model_config, noised)
    if trainer == "upsampler":
        return UpsamplerObjective(diffusion, model_config)
    return DiffusionObjective(diffusion, model_config)
