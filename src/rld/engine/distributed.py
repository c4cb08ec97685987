"""Multi-process data parallelism under ``torchrun``: set-up, reductions, rank-0 helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device_kind: str) -> World:
    """Join the process group that ``torchrun`` describes in the environment (one process: no-op).

    NCCL for CUDA, gloo for the CPU.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return World(rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", "0")), size=size)


def all_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    """Sum of ``t`` over all processes (a copy; ``t`` itself unchanged)."""
    if not world.distributed:
        return t
    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_object(obj, world: World):
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
