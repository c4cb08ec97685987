"""CTKD (Li et al. 2023): L = ce_weight·CE + kd_weight·τ²·KL at a learned temperature
τ = t_min + t_range·sigmoid(θ), θ trained through a gradient reversal whose strength follows a
cosine ramp over ``ramp_epochs``.

Defaults: CE 0.1, KD 0.9, τ ∈ [1, 21], a 10-epoch ramp (zhengli97/CTKD ``train_student.py``:
``--t_start 1 --t_end 20``, the cosine decay over 10 loops). Logit standardization sets the KD
weight to w; the CE weight is unchanged and the learned temperature keeps its range.
"""

from __future__ import annotations

from dataclasses import dataclass

from rld.losses import CTKDLoss
from rld.methods.base import LSRule, MethodConfig, logit_spec


@dataclass
class CTKDConfig(MethodConfig):
    name: str = "ctkd"
    ce_weight: float = 0.1
    kd_weight: float = 0.9
    t_min: float = 1.0
    t_range: float = 20.0
    ramp_epochs: float = 10.0


SPEC = logit_spec(
    "ctkd",
    CTKDConfig,
    CTKDLoss,
    summary="0.1·CE + 0.9·KD at a learned temperature with gradient reversal (Li et al. 2023)",
    ls=LSRule(set_weights=("kd_weight",)),
)
