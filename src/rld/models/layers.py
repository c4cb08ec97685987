"""Small building blocks and helpers shared by the model definitions."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ActSequential(nn.Sequential):
    """A ``Sequential`` ending in a (non in-place) ReLU that can also return the ReLU's input."""

    def __init__(self, *layers: nn.Module) -> None:
        if not isinstance(layers[-1], nn.ReLU) or layers[-1].inplace:
            raise ValueError("ActSequential must end with nn.ReLU(inplace=False)")
        super().__init__(*layers)

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` -> ``(out, preact)`` with ``out == relu(preact)``."""
        *body, act = self
        for layer in body:
            x = layer(x)
        return act(x), x


def run_stage(stage: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run the blocks of ``stage``; the last block's ``forward_with_preact`` gives ``(out, preact)``."""
    *body, last = stage
    for block in body:
        x = block(x)
    return last.forward_with_preact(x)


def stem_and_stages(stem_preact: Tensor, stages) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """ReLU of the stem's pre-activation, then each stage (see :func:`run_stage`).

    Returns ``(last output, feats, preact_feats)`` with the stem first in both lists.
    """
    out = F.relu(stem_preact)
    feats, preacts = [out], [stem_preact]
    for stage in stages:
        out, preact = run_stage(stage, out)
        feats.append(out)
        preacts.append(preact)
    return out, feats, preacts


def global_pool(x: Tensor) -> Tensor:
    """Global average pooling: ``(B, C, H, W)`` -> ``(B, C)``."""
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def init_weights(model: nn.Module, linear_std: float | None = None, zero_linear_bias: bool = False) -> None:
    """He-normal (fan-out) convolutions with zero bias, BatchNorm ``(1, 0)``.

    Linear layers keep PyTorch's default unless ``linear_std`` is given (weight ``N(0, std)``,
    zero bias) or ``zero_linear_bias`` is set.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
                nn.init.zeros_(m.bias)
            elif zero_linear_bias:
                nn.init.zeros_(m.bias)
