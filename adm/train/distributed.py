"""torch.distributed set-up for torchrun (NCCL on GPUs, gloo on CPU) and a launcher for `--nproc`."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from adm.errors import ConfigError
from adm.runtime import parse_device


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank among world_size processes, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str | torch.device | None = None) -> DistContext:
    """Join the process group that torchrun describes in the environment (or run alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = parse_device(device)
    if world <= 1:
        return DistContext(0, 1, 0, dev)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None)
    return DistContext(rank, world, local_rank, dev)


def teardown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def gather_objects(ctx: DistContext, obj) -> list:
    """Every rank's obj, in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(ctx: DistContext, t: torch.Tensor) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(t)
    return t


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m adm <argv>` in nproc processes under torch.distributed.run; its exit status."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "adm", *argv]
    return subprocess.call(cmd)
