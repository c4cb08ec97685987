"""ImageNet-style ResNets adapted to 32x32 inputs: ResNet18, ResNet50 of the CIFAR-100 zoo.

Four stages (64, 128, 256, 512 planes) like the ImageNet ResNets, but with a 3x3 stride-1 stem
and no max-pooling. Module names follow the CIFAR-100 teacher checkpoints (``shortcut``, ``linear``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from rld.models.features import FeatureModel, Features
from rld.models.layers import global_pool, init_weights, stem_and_stages
from rld.models.registry import register_model


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity (an empty ``Sequential``) or 1x1 conv + BN when the shape changes."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU: ``(B, in, H, W)`` -> ``(B, planes, H/s, W/s)``."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` -> ``(out, preact)``, ``preact`` being the residual sum before the final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        preact = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_preact(x)[0]


class Bottleneck(nn.Module):
    """1x1-3x3(stride)-1x1 bottleneck: ``(B, in, H, W)`` -> ``(B, 4 * planes, H/s, W/s)``."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` -> ``(out, preact)``, ``preact`` being the residual sum before the final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_preact(x)[0]


class CifarImageNetStyleResNet(FeatureModel):
    """Four-stage ResNet for 32x32 inputs.

    Features for a ``(B, 3, 32, 32)`` input: ``feats`` = stem ``(B, 64, 32, 32)``, stages
    ``(B, 64e, 32, 32)``, ``(B, 128e, 16, 16)``, ``(B, 256e, 8, 8)``, ``(B, 512e, 4, 4)`` with
    ``e`` the block expansion (1 or 4); ``pooled``: ``(B, 512e)``.
    """

    classifier_name = "linear"

    def __init__(
        self, block: type[BasicBlock | Bottleneck], blocks: tuple[int, int, int, int], num_classes: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for planes, count, stride in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2), strict=True):
            layers = []
            for s in [stride] + [1] * (count - 1):
                layers.append(block(in_planes, planes, s))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Features:
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        out, feats, preacts = stem_and_stages(self.bn1(self.conv1(x)), stages)
        pooled = global_pool(out)
        return Features(logits=self.linear(pooled), feats=feats, preact_feats=preacts, pooled=pooled, pre_pool=out)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm ending each stage's residual branch (``bn2`` of basic blocks, ``bn3`` of
        bottlenecks, in the last block), one per stage: ``preact_feats[1:]`` are their outputs plus
        the shortcut (OFD's margins; mdistiller's ``get_bn_before_relu`` in
        ``mdistiller/models/cifar/resnetv2.py``)."""
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        return [stage[-1].bn3 if isinstance(stage[-1], Bottleneck) else stage[-1].bn2 for stage in stages]


@register_model("cifar100", "ResNet18")
def resnet18(num_classes: int) -> CifarImageNetStyleResNet:
    return CifarImageNetStyleResNet(BasicBlock, (2, 2, 2, 2), num_classes)


@register_model("cifar100", "ResNet50")
def resnet50(num_classes: int) -> CifarImageNetStyleResNet:
    return CifarImageNetStyleResNet(Bottleneck, (3, 4, 6, 3), num_classes)
