"""ShuffleNet V1 (Zhang et al., 2018) for 32x32 inputs, 3 groups: ``ShuffleV1`` of the CIFAR-100 zoo.

Module names follow the CIFAR-100 teacher checkpoints (``layer1.0.conv1``, ``linear``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rld.models.features import FeatureModel, Features
from rld.models.layers import global_pool, stem_and_stages
from rld.models.registry import register_model


class ShuffleV1Block(nn.Module):
    """Grouped 1x1-BN-ReLU, channel shuffle, 3x3 depthwise-BN, grouped 1x1-BN, then ReLU.

    Stride 1: residual sum, ``(B, C, H, W)`` -> ``(B, C, H, W)``. Stride 2: the branch's
    ``out_channels`` are concatenated with the 3x3 average-pooled input,
    ``(B, in, H, W)`` -> ``(B, in + out_channels, H/2, W/2)``.
    ``first_groups`` is the grouping of the first 1x1 convolution (1 right after the stem).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int, first_groups: int) -> None:
        super().__init__()
        mid = out_channels // 4
        self.stride = stride
        self.first_groups = first_groups
        self.conv1 = nn.Conv2d(in_channels, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` -> ``(out, preact)``, ``preact`` being the sum/concatenation before the final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        if self.first_groups > 1:
            out = F.channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        preact = out + x if self.pool is None else torch.cat([out, self.pool(x)], 1)
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_preact(x)[0]


class ShuffleNetV1(FeatureModel):
    """ShuffleNet V1 with a 1x1 stride-1 stem for 32x32 inputs.

    Features for a ``(B, 3, 32, 32)`` input with ``out_channels = (240, 480, 960)``: ``feats`` =
    stem ``(B, 24, 32, 32)``, stages ``(B, 240, 16, 16)``, ``(B, 480, 8, 8)``, ``(B, 960, 4, 4)``;
    ``pooled``: ``(B, 960)``.
    """

    classifier_name = "linear"

    def __init__(
        self,
        num_classes: int,
        out_channels: tuple[int, int, int] = (240, 480, 960),
        blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        channels = 24
        stages = []
        for i, (stage_channels, count) in enumerate(zip(out_channels, blocks, strict=True)):
            first_groups = 1 if i == 0 else groups  # the stem's 24 channels are not grouped
            layers = [ShuffleV1Block(channels, stage_channels - channels, 2, groups, first_groups)]
            layers += [ShuffleV1Block(stage_channels, stage_channels, 1, groups, groups) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            channels = stage_channels
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(channels, num_classes)

    def forward_features(self, x: Tensor) -> Features:
        stages = (self.layer1, self.layer2, self.layer3)
        out, feats, preacts = stem_and_stages(self.bn1(self.conv1(x)), stages)
        pooled = global_pool(out)
        return Features(logits=self.linear(pooled), feats=feats, preact_feats=preacts, pooled=pooled, pre_pool=out)


@register_model("cifar100", "ShuffleV1")
def shufflev1(num_classes: int) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes)
