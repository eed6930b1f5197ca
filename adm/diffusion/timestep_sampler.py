"""Timestep samplers for training: uniform, and importance sampling by the loss's second moment
(improved DDPM section 3.3, which makes L_vlb trainable on its own)."""
from __future__ import annotations

import torch
import torch.distributed as dist

from adm.errors import ConfigError

SAMPLERS = ("uniform", "loss-second-moment")


def _num_steps(diffusion_or_steps) -> int:
    return int(getattr(diffusion_or_steps, "num_timesteps", diffusion_or_steps))


class TimestepSampler:
    """Draws training timesteps t [N] with weights [N] that keep the loss estimate unbiased."""

    def __init__(self, diffusion_or_steps):
        self.num_timesteps = _num_steps(diffusion_or_steps)

    def weights(self) -> torch.Tensor:
        """Unnormalised float64 sampling weights [T]."""
        return torch.ones(self.num_timesteps, dtype=torch.float64)

    def sample(self, batch_size: int, device=None, generator: torch.Generator | None = None):
        """(t [N] long, weights [N] float32): t ~ p, weight 1 / (T p_t)."""
        w = self.weights()
        p = w / w.sum()
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (len(p) * p[t])
        return t.to(device), weights.float().to(device)

    def update_with_local_losses(self, local_ts: torch.Tensor, local_losses: torch.Tensor) -> None:
        """Record this process's losses; with torch.distributed, everyone's (all-gathered)."""

    def update_with_all_losses(self, ts, losses) -> None:
        """Record losses already gathered from all processes."""


UniformSampler = TimestepSampler


class LossSecondMomentSampler(TimestepSampler):
    """p_t proportional to sqrt(E[L_t^2]) over the last `history` losses of each t, mixed with a
    uniform `uniform_prob`; uniform until every t has a full history."""

    def __init__(self, diffusion_or_steps, history_per_term: int = 10, uniform_prob: float = 0.001):
        super().__init__(diffusion_or_steps)
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._history = torch.zeros(self.num_timesteps, history_per_term, dtype=torch.float64)
        self._counts = torch.zeros(self.num_timesteps, dtype=torch.long)

    def warmed_up(self) -> bool:
        return bool((self._counts == self.history_per_term).all())

    def weights(self) -> torch.Tensor:
        if not self.warmed_up():
            return torch.ones(self.num_timesteps, dtype=torch.float64)
        w = torch.sqrt((self._history ** 2).mean(dim=-1))
        w = w / w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / len(w)

    def update_with_local_losses(self, local_ts: torch.Tensor, local_losses: torch.Tensor) -> None:
        ts, losses = local_ts.detach(), local_losses.detach().float()
        if dist.is_available() and dist.is_initialized():
            # Batches may differ in size across ranks: gather sizes, pad, gather, trim.
            n = torch.tensor([len(ts)], device=ts.device)
            sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
            dist.all_gather(sizes, n)
            top = int(max(s.item() for s in sizes))
            pad_t = torch.zeros(top, dtype=ts.dtype, device=ts.device)
            pad_l = torch.zeros(top, dtype=losses.dtype, device=losses.device)
            pad_t[: len(ts)], pad_l[: len(losses)] = ts, losses
            all_t = [torch.zeros_like(pad_t) for _ in sizes]
            all_l = [torch.zeros_like(pad_l) for _ in sizes]
            dist.all_gather(all_t, pad_t)
            dist.all_gather(all_l, pad_l)
            ts = torch.cat([a[: int(s.item())] for a, s in zip(all_t, sizes)])
            losses = torch.cat([a[: int(s.item())] for a, s in zip(all_l, sizes)])
        self.update_with_all_losses(ts.cpu().tolist(), losses.cpu().tolist())

    def update_with_all_losses(self, ts, losses) -> None:
        for t, loss in zip(ts, losses):
            t = int(t)
            if self._counts[t] == self.history_per_term:
                self._history[t, :-1] = self._history[t, 1:].clone()  # drop the oldest
                self._history[t, -1] = loss
            else:
                self._history[t, self._counts[t]] = loss
                self._counts[t] += 1

    def state_dict(self) -> dict:
        return {"history": self._history.clone(), "counts": self._counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        self._history.copy_(state["history"])
        self._counts.copy_(state["counts"])


def create_timestep_sampler(name: str, diffusion_or_steps) -> TimestepSampler:
    """"uniform" or "loss-second-moment" (guided-diffusion's create_named_schedule_sampler)."""
    if name == "uniform":
        return TimestepSampler(diffusion_or_steps)
    if name in ("loss-second-moment", "loss_second_moment"):
        return LossSecondMomentSampler(diffusion_or_steps)
    raise ConfigError(f"unknown timestep sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
