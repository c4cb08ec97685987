"""ImageNet and any other ``ImageFolder`` layout, read by ``torchvision.datasets.ImageFolder``.

Expected layout (``val/`` may be called ``test/``)::

    ROOT/train/<class>/<image>.jpg
    ROOT/val/<class>/<image>.jpg

Training: ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip()``; evaluation: ``Resize(256)`` +
``CenterCrop(224)``; both then ``ToTensor()`` + ``Normalize`` with the ImageNet statistics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from rld.data.sources import image_transform, read_image, readable, skipped_text
from rld.errors import UserError

log = logging.getLogger("rld")

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


class ImageFolder(datasets.ImageFolder):
    """``torchvision.datasets.ImageFolder`` whose images are read by :func:`rld.data.sources.read_image`
    (an unreadable one stops with one line naming it). ``skip_bad``: files that are not images are left
    out when the folder is listed (counted in the log), and an image whose damage only decoding shows
    is replaced by the next readable one (said in the log)."""

    def __init__(self, root: str, transform: Callable, skip_bad: bool = False):
        def valid(path: str) -> bool:
            if not has_file_allowed_extension(path, IMG_EXTENSIONS):
                return False
            if skip_bad and not readable(path):
                self.skipped.append(os.path.relpath(path, root))
                return False
            return True

        self.skip_bad, self.skipped = skip_bad, []
        super().__init__(root, transform=transform, loader=read_image, is_valid_file=valid)
        if self.skipped:
            total = len(self.samples) + len(self.skipped)
            log.info("skipped %s", skipped_text(len(self.skipped), total, root, sorted(self.skipped)))

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not self.skip_bad:
            return super().__getitem__(index)
        for k in range(len(self.samples)):
            path, label = self.samples[(index + k) % len(self.samples)]
            try:
                return self.transform(read_image(path, "left out (data.skip_bad_images)")), label
            except UserError as err:
                log.info("%s", err)
        raise UserError(f"none of the {len(self.samples)} images under {self.root} can be read")


def _image_folder(folder: Path, transform: Callable, skip_bad: bool = False) -> ImageFolder:
    try:
        return ImageFolder(str(folder), transform, skip_bad)
    except (FileNotFoundError, OSError) as exc:
        raise UserError(f"{folder}: {exc}; expected the layout {LAYOUT}") from None


def load_image_folders(
    root: str | os.PathLike[str], image_size: int = IMAGE_SIZE, skip_bad: bool = False
) -> tuple[ImageFolder, ImageFolder]:
    """The training and evaluation ``ImageFolder`` data sets under ``root``, with their transforms.

    Both splits must list the same class folders; class ``i`` is the i-th folder name in sorted
    order. Raises :class:`UserError` if a folder is missing, empty or the classes differ.
    ``skip_bad``: leave unreadable images out (``data.skip_bad_images``, see :class:`ImageFolder`).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"image folder {root} not found: expected the layout {LAYOUT}")
    train_dir, test_dir = _split_dir(root, ("train",)), _split_dir(root, ("val", "test"))
    train = _image_folder(train_dir, folder_transform(train=True, image_size=image_size), skip_bad)
    test = _image_folder(test_dir, folder_transform(train=False, image_size=image_size), skip_bad)
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))[:5]
        only_test = sorted(set(test.classes) - set(train.classes))[:5]
        raise UserError(
            f"{root}: train and val have different class folders (only in train: {only_train}, "
            f"only in val: {only_test}); both need the same <class> folders"
        )
    return train, test


def load_train_folder(
    root: str | os.PathLike[str], image_size: int = IMAGE_SIZE, skip_bad: bool = False
) -> ImageFolder:
    """Only the training ``ImageFolder`` under ``root`` (``ROOT/train``), with the training transform;
    the evaluation folder is not looked at (``data.holdout``: the evaluation images come from ``train``)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"image folder {root} not found: expected the layout {LAYOUT}")
    return _image_folder(_split_dir(root, ("train",)), folder_transform(train=True, image_size=image_size), skip_bad)
