"""NKD, normalized KD (Yang et al., ICCV 2023): L = ce_weight·CE + L_target + γ·L_non-target.

With s = softmax(z_s), t = softmax(z_t) at temperature 1 and t_y detached,
L_target = −mean_b t_y·log s_y; with Ŝ, T̂ the softmaxes at temperature τ over the non-target
classes only, L_non-target = −τ²·mean_b Σ_{i≠y} T̂_i·log Ŝ_i (see :func:`rld.losses.nkd_terms`).

CIFAR-100 defaults (yzd-v/cls_KD, ``configs/distillers/cifar100/res34_distill_res18_cifar.py``,
the repository's only CIFAR-100 distillation config): ``temp=3.0``, ``gamma=3.5``. The student's
own CE keeps weight 1 (``mmcls/models/classifiers/distiller.py`` adds the NKD loss to the head's
loss). ImageNet (``configs/distillers/imagenet/res34_distill_res18_img.py`` and
``res50_distill_mv1_img.py``): ``temp=1.0``, ``gamma=1.5``.

Logit standardization is not defined for NKD by the published code of that paper (its
``tools/train.py`` applies it to KD, DKD and MLKD only): refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rld.losses import NKDLoss
from rld.methods.base import MethodConfig, logit_spec


@dataclass
class NKDConfig(MethodConfig):
    name: str = "nkd"
    gamma: float = field(default=3.5, metadata={"help": "weight of the normalized non-target term"})
    temperature: float = 3.0
    ce_weight: float = 1.0


SPEC = logit_spec(
    "nkd",
    NKDConfig,
    NKDLoss,
    summary="CE + t_y-weighted target term + γ·normalized non-target CE, γ = 3.5, T = 3 (Yang et al. 2023)",
)
