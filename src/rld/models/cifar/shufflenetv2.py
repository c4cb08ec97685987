"""ShuffleNet V2 (Ma et al., 2018) for 32x32 inputs, 1x size: ``ShuffleV2`` of the CIFAR-100 zoo.

Module names follow the CIFAR-100 teacher checkpoints (``layer1.0.conv5``, ``conv2``, ``linear``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rld.models.features import FeatureModel, Features
from rld.models.layers import global_pool, stem_and_stages
from rld.models.registry import register_model


class ShuffleV2Block(nn.Module):
    """Channel split; one half goes through 1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU; concat, shuffle.

    ``(B, C, H, W)`` -> ``(B, C, H, W)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.split = channels // 2
        half = channels - self.split
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def _branch(self, x: Tensor) -> Tensor:
        """The processed half before its final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return self.bn3(self.conv3(self.bn2(self.conv2(out))))

    def forward(self, x: Tensor) -> Tensor:
        kept, processed = x[:, : self.split], x[:, self.split :]
        return F.channel_shuffle(torch.cat([kept, F.relu(self._branch(processed))], 1), 2)

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` -> ``(out, preact)``: ``preact`` holds the branch before its final ReLU, shuffled like ``out``.

        The kept half is itself a ReLU output, so ``relu(preact) == out``.
        """
        kept, processed = x[:, : self.split], x[:, self.split :]
        branch = self._branch(processed)
        out = F.channel_shuffle(torch.cat([kept, F.relu(branch)], 1), 2)
        preact = F.channel_shuffle(torch.cat([kept, branch], 1), 2)
        return out, preact


class ShuffleV2DownBlock(nn.Module):
    """Both halves downsample (stride 2) and are concatenated: ``(B, in, H, W)`` -> ``(B, out, H/2, W/2)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        # left branch: 3x3 depthwise-BN, 1x1-BN-ReLU
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch: 1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))), inplace=True)
        right = F.relu(self.bn3(self.conv3(x)), inplace=True)
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))), inplace=True)
        return F.channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(FeatureModel):
    """ShuffleNet V2 with a 1x1 stride-1 stem and no max-pooling, for 32x32 inputs.

    Features for a ``(B, 3, 32, 32)`` input: ``feats`` = stem ``(B, 24, 32, 32)``, stages
    ``(B, 116, 16, 16)``, ``(B, 232, 8, 8)``, ``(B, 464, 4, 4)``; ``pooled``: ``(B, 1024)``
    (after the final 1x1 convolution).
    """

    classifier_name = "linear"

    def __init__(
        self,
        num_classes: int,
        out_channels: tuple[int, int, int, int] = (116, 232, 464, 1024),
        blocks: tuple[int, int, int] = (3, 7, 3),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        channels = 24
        stages = []
        for stage_channels, count in zip(out_channels[:3], blocks, strict=True):
            layers: list[nn.Module] = [ShuffleV2DownBlock(channels, stage_channels)]
            layers += [ShuffleV2Block(stage_channels) for _ in range(count)]
            stages.append(nn.Sequential(*layers))
            channels = stage_channels
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(channels, out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def forward_features(self, x: Tensor) -> Features:
        stages = (self.layer1, self.layer2, self.layer3)
        out, feats, preacts = stem_and_stages(self.bn1(self.conv1(x)), stages)
        head = F.relu(self.bn2(self.conv2(out)))
        pooled = global_pool(head)
        return Features(logits=self.linear(pooled), feats=feats, preact_feats=preacts, pooled=pooled, pre_pool=head)


@register_model("cifar100", "ShuffleV2")
def shufflev2(num_classes: int) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes)
