"""CIFAR ResNets (He et al., 2016, section 4.2): resnet8 ... resnet110, resnet8x4, resnet32x4.

Three stages of basic blocks on 32x32 inputs, ``(depth - 2) / 6`` blocks per stage. Module
names follow the standard CIFAR-100 teacher checkpoints (``conv1``, ``layer1.0.downsample``, ``fc``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from rld.models.features import FeatureModel, Features
from rld.models.layers import global_pool, init_weights, stem_and_stages
from rld.models.registry import register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    ``(B, in_planes, H, W)`` -> ``(B, planes, H / stride, W / stride)``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` -> ``(out, preact)``, ``preact`` being the residual sum before the final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        preact = out + identity
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_preact(x)[0]


class CifarResNet(FeatureModel):
    """ResNet for 32x32 inputs.

    Args:
        depth: ``6n + 2`` layers, ``n`` basic blocks per stage.
        widths: channels of the stem and of the three stages, e.g. ``(16, 16, 32, 64)``.
        num_classes: outputs of the classifier ``fc``.

    Features for a ``(B, 3, 32, 32)`` input: ``feats`` = stem ``(B, widths[0], 32, 32)``, then
    the stages ``(B, widths[1], 32, 32)``, ``(B, widths[2], 16, 16)``, ``(B, widths[3], 8, 8)``;
    ``pooled``: ``(B, widths[3])``.
    """

    classifier_name = "fc"

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_stage(widths[0], widths[1], blocks, stride=1)
        self.layer2 = self._make_stage(widths[1], widths[2], blocks, stride=2)
        self.layer3 = self._make_stage(widths[2], widths[3], blocks, stride=2)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Features:
        stages = (self.layer1, self.layer2, self.layer3)
        out, feats, preacts = stem_and_stages(self.bn1(self.conv1(x)), stages)
        pooled = global_pool(out)
        return Features(logits=self.fc(pooled), feats=feats, preact_feats=preacts, pooled=pooled, pre_pool=out)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm ending each stage's residual branch (``bn2`` of its last block), one per stage:
        ``preact_feats[1:]`` are their outputs plus the shortcut (OFD's margins; mdistiller's
        ``get_bn_before_relu`` in ``mdistiller/models/cifar/resnet.py``)."""
        return [stage[-1].bn2 for stage in (self.layer1, self.layer2, self.layer3)]


_BASE = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


@register_model("cifar100")
def resnet8(num_classes: int) -> CifarResNet:
    return CifarResNet(8, _BASE, num_classes)


@register_model("cifar100")
def resnet14(num_classes: int) -> CifarResNet:
    return CifarResNet(14, _BASE, num_classes)


@register_model("cifar100")
def resnet20(num_classes: int) -> CifarResNet:
    return CifarResNet(20, _BASE, num_classes)


@register_model("cifar100")
def resnet32(num_classes: int) -> CifarResNet:
    return CifarResNet(32, _BASE, num_classes)


@register_model("cifar100")
def resnet44(num_classes: int) -> CifarResNet:
    return CifarResNet(44, _BASE, num_classes)


@register_model("cifar100")
def resnet56(num_classes: int) -> CifarResNet:
    return CifarResNet(56, _BASE, num_classes)


@register_model("cifar100")
def resnet110(num_classes: int) -> CifarResNet:
    return CifarResNet(110, _BASE, num_classes)


@register_model("cifar100")
def resnet8x4(num_classes: int) -> CifarResNet:
    return CifarResNet(8, _X4, num_classes)


@register_model("cifar100")
def resnet32x4(num_classes: int) -> CifarResNet:
    return CifarResNet(32, _X4, num_classes)
