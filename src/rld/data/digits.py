"""The embedded demo data set: scikit-learn's handwritten digits, shaped like CIFAR.

scikit-learn ships 1,797 real 8x8 grey-level images of the digits 0-9 (values 0..16), so this
set needs no download. :func:`load_digits` turns them into a CIFAR-shaped problem:

* values scaled to 0..255 (``v * 255 / 16``);
* upsampled to 32x32 (``size``; 16 for a 4× cheaper variant) with bilinear interpolation
  (``torch.nn.functional.interpolate``, ``align_corners=False``, computed in float64), rounded to
  the nearest integer;
* replicated to 3 identical channels, stored as uint8 (N, size, size, 3);
* a fixed stratified split, ``train_test_split(test_size=0.25, stratify=y, random_state=0)``:
  1,347 training and 450 test images, each split listed in the original order;
* normalisation mean/std per channel computed from the training split (population std).

``flip`` is False: a mirrored digit is a different symbol (or none), so random horizontal flips
would corrupt the labels. The random crop with padding 4 still applies.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rld.data.types import ArrayDataset, ArraySplit
from rld.errors import UserError

DIGITS_SIZE = 32
DIGITS_TEST_SIZE = 0.25
DIGITS_SPLIT_SEED = 0


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
    """images (N, 8, 8) float64 in 0..255 -> (N, size, size, 3) uint8."""
    t = torch.from_numpy(images)[:, None]  # (N, 1, 8, 8)
    up = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    up = up.round().clamp_(0, 255).to(torch.uint8).numpy()  # (N, size, size)
    return np.ascontiguousarray(np.repeat(up[..., None], 3, axis=3))


def load_digits(size: int = DIGITS_SIZE) -> ArrayDataset:
    """The digits set as an :class:`ArrayDataset` named ``"digits"`` (10 classes, ``size`` x ``size`` RGB).

    Deterministic: every call returns the same arrays and statistics.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    raw = sklearn_digits()
    images = raw.images.astype(np.float64) * (255.0 / 16.0)  # (1797, 8, 8)
    labels = raw.target.astype(np.int64)  # (1797,)
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise UserError(f"the digits' image size must be an integer >= 8 (they are 8x8 originals), got {size!r}")
    x = _upsample(images, size)

    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_SIZE,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    train = ArraySplit(x=x[train_idx], y=labels[train_idx])
    test = ArraySplit(x=x[test_idx], y=labels[test_idx])

    scaled = train.x.astype(np.float64) / 255.0
    m, s = scaled.mean(axis=(0, 1, 2)), scaled.std(axis=(0, 1, 2))  # (3,) each
    return ArrayDataset(
        name="digits",
        train=train,
        test=test,
        classes=[str(d) for d in range(10)],
        mean=(float(m[0]), float(m[1]), float(m[2])),
        std=(float(s[0]), float(s[1]), float(s[2])),
        flip=False,
    )
