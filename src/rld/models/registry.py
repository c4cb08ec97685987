"""Model registry: ``register_model`` records builders, ``create_model`` builds by name.

Built-in names are those of the standard CIFAR-100 distillation zoo (``dataset="cifar100"``,
32x32 inputs) and of the ImageNet models of the literature (``dataset="imagenet"``, 224x224).
``"torchvision:<name>"`` and ``"timm:<name>"`` wrap any classifier of those libraries.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TypeVar

from rld.errors import UserError
from rld.models.features import FeatureModel

DATASETS: tuple[str, ...] = ("cifar100", "imagenet")
EXTERNAL_SOURCES: tuple[str, ...] = ("torchvision", "timm")

ModelBuilder = Callable[[int], FeatureModel]
"""``builder(num_classes) -> model``."""

_Builder = TypeVar("_Builder", bound=ModelBuilder)
_REGISTRY: dict[str, dict[str, ModelBuilder]] = {dataset: {} for dataset in DATASETS}


def _check_dataset(dataset: object) -> str:
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r} for models; use one of: {', '.join(DATASETS)}")
    return dataset  # type: ignore[return-value]


def register_model(dataset: str, name: str | None = None) -> Callable[[_Builder], _Builder]:
    """Decorator recording ``builder(num_classes) -> FeatureModel`` under ``name``.

    ``name`` defaults to the function's name::

        @register_model("cifar100")
        def resnet8(num_classes: int) -> FeatureModel: ...
    """
    _check_dataset(dataset)

    def decorator(builder: _Builder) -> _Builder:
        key = name or builder.__name__
        if ":" in key:
            raise UserError(f"model name {key!r} must not contain ':' (reserved for 'torchvision:'/'timm:')")
        if key in _REGISTRY[dataset]:
            raise UserError(
                f"model {key!r} is already registered for dataset {dataset!r}; register it under another name"
            )
        _REGISTRY[dataset][key] = builder
        return builder

    return decorator


def list_models(dataset: str | None = None) -> list[str]:
    """Sorted registered names for ``dataset``, or of all datasets (without duplicates) if ``None``.

    ``torchvision:`` / ``timm:`` names are not listed.
    """
    if dataset is None:
        return sorted(set().union(*_REGISTRY.values()))
    return sorted(_REGISTRY[_check_dataset(dataset)])


def _unknown_model_error(name: str, dataset: str) -> UserError:
    valid = sorted(_REGISTRY[dataset])
    message = f"unknown model {name!r} for dataset {dataset!r}"
    elsewhere = [d for d in DATASETS if d != dataset and name in _REGISTRY[d]]
    by_lower = {v.lower(): v for v in valid}
    close = [by_lower[c] for c in difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)]
    if elsewhere:
        message += f"; it is registered for dataset {elsewhere[0]!r}: pass dataset={elsewhere[0]!r}"
    elif close:
        message += f"; did you mean {' or '.join(repr(c) for c in close)}?"
    return UserError(f"{message} (valid names: {', '.join(valid)}; or 'torchvision:<name>' / 'timm:<name>')")


def create_model(name: str, num_classes: int = 100, dataset: str = "cifar100") -> FeatureModel:
    """Build a freshly initialised model.

    Args:
        name: a registered name (see :func:`list_models`), ``"torchvision:<name>"`` or
            ``"timm:<name>"`` (the latter needs ``pip install timm``).
        num_classes: the number of outputs of the classifier.
        dataset: ``"cifar100"`` (architectures for 32x32 inputs) or ``"imagenet"`` (224x224).
            Ignored for ``torchvision:`` / ``timm:`` models, whose architecture is the library's.

    Returns:
        A :class:`~rld.models.features.FeatureModel`: ``model(x)`` gives logits
        ``(B, num_classes)``, ``model.forward_features(x)`` the features.
    """
    _check_dataset(dataset)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(name, str) or not name:
        raise UserError(f"model name must be a non-empty string, got {name!r}")

    source, sep, external_name = name.partition(":")
    if sep:
        from rld.models import external

        if source == "torchvision":
            model: FeatureModel = external.create_torchvision_model(external_name, num_classes)
        elif source == "timm":
            model = external.create_timm_model(external_name, num_classes)
        else:
            raise UserError(f"unknown model source {source!r} in {name!r}; use 'torchvision:<name>' or 'timm:<name>'")
    else:
        builder = _REGISTRY[dataset].get(name)
        if builder is None:
            raise _unknown_model_error(name, dataset)
        model = builder(num_classes)
    model.model_name = name
    return model
