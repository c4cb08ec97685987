"""A loader for small in-memory image sets that does all its work on the training device.

The uint8 images are copied to the device once, already padded with ``PAD`` zero pixels on every
side. Each batch is then one gather from that tensor: the sample's ``H x W`` window at its crop
offset, read right-to-left when the sample is flipped, followed by the float conversion and
normalisation. This is exactly ``RandomCrop(size, padding=4, fill=0)`` followed by
``RandomHorizontalFlip(p=0.5)``, ``ToTensor()`` and ``Normalize(mean, std)`` of torchvision, but
without per-sample Python work and without host synchronisation inside the iteration.

Views. The augmentation of one sample is a *view id*::

    view = (dy * 9 + dx) * 2 + flip        dy, dx in 0..8 (offsets in the padded image), flip in {0, 1}

so there are ``NUM_VIEWS = 162`` views per image, and ``CENTER_VIEW = 80`` (dy = dx = 4, no flip)
is the un-augmented image. :meth:`DeviceLoader.render_views` produces the images of any
``(indices, views)``, e.g. for a cache of teacher logits per view; the iteration uses it too.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import torch

from rld.data.sampling import check_rank, check_seed, epoch_generator, eval_shard, pad_to, padded_length
from rld.data.strong import StrongAugment, StrongPlan, strong_plan
from rld.data.types import ArraySplit, Batch
from rld.data.views import CENTER_VIEW, OFFSETS, PAD, decode_views, encode_views
from rld.errors import UserError


def as_device(device: torch.device | str) -> torch.device:
    """``torch.device(device)``, raising UserError for a malformed name."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"unknown device {device!r}: use e.g. 'cpu', 'cuda' or 'cuda:1'") from exc


def _check_split(split: ArraySplit) -> None:
    x, y = split.x, split.y
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
        raise UserError(
            f"images must be a uint8 array of shape (N, H, W, 3), got "
            f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}"
        )
    if not isinstance(y, np.ndarray) or y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"labels must be an integer array of shape ({x.shape[0]},), got {getattr(y, 'shape', y)}")
    if x.shape[0] == 0:
        raise UserError("the split has no images")


