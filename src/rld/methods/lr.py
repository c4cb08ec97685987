"""LR, label revision (Lan et al. 2024): CE + λ1·MSE on the samples the teacher gets right and
λ2·MSE towards revised targets (strength η) on the others; λ1 = 4, λ2 = 1, η = 0.8.
Logit standardization is not defined by the published code: refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from rld.losses import LRLoss
from rld.methods.base import MethodConfig, logit_spec


@dataclass
class LRConfig(MethodConfig):
    name: str = "lr"
    lambda1: float = 4.0
    lambda2: float = 1.0
    eta: float = 0.8


SPEC = logit_spec(
    "lr",
    LRConfig,
    LRLoss,
    summary="label revision: CE + 4·MSE on right samples, 1·MSE to revised targets on wrong ones",
)
