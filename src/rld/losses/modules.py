"""Loss modules for your own training loop: one consistent family.

Every module is called as ``loss(student_logits, teacher_logits, target, epoch=1)`` and returns
``(total, parts)``: the scalar to backpropagate and a dict of its named, weighted parts (they sum
to ``total``) for logging. ``epoch`` counts from 1 and may be fractional or a 0-d tensor; it
drives the linear warm-up of DKD and RLD, ``min(epoch / warmup_epochs, 1)``, which scales the
distillation terms but never the CE term, and CTKD's curriculum.

``logit_standardization=True`` replaces the logits entering the distillation terms (not the CE
term) by :func:`standardize_logits` of them (Sun et al. 2024). The published code of that paper
also changes the base temperature to 2 and multiplies the KD-family weights by 9; those are
hyper-parameters, set by the training presets (:mod:`rld.methods`), not by these modules.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from rld.losses._common import LossInputError, check_positive, check_weight, compute_dtype
from rld.losses.corrections import label_revision_loss, rc_loss, swap_teacher_logits
from rld.losses.ctkd import CTKDTemperature
from rld.losses.decoupled import MASKS, dkd_terms, rld_terms
from rld.losses.kd import kd_loss, standardize_logits

Parts = dict[str, Tensor]


def warmup_factor(epoch: float | Tensor, warmup_epochs: float) -> float | Tensor:
    """min(epoch / warmup_epochs, 1); 1 when there is no warm-up."""
    if warmup_epochs <= 0:
        return 1.0
    if isinstance(epoch, Tensor):
        return (epoch / warmup_epochs).clamp(max=1.0)
    return min(epoch / warmup_epochs, 1.0)


class DistillationLoss(nn.Module):
    """Base of the family: holds the CE weight and the logit-standardization switch."""

    def __init__(self, ce_weight: float = 1.0, logit_standardization: bool = False):
        super().__init__()
        check_weight("ce_weight", ce_weight)
        self.ce_weight = ce_weight
        self.logit_standardization = bool(logit_standardization)

    def distill_inputs(self, student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
        """The logits that enter the distillation terms (standardized when switched on)."""
        if self.logit_standardization:
            return standardize_logits(student_logits), standardize_logits(teacher_logits)
        return student_logits, teacher_logits

    def ce(self, student_logits: Tensor, target: Tensor) -> Tensor:
        return self.ce_weight * F.cross_entropy(student_logits.to(compute_dtype(student_logits)), target.long())

    @staticmethod
    def total(parts: Parts) -> tuple[Tensor, Parts]:
        return sum(parts.values()), parts


class KDLoss(DistillationLoss):
    """ce_weight·CE + kd_weight·kd_loss at ``temperature`` (Hinton et al. 2015; CIFAR: 0.1 and 0.9)."""

    def __init__(self, temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9, **kw):
        super().__init__(ce_weight, **kw)
        check_positive("temperature", temperature)
        check_weight("kd_weight", kd_weight)
        self.temperature, self.kd_weight = temperature, kd_weight

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, epoch: float | Tensor = 1):
        z_s, z_t = self.distill_inputs(student_logits, teacher_logits)
        kd = self.kd_weight * kd_loss(z_s, z_t, self.temperature)
        return self.total({"ce": self.ce(student_logits, target), "kd": kd})


class DKDLoss(DistillationLoss):
    """CE + warm-up·(α·TCKD + β·NCKD) (Zhao et al. 2022)."""

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: float = 20,
        ce_weight: float = 1.0,
        **kw,
    ):
        super().__init__(ce_weight, **kw)
        check_weight("alpha", alpha)
        check_weight("beta", beta)
        check_positive("temperature", temperature)
        check_weight("warmup_epochs", warmup_epochs)
        self.alpha, self.beta, self.temperature, self.warmup_epochs = alpha, beta, temperature, warmup_epochs

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, epoch: float | Tensor = 1):
        z_s, z_t = self.distill_inputs(student_logits, teacher_logits)
        tckd, nckd = dkd_terms(z_s, z_t, target, self.temperature)
        w = warmup_factor(epoch, self.warmup_epochs)
        ce = self.ce(student_logits, target)
        return self.total({"ce": ce, "tckd": w * self.alpha * tckd, "nckd": w * self.beta * nckd})


class RLDLoss(DistillationLoss):
    """CE + min(epoch/warmup, 1)·(α·L_SCD + β·L_MCD) — the paper's Eq. 10 with its warm-up."""

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: float = 20,
        scd_temperature: float | None = None,
        mask: str = "ge",
        ce_weight: float = 1.0,
        **kw,
    ):
        super().__init__(ce_weight, **kw)
        check_weight("alpha", alpha)
        check_weight("beta", beta)
        check_positive("temperature", temperature)
        if scd_temperature is not None:
            check_positive("scd_temperature", scd_temperature)
        check_weight("warmup_epochs", warmup_epochs)
        if mask not in MASKS:
            raise LossInputError(f"mask must be one of {', '.join(repr(m) for m in MASKS)}, got {mask!r}")
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.scd_temperature, self.mask, self.warmup_epochs = scd_temperature, mask, warmup_epochs

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, epoch: float | Tensor = 1):
        z_s, z_t = self.distill_inputs(student_logits, teacher_logits)
        scd, mcd = rld_terms(z_s, z_t, target, self.temperature, self.scd_temperature, self.mask)
        w = warmup_factor(epoch, self.warmup_epochs)
        ce = self.ce(student_logits, target)
        return self.total({"ce": ce, "scd": w * self.alpha * scd, "mcd": w * self.beta * mcd})


