"""Model zoo: the CIFAR-100 and ImageNet architectures of the distillation literature.

Usage::

    model = create_model("resnet32x4", num_classes=100)  # CIFAR-100, 32x32 inputs
    load_checkpoint(model, "resnet32x4_vanilla/ckpt_epoch_240.pth")
    out = model.forward_features(images)  # out.logits, out.feats, out.preact_feats, out.pooled
    classifier = model.get_classifier()

``create_model("torchvision:<name>")`` and ``create_model("timm:<name>")`` wrap any classifier of
those libraries (logits and pooled feature only). Importing this package registers the
built-in architectures (``rld.models.cifar``, ``rld.models.imagenet``). ``resolve_checkpoint`` turns a
URL, a member of a ``.tar`` at a URL or a named teacher (``cifar100:resnet32x4``) into a local file,
downloaded once (:mod:`rld.models.sources`).
"""

from rld.models import cifar, imagenet
from rld.models.checkpoint import load_checkpoint
from rld.models.external import ExternalModel
from rld.models.features import FeatureModel, Features
from rld.models.registry import DATASETS, create_model, list_models, register_model
from rld.models.sources import resolve_checkpoint

__all__ = [
    "DATASETS",
    "ExternalModel",
    "FeatureModel",
    "Features",
    "cifar",
    "create_model",
    "imagenet",
    "list_models",
    "load_checkpoint",
    "register_model",
    "resolve_checkpoint",
]
