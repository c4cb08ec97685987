"""Vanilla: the student trained on the labels alone, L = ce_weight·CE (the teachers and the
student baselines of every table)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from rld.losses import DistillationLoss
from rld.methods.base import MethodConfig, logit_spec


@dataclass
class VanillaConfig(MethodConfig):
    name: str = "vanilla"
    ce_weight: float = 1.0


class CELoss(DistillationLoss):
    """Cross-entropy only; the same call signature as the distillation losses."""

    def forward(self, student_logits: Tensor, teacher_logits: Tensor | None, target: Tensor, epoch=1):
        return self.total({"ce": self.ce(student_logits, target)})


SPEC = logit_spec(
    "vanilla", VanillaConfig, CELoss, summary="CE only (teachers and student baselines)", needs_teacher=False
)
