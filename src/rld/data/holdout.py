"""A validation part carved out of the *training* split (``data.holdout``), for choosing settings.

With ``data.holdout=F`` a run trains on the training split minus a stratified, seeded fraction F of
it, and evaluates on that held-out fraction instead of the test split, which is then never built
(no loader, no file listing, no image read). ``rld tune`` trains its grid this way and only its
final runs, on the whole training split, see the test split.

* The held-out images come from the training split the run would otherwise train on: after
  ``data.train_per_class`` (array sets), and from the training part of a single folder's or a
  manifest's train/validation split (:mod:`rld.data.sources`).
* They are evaluated with the evaluation transform (no augmentation): for the array sets they become
  the evaluation split of the device loader; for image data sets a copy of the training set with the
  evaluation transform is subset.
* The split is ``train_test_split(positions, test_size=F, stratify=labels, random_state=seed)``
  (scikit-learn), ``seed = data.holdout_seed`` — the same held-out images for every run seed, so the
  runs of a grid are compared on one validation set. It is a pure function of the training split's
  labels (in its order), F and the seed.
* Normalisation statistics stay those of the data set (CIFAR-100's published constants; the digits'
  are computed from the whole training split): the preprocessing of a grid run is the final run's.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from rld.data.types import ArrayDataset, ArraySplit
from rld.errors import UserError


@dataclass(frozen=True)
class Holdout:
    """The held-out part of a training split: positions (sorted) into the split it was carved from.

    ``fraction`` and ``seed``: ``data.holdout`` and ``data.holdout_seed``; ``train_size``: the images of
    that training split; ``val_indices`` / ``train_indices``: the held-out and the remaining positions;
    ``val_per_class``: held-out images per class index.
    """

    fraction: float
    seed: int
    train_size: int
    val_indices: tuple[int, ...]
    train_indices: tuple[int, ...]
    val_per_class: tuple[int, ...]

    @property
    def val_size(self) -> int:
        return len(self.val_indices)

    def to_dict(self) -> dict[str, Any]:
        """What ``val_split.json`` records: the fraction, the seed, the sizes and the held-out positions."""
        return {
            "fraction": self.fraction,
            "seed": self.seed,
            "train_size": self.train_size,
            "val_size": self.val_size,
            "val_per_class": list(self.val_per_class),
            "val_indices": list(self.val_indices),
        }


def holdout_split(labels: Sequence[int] | np.ndarray | torch.Tensor, fraction: float, seed: int) -> Holdout:
    """The stratified, seeded held-out part of a training split with these ``labels`` (in its order)."""
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise UserError(f"data.holdout (--val-fraction) must be in (0, 1), got {fraction}")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = len(y)
    counts = np.bincount(y) if n else np.zeros(0, dtype=np.int64)
    present = np.flatnonzero(counts)
    small = [int(c) for c in present if counts[c] < 2]
    if small:
        raise UserError(
            f"class {small[0]} has a single training image: holding out a stratified validation part needs at "
            "least 2 per class"
        )
    try:
        rest, val = train_test_split(np.arange(n), test_size=fraction, stratify=y, random_state=seed)
    except ValueError as err:
        raise UserError(
            f"cannot hold out {fraction} of {n} training images in {len(present)} classes (stratified, "
            f"every class in both parts): {err}; choose another --val-fraction"
        ) from err
    val, rest = np.sort(val), np.sort(rest)
    per_class = np.bincount(y[val], minlength=len(counts))
    return Holdout(
        float(fraction),
        int(seed),
        n,
        tuple(int(i) for i in val),
        tuple(int(i) for i in rest),
        tuple(int(c) for c in per_class),
    )


def carve_arrays(data: ArrayDataset, fraction: float, seed: int) -> tuple[ArrayDataset, Holdout]:
    """``data`` with the held-out part of its training split as its evaluation split (the test
    split is dropped) and the rest as its training split."""
    h = holdout_split(data.train.y, fraction, seed)
    rest, val = np.asarray(h.train_indices, dtype=np.int64), np.asarray(h.val_indices, dtype=np.int64)
    x, y = data.train.x, data.train.y
    carved = dataclasses.replace(data, train=ArraySplit(x[rest], y[rest]), test=ArraySplit(x[val], y[val]))
    return carved, h


class LabelledSubset(Dataset):
    """The items ``indices`` of ``base`` (an ``(image, label)`` data set), with their ``labels``."""

    def __init__(self, base: Any, indices: Sequence[int], labels: torch.Tensor):
        self.base, self.indices = base, list(indices)
        self._labels = labels[torch.as_tensor(self.indices, dtype=torch.int64)]

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> torch.Tensor:
        """(N,) int64 labels of the subset, in order (no image is read)."""
        return self._labels

    @property
    def transform(self) -> Any:
        """The transform of the items (``base``'s): what an export records as the preprocessing."""
        return self.base.transform

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.base[self.indices[index]]


def dataset_labels(dataset: Any) -> torch.Tensor:
    """(N,) int64 labels of an image data set without reading an image (``labels`` or ``targets``)."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = getattr(dataset, "targets", None)
    if labels is None:
        raise UserError(f"cannot hold out a stratified part of a {type(dataset).__name__}: it does not list its labels")
    return torch.as_tensor(labels, dtype=torch.int64)


def carve_dataset(train_set: Any, eval_transform: Any, fraction: float, seed: int) -> tuple[Any, Any, Holdout]:
    """The remaining training images (with ``train_set``'s transform) and the held-out ones (with
    ``eval_transform``: a shallow copy of ``train_set`` whose ``transform`` is replaced)."""
    labels = dataset_labels(train_set)
    h = holdout_split(labels, fraction, seed)
    evaluated = copy.copy(train_set)
    evaluated.transform = eval_transform
    return LabelledSubset(train_set, h.train_indices, labels), LabelledSubset(evaluated, h.val_indices, labels), h
