"""RLD (Sun et al. 2024, Eq. 10): L = CE + min(epoch/W, 1)·(α·L_SCD + β·L_MCD), both ×T².

SCD: KL between the teacher's binary [p_max, 1 − p_max] and the student's [p_true, 1 − p_true];
MCD: KL between teacher and student softmaxes after removing every class whose teacher logit is
≥ the true class's (the mask M_ge; ``mask="g"`` is Table 1's ablation). Defaults α = 1, β = 8,
T = 4, W = 20 (zju-SWJ/RLD ``configs/cifar100/rld``); ``scd_temperature`` defaults to T.
Logit standardization multiplies α and β by w and sets both temperatures to b.
"""

from __future__ import annotations

from dataclasses import dataclass

from rld.losses import RLDLoss
from rld.methods.base import LSRule, MethodConfig, logit_spec


@dataclass
class RLDConfig(MethodConfig):
    name: str = "rld"
    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    scd_temperature: float | None = None
    warmup_epochs: float = 20.0
    mask: str = "ge"
    ce_weight: float = 1.0


SPEC = logit_spec(
    "rld",
    RLDConfig,
    RLDLoss,
    summary="CE + warm-up·(α·SCD + β·MCD), α = 1, β = 8, T = 4, M_ge, 20 warm-up epochs (Sun et al.)",
    ls=LSRule(temperatures=("temperature", "scd_temperature"), scaled_weights=("alpha", "beta")),
)
