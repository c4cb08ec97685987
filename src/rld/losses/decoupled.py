"""Decoupled logit losses: DKD (Zhao et al. 2022) and RLD (Sun et al., arXiv 2408.07703).

Both split the KD term into a *binary* part (one class against the rest) and a *masked* part
(a softmax over the classes that are not removed). They differ in which classes:

* DKD:  binary on the true class for both models (TCKD); the true class removed (NCKD).
* RLD:  teacher's binary on its own argmax, student's on the true class (SCD, Eqs. 4–6);
        every class whose teacher logit is ≥ the true class's removed (MCD with M_ge, Eqs. 7–9).

When the teacher predicts the true class, the two coincide (M_ge = {true}).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from rld.losses._common import (
    LossInputError,
    binary_log_probs,
    check_positive,
    check_reduction,
    check_weight,
    is_number,
    kl_rows,
    one_hot,
    prepare,
    reduce_rows,
    remove_classes,
)
from rld.losses._fused import DecoupledKL

MASKS = ("ge", "g")


def _binary_kl_rows(
    student_logits: Tensor, teacher_logits: Tensor, student_index: Tensor, teacher_index: Tensor, t: float
) -> Tensor:
    """KL([p_T(k_T), 1 − p_T(k_T)] ‖ [p_S(k_S), 1 − p_S(k_S)]) at temperature t, per row (B,), not ×t²."""
    b_t = binary_log_probs(F.log_softmax(teacher_logits / t, dim=1), teacher_index)
    b_s = binary_log_probs(F.log_softmax(student_logits / t, dim=1), student_index)
    return kl_rows(b_t, b_s)


def _masked_kl_rows(student_logits: Tensor, teacher_logits: Tensor, removed: Tensor, t: float) -> Tensor:
    """KL(p̃_T ‖ p̃_S) at temperature t over the classes not in ``removed`` (B, C) bool, per row (B,),
    not ×t² (Eq. 8–9). A row with every class removed contributes 0.
    """
    log_p_t = F.log_softmax(remove_classes(teacher_logits / t, removed), dim=1)
    log_p_s = F.log_softmax(remove_classes(student_logits / t, removed), dim=1)
    return kl_rows(log_p_t, log_p_s)


def _decoupled(
    z_s: Tensor,
    z_t: Tensor,
    target: Tensor,
    mask: str | None,
    t_bin: float,
    t_mask: float,
    alpha: float = 1.0,
    beta: float = 1.0,
    reduction: str = "mean",
) -> tuple[Tensor, Tensor, Tensor]:
    """(α·binary + β·masked, binary KL, masked KL), each KL ×T² and averaged over the batch
    (``reduction="none"``: per row, (B,) each).

    ``mask=None``: DKD (binary on the target for both models, the target removed); ``"ge"`` /
    ``"g"``: RLD. The closed-form kernel (:mod:`rld.losses._fused`) serves the usual case of a
    teacher without gradient and a batch mean; the composite form serves the rest (a teacher that
    needs gradients, tensor temperatures, per-row values) and is the reference the tests compare
    the kernel with.
    """
    batch_mean = reduction == "mean"
    if batch_mean and not z_t.requires_grad and is_number(t_bin) and is_number(t_mask):
        return DecoupledKL.apply(z_s, z_t, target, mask, float(t_bin), float(t_mask), float(alpha), float(beta))
    drop = one_hot(target, z_s.shape[1]) if mask is None else mask_ge(z_t, target, mask)
    t_idx = target if mask is None else z_t.argmax(dim=1)
    binary = reduce_rows(_binary_kl_rows(z_s, z_t, target, t_idx, t_bin), t_bin**2, reduction)
    masked = reduce_rows(_masked_kl_rows(z_s, z_t, drop, t_mask), t_mask**2, reduction)
    return alpha * binary + beta * masked, binary, masked


def _check_mask(mask: str) -> None:
    if mask not in MASKS:
        raise LossInputError(f"mask must be one of {', '.join(repr(m) for m in MASKS)}, got {mask!r}")


def mask_ge(teacher_logits: Tensor, target: Tensor, mask: str = "ge") -> Tensor:
    """The classes MCD removes, (B, C) bool (Eq. 7).

    ``"ge"``: {i : z_T,i ≥ z_T,true}, which always holds the true class and its ties;
    ``"g"``: {i : z_T,i > z_T,true}, the ablation of Table 1 (the true class stays in).
    """
    _check_mask(mask)
    z_true = teacher_logits.gather(1, target[:, None])
    return teacher_logits >= z_true if mask == "ge" else teacher_logits > z_true


def _dkd(student_logits, teacher_logits, target, temperature, alpha=1.0, beta=1.0, reduction="mean"):
    z_s, z_t, target = prepare(student_logits, teacher_logits, target)
    check_positive("temperature", temperature)
    check_reduction(reduction)
    return _decoupled(z_s, z_t, target, None, temperature, temperature, alpha, beta, reduction)


def dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float = 4.0, reduction: str = "mean"
) -> tuple[Tensor, Tensor]:
    """(TCKD, NCKD) of DKD, each at temperature T and ×T², batch means (``reduction="none"``: the
    (B,) values of the rows, whose means they are)."""
    return _dkd(student_logits, teacher_logits, target, temperature, reduction=reduction)[1:]


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    reduction: str = "mean",
) -> Tensor:
    """α·TCKD + β·NCKD (Zhao et al. 2022), both at temperature T and ×T², batch mean.

    TCKD: KL between the binary [p_true, 1 − p_true] of teacher and student; NCKD: KL between the
    softmaxes over the non-target classes. student_logits, teacher_logits: (B, C); target: (B,).
    ``reduction="none"``: the (B,) values of the rows.
    """
    check_weight("alpha", alpha)
    check_weight("beta", beta)
    return _dkd(student_logits, teacher_logits, target, temperature, alpha, beta, reduction)[0]


def _rld(
    student_logits, teacher_logits, target, temperature, scd_temperature, mask, alpha=1.0, beta=1.0, reduction="mean"
):
    z_s, z_t, target = prepare(student_logits, teacher_logits, target)
    check_positive("temperature", temperature)
    t_scd = temperature if scd_temperature is None else scd_temperature
    check_positive("scd_temperature", t_scd)
    _check_mask(mask)
    check_reduction(reduction)
    return _decoupled(z_s, z_t, target, mask, t_scd, temperature, alpha, beta, reduction)


def rld_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    temperature: float = 4.0,
    scd_temperature: float | None = None,
    mask: str = "ge",
    reduction: str = "mean",
) -> tuple[Tensor, Tensor]:
    """(L_SCD, L_MCD) of RLD, batch means (``reduction="none"``: the (B,) values of the rows).

    L_SCD = T_scd²·KL(b_T ‖ b_S) with b_T = [p_T(argmax_T), 1 − p_T(argmax_T)] and
    b_S = [p_S(true), 1 − p_S(true)] (Eqs. 4–6); L_MCD = T²·KL(p̃_T ‖ p̃_S) over the classes
    outside the mask (Eqs. 7–9), 0 for a row whose classes are all masked.
    """
    return _rld(student_logits, teacher_logits, target, temperature, scd_temperature, mask, reduction=reduction)[1:]


def rld_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    scd_temperature: float | None = None,
    mask: str = "ge",
    reduction: str = "mean",
) -> Tensor:
    """α·L_SCD + β·L_MCD (paper Eq. 10 without the CE term and without warm-up).

    student_logits, teacher_logits: (B, C); target: (B,) class indices. ``scd_temperature``
    (None: ``temperature``) is the temperature of the SCD term; ``mask`` is ``"ge"`` (the paper's
    M_ge) or ``"g"`` (the Table 1 ablation). See :func:`rld_terms`. ``reduction="none"``: the (B,)
    values of the rows.
    """
    check_weight("alpha", alpha)
    check_weight("beta", beta)
    return _rld(student_logits, teacher_logits, target, temperature, scd_temperature, mask, alpha, beta, reduction)[0]
