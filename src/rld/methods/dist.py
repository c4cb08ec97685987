"""DIST (Huang et al., NeurIPS 2022): L = ce_weight·CE + kd_weight·(β·L_inter + γ·L_intra).

With y = softmax(z/τ) (B, C) for both models and ρ the Pearson correlation,
L_inter = τ²·(1 − mean_b ρ(y_s[b, :], y_t[b, :])) (each sample's class distribution) and
L_intra = τ²·(1 − mean_c ρ(y_s[:, c], y_t[:, c])) (each class across the batch); see
:func:`rld.losses.dist_terms`.

CIFAR-100 defaults, one config for every pair (hunto/image_classification_sota, the DIST_KD
repository's ``classification`` code, ``configs/strategies/distill/dist_cifar.yaml``):
``ori_loss_weight: 1.`` (CE 1), ``kd_loss_weight: 2.`` (kd_weight 2), ``kd: dist_t4`` → β = γ = 1,
τ = 4 (``lib/models/losses/kd_loss.py`` builds ``DIST(beta=1, gamma=1, tau=4)``). ImageNet
(``configs/strategies/distill/resnet_dist.yaml``, ``kd: 'dist'``): the same weights with τ = 1.

Logit standardization is not defined for DIST by the published code of that paper (its
``tools/train.py`` applies it to KD, DKD and MLKD only): refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rld.losses import DISTLoss
from rld.methods.base import MethodConfig, logit_spec


@dataclass
class DISTConfig(MethodConfig):
    name: str = "dist"
    beta: float = 1.0  # weight of the inter-class relation
    gamma: float = field(
        default=1.0, metadata={"help": "weight of the intra-class relation (per class, across the batch)"}
    )
    temperature: float = 4.0
    kd_weight: float = 2.0
    ce_weight: float = 1.0


SPEC = logit_spec(
    "dist",
    DISTConfig,
    DISTLoss,
    summary="CE + 2·(β·inter + γ·intra) Pearson relations of the softmaxes, β = γ = 1, T = 4 (Huang et al. 2022)",
)
