"""ImageNet and any other ``ImageFolder`` layout, read by ``torchvision.datasets.ImageFolder``.

Expected layout (``val/`` may be called ``test/``)::

    ROOT/train/<class>/<image>.jpg
    ROOT/val/<class>/<image>.jpg

Training: ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip()``; evaluation: ``Resize(256)`` +
``CenterCrop(224)``; both then ``ToTensor()`` + ``Normalize`` with the ImageNet statistics.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torchvision import datasets

from rld.data.sources import image_transform
from rld.errors import UserError

IMAGE_SIZE = 224
RESIZE_SIZE = 256
LAYOUT = "ROOT/train/<class>/<image> and ROOT/val/<class>/<image>"


def folder_transform(*, train: bool, image_size: int = IMAGE_SIZE) -> Callable:
    """The ImageNet protocol's transform: PIL image -> (3, S, S) float32 (S = 224: resize 256)."""
    return image_transform(train=train, image_size=image_size)


def _split_dir(root: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise UserError(f"{root} has no {names[0]}/ folder: expected the layout {LAYOUT}")


def _image_folder(folder: Path, transform: Callable) -> datasets.ImageFolder:
    try:
        return datasets.ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, OSError) as exc:
        raise UserError(f"{folder}: {exc}; expected the layout {LAYOUT}") from None


def load_image_folders(
    root: str | os.PathLike[str], image_size: int = IMAGE_SIZE
) -> tuple[datasets.ImageFolder, datasets.ImageFolder]:
    """The training and evaluation ``ImageFolder`` data sets under ``root``, with their transforms.

    Both splits must list the same class folders; class ``i`` is the i-th folder name in sorted
    order. Raises :class:`UserError` if a folder is missing, empty or the classes differ.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"image folder {root} not found: expected the layout {LAYOUT}")
    train = _image_folder(_split_dir(root, ("train",)), folder_transform(train=True, image_size=image_size))
    test = _image_folder(_split_dir(root, ("val", "test")), folder_transform(train=False, image_size=image_size))
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))[:5]
        only_test = sorted(set(test.classes) - set(train.classes))[:5]
        raise UserError(
            f"{root}: train and val have different class folders (only in train: {only_train}, "
            f"only in val: {only_test}); both need the same <class> folders"
        )
    return train, test


def load_train_folder(root: str | os.PathLike[str], image_size: int = IMAGE_SIZE) -> datasets.ImageFolder:
    """Only the training ``ImageFolder`` under ``root`` (``ROOT/train``), with the training transform;
    the evaluation folder is not looked at (``data.holdout``: the evaluation images come from ``train``)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"image folder {root} not found: expected the layout {LAYOUT}")
    return _image_folder(_split_dir(root, ("train",)), folder_transform(train=True, image_size=image_size))
