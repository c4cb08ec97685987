"""The conventional CPU pipeline for the array data sets: PIL images and torchvision transforms.

Per sample: ``RandomCrop(size, padding=4)`` (zero fill), ``RandomHorizontalFlip()`` (if the data set
allows flips), ``ToTensor()``, ``Normalize(mean, std)``; evaluation only converts and normalises.
It is the reference that :class:`~rld.data.device_loader.DeviceLoader` reproduces on the device,
and an alternative for comparisons (``build_data(..., pipeline="pil")``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from rld.data.types import ArraySplit
from rld.data.views import PAD


def array_transform(
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    *,
    train: bool,
    flip: bool,
    size: tuple[int, int] = (32, 32),
) -> Callable[[Image.Image], torch.Tensor]:
    """The torchvision transform of the CIFAR protocol: PIL image -> (3, H, W) float32."""
    steps: list[Callable] = []
    if train:
        steps.append(T.RandomCrop(size, padding=PAD, fill=0))
        if flip:
            steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


class ArrayImageDataset(Dataset):
    """A ``torch.utils.data.Dataset`` over an :class:`ArraySplit` that gives PIL images to ``transform``.

    Items are ``(transform(image), target, index)`` with ``target`` an int.
    """

    def __init__(self, split: ArraySplit, transform: Callable[[Image.Image], torch.Tensor]):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    @property
    def labels(self):
        """The label of every image, in order."""
        return self.split.y

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = Image.fromarray(self.split.x[index])  # (H, W, 3) uint8 -> RGB
        return self.transform(image), int(self.split.y[index]), index
