"""The measured work: a UNet forward pass, guided DDIM sampling, a training step, FLOP counts."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from adm.diffusion.losses import training_losses
from adm.diffusion.process import Diffusion
from adm.guided import ADM_G
from common import MODES, Mode, Variants, running, to_input
from official_style import official_style


def inputs(model: nn.Module, batch: int, device: torch.device, seed: int = 0):
    """x [N, C, H, W], t [N], y [N] (y None for unconditional models), fixed by the seed."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g).to(device)
    t = torch.randint(0, cfg.diffusion.steps, (batch,), generator=g).to(device)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=g).to(device) if cfg.num_classes else None
    return x, t, y


def on_device(diffusion: Diffusion, device: torch.device) -> Diffusion:
    s = diffusion.schedule
    return dataclasses.replace(diffusion, schedule=dataclasses.replace(
        s, **{k: v.to(device) for k, v in s.tables().items()}))


# ---------------------------------------------------------------------------------------------
# Each task returns {mode name: a function of no arguments doing one unit of work}
# ---------------------------------------------------------------------------------------------

def forward_task(variants: Variants, batch: int, device: torch.device) -> Callable[[str], Callable]:
    """model(x, t, y) under no_grad, as the samplers call it."""
    x, t, y = inputs(variants.base, batch, device)
    variants.train(False)

    def make(name: str) -> Callable:
        mode = MODES[name]
        module, xi = variants.module(mode), to_input(x, mode)

        def fn():
            with torch.no_grad(), running(mode, device):
                return module(xi, t, y)

        return fn

    return make


def sample_task(models: Variants, classifiers: Variants, batch: int, steps: int,
                device: torch.device) -> Callable[[str], Callable]:
    """ADM_G(model, classifier, scale=1).sample(labels, steps=steps, sampler="ddim"): per step a UNet
    forward plus a classifier forward and backward to x_t (the paper's Algorithm 2)."""
    cfg = models.base.config
    labels = torch.randint(0, cfg.num_classes, (batch,), generator=torch.Generator().manual_seed(1))
    models.train(False)
    classifiers.train(False)

    def make(name: str) -> Callable:
        mode = MODES[name]
        guided = ADM_G(models.module(mode), classifiers.module(mode), scale=1.0)

        def fn():
            with running(mode, device):
                return guided.sample(labels, steps=steps, sampler="ddim", seed=0, device=device)

        return fn

    return make


class TrainStep:
    """One optimisation step of the paper's hybrid loss: forward, backward, AdamW."""

    def __init__(self, module: nn.Module, params: list[nn.Parameter], mode: Mode, batch: int, device: torch.device):
        cfg = module.config
        self.module, self.mode, self.device = module, mode, device
        self.diffusion = on_device(Diffusion.from_config(cfg.diffusion, ""), device)
        g = torch.Generator().manual_seed(2)
        self.x0 = (torch.rand(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g) * 2 - 1).to(device)
        self.t = torch.randint(0, self.diffusion.num_timesteps, (batch,), generator=g).to(device)
        self.noise = torch.randn(self.x0.shape, generator=g).to(device)
        self.y = torch.randint(0, cfg.num_classes, (batch,), generator=g).to(device) if cfg.num_classes else None
        fused = device.type in ("cuda", "cpu")
        self.opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=fused)
        self.set_to_none = True

    def __call__(self) -> torch.Tensor:
        d = self.diffusion
        x_t = d.q_sample(self.x0, self.t, self.noise)
        with running(self.mode, self.device):
            out = self.module(to_input(x_t, self.mode), d.model_timesteps(self.t), self.y)
        loss = training_losses(d, out.float(), self.x0, x_t, self.t, self.noise)["loss"].mean()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=self.set_to_none)
        return loss.detach()


def train_task(variants: Variants, batch: int, device: torch.device) -> Callable[[str], Callable]:
    """A training step per mode. Modes that share weights share one optimiser (the same fused AdamW
    for adm and the official-style emulation: the ratio isolates the network)."""
    opts: dict[int, torch.optim.Optimizer] = {}
    variants.train(True)

    def make(name: str) -> Callable:
        mode = MODES[name]
        plain = variants.module(dataclasses.replace(mode, compile=False, name=name + "-eager"))
        step = TrainStep(variants.module(mode), list(plain.parameters()), mode, batch, device)
        step.opt = opts.setdefault(id(plain), step.opt)
        return step

    return make


# ---------------------------------------------------------------------------------------------
# FLOPs (counted on the official-style pass: its einsum attention is visible to the counter,
# fused attention kernels are not all registered with it; both compute the same function)
# ---------------------------------------------------------------------------------------------

def count_flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with official_style(), counter:
        fn()
    return counter.get_total_flops()


def forward_flops(model: nn.Module, batch: int, device: torch.device) -> int:
    x, t, y = inputs(model, batch, device)
    with torch.no_grad():
        return count_flops(lambda: model(x, t, y))


def guided_step_flops(model: nn.Module, classifier: nn.Module, batch: int, device: torch.device) -> int:
    """One guided step: the UNet forward, then the classifier forward and its backward to x."""
    x, t, y = inputs(model, batch, device)

    def step():
        with torch.no_grad():
            model(x, t, y)
        with torch.enable_grad():
            xi = x.detach().requires_grad_(True)
            logp = torch.log_softmax(classifier(xi, t), -1)[torch.arange(batch, device=device), y].sum()
            torch.autograd.backward(logp, inputs=[xi])  # (autograd.grad trips FlopCounterMode's hooks)

    return count_flops(step)


def train_flops(model: nn.Module, batch: int, device: torch.device) -> int:
    x, t, y = inputs(model, batch, device)
    was = model.training
    model.train()
    try:
        def step():
            model(x, t, y).square().mean().backward()
        flops = count_flops(step)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)
    return flops