class LALoss(DistillationLoss):
    """LA (Wen et al. 2021): kd_weight·kd_loss towards the swapped teacher logits, no CE term."""

    def __init__(self, temperature: float = 4.0, kd_weight: float = 1.0, ce_weight: float = 0.0, **kw):
        super().__init__(ce_weight, **kw)
        check_positive("temperature", temperature)
        check_weight("kd_weight", kd_weight)
        self.temperature, self.kd_weight = temperature, kd_weight

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, epoch: float | Tensor = 1):
        z_s, z_t = self.distill_inputs(student_logits, swap_teacher_logits(teacher_logits, target))
        parts = {"kd": self.kd_weight * kd_loss(z_s, z_t, self.temperature)}
        if self.ce_weight:
            parts["ce"] = self.ce(student_logits, target)
        return self.total(parts)


class RCLoss(DistillationLoss):
    """RC (Cao et al. 2023): ce_weight·CE + kd_weight·KD + rc_weight·RC (CIFAR: 1, 1, 0.1)."""

    def __init__(
        self, temperature: float = 4.0, ce_weight: float = 1.0, kd_weight: float = 1.0, rc_weight: float = 0.1, **kw
    ):
        super().__init__(ce_weight, **kw)
        check_positive("temperature", temperature)
        check_weight("kd_weight", kd_weight)
        check_weight("rc_weight", rc_weight)
        self.temperature, self.kd_weight, self.rc_weight = temperature, kd_weight, rc_weight

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, epoch: float | Tensor = 1):
        z_s, z_t = self.distill_inputs(student_logits, teacher_logits)
        kd = self.kd_weight * kd_loss(z_s, z_t, self.temperature)
        rc = self.rc_weight * rc_loss(z_s, target, self.temperature)
        return self.total({"ce": self.ce(student_logits, target), "kd": kd, "rc": rc})


class LRLoss(DistillationLoss):
    """LR (Lan et al. 2024): :func:`label_revision_loss`, which holds its own CE term."""

    def __init__(self, lambda1: float = 4.0, lambda2: float = 1.0, eta: float = 0.8, **kw):
        super().__init__(0.0, **kw)
        for name, value in (("lambda1", lambda1), ("lambda2", lambda2), ("eta", eta)):
            check_weight(name, value)
        self.lambda1, self.lambda2, self.eta = lambda1, lambda2, eta

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, epoch: float | Tensor = 1):
        z_s, z_t = self.distill_inputs(student_logits, teacher_logits)
        return self.total({"lr": label_revision_loss(z_s, z_t, target, self.lambda1, self.lambda2, self.eta)})


class CTKDLoss(DistillationLoss):
    """CTKD (Li et al. 2023): ce_weight·CE + kd_weight·kd_loss at the learned temperature τ.

    Owns a trainable :class:`CTKDTemperature` (keywords ``t_min``, ``t_range``, ``ramp_epochs``,
    ``init``: τ = t_min + t_range·sigmoid(θ)); give ``loss.parameters()`` to the optimizer.
    ``parts`` also reports ``temperature`` (detached, not part of the sum).
    """

    def __init__(self, ce_weight: float = 0.1, kd_weight: float = 0.9, **temperature_kw):
        standardize = temperature_kw.pop("logit_standardization", False)
        super().__init__(ce_weight, logit_standardization=standardize)
        check_weight("kd_weight", kd_weight)
        self.kd_weight = kd_weight
        self.temperature = CTKDTemperature(**temperature_kw)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, epoch: float | Tensor = 1):
        tau = self.temperature(epoch)
        z_s, z_t = self.distill_inputs(student_logits, teacher_logits)
        total, parts = self.total(
            {"ce": self.ce(student_logits, target), "kd": self.kd_weight * kd_loss(z_s, z_t, tau)}
        )
        return total, {**parts, "temperature": tau.detach()}
