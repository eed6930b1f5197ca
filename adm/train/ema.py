"""Exponential moving averages of a model's weights at one or several rates."""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    """theta_ema <- r * theta_ema + (1 - r) * theta per rate, float32 on the model's device, with the
    usual warm-up r = min(rate, (1 + n) / (10 + n)) after n updates, so that short runs average
    trained weights rather than the initialisation."""

    def __init__(self, model: nn.Module, rates: tuple[float, ...]):
        self.rates = tuple(rates)
        self.names = [n for n, _ in model.named_parameters()]
        self.params = [p for _, p in model.named_parameters()]
        self.shadows = [[p.detach().float().clone() for p in self.params] for _ in self.rates]

    @torch.no_grad()
    def update(self, num_updates: int) -> None:
        """One EMA step toward the current weights; num_updates = steps taken before (no host sync)."""
        current = [p.detach().float() for p in self.params]
        warm = (1.0 + num_updates) / (10.0 + num_updates)
        for rate, shadow in zip(self.rates, self.shadows):
            torch._foreach_lerp_(shadow, current, 1.0 - min(rate, warm))

    def state_dict(self, rate_index: int) -> dict[str, torch.Tensor]:
        """Parameter name -> averaged tensor for one rate."""
        return dict(zip(self.names, self.shadows[rate_index]))

    def state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """{rate as text: state_dict} for checkpoints."""
        return {rate_key(r): self.state_dict(i) for i, r in enumerate(self.rates)}

    @torch.no_grad()
    def load_state_dicts(self, states: dict[str, dict[str, torch.Tensor]]) -> None:
        for i, r in enumerate(self.rates):
            sd = states[rate_key(r)]
            for name, shadow in zip(self.names, self.shadows[i]):
                shadow.copy_(sd[name])

    @torch.no_grad()
    def copy_to(self, model: nn.Module, rate_index: int = 0) -> nn.Module:
        """Load one average into `model` (same architecture); buffers are left as they are."""
        own = dict(model.named_parameters())
        for name, shadow in zip(self.names, self.shadows[rate_index]):
            own[name].copy_(shadow)
        return model


def rate_key(rate: float) -> str:
    """0.9999 -> "0.9999" (the name of RUN_DIR/ema_0.9999)."""
    return repr(float(rate))
