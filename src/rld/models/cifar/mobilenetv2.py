"""MobileNetV2 (Sandler et al., 2018) for 32x32 inputs, width 0.5: ``MobileNetV2`` of the CIFAR-100 zoo.

Module names follow the CIFAR-100 teacher checkpoints (``conv1.0``, ``blocks.3.1.conv.6``,
``conv2.0``, ``classifier.0``).
"""

from __future__ import annotations

from torch import Tensor, nn

from rld.models.features import FeatureModel, Features
from rld.models.layers import ActSequential, global_pool, init_weights
from rld.models.registry import register_model

# (expansion, output channels at width 1, blocks, first stride) of the seven block groups.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# Groups after which a stage feature is taken (the last group of each resolution).
_FEATURE_GROUPS = (1, 2, 4, 6)


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN (linear), residual if shapes match.

    ``(B, in, H, W)`` -> ``(B, out, H / stride, W / stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(FeatureModel):
    """MobileNetV2 with a stride-2 stem and strides arranged for 32x32 inputs.

    Features for a ``(B, 3, 32, 32)`` input at width 0.5: ``feats`` = stem ``(B, 16, 16, 16)``,
    then ``(B, 12, 16, 16)``, ``(B, 16, 8, 8)``, ``(B, 48, 4, 4)``, ``(B, 160, 2, 2)``;
    ``pooled``: ``(B, 1280)``. The stages end in a linear bottleneck, so apart from the stem
    ``preact_feats[i] is feats[i]``.
    """

    classifier_name = "classifier.0"

    def __init__(self, num_classes: int, width: float = 0.5) -> None:
        super().__init__()
        channels = int(32 * width)
        self.conv1 = ActSequential(nn.Conv2d(3, channels, 3, 2, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
        groups = []
        for expansion, base, count, stride in _SETTINGS:
            out_channels = int(base * width)
            blocks = []
            for s in [stride] + [1] * (count - 1):
                blocks.append(InvertedResidual(channels, out_channels, s, expansion))
                channels = out_channels
            groups.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(groups)
        last_channels = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = nn.Sequential(
            nn.Conv2d(channels, last_channels, 1, bias=False), nn.BatchNorm2d(last_channels), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes))
        init_weights(self, linear_std=0.01)

    def forward_features(self, x: Tensor) -> Features:
        out, preact = self.conv1.forward_with_preact(x)
        feats, preacts = [out], [preact]
        for i, group in enumerate(self.blocks):
            out = group(out)
            if i in _FEATURE_GROUPS:
                feats.append(out)
                preacts.append(out)
        head = self.conv2(out)
        pooled = global_pool(head)
        return Features(logits=self.classifier(pooled), feats=feats, preact_feats=preacts, pooled=pooled, pre_pool=head)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm ending the linear bottleneck of the last block of each feature group, one
        per stage: ``preact_feats[1:]`` are their outputs (plus the residual where the block has
        one). No ReLU follows them; OFD takes its margins from them all the same, as mdistiller's
        ``get_bn_before_relu`` in ``mdistiller/models/cifar/mobilenetv2.py`` does."""
        return [self.blocks[i][-1].conv[-1] for i in _FEATURE_GROUPS]


@register_model("cifar100", "MobileNetV2")
def mobilenetv2_half(num_classes: int) -> MobileNetV2:
    return MobileNetV2(num_classes, width=0.5)
