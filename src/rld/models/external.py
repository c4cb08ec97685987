"""Bring-your-own models: any torchvision or timm classifier behind the rld interface.

``create_model("torchvision:<name>")`` / ``create_model("timm:<name>")`` wrap the library's model
in :class:`ExternalModel`. Every one gives the logits and the pooled feature, so all fit logit-based
methods (KD, DKD, RLD, ...) and methods that read the pooled feature (RKD).

Stage features: a ``timm:`` model that offers ``forward_intermediates`` (timm's API for the
feature maps of one pass: ResNets, ConvNeXts, EfficientNets, ViTs, ...) fills ``feats`` with the
maps it returns, in its ``feature_info`` order (for ResNets the stem, then each stage), and
``preact_feats`` with the same list (timm exposes no pre-activation maps); FitNet and AT then work
with it. ``torchvision:`` models and the other ``timm:`` models keep ``feats`` and ``preact_feats``
empty: methods that read stage features refuse them when they are built.
"""

from __future__ import annotations

import difflib

from torch import Tensor, nn

from rld.errors import UserError
from rld.models.features import FeatureModel, Features

# Keyword arguments that make a torchvision builder return plain logits from a fresh model.
_TORCHVISION_EXTRA_KWARGS: dict[str, dict[str, bool]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


class ExternalModel(FeatureModel):
    """Wraps a classifier ``net`` (under the state-dict prefix ``net.``).

    ``forward_features`` reads the pooled feature as the input of the final linear layer with a
    forward pre-hook registered for the duration of the call. With ``stage_features`` (a timm
    model with ``forward_intermediates``) it runs ``net.forward_intermediates(x)`` and
    ``net.forward_head`` on its final output, which is timm's ``forward`` split in two (the same
    operations, so the logits equal ``net(x)``), and lists the intermediate maps in ``feats`` and
    ``preact_feats``; otherwise both lists are empty. ``forward`` is ``net``'s own forward.
    """

    def __init__(self, net: nn.Module, classifier_name: str, stage_features: bool = False) -> None:
        super().__init__()
        self.net = net
        self.classifier_name = f"net.{classifier_name}"
        self.stage_features = stage_features

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, 3, H, W)`` -> logits ``(B, num_classes)``."""
        return self.net(x)

    def forward_features(self, x: Tensor) -> Features:
        """Logits, ``pooled`` (the classifier's input, ``(B, D)``) and, with ``stage_features``, the
        maps of ``forward_intermediates`` as ``feats`` (``preact_feats`` is the same list)."""
        captured: list[Tensor] = []
        handle = self.get_classifier().register_forward_pre_hook(lambda _, args: captured.append(args[0]))
        feats: list[Tensor] = []
        try:
            if self.stage_features:
                final, intermediates = self.net.forward_intermediates(x)
                feats = list(intermediates)
                logits = self.net.forward_head(final)
            else:
                logits = self.net(x)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"{self.model_name}: the classifier ran {len(captured)} times in one forward pass")
        return Features(logits=logits, feats=feats, preact_feats=feats, pooled=captured[0])


def _find_classifier(net: nn.Module, num_classes: int, model_name: str) -> str:
    """Dotted name of the last ``nn.Linear`` with ``num_classes`` outputs."""
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not names:
        raise UserError(
            f"{model_name} has no linear classifier with {num_classes} outputs, which rld needs for the "
            "pooled feature and get_classifier(); choose a model that ends in an nn.Linear"
        )
    return names[-1]


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def create_torchvision_model(name: str, num_classes: int) -> ExternalModel:
    """A randomly initialised ``torchvision.models`` classifier ``name`` with ``num_classes`` outputs."""
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise UserError(
            f"unknown torchvision classification model {name!r}{_suggest(name, available)} "
            "(see torchvision.models.list_models(module=torchvision.models))"
        )
    kwargs = _TORCHVISION_EXTRA_KWARGS.get(name, {})
    net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    return ExternalModel(net, _find_classifier(net, num_classes, f"torchvision:{name}"))


def create_timm_model(name: str, num_classes: int) -> ExternalModel:
    """A randomly initialised timm model ``name`` with ``num_classes`` outputs (needs ``pip install timm``)."""
    try:
        import timm
    except ImportError as err:
        raise UserError(
            f"model 'timm:{name}' needs the optional package timm: pip install timm (or pip install 'rld[timm]')"
        ) from err
    if not timm.is_model(name):
        raise UserError(f"unknown timm model {name!r}{_suggest(name, timm.list_models())} (see timm.list_models())")
    net = timm.create_model(name, pretrained=False, num_classes=num_classes)
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    head_names = [n for n, m in net.named_modules() if m is head and isinstance(m, nn.Linear)]
    classifier = head_names[0] if head_names else _find_classifier(net, num_classes, f"timm:{name}")
    stages = callable(getattr(net, "forward_intermediates", None)) and callable(getattr(net, "forward_head", None))
    return ExternalModel(net, classifier, stage_features=stages)
