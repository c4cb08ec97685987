"""Logit-distillation losses: pure functions on logits (B, C) returning a scalar batch mean, and
loss modules built on them for your own training loop.

Functions: :func:`kd_loss`, :func:`dkd_loss`, :func:`rld_loss` (and the separate terms
:func:`dkd_terms`, :func:`rld_terms`, the mask :func:`mask_ge`), :func:`swap_teacher_logits` (LA),
:func:`rc_loss`, :func:`label_revision_loss`, :func:`standardize_logits`.
Modules: :class:`KDLoss`, :class:`DKDLoss`, :class:`RLDLoss`, :class:`LALoss`, :class:`RCLoss`,
:class:`LRLoss`, :class:`CTKDLoss` (with :class:`CTKDTemperature`).
Newer methods (:mod:`rld.losses.newer`): :func:`dist_loss`, :func:`nkd_loss`, :func:`wttm_loss`,
:func:`mlkd_loss` and the modules :class:`DISTLoss`, :class:`NKDLoss`, :class:`WTTMLoss`, :class:`MLKDLoss`.

Inputs may be float16, bfloat16, float32 or float64; the work is done in float32 (float64 stays
float64) and in log space. DKD and RLD run as one kernel compiled with torch.compile (see
:func:`use_compiled`). Bad inputs raise :class:`LossInputError` (a ``ValueError``).
"""

from rld.losses._common import LossInputError, value_checks
from rld.losses._fused import use_compiled
from rld.losses.corrections import label_revision_loss, rc_loss, swap_teacher_logits
from rld.losses.ctkd import CTKDTemperature, ctkd_lambda
from rld.losses.decoupled import dkd_loss, dkd_terms, mask_ge, rld_loss, rld_terms
from rld.losses.kd import kd_loss, standardize_logits
from rld.losses.modules import (
    CTKDLoss,
    DistillationLoss,
    DKDLoss,
    KDLoss,
    LALoss,
    LRLoss,
    RCLoss,
    RLDLoss,
    warmup_factor,
)
from rld.losses.newer import (
    DISTLoss,
    MLKDLoss,
    NKDLoss,
    WTTMLoss,
    dist_loss,
    dist_terms,
    mlkd_loss,
    mlkd_mask_fractions,
    mlkd_terms,
    nkd_loss,
    nkd_terms,
    wttm_loss,
    wttm_weights,
)

__all__ = [
    "value_checks",
    "CTKDLoss",
    "CTKDTemperature",
    "DKDLoss",
    "DistillationLoss",
    "KDLoss",
    "LALoss",
    "LRLoss",
    "LossInputError",
    "RCLoss",
    "RLDLoss",
    "ctkd_lambda",
    "dkd_loss",
    "dkd_terms",
    "kd_loss",
    "label_revision_loss",
    "mask_ge",
    "rc_loss",
    "rld_loss",
    "rld_terms",
    "standardize_logits",
    "swap_teacher_logits",
    "use_compiled",
    "warmup_factor",
    "DISTLoss",
    "MLKDLoss",
    "NKDLoss",
    "WTTMLoss",
    "dist_loss",
    "dist_terms",
    "mlkd_loss",
    "mlkd_mask_fractions",
    "mlkd_terms",
    "nkd_loss",
    "nkd_terms",
    "wttm_loss",
    "wttm_weights",
]
