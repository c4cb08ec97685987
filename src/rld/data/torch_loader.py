"""A ``torch.utils.data.DataLoader`` (worker processes, pinned memory) that yields :class:`Batch`.

The ``pil`` pipeline: image folders such as ImageNet (on a CPU by default; on CUDA
:class:`~rld.data.device_folder.DeviceFolderLoader` decodes and augments them on the device), Hugging
Face data sets, and the conventional CPU/PIL pipeline of the array data sets. The sample order comes from
:class:`~rld.data.sampling.EpochSampler`: the same permutation per ``(seed, epoch)`` as the device
loader, sharded across ranks like ``DistributedSampler``. The augmentation draws happen in the
workers with torch's random generator, which the DataLoader seeds from ``seed``; unlike the order,
they are not a pure function of ``(seed, epoch)``.

With ``strong`` (MLKD's strong view, :mod:`rld.data.strong`) the workers crop and flip every image
twice (:class:`TwoCrops`), and the second crop gets RandAugment and Cutout on the training device,
with the operations and magnitudes of the epoch's strong plan at the sample's position: a pure
function of ``(seed, epoch, position)``, the same draws as the device-resident loader's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from rld.data.device_loader import as_device
from rld.data.sampling import EpochSampler, check_seed
from rld.data.strong import StrongAugment, strong_plan
from rld.data.types import Batch
from rld.data.views import OFFSETS
from rld.errors import UserError


class TwoCrops:
    """A transform applied twice to the same image, independently: ``(transform(x), transform(x))``
    (the weak view and the crop of the strong one)."""

    def __init__(self, transform: Any):
        self.transform = transform

    def __call__(self, image: Any) -> tuple[Any, Any]:
        return self.transform(image), self.transform(image)


def normalization(transform: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` of the ``Normalize`` step of a torchvision ``Compose``, or None."""
    from torchvision import transforms as T

    for step in getattr(transform, "transforms", []):
        if isinstance(step, T.Normalize):
            return tuple(float(v) for v in step.mean), tuple(float(v) for v in step.std)
    return None


def with_two_crops(dataset: Any, what: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Make ``dataset`` (or the data set it wraps: ``.dataset`` of a subset, ``.base``) crop every image
    twice (:class:`TwoCrops`); returns the normalisation of its transform. UserError when it has no
    torchvision transform ending in ``Normalize``. ``what`` names the need in the message."""
    holder = dataset
    while holder is not None and not hasattr(holder, "transform"):
        holder = getattr(holder, "dataset", None) or getattr(holder, "base", None)
    stats = normalization(getattr(holder, "transform", None))
    if stats is None:
        raise UserError(f"{what}: this data set's training images have no torchvision transform to crop them twice")
    holder.transform = TwoCrops(holder.transform)
    return stats


class IndexedDataset(Dataset):
    """Wrap a dataset of ``(image, target)`` so that items are ``(image, target, index)``."""

    def __init__(self, base: Any):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    @property
    def labels(self) -> torch.Tensor | None:
        """(N,) int64 labels of the wrapped data set without reading an image, or None where it
        cannot tell them (its ``labels`` or, for an ImageFolder, ``targets``)."""
        labels = getattr(self.base, "labels", None)
        if labels is None:
            labels = getattr(self.base, "targets", None)
        return None if labels is None else torch.as_tensor(labels, dtype=torch.int64)

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        image, target = self.base[index]
        return image, target, index


class TorchLoader:
    """Batches of a map-style dataset whose items are ``(image (3,H,W) float, target, index)``.

    Args:
        dataset: the items; wrap an ``(image, target)`` dataset in :class:`IndexedDataset`.
        batch_size: samples per batch (per rank under data parallelism).
        train: shuffle (a fresh permutation per epoch, padded across ranks) or keep the order.
        device: batches are moved there (asynchronously from pinned memory on CUDA).
        seed: seeds the order (per epoch) and the workers' random generators.
        num_workers: worker processes; 0 loads in the main process. Workers are persistent.
        channels_last: deliver images in ``torch.channels_last`` memory format.
        rank, world_size: this process's shard under data parallelism.
        strong: ``(mean, std)`` of the images: items are ``((weak, strong crop), target, index)``
            (:class:`TwoCrops`) and batches carry ``Batch.strong``, the strong crops after RandAugment
            and Cutout (:mod:`rld.data.strong`). Training only.

    Each ``iter(loader)`` uses the current epoch and then advances it; :meth:`set_epoch` sets it
    explicitly (it is forwarded to the sampler, so callers need no access to the sampler).
    Yields :class:`Batch` with ``indices`` (B,) int64 and ``views=None``.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        train: bool,
        device: torch.device | str,
        seed: int = 0,
        num_workers: int = 4,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        strong: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise UserError(f"num_workers must be a non-negative integer, got {num_workers!r}")
        seed = check_seed(seed)
        self.device = as_device(device)
        self.channels_last = bool(channels_last)
        self.sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size)
        self.strong = StrongAugment(*strong, self.device) if strong is not None and train else None
        self._world = (int(rank), int(world_size))
        self._pin = self.device.type == "cuda"
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=self._pin,
            persistent_workers=num_workers > 0,
            drop_last=False,
            generator=torch.Generator().manual_seed(seed),
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration produce epoch ``epoch``'s order, from its batch ``start_batch`` on.

        Skipped batches are skipped in the sampler: their images are never loaded, so they draw no
        augmentation (with ``num_workers=0`` the transforms draw from the global RNG, which a resumed
        run restores)."""
        self.sampler.set_epoch(epoch, skip=start_batch * self.loader.batch_size)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def labels(self) -> torch.Tensor | None:
        """(N,) int64 labels of the whole split, indexed like ``Batch.indices`` (on the CPU), or None."""
        labels = getattr(self.loader.dataset, "labels", None)
        return None if labels is None else torch.as_tensor(labels, dtype=torch.int64)

    def __iter__(self) -> Iterator[Batch]:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        plan, position = None, self.sampler.skip
        if self.strong is not None:  # before the DataLoader's iteration advances the sampler's epoch
            rank, world_size = self._world
            n = self.sampler.n
            plan = strong_plan(
                self.sampler.seed, self.sampler.epoch, n, flip=False, offsets=OFFSETS, rank=rank, world_size=world_size
            )  # its crops are unused here: the workers crop
        for images, targets, indices in self.loader:
            strong = None
            if plan is not None:
                images, crops = images
                rows = plan[position : position + len(targets)].to(self.device)
                position += len(targets)
                crops = crops.to(self.device, non_blocking=self._pin)
                strong = self.strong.from_normalized(crops, rows).contiguous(memory_format=fmt)
            yield Batch(
                images.to(self.device, non_blocking=self._pin, memory_format=fmt),
                targets.to(self.device, non_blocking=self._pin),
                indices.to(self.device, non_blocking=self._pin),
                None,
                strong,
            )
