"""What the feature-distillation methods share: their
cross-entropy term and the checks on the feature maps of the models they are built from."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from rld.losses._common import check_weight, compute_dtype
from rld.methods.base import probe_features
from rld.models.features import Features


def ce_term(logits: Tensor, target: Tensor, weight: float) -> Tensor:
    """``weight`` · CE(logits, target), computed in float32 (float64 stays float64): ``logits`` (B, C)."""
    return weight * F.cross_entropy(logits.to(compute_dtype(logits)), target.long())


def check_weights(params: dict, *names: str) -> None:
    """ValueError unless each named parameter is a number >= 0."""
    for name in names:
        check_weight(name, params[name])


def check_int(params: dict, name: str, low: int) -> None:
    """ValueError unless the named parameter is an integer >= ``low`` (not a bool)."""
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def check_flags(params: dict, *names: str) -> None:
    """ValueError unless each named parameter is true or false."""
    for name in names:
        if not isinstance(params[name], bool):
            raise ValueError(f"{name} must be true or false, got {params[name]!r}")


def model_label(model: nn.Module) -> str:
    """The name a model was created under (``resnet8``, ``torchvision:resnet18``), for messages."""
    return getattr(model, "model_name", "") or type(model).__name__


def no_stage_features(method: str, role: str, model: nn.Module, kind: str = "feats") -> ValueError:
    """The error for a ``role`` model (student / teacher) whose ``Features.<kind>`` is empty."""
    return ValueError(
        f"{method} reads the {role}'s stage features (Features.{kind}), and the {role} "
        f"{model_label(model)!r} has none: torchvision: models, and timm: models without "
        "forward_intermediates, give only logits and the pooled feature. Use a model of the zoo "
        "(resnet8, wrn_16_2, MobileNetV2, ...) or a timm: model with forward_intermediates"
    )


def stage_shapes(
    model: nn.Module, input_shape: tuple[int, ...], kind: str, method: str, role: str
) -> list[tuple[int, ...]]:
    """The ``(C, H, W)`` of each map in ``Features.<kind>`` (``feats`` or ``preact_feats``) of
    ``model`` for inputs of ``input_shape``; ValueError naming the model when it has none."""
    feats = getattr(probe_features(model, input_shape), kind)
    if not feats:
        raise no_stage_features(method, role, model, kind)
    return [tuple(f.shape[1:]) for f in feats]


def final_map(method: str, features: Features, model: nn.Module, which: str) -> int:
    """The number of classes of ``model``'s classifier, checked to be an ``nn.Linear`` that reads the
    model's final feature map (``Features.pre_pool``); ValueError naming the model otherwise."""
    name = model_label(model)
    if not features.feats or features.pre_pool is None:
        raise ValueError(
            f"{method} reads the {which}'s final feature map, which model {name!r} does not provide "
            "(torchvision: and timm: models give logits and the pooled feature only); use a model of the rld zoo"
        )
    classifier = model.get_classifier()
    channels = features.pre_pool.shape[1]
    if not isinstance(classifier, nn.Linear) or classifier.in_features != channels:
        raise ValueError(f"the {which} {name!r}: its classifier does not read its {channels}-channel final map")
    return classifier.out_features
