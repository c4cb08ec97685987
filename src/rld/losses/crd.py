"""Contrastive representation distillation (Tian et al. 2020): the stateless part of CRD.

The method keeps state that is not here: two embedding heads (linear, then L2 normalisation), a
memory bank of one unit vector per training sample for each network, its momentum update, the
normalisation constant Z fixed at the first step and the uniform sampler of negatives
(HobbitLong/RepDistiller crd/criterion.py and crd/memory.py, ContrastMemory). What it hands to
these functions is described in :func:`crd_nce_loss`.

Published defaults, for the method module (RepDistiller train_student.py; mdistiller
mdistiller/engine/cfg.py, CRD section): embedding size 128, K = 16384 negatives, temperature
0.07, memory momentum 0.5; n_data is the training-set size (50000 for CIFAR-100).
"""

from __future__ import annotations

from numbers import Integral

import torch
from torch import Tensor

from rld.losses._common import LossInputError, _values_checkable, check_positive, check_weight, compute_dtype

# Added to the denominators of the NCE posteriors (HobbitLong/RepDistiller crd/criterion.py, eps).
CRD_EPS = 1e-7


def _check(name: str, t: Tensor, shape: str, dims: int) -> None:
    if not isinstance(t, Tensor):
        raise LossInputError(f"{name} must be a torch.Tensor of shape {shape}, got {type(t).__name__}")
    if t.dim() != dims:
        raise LossInputError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise LossInputError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.numel() == 0:
        raise LossInputError(f"{name} must not be empty, got shape {tuple(t.shape)}")


def crd_scores(anchor: Tensor, positives_and_negatives: Tensor, temperature: float = 0.07) -> Tensor:
    """exp(⟨v, m_j⟩ / T) for each sample's K + 1 memory rows: (B, D), (B, K + 1, D) → (B, K + 1).

    anchor: one network's embeddings v (unit vectors); positives_and_negatives: for each sample the
    memory rows of the *other* network, row 0 at the sample's own index (the positive), rows 1..K
    at sampled indices (the negatives). These are the unnormalised scores of ContrastMemory.forward
    (HobbitLong/RepDistiller crd/memory.py); divide them by Z before :func:`crd_nce_loss`.
    """
    _check("anchor", anchor, "(B, D)", 2)
    _check("positives_and_negatives", positives_and_negatives, "(B, K + 1, D)", 3)
    b, d = anchor.shape
    if positives_and_negatives.shape[0] != b or positives_and_negatives.shape[2] != d:
        raise LossInputError(
            f"positives_and_negatives must have shape (B, K + 1, D) = ({b}, K + 1, {d}) to match anchor "
            f"{tuple(anchor.shape)}, got {tuple(positives_and_negatives.shape)}"
        )
    check_positive("temperature", temperature)
    dtype = compute_dtype(anchor, positives_and_negatives)
    dots = torch.bmm(positives_and_negatives.to(dtype), anchor.to(dtype)[:, :, None]).squeeze(2)
    return torch.exp(dots / temperature)


def crd_nce_loss(scores: Tensor, n_data: int, eps: float = CRD_EPS) -> Tensor:
    """−(Σ_b log h(pos_b) + Σ_b Σ_k log(1 − h(neg_bk))) / B, CRD's NCE bound (paper Eq. 18).

    h(P) = P / (P + K·P_n + eps) is the posterior that a score P came from the data rather than
    from the K noise samples, with the uniform noise P_n = 1 / n_data, and
    1 − h(P) is written K·P_n / (P + K·P_n + eps), as ContrastLoss.forward in
    HobbitLong/RepDistiller crd/criterion.py (the same in mdistiller/distillers/CRD.py).

    scores: (B, K + 1), K ≥ 1, column 0 the positive, columns 1..K the negatives, each
    exp(⟨v, m⟩ / T) / Z (:func:`crd_scores` divided by Z). In the published memory
    (crd/memory.py, ContrastMemory) Z is set once, at the first batch, to the mean of that batch's
    unnormalised scores times n_data, and then kept. CRD's loss is the sum of two calls: the
    student's embedding scored against the teacher's memory rows, and the teacher's embedding
    scored against the student's. n_data: the number of training samples (the memory size).
    """
    _check("scores", scores, "(B, K + 1)", 2)
    if scores.shape[1] < 2:
        raise LossInputError(f"scores must have shape (B, K + 1) with K >= 1 negatives, got {tuple(scores.shape)}")
    if isinstance(n_data, bool) or not isinstance(n_data, Integral) or n_data < 1:
        raise LossInputError(f"n_data must be the number of training samples, an integer >= 1, got {n_data!r}")
    check_weight("eps", eps)
    if _values_checkable(scores) and bool((scores < 0).any()):
        raise LossInputError(
            f"scores must be >= 0 (exponentials divided by Z), got a minimum of {scores.min().item():g}"
        )
    p = scores.to(compute_dtype(scores))
    k = p.shape[1] - 1
    noise = k / float(n_data)  # K · P_n
    p_pos, p_neg = p[:, 0], p[:, 1:]
    log_h_pos = torch.log(p_pos / (p_pos + noise + eps))
    log_h_neg = torch.log(noise / (p_neg + noise + eps))
    return -(log_h_pos.sum() + log_h_neg.sum()) / p.shape[0]
