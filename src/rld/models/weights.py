"""Pretrained weights: a library's named weight sets or a local file, and a new classifier when the
data has another number of classes.

``weights`` (``model.student_weights`` / ``model.teacher_weights``) is one of

* ``None``: random initialisation;
* ``"default"`` or a weight-set name of the library: ``torchvision:<name>`` takes
  ``torchvision.models.get_model_weights(name)`` (``"default"`` = its ``DEFAULT``, or e.g.
  ``"IMAGENET1K_V2"``), downloaded through ``torch.hub`` into its cache (``$TORCH_HOME/hub/checkpoints``),
  so a machine without internet works from a pre-filled cache; ``timm:<name>`` takes timm's pretrained
  weights (``"default"``, or a pretrained tag such as ``"augreg_in21k"``) through timm / the Hugging
  Face hub cache;
* a local file: a ``.pth`` / ``.pt`` state dict, bare or under a ``model`` / ``state_dict`` entry,
  ``module.`` prefixes allowed, or a ``.safetensors`` file (``pip install safetensors``).

When the weights' classifier has another number of outputs than the data's classes, the classifier
is replaced by a new linear layer (logged once with the old and new sizes).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from rld.errors import UserError
from rld.models.features import FeatureModel

log = logging.getLogger("rld")

FILE_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin")


def is_weights_file(weights: str) -> bool:
    return weights.endswith(FILE_SUFFIXES) or "/" in weights or Path(weights).expanduser().is_file()


def replace_classifier(model: FeatureModel, num_classes: int, allowed: bool = True) -> FeatureModel:
    """A new ``nn.Linear`` classifier with ``num_classes`` outputs in place of the model's (no-op when
    it already has that many; a UserError when not ``allowed``, e.g. for a teacher)."""
    old = model.get_classifier()
    if old.out_features == num_classes:
        return model
    if not allowed:
        raise UserError(
            f"the weights of {model.model_name} predict {old.out_features} classes, the data has {num_classes}: a "
            "teacher must predict the data's classes; fine-tune it first (rld train with model.student_weights)"
        )
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(old.weight.device)
    parent_name, _, child = model.classifier_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    log.info(
        "%s: replaced the classifier (%d -> %d classes, newly initialised)",
        model.model_name or type(model).__name__,
        old.out_features,
        num_classes,
    )
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a local weights file (see the module docstring for the accepted layouts)."""
    from rld.models.checkpoint import _split_checkpoint

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; give a local .pth/.pt/.safetensors file or a weight name")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise UserError(
                f"{path}: reading .safetensors needs the package safetensors (pip install safetensors)"
            ) from err
        try:
            return load_file(str(path))
        except Exception as err:
            raise UserError(f"cannot read {path} as safetensors ({str(err).splitlines()[0][:160]})") from err
    from rld.models.checkpoint import load_failure, read_torch_file

    try:
        obj = read_torch_file(path)
    except Exception as err:
        raise UserError(f"cannot read weights file {path} ({load_failure(err)})") from err
    state_dict, _ = _split_checkpoint(obj, path)
    return dict(state_dict)


def load_weights_file(
    model: FeatureModel, path: str | Path, num_classes: int, replace_head: bool = True
) -> FeatureModel:
    """Load a local weights file into ``model``; a classifier of another size is replaced."""
    from rld.models.checkpoint import _check_fits, _normalise_keys

    state = _normalise_keys(read_state_dict(path), list(model.state_dict()))
    head = model.classifier_name
    head_keys = {f"{head}.weight", f"{head}.bias"}
    saved_head = state.get(f"{head}.weight")
    if saved_head is not None and saved_head.shape[0] != num_classes:
        replace_classifier(model, saved_head.shape[0])  # the file's classifier: load it, then replace
        _check_fits(model, state, Path(path))
        model.load_state_dict(state)
        return replace_classifier(model, num_classes, replace_head)
    if saved_head is None and head_keys & set(model.state_dict()):
        missing = {k: v for k, v in model.state_dict().items() if k in head_keys}
        state = {**state, **missing}  # a backbone-only file: the classifier keeps its initialisation
    _check_fits(model, state, Path(path))
    model.load_state_dict(state)
    return model


def _torchvision(name: str, weights: str, num_classes: int, replace_head: bool = True) -> FeatureModel:
    import torchvision

    from rld.models.external import ExternalModel, _find_classifier

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError) as err:
        raise UserError(f"torchvision:{name} has no pretrained weights in torchvision") from err
    names = [w.name for w in enum]
    if weights == "default":
        chosen = enum.DEFAULT
    elif weights in names:
        chosen = enum[weights]
    else:
        raise UserError(f"torchvision:{name} has no weights {weights!r}; choose default or one of {', '.join(names)}")
    classes = len(chosen.meta["categories"])
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(chosen.url).name
    try:
        net = torchvision.models.get_model(name, weights=chosen)
    except OSError as err:  # no network and no cached file
        raise UserError(
            f"the weights {chosen} of torchvision:{name} are not in the torch.hub cache ({cache}) and could not "
            f"be downloaded ({str(err).splitlines()[0][:120]}); copy {Path(chosen.url).name} there, or give a "
            "local weights file"
        ) from err
    model = ExternalModel(net, _find_classifier(net, classes, f"torchvision:{name}"))
    model.model_name = f"torchvision:{name}"
    return replace_classifier(model, num_classes, replace_head)


def _timm(name: str, weights: str, num_classes: int) -> FeatureModel:
    from rld.models.external import create_timm_model

    model = create_timm_model(name, num_classes)  # checks that timm is there and knows the model
    import timm

    tag = None if weights == "default" else weights
    try:
        net = timm.create_model(name if tag is None else f"{name}.{tag}", pretrained=True, num_classes=num_classes)
    except Exception as err:  # no network, no cache, an unknown tag
        raise UserError(
            f"could not load the pretrained weights {weights!r} of timm:{name} "
            f"({str(err).splitlines()[0][:160]}); fill the Hugging Face hub cache or give a local weights file"
        ) from err
    model.net = net
    return model


def create_pretrained(
    name: str, weights: str | None, num_classes: int, dataset: str = "cifar100", replace_head: bool = True
) -> FeatureModel:
    """``create_model(name, num_classes, dataset)`` with ``weights`` (see the module docstring);
    ``replace_head=False`` refuses weights whose classifier has another number of classes."""
    from rld.models.registry import create_model

    if not weights:
        return create_model(name, num_classes=num_classes, dataset=dataset)
    if is_weights_file(weights):
        model = create_model(name, num_classes=num_classes, dataset=dataset)
        return load_weights_file(model, weights, num_classes, replace_head)
    source, sep, external = name.partition(":")
    if source == "torchvision" and sep:
        return _torchvision(external, weights, num_classes, replace_head)
    if source == "timm" and sep:
        return _timm(external, weights, num_classes)
    raise UserError(
        f"weights {weights!r}: {name} is a model of rld's zoo, which has no named weight sets; give a local "
        "weights file (.pth/.pt/.safetensors)"
    )


def freeze_backbone(model: FeatureModel) -> list[str]:
    """Freeze every parameter but the classifier's (linear probing); returns the trainable names."""
    head = model.classifier_name + "."
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(head))
        if p.requires_grad:
            trainable.append(name)
    return trainable
