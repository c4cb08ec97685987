"""ImageNet models of the distillation literature: ResNet18/34/50/101 and MobileNetV1 (224x224 inputs).

The ResNets are torchvision's (same modules, same initialisation, same state-dict keys, so
torchvision's pretrained weights load with :func:`rld.models.load_checkpoint`); MobileNetV1
follows the layout used by the distillation literature (``model.<i>``, ``fc``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from rld.models.features import FeatureModel, Features
from rld.models.layers import ActSequential, global_pool
from rld.models.registry import register_model


def _torchvision_block_with_preact(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """A torchvision ``BasicBlock`` / ``Bottleneck`` returning ``(out, preact)``.

    ``preact`` is the residual sum before the block's final ReLU.
    """
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.bn2(block.conv2(out))
    if hasattr(block, "conv3"):  # Bottleneck
        out = block.bn3(block.conv3(block.relu(out)))
    identity = x if block.downsample is None else block.downsample(x)
    preact = out + identity
    return F.relu(preact), preact


class ImageNetResNet(FeatureModel):
    """torchvision's ResNet (v1.5: stride on the 3x3 convolution of bottlenecks).

    Features for a ``(B, 3, 224, 224)`` input, with ``e`` = 1 (ResNet18/34) or 4 (ResNet50/101):
    ``feats`` = stem (before max-pooling) ``(B, 64, 112, 112)``, stages ``(B, 64e, 56, 56)``,
    ``(B, 128e, 28, 28)``, ``(B, 256e, 14, 14)``, ``(B, 512e, 7, 7)``; ``pooled``: ``(B, 512e)``.
    Global pooling is adaptive, so smaller inputs work too.
    """

    classifier_name = "fc"

    _LAYOUTS = {18: ("BasicBlock", (2, 2, 2, 2)), 34: ("BasicBlock", (3, 4, 6, 3)),
                50: ("Bottleneck", (3, 4, 6, 3)), 101: ("Bottleneck", (3, 4, 23, 3))}  # fmt: skip

    def __init__(self, depth: int, num_classes: int) -> None:
        super().__init__()
        from torchvision.models import resnet as tv_resnet

        block_name, blocks = self._LAYOUTS[depth]
        net = tv_resnet.ResNet(getattr(tv_resnet, block_name), list(blocks), num_classes=num_classes)
        # Adopt torchvision's modules (conv1, bn1, relu, maxpool, layer1..4, avgpool, fc) as our own.
        for name, module in net.named_children():
            self.add_module(name, module)

    def forward_features(self, x: Tensor) -> Features:
        preact = self.bn1(self.conv1(x))
        out = F.relu(preact)
        feats, preacts = [out], [preact]
        out = self.maxpool(out)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            *body, last = stage
            for block in body:
                out = block(out)
            out, preact = _torchvision_block_with_preact(last, out)
            feats.append(out)
            preacts.append(preact)
        pooled = global_pool(out)
        return Features(logits=self.fc(pooled), feats=feats, preact_feats=preacts, pooled=pooled, pre_pool=out)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm ending the residual branch of the last block of each of the four stages
        (``bn2`` of basic blocks, ``bn3`` of bottlenecks): ``preact_feats[1:]`` are their outputs plus
        the shortcut. All four, as OFD's authors list them (clovaai/overhaul-distillation
        ``ImageNet/models/ResNet.py``, ``get_bn_before_relu``); mdistiller's leaves stage 1 out
        (``mdistiller/models/imagenet/resnet.py``), which OFD's ``stages=3`` reproduces."""
        last = [stage[-1] for stage in (self.layer1, self.layer2, self.layer3, self.layer4)]
        return [block.bn3 if hasattr(block, "bn3") else block.bn2 for block in last]


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> ActSequential:
    return ActSequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()
    )


def _depthwise_separable(in_channels: int, out_channels: int, stride: int) -> ActSequential:
    return ActSequential(
        nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


# (output channels, stride) of the 13 depthwise-separable blocks after the stem.
_MOBILENETV1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                       (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))  # fmt: skip
# Indices in ``model`` of the last block at each resolution.
_MOBILENETV1_FEATURES = (1, 3, 5, 11, 13)


class MobileNetV1(FeatureModel):
    """MobileNetV1 (Howard et al., 2017), width 1.

    Features for a ``(B, 3, 224, 224)`` input: ``feats`` = the last block at each resolution,
    ``(B, 64, 112, 112)``, ``(B, 128, 56, 56)``, ``(B, 256, 28, 28)``, ``(B, 512, 14, 14)``,
    ``(B, 1024, 7, 7)``; ``pooled``: ``(B, 1024)``. Global pooling is adaptive.
    """

    classifier_name = "fc"

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers = [_conv_bn_relu(3, 32, 2)]
        channels = 32
        for out_channels, stride in _MOBILENETV1_BLOCKS:
            layers.append(_depthwise_separable(channels, out_channels, stride))
            channels = out_channels
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward_features(self, x: Tensor) -> Features:
        feats, preacts = [], []
        for i, block in enumerate(self.model):
            x, preact = block.forward_with_preact(x)
            if i in _MOBILENETV1_FEATURES:
                feats.append(x)
                preacts.append(preact)
        pooled = global_pool(x)
        return Features(logits=self.fc(pooled), feats=feats, preact_feats=preacts, pooled=pooled, pre_pool=x)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The last BatchNorm of the blocks behind ``feats[1:]`` (``model.3``, ``.5``, ``.11``,
        ``.13``), one per stage: ``preact_feats[1:]`` are their outputs (OFD's margins; mdistiller's
        ``get_bn_before_relu`` in ``mdistiller/models/imagenet/mobilenetv1.py``)."""
        return [self.model[i][-2] for i in _MOBILENETV1_FEATURES[1:]]


@register_model("imagenet", "ResNet18")
def resnet18(num_classes: int) -> ImageNetResNet:
    return ImageNetResNet(18, num_classes)


@register_model("imagenet", "ResNet34")
def resnet34(num_classes: int) -> ImageNetResNet:
    return ImageNetResNet(34, num_classes)


@register_model("imagenet", "ResNet50")
def resnet50(num_classes: int) -> ImageNetResNet:
    return ImageNetResNet(50, num_classes)


@register_model("imagenet", "ResNet101")
def resnet101(num_classes: int) -> ImageNetResNet:
    return ImageNetResNet(101, num_classes)


@register_model("imagenet", "MobileNetV1")
def mobilenetv1(num_classes: int) -> MobileNetV1:
    return MobileNetV1(num_classes)
