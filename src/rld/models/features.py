"""The feature interface shared by every rld model.

A model returns logits from ``model(x)`` and, from the same single pass, its intermediate
features from ``model.forward_features(x)``. Distillation methods read what they need from the
returned :class:`Features`; the classifier is reachable through ``model.get_classifier()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass
class Features:
    """Everything a distillation method may read from one forward pass.

    Attributes:
        logits: ``(B, num_classes)``, equal to ``model(x)``.
        feats: the output of each stage, ``(B, C_i, H_i, W_i)``; the first entry is the stem
            (the output of the first convolution layer or block), then one entry per stage.
            ``timm:`` models that offer ``forward_intermediates`` list what it returns (for timm
            ResNets the stem, then the four stages); other ``timm:`` models and ``torchvision:``
            models have none (an empty list).
        preact_feats: for each entry of ``feats``, the tensor that the ReLU consuming it acts on,
            same shape as ``feats[i]``:

            * post-activation networks (ResNets, VGG, ShuffleNets, MobileNetV1, the stems): the
              stage output before its final ReLU, so ``relu(preact_feats[i]) == feats[i]``;
            * pre-activation WRN, whose stages end in a residual sum with no ReLU: the output of
              the BatchNorm that the following ReLU acts on (the next block's ``bn1``, or the
              final ``bn1``), as used by OFD and ReviewKD;
            * MobileNetV2 stages end in a linear bottleneck followed by a convolution, not by a
              ReLU: there ``preact_feats[i] is feats[i]``;
            * ``timm:`` models: ``preact_feats is feats`` (timm exposes no pre-activation maps).

            Empty where ``feats`` is.
        pooled: ``(B, D)``, the input of the final linear classifier (after global pooling), so
            ``model.get_classifier()(pooled) == logits``; None for the features of a pass that
            produced only logits (a logit method's student, cached teacher logits).
        pre_pool: ``(B, D, H, W)``, the map whose global average pool is ``pooled``: what the
            classifier reads at every position before pooling (CAT-KD's class activation maps
            apply the classifier to it; SimKD's teacher target). It is ``feats[-1]`` for the
            post-activation networks; for pre-activation WRN the ReLU of ``preact_feats[-1]``; for
            MobileNetV2 and ShuffleNetV2 the output of the final 1×1 convolution block that follows
            the last stage. None where ``feats`` is empty (``torchvision:`` / ``timm:`` models, a
            pass that produced only logits).
    """

    logits: Tensor
    feats: list[Tensor]
    preact_feats: list[Tensor]
    pooled: Tensor | None
    pre_pool: Tensor | None = None


class FeatureModel(nn.Module):
    """Base class of rld models: ``forward`` gives logits, ``forward_features`` everything.

    Subclasses implement :meth:`forward_features` and set ``classifier_name`` to the dotted path
    of their final ``nn.Linear``. ``forward`` returns ``forward_features(x).logits``, so both
    always agree exactly; the forward code has no data-dependent Python control flow, so
    models work with ``torch.compile``, ``channels_last`` inputs and autocast.

    Models that can teach with OFD also define ``bn_before_relu() -> list[nn.BatchNorm2d]``: the
    BatchNorm before the ReLU that ends each of the last ``k`` stages, in order, so that
    ``bn_before_relu()[j]`` has ``preact_feats[-k + j].shape[1]`` channels (OFD's margins come from
    its weight and bias). The CIFAR ShuffleNets and external models do not define it.
    """

    classifier_name: str = "fc"
    # Set by ``create_model`` to the registered name; used in error messages.
    model_name: str = ""

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, 3, H, W)`` -> logits ``(B, num_classes)``."""
        return self.forward_features(x).logits

    def forward_features(self, x: Tensor) -> Features:
        """``x: (B, 3, H, W)`` -> :class:`Features` of one forward pass."""
        raise NotImplementedError

    def get_classifier(self) -> nn.Linear:
        """The final linear layer, mapping ``Features.pooled`` ``(B, D)`` to logits ``(B, C)``."""
        return self.get_submodule(self.classifier_name)
