"""Wide ResNets (Zagoruyko & Komodakis, 2016) for 32x32 inputs: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Pre-activation blocks (BN-ReLU-conv), ``(depth - 4) / 6`` blocks per stage, no dropout. Module
names follow the CIFAR-100 teacher checkpoints (``block1.layer.0.convShortcut``, ``bn1``, ``fc``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from rld.models.features import FeatureModel, Features
from rld.models.layers import global_pool, init_weights
from rld.models.registry import register_model


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut: ``(B, in, H, W)`` -> ``(B, out, H/s, W/s)``.

    When the channel count changes, the 1x1 ``convShortcut`` acts on the activated input;
    otherwise the shortcut is the raw input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.convShortcut: nn.Module | None = None
        if in_planes != out_planes:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward_from_preact(self, x: Tensor, preact: Tensor) -> Tensor:
        """The block on input ``x`` given ``preact = self.bn1(x)`` (computed once by the caller)."""
        act = F.relu(preact)
        out = self.conv2(F.relu(self.bn2(self.conv1(act)), inplace=True))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_from_preact(x, self.bn1(x))


class WideStage(nn.Module):
    """``count`` wide blocks; the first one changes channels and stride."""

    def __init__(self, count: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        blocks = [WideBlock(in_planes, out_planes, stride)]
        blocks += [WideBlock(out_planes, out_planes, 1) for _ in range(count - 1)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(FeatureModel):
    """WRN-depth-widen for 32x32 inputs.

    Features for a ``(B, 3, 32, 32)`` input, with ``w = widen``: ``feats`` = stem (the first
    convolution) ``(B, 16, 32, 32)``, stages ``(B, 16w, 32, 32)``, ``(B, 32w, 16, 16)``,
    ``(B, 64w, 8, 8)``; ``pooled``: ``(B, 64w)``. The stages end in a residual sum, not a
    ReLU: ``preact_feats[i]`` is the BatchNorm output that the next ReLU acts on (``bn1`` of the
    next stage's first block, or the final ``bn1``), computed once and shared with the forward pass.
    """

    classifier_name = "fc"

    def __init__(self, depth: int, widen: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        count = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = WideStage(count, widths[0], widths[1], 1)
        self.block2 = WideStage(count, widths[1], widths[2], 2)
        self.block3 = WideStage(count, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self, zero_linear_bias=True)

    def forward_features(self, x: Tensor) -> Features:
        out = self.conv1(x)
        feats, preacts = [], []
        for stage in (self.block1, self.block2, self.block3):
            first, *rest = stage.layer
            preact = first.bn1(out)
            feats.append(out)
            preacts.append(preact)
            out = first.forward_from_preact(out, preact)
            for block in rest:
                out = block(out)
        preact = self.bn1(out)
        feats.append(out)
        preacts.append(preact)
        head = F.relu(preact)
        pooled = global_pool(head)
        return Features(logits=self.fc(pooled), feats=feats, preact_feats=preacts, pooled=pooled, pre_pool=head)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm that the ReLU after each stage acts on (``bn1`` of the next stage's first
        block, then the final ``bn1``), one per stage: ``preact_feats[1:]`` are their outputs (OFD's
        margins; mdistiller's ``get_bn_before_relu`` in ``mdistiller/models/cifar/wrn.py``)."""
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]


@register_model("cifar100")
def wrn_16_1(num_classes: int) -> WideResNet:
    return WideResNet(16, 1, num_classes)


@register_model("cifar100")
def wrn_16_2(num_classes: int) -> WideResNet:
    return WideResNet(16, 2, num_classes)


@register_model("cifar100")
def wrn_40_1(num_classes: int) -> WideResNet:
    return WideResNet(40, 1, num_classes)


@register_model("cifar100")
def wrn_40_2(num_classes: int) -> WideResNet:
    return WideResNet(40, 2, num_classes)
