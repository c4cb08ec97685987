"""MLKD, multi-level logit distillation (Jin, Wang & Lin, CVPR 2023), with its own augmentation:
L = ce_weight·(CE(weak) + CE(strong)) + kd_weight·(kd_weak + kd_strong + cc + bc).

Every image is seen in two views (the method's spec declares ``views=("weak", "strong")``, so the
engine supplies both): the *weak* view of the protocol (random crop and flip) and a *strong* one, an
independent crop and flip followed by RandAugment(2, 10) and Cutout
(:mod:`rld.data.strong`; Jin-Ying/Multi-Level-Logit-Distillation ``mdistiller/dataset/cifar100.py``
``get_cifar100_train_transform_strong``, ``imagenet.py`` ``get_imagenet_train_transform_strong``).
The student and the teacher run on both, each view as its own batch (``KD_ours.forward_train`` of
``mdistiller/distillers/KD_ours.py``: two student passes, two teacher passes); the student predicts,
and its training accuracy is counted, on the weak view (``forward_train`` returns its logits).

The terms (:func:`rld.losses.mlkd_terms`): KD at the temperatures T, 3, 5, 2 and 6 on the weak view
(masked to the samples the teacher is least sure of), on the strong view at T, 3, 5 plus the weak
view at 2 and 6; class-level and batch-level alignment of the softmax Gram matrices on the weak view
at the five temperatures, masked by class and by sample confidence (the 50th percentile of the
teacher's weak-view confidences, ``np.percentile(..., 50)``).

Defaults (CIFAR-100): T = 4, CE weight 0.1, KD weight 0.9 (``mdistiller/engine/cfg.py``:
``CFG.KD.TEMPERATURE = 4``, ``CFG.KD.LOSS.CE_WEIGHT = 0.1``, ``CFG.KD.LOSS.KD_WEIGHT = 0.9``, which
no ``configs/cifar100/ours/*.yaml`` changes); percentile 50 (hard-coded in ``KD_ours.py``).
ImageNet: T = 1, CE 0.5, KD 0.5 (``configs/imagenet/r34_r18/kd_ours.yaml``,
``configs/imagenet/r50_mv2/kd_ours.yaml``). The training protocols (epochs, learning rates per pair)
are in the presets (``rld/configs/{cifar100,imagenet}/mlkd.yaml``).

Logit standardization (sunshangquan/logit-standardization-KD, ``mdistiller/distillers/MLKD.py`` and
``tools/train.py``): the KD terms read z-scored logits (the Gram terms and the masks do not), and
``--logit-stand`` sets ``KD.LOSS.KD_WEIGHT`` to w and ``KD.TEMPERATURE`` to b, the CE weight unchanged.

The teacher-logit cache cannot hold the strong views (a fresh random image every step): refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rld.losses import MLKDLoss
from rld.losses.newer import MLKD_PERCENTILE
from rld.methods.base import LSRule, Method, MethodConfig, MethodContext, MethodSpec, TwoViewLogitMethod


@dataclass
class MLKDConfig(MethodConfig):
    name: str = "mlkd"
    temperature: float = 4.0  # the base temperature T (the others are fixed: 3, 5, 2, 6)
    ce_weight: float = 0.1  # weight of CE(weak) + CE(strong)
    kd_weight: float = 0.9  # weight of every distillation term
    percentile: float = field(
        default=MLKD_PERCENTILE,
        metadata={"help": "confidence threshold of its sample and class masks, a percentile of the teacher's"},
    )


def _build(params: dict[str, Any], ctx: MethodContext | None = None) -> Method:
    return TwoViewLogitMethod(SPEC, MLKDLoss(**params))


def _check(params: dict[str, Any]) -> None:
    MLKDLoss(**params)


SPEC = MethodSpec(
    "mlkd",
    MLKDConfig,
    _build,
    _check,
    summary="0.1·CE on both views + 0.9·(multi-temperature KD, class and batch Gram alignment), T = 4, weak and "
    "strong (RandAugment) views (Jin et al. 2023)",
    teacher_needs=("logits",),
    views=("weak", "strong"),
    ls=LSRule(temperatures=("temperature",), set_weights=("kd_weight",)),
)
