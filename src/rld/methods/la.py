"""LA (Wen et al. 2021): KD towards the teacher logits with the max and true classes swapped
where the teacher is wrong, kd_weight·T²·KL, no CE term by default (T = 4).
Logit standardization sets T to b; its weight is unchanged (the published LA loss never reads it).
"""

from __future__ import annotations

from dataclasses import dataclass

from rld.losses import LALoss
from rld.methods.base import LSRule, MethodConfig, logit_spec


@dataclass
class LAConfig(MethodConfig):
    name: str = "la"
    temperature: float = 4.0
    kd_weight: float = 1.0
    ce_weight: float = 0.0


SPEC = logit_spec(
    "la",
    LAConfig,
    LALoss,
    summary="KD towards the teacher logits with max and true class swapped, T = 4, no CE (Wen et al.)",
    ls=LSRule(temperatures=("temperature",)),
)
