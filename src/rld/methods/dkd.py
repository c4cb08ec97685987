"""DKD (Zhao et al. 2022): L = CE + min(epoch/W, 1)·(α·TCKD + β·NCKD), both ×T².

TCKD is the KL of the binary target/non-target split, NCKD the KL of the non-target classes'
distributions. CIFAR-100 defaults: α = 1, β = 8, T = 4, W = 20 (mdistiller ``CFG.DKD``).
Logit standardization multiplies α and β by w and sets T to b.
"""

from __future__ import annotations

from dataclasses import dataclass

from rld.losses import DKDLoss
from rld.methods.base import LSRule, MethodConfig, logit_spec


@dataclass
class DKDConfig(MethodConfig):
    name: str = "dkd"
    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup_epochs: float = 20.0
    ce_weight: float = 1.0


SPEC = logit_spec(
    "dkd",
    DKDConfig,
    DKDLoss,
    summary="CE + warm-up·(α·TCKD + β·NCKD), α = 1, β = 8, T = 4, 20 warm-up epochs (Zhao et al. 2022)",
    ls=LSRule(temperatures=("temperature",), scaled_weights=("alpha", "beta")),
)
