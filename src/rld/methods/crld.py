"""CRLD, cross-view consistency logit distillation (Zhang et al., ACM MM 2024):
L = ce_weight·(CE(weak) + CE(strong)) + within_weight·within + cross_weight·cross.

Every image is seen in two views, as for MLKD (the spec declares ``views=("weak", "strong")``, so
the engine supplies both): the protocol's *weak* view (random crop and flip) and a *strong* one, an
independent crop and flip followed by RandAugment(2, 10) and Cutout (:mod:`rld.data.strong`; CRLD's
``mdistiller/dataset/cifar100.py`` ``get_cifar100_train_transform_strong`` and ``imagenet.py``
``get_imagenet_train_transform_strong`` are MLKD's). The student and the teacher run on both, each
view as its own batch (``CRLD.forward_train`` of ``mdistiller/distillers/CRLD.py``: two student
passes, two teacher passes); the student predicts, and its training accuracy is counted, on the
weak view (``forward_train`` returns its logits).

The terms (:func:`rld.losses.crld_terms`): per-sample KD at one temperature T, within each view
(weak student ← weak teacher, strong student ← strong teacher) and across them (strong student ←
weak teacher, weak student ← strong teacher). As published, the weak-view teacher's confidence
(its largest probability at temperature 1, ≥ τ_w) gates both within-view terms and the strong-view
teacher's (≥ τ_s) both cross-view terms; the masked sums are divided by the batch size.

Defaults: T = 4, τ_w = 0.9, τ_s = 0.2, within-view weight 2.0, cross-view weight 0.5, CE weight 1.0
(``mdistiller/engine/cfg.py``: ``CFG.CRLD.TEMPERATURE``, ``TAU_W``, ``TAU_S``, ``WV_WEIGHT``,
``CV_WEIGHT``, ``CE_WEIGHT``, which no ``configs/cifar100/crld/*.yaml`` changes). ImageNet: T = 1,
CE weight 2.0 (``configs/imagenet/{r34_r18,r50_mv1}/crld.yaml``). No warm-up of any kind. The
training protocols are in the presets (``rld/configs/{cifar100,imagenet}/crld.yaml``).

Sources: the official repository Weijia-Zhang/CRLD, read through its copy scx-822/CRLD-main
(@ c9d6657: the same README, ``CRLD.py``, ``tools/train_crld.py`` and configs), cross-checked
against haiduo/DeepKD (@ afb5964: ``mdistiller/engine/cfg.py`` has the same CRLD defaults,
``mdistiller/distillers/CRLD.py`` the same loss lines).

Logit standardization is not defined for CRLD by the published code of that paper (its
``tools/train.py`` applies it to KD, DKD and MLKD only): refused. The teacher-logit cache cannot
hold the strong views (a fresh random image every step): refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rld.losses import CRLDLoss
from rld.losses.newer import CRLD_TAU_S, CRLD_TAU_W
from rld.methods.base import Method, MethodConfig, MethodContext, MethodSpec, TwoViewLogitMethod


@dataclass
class CRLDConfig(MethodConfig):
    name: str = "crld"
    temperature: float = 4.0  # TEMPERATURE, the one temperature of its four KD terms
    tau_w: float = field(
        default=CRLD_TAU_W,
        metadata={"help": "threshold on the teacher's weak-view confidence (>=), gating both within-view terms"},
    )
    tau_s: float = field(
        default=CRLD_TAU_S,
        metadata={"help": "threshold on the teacher's strong-view confidence (>=), gating both cross-view terms"},
    )
    within_weight: float = field(
        default=2.0, metadata={"help": "weight of the within-view KD terms (WV_WEIGHT of its published code)"}
    )
    cross_weight: float = field(
        default=0.5, metadata={"help": "weight of the cross-view KD terms (CV_WEIGHT of its published code)"}
    )
    ce_weight: float = 1.0  # weight of CE(weak) + CE(strong)


def _build(params: dict[str, Any], ctx: MethodContext | None = None) -> Method:
    return TwoViewLogitMethod(SPEC, CRLDLoss(**params))


def _check(params: dict[str, Any]) -> None:
    CRLDLoss(**params)


SPEC = MethodSpec(
    "crld",
    CRLDConfig,
    _build,
    _check,
    summary="CE on both views + 2·within-view KD (teacher weak-view confidence >= 0.9) + 0.5·cross-view KD "
    "(strong-view confidence >= 0.2), T = 4, weak and strong (RandAugment) views (Zhang et al. 2024)",
    teacher_needs=("logits",),
    views=("weak", "strong"),
)
