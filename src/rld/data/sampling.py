"""Per-epoch sample order: a pure function of (seed, epoch), shared by every loader.

Epoch ``e`` draws everything random from one CPU ``torch.Generator`` seeded from ``(seed, e)``:
first the permutation, then (for the device loader) the augmentation of every position. Resuming
at epoch ``e`` therefore reproduces the interrupted run exactly, whichever epochs ran before.

Under data parallelism the order is split across ranks like
``torch.utils.data.DistributedSampler(drop_last=False)``: the permutation is padded to a multiple
of the world size by repeating it from its start, and rank ``r`` takes positions ``r::world_size``.
Evaluation order is not padded: ranks take ``r::world_size`` of ``0 .. N-1`` so that every sample
is counted exactly once when the per-rank sums are reduced (ranks may differ by one sample).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from rld.errors import UserError


def check_seed(seed: int, what: str = "seed") -> int:
    """Return ``seed`` as an int, or raise UserError if it is not a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"{what} must be a non-negative integer, got {seed!r}")
    return int(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose state depends only on ``(seed, epoch)``.

    ``numpy.random.SeedSequence`` mixes the pair, so that e.g. (0, 1) and (1, 0) are unrelated.
    """
    seed = check_seed(seed)
    epoch = check_seed(epoch, "epoch")
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def padded_length(n: int, world_size: int) -> int:
    """Length of an epoch's order after padding to a multiple of ``world_size``."""
    return -(-n // world_size) * world_size


def eval_shard(n: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's evaluation indices: ``rank::world_size`` of ``0 .. n-1``, unpadded, (M,) int64 (none when
    there are fewer samples than ranks before it)."""
    return torch.arange(n, dtype=torch.int64)[rank::world_size].contiguous()


def pad_to(order: torch.Tensor, length: int) -> torch.Tensor:
    """Repeat ``order`` from its start until it has ``length`` entries (DistributedSampler style)."""
    if length <= order.numel():
        return order[:length]
    reps = -(-length // order.numel())
    return order.repeat(reps)[:length]


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"rank {rank} / world size {world_size} is invalid: need 0 <= rank < world_size")


class EpochSampler(Sampler[int]):
    """Sampler for ``torch.utils.data.DataLoader`` with the same order as :class:`DeviceLoader`.

    Training (``shuffle=True``): a fresh permutation per epoch, a pure function of
    ``(seed, epoch)``, sharded across ranks as described in this module's docstring.
    Evaluation (``shuffle=False``): ``0 .. N-1`` in order, sharded without padding.

    Like the loaders, every ``iter()`` uses the current epoch and then advances it by one;
    :meth:`set_epoch` chooses the next epoch explicitly (call it before each epoch when resuming).
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1):
        check_rank(rank, world_size)
        self.n = int(n)
        self.shuffle = bool(shuffle)
        self.seed = check_seed(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """The next iteration yields epoch ``epoch``'s order without its first ``skip`` indices."""
        self.epoch = check_seed(epoch, "epoch")
        self.skip = check_seed(skip, "skip")

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's indices for ``epoch``: (M,) int64 on the CPU; does not change the state."""
        if not self.shuffle:
            return eval_shard(self.n, self.rank, self.world_size)
        perm = torch.randperm(self.n, generator=epoch_generator(self.seed, epoch))
        perm = pad_to(perm, padded_length(self.n, self.world_size))
        return perm[self.rank :: self.world_size]

    def __len__(self) -> int:
        if not self.shuffle:
            return len(range(self.rank, self.n, self.world_size))
        return padded_length(self.n, self.world_size) // self.world_size

    def __iter__(self) -> Iterator[int]:
        epoch, skip = self.epoch, self.skip
        self.epoch += 1
        self.skip = 0
        return iter(self.order(epoch)[skip:].tolist())
