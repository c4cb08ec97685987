"""KD (Hinton et al. 2015): L = ce_weight·CE + kd_weight·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)).

CIFAR-100 defaults: T = 4, CE 0.1, KD 0.9 (mdistiller ``mdistiller/engine/cfg.py``, ``CFG.KD``).
Logit standardization sets the KD weight to w (not scaled) and T to b; the CE weight is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from rld.losses import KDLoss
from rld.methods.base import LSRule, MethodConfig, logit_spec


@dataclass
class KDConfig(MethodConfig):
    name: str = "kd"
    temperature: float = 4.0
    ce_weight: float = 0.1
    kd_weight: float = 0.9


SPEC = logit_spec(
    "kd",
    KDConfig,
    KDLoss,
    summary="0.1·CE + 0.9·KD, T = 4 (Hinton et al. 2015)",
    ls=LSRule(temperatures=("temperature",), set_weights=("kd_weight",)),
)
