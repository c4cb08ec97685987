"""Loading weights into a model, strictly: every key present, no extra key, every shape equal.

Accepted files (read with ``torch.load(weights_only=True)``): a plain state dict; a dict holding
it under ``"model"`` (the CIFAR-100 teacher checkpoints, ``<name>_vanilla/ckpt_epoch_240.pth``,
and rld's own), ``"state_dict"`` or ``"student"``. Besides tensors, numbers and dicts, the other
entries may hold the plain data training scripts save beside the weights: NumPy scalars (an
accuracy) and an ``argparse.Namespace`` (the options). Prefixes added by DataParallel /
DistributedDataParallel (``module.``) and ``torch.compile`` (``_orig_mod.``) are removed.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rld.errors import UserError, first_line

# Entries of a checkpoint dict that may hold the state dict, in order of preference.
STATE_DICT_ENTRIES: tuple[str, ...] = ("model", "state_dict", "student")
_SHOWN_KEYS = 3


def _plain_data_globals() -> list:
    """Classes of plain data that training scripts pickle beside the weights, allowed when loading
    with ``weights_only``: ``argparse.Namespace`` and NumPy scalars (under NumPy 1's name too)."""
    import argparse

    import numpy as np

    scalar = np.float64(0).__reduce__()[0]
    dtypes = {type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32")}
    return [argparse.Namespace, np.dtype, scalar, (scalar, "numpy.core.multiarray.scalar"), *dtypes]


def read_torch_file(path: str | os.PathLike[str], *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, its warnings silenced (a damaged pickle can
    make the unpickler warn before it fails); a failure raises as ``torch.load`` does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def load_failure(err: BaseException) -> str:
    """Why ``torch.load`` could not read a file, in a few words (its weights-only error is a paragraph)."""
    text = str(err).strip()
    if "WeightsUnpickler error:" in text:
        lines = text.split("WeightsUnpickler error:", 1)[1].splitlines()
        detail = next((line.strip() for line in lines if line.strip()), "")
        return f"its pickle is damaged or holds more than tensors, numbers and dicts: {detail}"[:200]
    return first_line(err)


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def _split_checkpoint(obj: object, path: Path) -> tuple[Mapping[str, Tensor], dict[str, Any]]:
    """``(state_dict, other entries)`` of a loaded checkpoint."""
    if _is_state_dict(obj):
        return obj, {}  # type: ignore[return-value]
    if isinstance(obj, Mapping):
        for entry in STATE_DICT_ENTRIES:
            if _is_state_dict(obj.get(entry)):
                return obj[entry], {k: v for k, v in obj.items() if k != entry}
        found = f"a dict with entries {sorted(map(str, obj))[:8]}"
    else:
        found = f"a {type(obj).__name__}"
    raise UserError(
        f"{path} holds {found}, not model weights: expected a state dict or a dict with a "
        f"{' / '.join(repr(e) for e in STATE_DICT_ENTRIES)} entry holding one"
    )


def _unwrap(model: nn.Module) -> nn.Module:
    """The module under DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _normalise_keys(state_dict: Mapping[str, Tensor], model_keys: list[str]) -> dict[str, Tensor]:
    """Remove wrapper prefixes; add the prefix of a single-child wrapper (e.g. ``net.``) if missing."""
    sd = {".".join(p for p in k.split(".") if p != "_orig_mod"): v for k, v in state_dict.items()}
    model_has = set(model_keys)
    while sd and all(k.startswith("module.") for k in sd) and not all(k in model_has for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    prefixes = {k.split(".", 1)[0] for k in model_keys}
    if len(prefixes) == 1 and all("." in k for k in model_keys):
        prefix = f"{prefixes.pop()}."
        if not any(k.startswith(prefix) for k in sd):
            sd = {prefix + k: v for k, v in sd.items()}
    return sd


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (", ..." if len(keys) > _SHOWN_KEYS else "")


def _saved_architecture(metadata: Mapping[str, Any]) -> str | None:
    """The architecture a checkpoint says it holds: an rld run checkpoint records its configuration."""
    config = metadata.get("config")
    if isinstance(config, Mapping) and isinstance(config.get("model"), Mapping):
        name = config["model"].get("student")
        return str(name) if name else None
    return None


def _fit_problems(model: nn.Module, state_dict: Mapping[str, Tensor]) -> list[str]:
    """How ``state_dict`` does not fit ``model``: missing and unexpected keys, shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        f"{k} {list(state_dict[k].shape)} in the file vs {list(v.shape)} in the model"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} shape mismatches ({_few(mis_shaped)})")
    return problems


def _check_fits(
    model: nn.Module, state_dict: Mapping[str, Tensor], path: Path, metadata: Mapping[str, Any] | None = None
) -> None:
    problems = _fit_problems(model, state_dict)
    if problems:
        name = getattr(model, "model_name", "") or type(model).__name__
        holds = _saved_architecture(metadata or {})
        if holds and holds != name:
            raise UserError(
                f"checkpoint {path} holds a {holds!r} (its run's model.student), not a {name!r}; "
                f"use a checkpoint of {name!r}, or set the model to {holds!r}"
            )
        raise UserError(
            f"checkpoint {path} does not fit model {name!r}: {'; '.join(problems)}; "
            f"use a checkpoint of {name!r} with the same num_classes, or create the model it was saved from"
        )


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the weights in ``path`` into ``model`` (in place), all or nothing.

    Args:
        model: the model (possibly wrapped by DataParallel / DDP / ``torch.compile``).
        path: a file written by ``torch.save`` (see the module docstring for accepted layouts).

    Returns:
        The checkpoint's other entries, e.g. ``{"epoch": 240, "accuracy": ...}``; ``{}`` for a
        plain state dict.

    Raises:
        UserError: the file is missing or unreadable, holds no state dict, or its keys / shapes
            do not match the model (the message names the model, the file and the first
            offending keys); the model is left unchanged.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint file not found: {path}; check the path")
    allow = getattr(torch.serialization, "safe_globals", None)  # (torch >= 2.5)
    try:
        with allow(_plain_data_globals()) if allow else contextlib.nullcontext():
            obj = read_torch_file(path)
    except Exception as err:  # any failure to read the file is a problem with the file
        reason = load_failure(err)
        raise UserError(
            f"cannot read checkpoint {path} ({reason}); it must be a complete torch.save file "
            "of tensors, numbers and dicts (weights_only loading)"
        ) from err
    state_dict, metadata = _split_checkpoint(obj, path)
    target = _unwrap(model)
    state_dict = _normalise_keys(state_dict, list(target.state_dict()))
    _check_fits(target, state_dict, path, metadata)
    target.load_state_dict(state_dict, strict=True)
    return metadata


def load_state(module: nn.Module, state_dict: Any, path: str | os.PathLike[str], what: str = "weights") -> None:
    """Load ``state_dict`` (the ``what`` of the checkpoint ``path``, saved from a module like
    ``module``) into ``module``, all or nothing: UserError naming the file when it does not fit (keys,
    shapes, kinds of values: a damaged or edited checkpoint)."""
    if not _is_state_dict(state_dict) and not (isinstance(state_dict, Mapping) and not state_dict):
        raise UserError(f"checkpoint {path} holds no state dict of {what}: it is damaged; point to another checkpoint")
    problems = _fit_problems(module, state_dict)
    try:
        if not problems:
            module.load_state_dict(state_dict, strict=True)
    except (RuntimeError, TypeError, ValueError, KeyError) as err:
        problems = [first_line(err)]
    if problems:
        name = getattr(module, "model_name", "") or type(module).__name__
        raise UserError(
            f"checkpoint {path}: its {what} do not fit {name} ({'; '.join(problems)}): the file is damaged or "
            "edited; point to another checkpoint"
        )
