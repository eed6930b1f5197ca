"""Sources of standard-normal noise for the samplers: the global RNG, one generator, or one generator
per image so that image i with seed s is the same whatever the batch size or the number of processes."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

NoiseFn = Callable[[torch.Tensor], torch.Tensor]  # noise(x) -> standard normal tensor like x


def global_noise(x: torch.Tensor) -> torch.Tensor:
    """torch.randn_like(x): the global RNG, in guided-diffusion's order."""
    return torch.randn_like(x)


def generator_noise(generator: torch.Generator) -> NoiseFn:
    """Noise drawn from one torch.Generator (on its own device), moved to x's device."""

    def draw(x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)

    return draw


class SeededNoise:
    """One torch.Generator per image: image i draws x_T and then every step's noise from
    Generator(seeds[i]), always in float32 on `device` (default CPU, so that CPU and GPU runs draw
    the same numbers)."""

    def __init__(self, seeds: Sequence[int], device: str | torch.device = "cpu"):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.seeds)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.generators):
            raise ValueError(f"{len(self.generators)} seeds for a batch of {x.shape[0]} images")
        draws = [torch.randn(x.shape[1:], generator=g, device=self.device, dtype=torch.float32)
                 for g in self.generators]
        return torch.stack(draws).to(device=x.device, dtype=x.dtype)


def make_noise(noise: NoiseFn | torch.Generator | Sequence[int] | None) -> NoiseFn:
    """A NoiseFn from None (global RNG), a torch.Generator, a list of per-image seeds, or a NoiseFn."""
    if noise is None:
        return global_noise
    if isinstance(noise, torch.Generator):
        return generator_noise(noise)
    if callable(noise):
        return noise
    return SeededNoise(noise)


def initial_noise(noise: NoiseFn, shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """x_T ~ N(0, I) of `shape`, the first draw of `noise`."""
    return noise(torch.empty(tuple(shape), device=device, dtype=dtype))


def draw(noise: torch.Tensor | NoiseFn | None, x: torch.Tensor) -> torch.Tensor:
    """A step's standard normal draw: given, from a NoiseFn, or from the global RNG."""
    if noise is None:
        return torch.randn_like(x)
    if torch.is_tensor(noise):
        return noise
    return noise(x)
