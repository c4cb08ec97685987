"""VGG with BatchNorm for 32x32 inputs: vgg8, vgg11, vgg13, vgg16, vgg19.

Five blocks of 3x3 conv-BN-ReLU layers, 2x2 max-pooling after the first three, global average
pooling and one linear layer. Module names follow the CIFAR-100 teacher checkpoints
(``block0.0``, ``block0.1``, ``classifier``).
"""

from __future__ import annotations

from torch import Tensor, nn

from rld.models.features import FeatureModel, Features
from rld.models.layers import ActSequential, global_pool, init_weights
from rld.models.registry import register_model

# Output channels of the convolutions of each of the five blocks.
_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _make_block(in_channels: int, widths: tuple[int, ...]) -> ActSequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    layers[-1] = nn.ReLU()  # the block's last ReLU keeps its input: the pre-activation feature
    return ActSequential(*layers)


class VGG(FeatureModel):
    """VGG-BN for 32x32 inputs.

    Features for a ``(B, 3, 32, 32)`` input: ``feats`` = the five block outputs
    ``(B, 64, 32, 32)``, ``(B, 128, 16, 16)``, ``(B, 256, 8, 8)``, ``(B, 512, 4, 4)``,
    ``(B, 512, 4, 4)`` (the first block plays the stem); ``pooled``: ``(B, 512)``.
    """

    classifier_name = "classifier"

    def __init__(self, config: tuple[tuple[int, ...], ...], num_classes: int) -> None:
        super().__init__()
        ins = (3,) + tuple(widths[-1] for widths in config[:-1])
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            _make_block(c, widths) for c, widths in zip(ins, config, strict=True)
        )
        self.pool = nn.MaxPool2d(2, 2)
        self.classifier = nn.Linear(config[-1][-1], num_classes)
        init_weights(self, linear_std=0.01)

    def forward_features(self, x: Tensor) -> Features:
        feats, preacts = [], []
        blocks = (self.block0, self.block1, self.block2, self.block3, self.block4)
        for i, block in enumerate(blocks):
            x, preact = block.forward_with_preact(x)
            feats.append(x)
            preacts.append(preact)
            if i < 3:  # a 32x32 input is pooled to 4x4 before the last two blocks
                x = self.pool(x)
        pooled = global_pool(x)
        return Features(logits=self.classifier(pooled), feats=feats, preact_feats=preacts, pooled=pooled, pre_pool=x)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The last BatchNorm of blocks 1-4, one per stage after the first block (which plays the
        stem): ``preact_feats[1:]`` are their outputs (OFD's margins; mdistiller's
        ``get_bn_before_relu`` in ``mdistiller/models/cifar/vgg.py``)."""
        return [block[-2] for block in (self.block1, self.block2, self.block3, self.block4)]


@register_model("cifar100")
def vgg8(num_classes: int) -> VGG:
    return VGG(_CONFIGS["vgg8"], num_classes)


@register_model("cifar100")
def vgg11(num_classes: int) -> VGG:
    return VGG(_CONFIGS["vgg11"], num_classes)


@register_model("cifar100")
def vgg13(num_classes: int) -> VGG:
    return VGG(_CONFIGS["vgg13"], num_classes)


@register_model("cifar100")
def vgg16(num_classes: int) -> VGG:
    return VGG(_CONFIGS["vgg16"], num_classes)


@register_model("cifar100")
def vgg19(num_classes: int) -> VGG:
    return VGG(_CONFIGS["vgg19"], num_classes)
