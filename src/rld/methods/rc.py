"""RC (Cao et al. 2023): L = ce_weight·CE + kd_weight·KD + rc_weight·RC, T = 4 (1, 1, 0.1 on CIFAR-100).
Logit standardization multiplies the KD and RC weights by w and sets T to b.
"""

from __future__ import annotations

from dataclasses import dataclass

from rld.losses import RCLoss
from rld.methods.base import LSRule, MethodConfig, logit_spec


@dataclass
class RCConfig(MethodConfig):
    name: str = "rc"
    temperature: float = 4.0
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    rc_weight: float = 0.1


SPEC = logit_spec(
    "rc",
    RCConfig,
    RCLoss,
    summary="1·CE + 1·KD + 0.1·RC, T = 4 (Cao et al. 2023)",
    ls=LSRule(temperatures=("temperature",), scaled_weights=("kd_weight", "rc_weight")),
)
