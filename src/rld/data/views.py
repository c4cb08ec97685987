"""Augmentation views of the CIFAR protocol: a crop offset per axis and a flip, encoded in one id.

``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` give 9 x 9 offsets x 2 flips = 162 views of
an image; the device-resident loader draws them, the teacher-logit cache is indexed by them, the
strong view (MLKD) starts from one.
"""

from __future__ import annotations

import torch

PAD = 4
"""Zero pixels added on every side before cropping (the CIFAR protocol's ``padding=4``)."""
OFFSETS = 2 * PAD + 1
"""Possible crop offsets per axis: 0 .. 8."""
NUM_VIEWS = OFFSETS * OFFSETS * 2
"""Distinct augmentation views of one image: 9 x 9 offsets x 2 flips = 162."""
CENTER_VIEW = (PAD * OFFSETS + PAD) * 2
"""The view id of the un-augmented image (dy = dx = 4, no flip) = 80."""


def encode_views(dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Views from crop offsets and flips: dy, dx (B,) in 0..8, flip (B,) in {0, 1} -> (B,) int64."""
    return (dy.long() * OFFSETS + dx.long()) * 2 + flip.long()


def decode_views(views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`encode_views`: views (B,) -> (dy, dx, flip), each (B,) int64."""
    views = views.long()
    flip = views % 2
    pos = views // 2
    return pos // OFFSETS, pos % OFFSETS, flip
