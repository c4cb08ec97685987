"""CTKD (Li et al. 2023): a learnable global temperature trained adversarially through a
gradient-reversal layer, with a cosine curriculum on the reversal strength."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rld.losses._common import check_positive, check_weight


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``scale`` (λ ≤ 0 reverses it)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float | Tensor) -> Tensor:  # noqa: D102
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return grad * ctx.scale, None


def ctkd_lambda(epoch: float | Tensor, ramp_epochs: float = 10) -> float | Tensor:
    """λ(epoch) = −(1 − cos(π·min(epoch, R)/R)) / 2: 0 at the start, −1 from epoch R on.

    A 0-d tensor epoch gives a tensor (no host read: a training step can be a CUDA graph)."""
    if isinstance(epoch, Tensor):
        progress = epoch.clamp(0.0, ramp_epochs) / ramp_epochs
        return -(1.0 - torch.cos(math.pi * progress)) / 2.0
    progress = min(max(float(epoch), 0.0), ramp_epochs) / ramp_epochs
    return -(1.0 - math.cos(math.pi * progress)) / 2.0


class CTKDTemperature(nn.Module):
    """τ = t_min + t_range·sigmoid(θ), θ a learnable scalar initialised to ``init``.

    ``forward(epoch)`` returns τ as a 0-d tensor whose gradient towards θ passes a gradient
    reversal with factor :func:`ctkd_lambda` (epoch, ``ramp_epochs``); the student minimises the
    KD loss while the temperature maximises it. The published defaults (zhengli97/CTKD,
    ``train_student.py``): τ ∈ [1, 21] (``--t_start 1 --t_end 20``), θ starts at 1, a 10-epoch ramp.
    """

    def __init__(self, t_min: float = 1.0, t_range: float = 20.0, init: float = 1.0, ramp_epochs: float = 10):
        super().__init__()
        check_positive("t_min", t_min)
        check_weight("t_range", t_range)
        check_positive("ramp_epochs", ramp_epochs)
        self.t_min, self.t_range, self.ramp_epochs = float(t_min), float(t_range), float(ramp_epochs)
        self.theta = nn.Parameter(torch.tensor(float(init)))

    def forward(self, epoch: float | Tensor) -> Tensor:
        theta = _ScaleGradient.apply(self.theta, ctkd_lambda(epoch, self.ramp_epochs))
        return self.t_min + self.t_range * torch.sigmoid(theta)
