"""Image files (ImageNet) decoded and augmented on the training device.

DataLoader workers only read the files' bytes; the main process decodes each batch on the training
device (:class:`~rld.data.decode.ImageDecoder`: nvJPEG on CUDA) and crops, resizes, flips and
normalises there, so the host's cores do not cap the images per second.

Training: ``RandomResizedCrop(S)`` + ``RandomHorizontalFlip()`` + ``Normalize`` (ImageNet statistics).
The crop and flip of a sample are a pure function of ``(seed, epoch, sample index)`` and the image's
size (:mod:`rld.data.crop_views`), drawn by torchvision's rule; the crop is resized by torchvision's
own ``resize`` of the uint8 tensor (bilinear, antialiased: on a CPU its uint8 kernel, on a GPU in float32
and rounded), then flipped, scaled to [0, 1] and normalised: what ``RandomResizedCrop`` + flip +
``ToDtype(scale)`` + ``Normalize`` of torchvision compute on that tensor for that view. Evaluation:
``Resize(round(S·256/224))`` of the shorter side + ``CenterCrop(S)``, the same way.

The view of a sample is identified by ``(seed, epoch, index)``: batches carry ``indices`` (into the
loader's file list) and ``views=None``; :attr:`DeviceFolderLoader.epoch` is the epoch of the batches
being yielded and :attr:`DeviceFolderLoader.seed` the run's seed, so a store of per-view outputs can
key them. The order is :class:`~rld.data.sampling.EpochSampler`'s, sharded across ranks exactly as
:class:`~rld.data.torch_loader.TorchLoader` shards it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F2

from rld.data.crop_views import STRONG_STREAM, TRAIN_STREAM, train_views
from rld.data.decode import ImageDecoder
from rld.data.device_loader import as_device
from rld.data.sampling import EpochSampler, check_seed
from rld.data.sources import IMAGENET_MEAN, IMAGENET_STD
from rld.data.strong import StrongAugment, strong_plan
from rld.data.types import Batch
from rld.data.views import OFFSETS
from rld.errors import UserError

log = logging.getLogger("rld")


def eval_resize(image_size: int) -> int:
    """The shorter side evaluation resizes to before the centre crop: 256 for 224 (``round(S·256/224)``)."""
    return round(image_size * 256 / 224)


class FileBytes(Dataset):
    """Items ``(bytes (L,) uint8, label, index, error)`` of a list of files: reading only; ``error`` is
    "" or why the file could not be read (its bytes are then empty)."""

    def __init__(self, files: Sequence[str], labels: Sequence[int]):
        self.files, self.labels = list(files), [int(y) for y in labels]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, str]:
        label, error = self.labels[index], ""
        try:
            with open(self.files[index], "rb") as f:
                data = bytearray(f.read())
        except OSError as err:
            data, error = bytearray(), err.strerror or str(err)
        blob = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        return blob, label, index, error


def collate_bytes(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """One flat buffer per batch (one shared-memory block and one pinned copy, not one per file):
    ``(bytes (sum L,) uint8, offsets (B + 1,) int64, labels (B,), indices (B,), errors)``."""
    blobs, labels, indices, errors = zip(*items)
    sizes = torch.tensor([b.numel() for b in blobs], dtype=torch.int64)
    offsets = torch.zeros(len(blobs) + 1, dtype=torch.int64)
    torch.cumsum(sizes, 0, out=offsets[1:])
    flat = torch.cat(blobs) if int(offsets[-1]) else torch.empty(0, dtype=torch.uint8)
    return flat, offsets, torch.tensor(labels), torch.tensor(indices), list(errors)


class DeviceFolderLoader:
    """Batches of image files decoded, cropped and normalised on ``device``.

    Args:
        files: the image paths; ``labels`` their class indices (same length).
        batch_size: samples per batch (per rank under data parallelism).
        train: the training protocol (a permutation per epoch, RandomResizedCrop and flip) or
            evaluation (in order, resize and centre crop).
        device: where images are decoded and batches delivered.
        seed: the order and the views of epoch ``e`` follow from ``(seed, e)``.
        num_workers: processes reading the files (0: the main process reads). Persistent.
        channels_last: deliver images in ``torch.channels_last`` memory format.
        rank, world_size: this process's shard (:mod:`rld.data.sampling`).
        image_size: the side S of the delivered images (224).
        mean, std: the normalisation (ImageNet's).
        decoder: ``auto`` | ``torchvision`` | ``torchcodec`` (:mod:`rld.data.decode`).
        skip_bad: leave an unreadable file out of its batch (logged once per file) instead of stopping
            with a UserError naming it.
        strong: also yield MLKD's strong view (``Batch.strong``; training only): a second crop and flip
            drawn from stream 1 of :mod:`rld.data.crop_views`, then RandAugment and Cutout with the
            epoch's strong plan at the sample's position (:mod:`rld.data.strong`).

    Each ``iter(loader)`` uses the current epoch and then advances it; :meth:`set_epoch` chooses it.
    Yields :class:`Batch` ``(images (B, 3, S, S) float32, targets (B,), indices (B,), None, strong)``;
    while it does, :attr:`epoch` is the epoch of those batches: with :attr:`seed` and an index it
    names a sample's view.
    """

    def __init__(
        self,
        files: Sequence[str],
        labels: Sequence[int],
        batch_size: int,
        *,
        train: bool,
        device: torch.device | str,
        seed: int = 0,
        num_workers: int = 4,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        decoder: str = "auto",
        skip_bad: bool = False,
        strong: bool = False,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise UserError(f"num_workers must be a non-negative integer, got {num_workers!r}")
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.device = as_device(device)
        self.train = bool(train)
        self.seed = check_seed(seed)
        self.epoch = 0  # the epoch of the batches being yielded (set when an iteration starts)
        self.channels_last = bool(channels_last)
        self.image_size = int(image_size)
        self.resize = eval_resize(self.image_size)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.skip_bad = bool(skip_bad)
        self.n = len(files)
        self.batch_size = batch_size
        self.decoder = ImageDecoder(self.device, decoder)
        self.sampler = EpochSampler(self.n, shuffle=self.train, seed=self.seed, rank=rank, world_size=world_size)
        self.strong = StrongAugment(self.mean, self.std, self.device) if strong and self.train else None
        self._world = (int(rank), int(world_size))
        self._mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        self._dataset = FileBytes(files, labels)
        self._pin = self.device.type == "cuda"
        self._skipped: set[int] = set()
        self.loader = DataLoader(
            self._dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=collate_bytes,
            pin_memory=self._pin,
            persistent_workers=num_workers > 0,
            drop_last=False,
            generator=self._quiet_generator(),
        )

    def _quiet_generator(self) -> torch.Generator:
        """The DataLoader's own generator: each iteration draws its workers' base seed from it, not from
        torch's global generator, so loading (or evaluating a teacher) leaves the run's random state as it
        was. The workers only read bytes: the seed changes nothing they deliver."""
        return torch.Generator().manual_seed(self.seed)

    @property
    def files(self) -> list[str]:
        """The image paths, indexed like ``Batch.indices``."""
        return self._dataset.files

    @property
    def labels(self) -> torch.Tensor:
        """(N,) int64 labels of the whole split, indexed like ``Batch.indices`` (on the CPU)."""
        return torch.tensor(self._dataset.labels, dtype=torch.int64)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration produce epoch ``epoch``'s order from its batch ``start_batch`` on;
        the skipped files are not read, and the views do not depend on what was skipped."""
        self.sampler.set_epoch(epoch, skip=check_seed(start_batch, "start_batch") * self.batch_size)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        epoch, position = self.sampler.epoch, self.sampler.skip  # before the DataLoader advances them
        self.epoch = epoch
        plan = None
        if self.strong is not None:
            rank, world_size = self._world
            plan = strong_plan(self.seed, epoch, self.n, flip=False, offsets=OFFSETS, rank=rank, world_size=world_size)
        for flat, offsets, targets, indices, errors in self.loader:
            images, rows = self._decode(flat, offsets, indices, errors)
            strong_rows = None if plan is None else plan[position + rows]
            position += len(errors)
            if not images:
                continue
            if len(rows) < len(errors):  # unreadable files skipped (data.skip_bad_images)
                targets, indices = targets[rows], indices[rows]
            yield Batch(
                self.render(images, indices, epoch),
                targets.to(self.device, non_blocking=self._pin),
                indices.to(self.device, non_blocking=self._pin),
                None,
                None if strong_rows is None else self._render_strong(images, indices, epoch, strong_rows),
            )

    def in_order(self, epoch: int, batch_size: int | None = None) -> Iterator[Batch]:
        """Every sample's training view of ``epoch`` in index order (0 .. N-1, whatever this loader's
        shard), rendered as :meth:`__iter__` renders it: what a store of per-view outputs is filled from.
        Batches of ``batch_size`` (default: the loader's) samples; unreadable files are left out
        (``skip_bad``) or stop with the UserError naming them, as in training."""
        if not self.train:
            raise ValueError("in_order renders training views: this loader evaluates")
        loader = DataLoader(
            self._dataset,
            batch_size=batch_size or self.batch_size,
            shuffle=False,
            num_workers=self.loader.num_workers,
            collate_fn=collate_bytes,
            pin_memory=self._pin,
            generator=self._quiet_generator(),
        )
        for flat, offsets, targets, indices, errors in loader:
            images, rows = self._decode(flat, offsets, indices, errors)
            if not images:
                continue
            if len(rows) < len(errors):
                targets, indices = targets[rows], indices[rows]
            yield Batch(
                self.render(images, indices, epoch),
                targets.to(self.device, non_blocking=self._pin),
                indices.to(self.device, non_blocking=self._pin),
                None,
            )

    def views_of(self, indices: Sequence[int], epoch: int) -> Batch:
        """The training views of samples ``indices`` in ``epoch``, their files read in this process (no
        workers): a few samples' views, rendered as in :meth:`__iter__`."""
        flat, offsets, targets, idx, errors = collate_bytes([self._dataset[int(i)] for i in indices])
        images, rows = self._decode(flat, offsets, idx, errors)
        targets, idx = targets[rows], idx[rows]
        size = self.image_size
        pixels = self.render(images, idx, epoch) if images else torch.empty(0, 3, size, size, device=self.device)
        return Batch(pixels, targets.to(self.device), idx.to(self.device), None)

    def _decode(self, flat, offsets, indices, errors) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The readable images of a collated batch (decoded on the device) and their rows (K,) int64."""
        bounds = offsets.tolist()
        blobs = [flat[bounds[k] : bounds[k + 1]] for k in range(len(errors))]
        images = self.decoder(blobs)
        keep = [k for k, image in enumerate(images) if self._readable(image, errors[k], int(indices[k]))]
        return [images[k] for k in keep], torch.tensor(keep, dtype=torch.int64)

    def _readable(self, image: torch.Tensor | str, read_error: str, index: int) -> bool:
        if isinstance(image, torch.Tensor):
            return True
        path = self.files[index]
        reason = read_error or image
        if not self.skip_bad:
            raise UserError(f"cannot read image {path} ({reason}); remove it or set data.skip_bad_images=true")
        if index not in self._skipped:
            self._skipped.add(index)
            log.warning("skipped unreadable image %s (%s)", path, reason)
        return False

    def render(self, images: list[torch.Tensor], indices: torch.Tensor, epoch: int) -> torch.Tensor:
        """The normalised images (B, 3, S, S) float32 of decoded ``images`` (each (3, H, W) uint8 on the
        device) of samples ``indices`` (B,) in ``epoch``: training views or the evaluation crop."""
        return self._normalize(self._pixels(images, indices, epoch, TRAIN_STREAM))

    def _render_strong(self, images, indices, epoch, plan) -> torch.Tensor:
        pixels = self._pixels(images, indices, epoch, STRONG_STREAM)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return self.strong.from_pixels(pixels, plan.to(self.device)).contiguous(memory_format=fmt)

    def _pixels(self, images: list[torch.Tensor], indices: torch.Tensor, epoch: int, stream: int) -> torch.Tensor:
        """(B, 3, S, S) float32 integer pixel values 0..255 of the crops, resized by torchvision."""
        size = self.image_size
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        out = torch.empty((len(images), 3, size, size), device=self.device, memory_format=fmt)
        if self.train:
            heights = [int(image.shape[1]) for image in images]
            widths = [int(image.shape[2]) for image in images]
            top, left, h, w, flip = train_views(self.seed, epoch, indices.numpy(), heights, widths, stream)
            for k, image in enumerate(images):
                t, le = int(top[k]), int(left[k])
                crop = resize(image[:, t : t + int(h[k]), le : le + int(w[k])], [size, size])
                out[k] = crop.flip(-1) if flip[k] else crop
        else:
            for k, image in enumerate(images):
                out[k] = F2.center_crop(resize(image, [self.resize]), [size, size])
        return out

    def _normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """``ToTensor`` + ``Normalize`` of integer pixel values, in their order of operations."""
        return pixels.div_(255).sub_(self._mean).div_(self._std)


def resize(image: torch.Tensor, size: list[int]) -> torch.Tensor:
    """``image`` (3, h, w) uint8 resized by torchvision (``[S]``: the shorter side) with bilinear
    interpolation and antialiasing: on a CPU its uint8 kernel, elsewhere in float32 and rounded. In
    channels-last memory, where torchvision's CPU kernel is fastest; the values do not depend on it."""
    x = image.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    return F2.resize(x, size, antialias=True)[0]
