"""Classic knowledge distillation (Hinton et al. 2015) and logit standardization (Sun et al. 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rld.losses._common import (
    check_logits,
    check_positive,
    check_reduction,
    compute_dtype,
    kl_rows,
    prepare,
    reduce_rows,
)


def kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 4.0, reduction: str = "mean"
) -> Tensor:
    """T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), summed over classes, averaged over the batch (paper Eq. 3).

    student_logits, teacher_logits: (B, C). ``temperature`` may be a scalar tensor (CTKD's learned
    temperature); the gradient then reaches it too. Returns a scalar in float32 (float64 for
    float64 inputs); with ``reduction="none"`` the (B,) values of the rows, whose mean it is.
    """
    z_s, z_t, _ = prepare(student_logits, teacher_logits)
    check_positive("temperature", temperature)
    check_reduction(reduction)
    log_p_s = F.log_softmax(z_s / temperature, dim=1)
    log_p_t = F.log_softmax(z_t / temperature, dim=1)
    return reduce_rows(kl_rows(log_p_t, log_p_s), temperature**2, reduction)


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """(z − mean(z)) / (eps + std(z)) per sample, with the unbiased std (Sun et al. 2024).

    logits: (B, C) → (B, C), computed in at least float32. A constant row maps to zeros with a
    finite gradient (the variance is floored at the dtype's smallest normal number).
    """
    check_logits("logits", logits)
    z = logits.to(compute_dtype(logits))
    centred = z - z.mean(dim=1, keepdim=True)
    var = centred.pow(2).sum(dim=1, keepdim=True) / (z.shape[1] - 1)
    std = var.clamp_min(torch.finfo(z.dtype).tiny).sqrt()
    return centred / (eps + std)
