"""Shared pieces of the logit losses: input checks, compute dtype, and log-space helpers.

Every loss works on log-probabilities (``log_softmax`` / ``logsumexp``) and never forms
``log(1 - p)`` from ``p``. Classes are *removed* from a softmax by pushing their logits
``_GAP`` nats below the smallest logit of the row: ``exp(-_GAP)`` underflows to exactly 0 in
float32 and float64, so a removed class has probability exactly 0 and leaves the normaliser
exactly unchanged, while everything stays finite (no ``-inf``, hence no NaN gradients), and
a row whose classes are all removed becomes uniform.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor

from rld.errors import UserError

_GAP = 1000.0


class LossInputError(UserError):
    """A loss was called with inputs that do not fit its definition."""


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (float16/bfloat16 are computed in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


_VALUE_CHECKS: ContextVar[bool] = ContextVar("rld_value_checks", default=True)


@contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Switch the losses' checks of input *values* (class indices in range) on or off in a block.

    Value checks read tensors on the host, so they run only for CPU tensors (on CUDA an index out
    of range fails in the kernels' device-side asserts); a training step can turn them off to run
    without any host synchronisation (the tests prove a step has none this way)."""
    token = _VALUE_CHECKS.set(bool(enabled))
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def _values_checkable(t: Tensor) -> bool:
    # Value checks read the tensor on the host: CPU tensors only, never while tracing. is_compiling
    # comes first: the dynamo of torch 2.11 cannot trace ContextVar.get (fullgraph fails).
    if torch.compiler.is_compiling() or not _VALUE_CHECKS.get():
        return False
    return t.device.type == "cpu"


def one_hot(target: Tensor, num_classes: int, dtype: torch.dtype = torch.bool) -> Tensor:
    """(B, C) one-hot of ``target`` (B,) in ``dtype``; unlike ``F.one_hot`` it never reads the
    indices on the host (so a training step has no host synchronisation)."""
    out = torch.zeros(target.shape[0], num_classes, dtype=dtype, device=target.device)
    return out.scatter_(1, target.long()[:, None], True if dtype == torch.bool else 1)


def check_logits(name: str, logits: Tensor) -> None:
    if not isinstance(logits, Tensor):
        raise LossInputError(f"{name} must be a torch.Tensor of shape (B, C), got {type(logits).__name__}")
    if logits.dim() != 2:
        raise LossInputError(f"{name} must have shape (B, C), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise LossInputError(f"{name} must be a floating-point tensor, got {logits.dtype}")
    if logits.shape[1] < 2:
        raise LossInputError(f"{name} needs at least 2 classes, got shape {tuple(logits.shape)}")


def check_pair(student_logits: Tensor, teacher_logits: Tensor) -> None:
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise LossInputError(
            "student_logits and teacher_logits must have the same shape (B, C), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )


def check_target(target: Tensor, logits: Tensor) -> None:
    if not isinstance(target, Tensor):
        raise LossInputError(f"target must be a torch.Tensor of class indices, got {type(target).__name__}")
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise LossInputError(f"target must have shape (B,) = ({logits.shape[0]},), got {tuple(target.shape)}")
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise LossInputError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.numel() and _values_checkable(target):
        lo, hi = map(int, torch.aminmax(target))
        if lo < 0 or hi >= logits.shape[1]:
            raise LossInputError(
                f"target holds class indices in [{lo}, {hi}] but the logits have {logits.shape[1]} "
                f"classes (valid: 0..{logits.shape[1] - 1})"
            )


def is_number(value) -> bool:
    """A real number that is not a bool (float and int first: the ABC check is slow per call)."""
    return type(value) in (float, int) or (not isinstance(value, bool) and isinstance(value, Real))


def check_positive(name: str, value: float | Tensor) -> None:
    if isinstance(value, Tensor):
        return  # a learned temperature (CTKD) is positive by construction
    if not is_number(value):
        raise LossInputError(f"{name} must be a number, got {value!r}")
    if not value > 0:
        raise LossInputError(f"{name} must be > 0, got {value}")
    if value == math.inf:
        raise LossInputError(f"{name} must be a finite number > 0, got {value}")


def check_weight(name: str, value: float) -> None:
    if not is_number(value) or value != value or value < 0:
        raise LossInputError(f"{name} must be a number >= 0, got {value!r}")
    if value == math.inf:
        raise LossInputError(f"{name} must be a finite number >= 0, got {value!r}")


def prepare(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Check a (student, teacher[, target]) triple and cast the logits to the compute dtype."""
    check_pair(student_logits, teacher_logits)
    if target is not None:
        check_target(target, student_logits)
        target = target.long()
    dtype = compute_dtype(student_logits, teacher_logits)
    return student_logits.to(dtype), teacher_logits.to(dtype), target


def remove_classes(logits: Tensor, removed: Tensor) -> Tensor:
    """Logits with the ``removed`` classes (bool, (B, C)) pushed out of the softmax (see module doc)."""
    floor = logits.detach().amin(dim=1, keepdim=True) - _GAP
    return torch.where(removed, floor, logits)


REDUCTIONS = ("mean", "none")


def check_reduction(reduction: str) -> None:
    """``"mean"``: a loss averaged over the batch (a scalar); ``"none"``: one value per sample (B,)."""
    if reduction not in REDUCTIONS:
        raise LossInputError(f"reduction must be 'mean' (a batch mean) or 'none' (per row), got {reduction!r}")


def reduce_rows(rows: Tensor, scale: float | Tensor, reduction: str) -> Tensor:
    """``scale``·mean of ``rows`` (B,) (``"mean"``, the mean taken first), or ``scale``·``rows`` (``"none"``)."""
    return rows.mean() * scale if reduction == "mean" else rows * scale


def kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p ‖ q) per row from log-probabilities: (B, K) → (B,)."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)


def binary_log_probs(log_p: Tensor, index: Tensor) -> Tensor:
    """[log p_k, log(1 − p_k)] per row for class ``index`` (B,), from log-probabilities (B, C) → (B, 2)."""
    one_hot_mask = one_hot(index, log_p.shape[1])
    log_pk = log_p.gather(1, index[:, None])
    log_rest = torch.logsumexp(remove_classes(log_p, one_hot_mask), dim=1, keepdim=True)
    return torch.cat([log_pk, log_rest], dim=1)
