"""Distillation losses: pure functions (tensors in, a scalar out) on logits (B, C) and on features,
and loss modules built on the logit ones for your own training loop.

Functions: :func:`kd_loss`, :func:`dkd_loss`, :func:`rld_loss` (and the separate terms
:func:`dkd_terms`, :func:`rld_terms`, the mask :func:`mask_ge`), :func:`swap_teacher_logits` (LA),
:func:`rc_loss`, :func:`label_revision_loss`, :func:`standardize_logits`.
Modules: :class:`KDLoss`, :class:`DKDLoss`, :class:`RLDLoss`, :class:`LALoss`, :class:`RCLoss`,
:class:`LRLoss`, :class:`CTKDLoss` (with :class:`CTKDTemperature`).
Feature-distillation functions: :func:`hint_loss`, :func:`at_loss`, :func:`rkd_loss`, :func:`ofd_margin`,
:func:`ofd_loss`, :func:`hcl_loss`, :func:`crd_scores`, :func:`crd_nce_loss`, :func:`class_activation_maps`,
:func:`cat_loss`, :func:`simkd_loss` (see :mod:`rld.losses.feature` and :mod:`rld.losses.crd`).
Newer methods (:mod:`rld.losses.newer`): :func:`dist_loss`, :func:`nkd_loss`, :func:`wttm_loss`,
:func:`mlkd_loss`, :func:`crld_loss` (its terms :func:`crld_terms`, masks :func:`crld_masks`),
:func:`ab_divergence` (ABKD) and the modules :class:`DISTLoss`, :class:`NKDLoss`, :class:`WTTMLoss`,
:class:`MLKDLoss`, :class:`CRLDLoss`, :class:`ABKDLoss`.
SDD (:mod:`rld.losses.sdd`): :func:`sdd_pool`, :func:`sdd_local_logits`, :func:`sdd_weights` and
:func:`sdd_loss`, which applies any per-row logit loss to local logits. ``reduction="none"`` gives
the per-row values of :func:`kd_loss`, :func:`dkd_terms`, :func:`rld_terms`, :func:`nkd_terms` (and of
the ``*_loss`` combinations), whose batch means the default returns.

Inputs may be float16, bfloat16, float32 or float64; the work is done in float32 (float64 stays
float64) and in log space. DKD and RLD run as one kernel compiled with torch.compile (see
:func:`use_compiled`). Bad inputs raise :class:`LossInputError` (a ``ValueError``).
"""

from rld.losses._common import LossInputError, value_checks
from rld.losses._fused import use_compiled
from rld.losses.corrections import label_revision_loss, rc_loss, swap_teacher_logits
from rld.losses.crd import crd_nce_loss, crd_scores
from rld.losses.ctkd import CTKDTemperature, ctkd_lambda
from rld.losses.decoupled import dkd_loss, dkd_terms, mask_ge, rld_loss, rld_terms
from rld.losses.feature import (
    at_loss,
    attention_map,
    binarize_cams,
    cat_loss,
    class_activation_maps,
    hcl_loss,
    hint_loss,
    ofd_loss,
    ofd_margin,
    rkd_loss,
    simkd_loss,
)
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
    ABKDLoss,
    CRLDLoss,
    DISTLoss,
    MLKDLoss,
    NKDLoss,
    WTTMLoss,
    ab_divergence,
    crld_loss,
    crld_masks,
    crld_terms,
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
from rld.losses.sdd import sdd_local_logits, sdd_loss, sdd_pool, sdd_regions, sdd_weights

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
    "at_loss",
    "attention_map",
    "binarize_cams",
    "cat_loss",
    "class_activation_maps",
    "crd_nce_loss",
    "crd_scores",
    "ctkd_lambda",
    "dkd_loss",
    "dkd_terms",
    "hcl_loss",
    "hint_loss",
    "kd_loss",
    "label_revision_loss",
    "mask_ge",
    "ofd_loss",
    "ofd_margin",
    "rc_loss",
    "rkd_loss",
    "rld_loss",
    "rld_terms",
    "simkd_loss",
    "standardize_logits",
    "swap_teacher_logits",
    "use_compiled",
    "warmup_factor",
    "ABKDLoss",
    "CRLDLoss",
    "DISTLoss",
    "MLKDLoss",
    "NKDLoss",
    "WTTMLoss",
    "ab_divergence",
    "crld_loss",
    "crld_masks",
    "crld_terms",
    "dist_loss",
    "dist_terms",
    "mlkd_loss",
    "mlkd_mask_fractions",
    "mlkd_terms",
    "nkd_loss",
    "nkd_terms",
    "wttm_loss",
    "wttm_weights",
    "sdd_local_logits",
    "sdd_loss",
    "sdd_pool",
    "sdd_regions",
    "sdd_weights",
]
