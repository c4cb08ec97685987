"""Multi-process data parallelism under ``torchrun``: set-up, reductions, rank-0 helpers."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from rld.errors import UserError

T = TypeVar("T")


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


def main_decides(world: World, decide: Callable[[], T]) -> T:
    """``decide()`` on rank 0 only (e.g. looking at the run folder), its result on every rank.

    A :class:`UserError` raised there is raised on every rank with the same message, so that all
    processes stop together instead of the others waiting for rank 0 forever.
    """
    if not world.distributed:
        return decide()
    answer: tuple[str, object] = ("ok", None)
    if world.is_main:
        try:
            answer = ("ok", decide())
        except UserError as err:
            answer = ("error", str(err))
    kind, value = broadcast_object(answer, world)
    if kind == "error":
        raise UserError(value)
    return value  # type: ignore[return-value]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
