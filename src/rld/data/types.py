"""Containers shared by the data layer: in-memory array data sets, batches, loaders."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class ArraySplit:
    """One split of an in-memory image data set.

    x: (N, H, W, 3) uint8, channels last, as the images are stored on disk.
    y: (N,) int64 class indices in ``0 .. num_classes - 1``.
    """

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A small image data set kept in memory as uint8 arrays.

    ``mean``/``std`` are per-channel (R, G, B) statistics of images scaled to ``[0, 1]``;
    ``flip`` says whether random horizontal flips are a valid augmentation for it.
    """

    name: str
    train: ArraySplit
    test: ArraySplit
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class Batch(NamedTuple):
    """What every loader yields.

    images:  (B, 3, H, W) float32, normalised, on the training device.
    targets: (B,) int64 class indices, on the training device.
    indices: (B,) int64 indices into the split, or None where the loader does not track them.
    views:   (B,) int64 augmentation view ids (see :mod:`rld.data.device_loader`), or None.
    strong:  (B, 3, H, W) float32 the strongly augmented view of the same images (MLKD's, CRLD's; see
             :mod:`rld.data.strong`), or None where the loader was not asked for it.
    """

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor | None
    views: torch.Tensor | None
    strong: torch.Tensor | None = None


def concat_batches(batches: list[Batch]) -> Batch:
    """The batches as one, field by field (a field is None in all of them or in none)."""
    return Batch(*(None if parts[0] is None else torch.cat(parts) for parts in zip(*batches)))


class Loader(Protocol):
    """The interface the engine relies on; both loader kinds of this package implement it."""

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...
