"""Label-based corrections of the distillation target: LA, RC and LR."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from rld.losses._common import check_logits, check_target, check_weight, compute_dtype, one_hot, prepare
from rld.losses.kd import kd_loss


def swap_teacher_logits(teacher_logits: Tensor, target: Tensor) -> Tensor:
    """LA (Wen et al. 2021): the teacher's maximum logit and its true-class logit exchange places.

    teacher_logits: (B, C) → (B, C) in the same dtype; rows whose argmax is the true class are unchanged.
    LA trains with :func:`kd_loss` on the swapped logits and no CE term.
    """
    check_logits("teacher_logits", teacher_logits)
    check_target(target, teacher_logits)
    target = target.long()[:, None]
    top = teacher_logits.argmax(dim=1, keepdim=True)
    z_top, z_true = teacher_logits.gather(1, top), teacher_logits.gather(1, target)
    return teacher_logits.scatter(1, target, z_top).scatter(1, top, z_true)


def rc_loss(student_logits: Tensor, target: Tensor, temperature: float = 4.0) -> Tensor:
    """The RC term (Cao et al. 2023): kd_loss towards the detached student logits whose true-class
    logit is replaced by z_true + max_j z_j.

    student_logits: (B, C); target: (B,).
    """
    check_logits("student_logits", student_logits)
    check_target(target, student_logits)
    target = target.long()[:, None]
    z = student_logits.detach().to(compute_dtype(student_logits))
    boosted = z.gather(1, target) + z.amax(dim=1, keepdim=True)
    return kd_loss(student_logits, z.scatter(1, target, boosted), temperature)


def label_revision_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    lambda1: float = 4.0,
    lambda2: float = 1.0,
    eta: float = 0.8,
) -> Tensor:
    """LR (Lan et al. 2024): the batch split by whether the teacher's argmax is the target.

    Right samples: CE + λ1·MSE(z_s, z_t) (mean over their elements).
    Wrong samples: λ2·MSE(softmax(z_s), ρ·softmax(z_t) + (1 − ρ)·onehot), ρ = η / (p_t,max − p_t,true + 1).
    Each part is a mean over its own samples; a part without samples contributes 0. No temperature.
    The split is computed with weights, not by indexing, so shapes stay static (no host sync).
    """
    z_s, z_t, target = prepare(student_logits, teacher_logits, target)
    for name, value in (("lambda1", lambda1), ("lambda2", lambda2), ("eta", eta)):
        check_weight(name, value)
    right = (z_t.argmax(dim=1) == target).to(z_s.dtype)
    wrong = 1.0 - right

    ce = F.cross_entropy(z_s, target, reduction="none")
    mse_logits = (z_s - z_t).pow(2).mean(dim=1)
    p_s, p_t = z_s.softmax(dim=1), z_t.softmax(dim=1)
    rho = eta / (p_t.amax(dim=1) - p_t.gather(1, target[:, None]).squeeze(1) + 1.0)
    revised = rho[:, None] * p_t + (1.0 - rho[:, None]) * one_hot(target, z_s.shape[1], z_s.dtype)
    mse_probs = (p_s - revised).pow(2).mean(dim=1)

    n_right, n_wrong = right.sum().clamp_min(1.0), wrong.sum().clamp_min(1.0)
    right_part = ((ce + lambda1 * mse_logits) * right).sum() / n_right
    wrong_part = lambda2 * (mse_probs * wrong).sum() / n_wrong
    return right_part + wrong_part