class DeviceLoader:
    """Iterate over an :class:`ArraySplit` in batches, entirely on ``device``.

    Args:
        split: the images (N, H, W, 3) uint8 and labels (N,).
        batch_size: samples per batch (per rank under data parallelism).
        device: where the data lives and the batches are produced.
        mean, std: per-channel normalisation of images scaled to [0, 1].
        train: True for the training protocol (a fresh permutation each epoch, random crop with
            padding 4, random flips if ``flip``); False for evaluation (in order, no augmentation).
        flip: whether random horizontal flips are applied (training only).
        seed: the permutation and augmentation of epoch ``e`` depend only on ``(seed, e)``.
        channels_last: yield images in ``torch.channels_last`` memory format.
        rank, world_size: shard of the epoch's order taken by this process (see
            :mod:`rld.data.sampling`); the defaults mean a single process.
        strong: also yield each batch's strongly augmented view (``Batch.strong``; training only):
            an independent crop and flip, then RandAugment and Cutout (:mod:`rld.data.strong`),
            drawn from a stream of its own per ``(seed, epoch)``.

    Semantics match ``DataLoader(shuffle=train, drop_last=False)``: the last partial batch is
    included and ``len(loader) == ceil(M / batch_size)`` with ``M`` this rank's sample count.
    Each ``iter(loader)`` uses the current epoch and then advances it by one, so plain repeated
    iteration gives epochs 0, 1, 2, ...; :meth:`set_epoch` chooses the next epoch explicitly.

    Yields :class:`Batch` ``(images (B, 3, H, W) float32, targets (B,), indices (B,), views (B,))``,
    all on ``device``; evaluation batches carry ``CENTER_VIEW``.

    Memory: the padded images, (N, H + 8, W + 8, 3) uint8, stay on the device (240 MB for the
    50,000 CIFAR training images); each batch allocates only its own output.
    """

    def __init__(
        self,
        split: ArraySplit,
        batch_size: int,
        *,
        device: torch.device | str,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        train: bool,
        flip: bool,
        seed: int = 0,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        strong: bool = False,
    ):
        _check_split(split)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise UserError(f"mean and std need 3 values each with std > 0, got mean={mean}, std={std}")
        check_rank(rank, world_size)
        self.device = as_device(device)
        self.batch_size = batch_size
        self.train = bool(train)
        self.flip = bool(flip) and self.train
        self.seed = check_seed(seed)
        self.channels_last = bool(channels_last)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.n = len(split)
        self.height, self.width = int(split.x.shape[1]), int(split.x.shape[2])
        self._epoch = 0
        self._start = 0  # batches of the next epoch to skip (set_epoch)

        padded = np.pad(split.x, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
        self._x = torch.from_numpy(padded).to(self.device)  # (N, H+8, W+8, 3) uint8
        self._y = torch.from_numpy(split.y.astype(np.int64)).to(self.device)  # (N,)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)  # per channel
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self._rows = torch.arange(self.height, device=self.device)
        self._cols = torch.arange(self.width, device=self.device)
        self._eval_plan: tuple[torch.Tensor, torch.Tensor] | None = None
        self.strong = StrongAugment(mean, std, self.device) if strong and self.train else None

    def with_seed(self, seed: int) -> DeviceLoader:
        """The same loader with another seed (another order and augmentation per epoch), sharing this
        one's device-resident images; it starts at epoch 0."""
        other = copy.copy(self)
        other.seed, other._epoch, other._start = check_seed(seed), 0, 0
        return other

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (including DistributedSampler-style padding)."""
        if self.train:
            return padded_length(self.n, self.world_size) // self.world_size
        return len(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration produce epoch ``epoch`` (needed for an exact resume), from its batch
        ``start_batch`` on (a resume inside an epoch: the first batches of the plan are skipped)."""
        self._epoch = check_seed(epoch, "epoch")
        self._start = check_seed(start_batch, "start_batch")

    def epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's ``(indices, views)`` for ``epoch``: two (M,) int64 CPU tensors.

        Training: the generator of ``(seed, epoch)`` draws the permutation (N,), then the crop
        rows, crop columns and flips (N,) of the N positions in that order; flips are drawn even
        when disabled (then zeroed), so offsets do not depend on ``flip``. Under data parallelism
        the (index, view) pairs are padded together, so the union over ranks is the
        single-process plan plus the repeated start, whatever the world size.
        Evaluation: ``0 .. N-1`` (sharded) with ``CENTER_VIEW``. Does not change the loader's state.
        """
        if not self.train:
            idx = eval_shard(self.n, self.rank, self.world_size)
            return idx, torch.full_like(idx, CENTER_VIEW)
        g = epoch_generator(self.seed, epoch)
        perm = torch.randperm(self.n, generator=g)
        dy = torch.randint(0, OFFSETS, (self.n,), generator=g)
        dx = torch.randint(0, OFFSETS, (self.n,), generator=g)
        flip = torch.randint(0, 2, (self.n,), generator=g)
        if not self.flip:
            flip.zero_()
        views = encode_views(dy, dx, flip)
        total = padded_length(self.n, self.world_size)
        perm, views = pad_to(perm, total), pad_to(views, total)
        return perm[self.rank :: self.world_size], views[self.rank :: self.world_size]

    def render_views(self, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Images of samples ``indices`` (B,) under augmentation ``views`` (B,), both on the device.

        Returns (B, 3, H, W) float32 normalised images (channels_last if the loader is). Views
        must lie in ``0 .. NUM_VIEWS - 1``; they are not checked here, to avoid a host sync.
        """
        images = self._pixels(indices, views).float().div_(255).sub_(self._mean).div_(self._std)
        images = images.permute(0, 3, 1, 2)  # NCHW view of NHWC memory, i.e. channels_last
        return images if self.channels_last else images.contiguous()

    def _pixels(self, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 crops of samples ``indices`` under ``views``."""
        dy, dx, flip = decode_views(views)
        rows = dy[:, None] + self._rows  # (B, H)
        cols = torch.where(flip[:, None].bool(), self.width - 1 - self._cols, self._cols)
        cols = dx[:, None] + cols  # (B, W), reversed for flipped samples
        return self._x[indices[:, None, None], rows[:, :, None], cols[:, None, :]]

    def strong_plan(self, epoch: int) -> StrongPlan:
        """This rank's strong views of ``epoch`` (:func:`rld.data.strong.strong_plan`), on the CPU,
        row k for the k-th position of :meth:`epoch_plan`. Does not change the loader's state."""
        return strong_plan(
            self.seed, epoch, self.n, flip=self.flip, offsets=OFFSETS, rank=self.rank, world_size=self.world_size
        )

    def render_strong(self, indices: torch.Tensor, plan: StrongPlan) -> torch.Tensor:
        """The strong views (B, 3, H, W) float32 of samples ``indices`` under ``plan`` (B rows, on the device)."""
        pixels = self._pixels(indices, plan.views).permute(0, 3, 1, 2).float()
        images = self.strong.from_pixels(pixels, plan)
        return images.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    @property
    def labels(self) -> torch.Tensor:
        """(N,) int64 labels of the whole split, indexed like ``Batch.indices``, on the device."""
        return self._y

    def targets(self, indices: torch.Tensor) -> torch.Tensor:
        """Labels of samples ``indices`` (B,) -> (B,) int64 on the device."""
        return self._y[indices]

    def _device_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.train:
            if self._eval_plan is None:
                idx, views = self.epoch_plan(epoch)
                self._eval_plan = (idx.to(self.device), views.to(self.device))
            return self._eval_plan
        idx, views = self.epoch_plan(epoch)
        return idx.to(self.device), views.to(self.device)

    def __iter__(self) -> Iterator[Batch]:
        epoch, skip = self._epoch, self._start * self.batch_size
        self._epoch += 1
        self._start = 0
        order, views = self._device_plan(epoch)
        strong = self.strong_plan(epoch)[skip:].to(self.device) if self.strong is not None else None
        return self._batches(order[skip:], views[skip:], strong)

    def _batches(self, order: torch.Tensor, views: torch.Tensor, strong: StrongPlan | None = None) -> Iterator[Batch]:
        for start in range(0, order.numel(), self.batch_size):
            idx = order[start : start + self.batch_size]
            v = views[start : start + self.batch_size]
            extra = None if strong is None else self.render_strong(idx, strong[start : start + self.batch_size])
            yield Batch(self.render_views(idx, v), self._y[idx], idx, v, extra)
