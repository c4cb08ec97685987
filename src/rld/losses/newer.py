"""Newer logit-distillation losses: DIST, NKD, WTTM, MLKD, ABKD and CRLD, with a loss module for each.

Each definition follows the authors' published code (cited next to it), including its
constants; where that code differs from a plain reading of the paper, the docstring says how.

* DIST (Huang et al., NeurIPS 2022): 1 − Pearson correlation of the softmaxes, per sample across
  the classes (inter-class) and per class across the batch (intra-class).
* NKD (Yang et al., ICCV 2023): the student's target log-probability weighted by the teacher's
  target probability, plus the cross-entropy of the normalised non-target distributions.
* WTTM (Zheng & Yang, ICLR 2024): KL from the power-transformed teacher p_t^γ / Σ p_t^γ to the
  student softmax at temperature 1, weighted per sample by Σ p_t^γ.
* MLKD (Jin et al., CVPR 2023): KD at five temperatures plus batch- and class-level Gram-matrix
  alignment, on a weakly and a strongly augmented view of the batch.
* ABKD (Wang et al., ICML 2025): the α-β divergence D_AB(p_t ‖ p_s) of the tempered softmaxes,
  which is forward KL at (α, β) = (1, 0) and reverse KL at (0, 1).
* CRLD (Zhang et al., ACM MM 2024): per-sample KD within each of the two views and across them
  (the weak view's teacher for the strong view's student and the reverse), each pair of terms
  gated by a confidence threshold on one of the teacher's views.

The pure functions take logits (B, C) and return scalar tensors, computed in float32 (float64
for float64 inputs); bad inputs raise :class:`LossInputError`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from rld.losses._common import (
    LossInputError,
    check_logits,
    check_pair,
    check_positive,
    check_reduction,
    check_target,
    check_weight,
    compute_dtype,
    is_number,
    kl_rows,
    one_hot,
    prepare,
    reduce_rows,
    remove_classes,
)
from rld.losses.kd import standardize_logits
from rld.losses.modules import DistillationLoss, Parts

# ----------------------------------------------------------------------------------------- DIST

# hunto/image_classification_sota, lib/models/losses/dist_kd.py (the DIST_KD repository's
# `classification` submodule, commit d9662f7): the cosine similarity's denominator is
# ‖a‖·‖b‖ + 1e-8, which also makes a constant vector correlate 0 with anything.
DIST_EPS = 1e-8


def _pearson(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """Pearson correlation of the rows of a and b (N, K) → (N,): cosine of the centred rows."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    norms = torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1)
    return (a * b).sum(dim=1) / (norms + eps)


def _check_eps(eps: float) -> None:
    if not is_number(eps) or not eps >= 0:
        raise LossInputError(f"eps must be a number >= 0, got {eps!r}")


def dist_terms(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0, eps: float = DIST_EPS
) -> tuple[Tensor, Tensor]:
    """(inter, intra) of DIST, each ×τ² (the DIST class of dist_kd.py above).

    With y = softmax(z/τ) (B, C) for both models:
    inter = τ²·(1 − mean_b ρ(y_s[b, :], y_t[b, :])), the correlation of each sample's class
    distribution; intra = τ²·(1 − mean_c ρ(y_s[:, c], y_t[:, c])), the correlation of each
    class's probabilities across the batch. ρ(a, b) = ⟨ā, b̄⟩ / (‖ā‖·‖b̄‖ + eps) with ā = a − mean(a).

    A batch of one sample has constant columns, so its intra term is τ² whatever the logits
    (no gradient), as in the published code.
    """
    z_s, z_t, _ = prepare(student_logits, teacher_logits)
    check_positive("temperature", temperature)
    _check_eps(eps)
    y_s = F.softmax(z_s / temperature, dim=1)
    y_t = F.softmax(z_t / temperature, dim=1)
    inter = 1.0 - _pearson(y_s, y_t, eps).mean()
    intra = 1.0 - _pearson(y_s.T, y_t.T, eps).mean()
    return inter * temperature**2, intra * temperature**2


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 4.0,
    eps: float = DIST_EPS,
) -> Tensor:
    """β·inter + γ·intra of DIST (see :func:`dist_terms`); student_logits, teacher_logits: (B, C).

    Defaults: β = γ = 1 (the DIST class defaults) and τ = 4, the CIFAR-100 setting (`kd: dist_t4`
    in configs/strategies/distill/dist_cifar.yaml of hunto/image_classification_sota; ImageNet:
    τ = 1, `kd: dist` in resnet_dist.yaml). Both configs weight the whole term by 2
    (`kd_loss_weight: 2.`), which :class:`DISTLoss` holds as ``kd_weight``.
    """
    check_weight("beta", beta)
    check_weight("gamma", gamma)
    inter, intra = dist_terms(student_logits, teacher_logits, temperature, eps)
    return beta * inter + gamma * intra


# ------------------------------------------------------------------------------------------ NKD


def nkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    temperature: float = 3.0,
    reduction: str = "mean",
    exclude_target: bool = True,
) -> tuple[Tensor, Tensor]:
    """(target term, non-target term) of NKD, batch means (``reduction="none"``: the (B,) values of
    the rows, whose means they are).

    target term = −mean_b t_y·log s_y, with s = softmax(z_s), t = softmax(z_t) at temperature 1
    and t_y detached; non-target term = −τ²·mean_b Σ_{i≠y} T̂_i·log Ŝ_i, the cross-entropy of the
    softmaxes at temperature τ over the non-target classes (T̂_i = T_i / (1 − T_y), likewise Ŝ).
    Source: yzd-v/cls_KD, mmcls/models/dis_losses/nkd.py (NKDLoss.forward). The non-target
    term is a cross-entropy, not a KL: it exceeds τ²·KL(T̂ ‖ Ŝ) by τ²·H(T̂), which has no
    gradient with respect to the student.

    ``exclude_target=False`` keeps the target class in the second term, which becomes
    −τ²·Σ_i T_i·log S_i over every class: what the NKD of the published SDD code computes
    (shicaiwei123/SDD-CVPR2024 mdistiller/distillers/SDD_nkd.py:53, a mask built with
    ``scatter_(1, label, 1)`` that removes nothing).
    """
    z_s, z_t, target = prepare(student_logits, teacher_logits, target)
    check_positive("temperature", temperature)
    check_reduction(reduction)
    if not isinstance(exclude_target, bool):
        raise LossInputError(f"exclude_target must be True or False, got {exclude_target!r}")
    log_s = F.log_softmax(z_s, dim=1).gather(1, target[:, None])
    t_y = F.log_softmax(z_t, dim=1).gather(1, target[:, None]).exp().detach()
    target_term = reduce_rows(-(t_y * log_s).squeeze(1), 1.0, reduction)

    if exclude_target:
        drop = one_hot(target, z_s.shape[1])
        z_s, z_t = remove_classes(z_s / temperature, drop), remove_classes(z_t / temperature, drop)
    else:
        z_s, z_t = z_s / temperature, z_t / temperature
    log_s_hat = F.log_softmax(z_s, dim=1)
    t_hat = F.softmax(z_t, dim=1)  # exactly 0 at a removed target
    non_target = reduce_rows(-(t_hat * log_s_hat).sum(dim=1), temperature**2, reduction)
    return target_term, non_target


def nkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    gamma: float = 3.5,
    temperature: float = 3.0,
    reduction: str = "mean",
) -> Tensor:
    """target term + γ·non-target term of NKD (see :func:`nkd_terms`; ``reduction="none"``: per row).

    student_logits, teacher_logits: (B, C); target: (B,) class indices. Defaults: the CIFAR-100
    config of yzd-v/cls_KD, configs/distillers/cifar100/res34_distill_res18_cifar.py
    (temp=3.0, gamma=3.5). ImageNet CNNs (res34_distill_res18_img.py, res50_distill_mv1_img.py):
    temp=1.0, gamma=1.5 (the NKDLoss class defaults); DeiT pairs: temp=1.0, gamma=1.0.
    """
    check_weight("gamma", gamma)
    target_term, non_target = nkd_terms(student_logits, teacher_logits, target, temperature, reduction)
    return target_term + gamma * non_target


# ----------------------------------------------------------------------------------------- WTTM


def wttm_weights(teacher_logits: Tensor, gamma: float) -> Tensor:
    """The sample-adaptive weights of WTTM, U_γ(p_t) = Σ_j p_t,j^γ, (B, C) → (B,).

    Equals exp((1 − γ)·H_γ(p_t)) with H_γ the Rényi entropy of order γ: for γ < 1 a smoother
    teacher gets a larger weight (1 for a one-hot teacher, C^(1−γ) for a uniform one).
    """
    z_t = _prepare_teacher(teacher_logits)
    _check_gamma(gamma)
    return torch.logsumexp(gamma * F.log_softmax(z_t, dim=1), dim=1).exp()


def _prepare_teacher(teacher_logits: Tensor) -> Tensor:
    check_logits("teacher_logits", teacher_logits)
    return teacher_logits.to(compute_dtype(teacher_logits))


def _check_gamma(gamma: float) -> None:
    if gamma is None:
        raise LossInputError(
            "WTTM needs gamma, the power applied to the teacher's probabilities (1/T); the published "
            "code has no per-pair default (its --ttm_l default is 1): set it"
        )
    check_positive("gamma", gamma)


def wttm_loss(student_logits: Tensor, teacher_logits: Tensor, gamma: float) -> Tensor:
    """mean_b U_γ(p_t)·KL(p̃_t ‖ softmax(z_s)) with p̃_t = p_t^γ / Σ_j p_t,j^γ, the WTTM loss.

    p_t = softmax(z_t); the student softmax is at temperature 1 and there is no T² factor.
    p̃_t equals softmax(γ·z_t), the teacher at temperature T = 1/γ; U_γ is
    :func:`wttm_weights`. Source: zkxufo/TTM, distiller_zoo/wttm.py (WTTM.forward, exponent
    ``l`` = γ); distiller_zoo/ttm.py is the same without the weight. ``gamma`` has no default: the
    repository's ``--ttm_l`` defaults to 1 (plain KD at T = 1) and the per-pair values are listed
    in the paper's appendix only. student_logits, teacher_logits: (B, C).
    """
    z_s, z_t, _ = prepare(student_logits, teacher_logits)
    _check_gamma(gamma)
    powered = gamma * F.log_softmax(z_t, dim=1)  # log p_t^γ
    log_u = torch.logsumexp(powered, dim=1, keepdim=True)  # log U_γ
    kl = kl_rows(powered - log_u, F.log_softmax(z_s, dim=1))
    return (log_u.squeeze(1).exp() * kl).mean()


# ----------------------------------------------------------------------------------------- MLKD

# Jin-Ying/Multi-Level-Logit-Distillation, mdistiller/distillers/KD_ours.py (KD_ours.forward_train):
# every term is summed over the base temperature T (cfg.KD.TEMPERATURE: 4 on CIFAR-100, the
# mdistiller default; 1 in configs/imagenet/*/kd_ours.yaml) and the fixed 3, 5, 2 and 6. In the
# strong-view KD sum the terms at T, 3 and 5 read the strong view, those at 2 and 6 the weak view.
MLKD_STRONG_VIEW_TEMPERATURES = (3.0, 5.0)
MLKD_WEAK_VIEW_TEMPERATURES = (2.0, 6.0)
# The confidence thresholds are the 50th percentile of the teacher's confidences (np.percentile).
MLKD_PERCENTILE = 50.0


def _kd(z_s: Tensor, z_t: Tensor, t: float) -> Tensor:
    """t²·KL(softmax(z_t/t) ‖ softmax(z_s/t)), batch mean (inputs already checked)."""
    return kl_rows(F.log_softmax(z_t / t, dim=1), F.log_softmax(z_s / t, dim=1)).mean() * t**2


def _gram_losses(z_s: Tensor, z_t: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """(class-level, batch-level) alignment at temperature t (cc_loss, bc_loss of KD_ours.py).

    P = softmax(z/t) (B, C); class: ‖P_tᵀP_t − P_sᵀP_s‖²_F / C; batch: ‖P_tP_tᵀ − P_sP_sᵀ‖²_F / B.
    """
    p_s, p_t = F.softmax(z_s / t, dim=1), F.softmax(z_t / t, dim=1)
    b, c = p_s.shape
    class_level = (p_t.T @ p_t - p_s.T @ p_s).pow(2).sum() / c
    batch_level = (p_t @ p_t.T - p_s @ p_s.T).pow(2).sum() / b
    return class_level, batch_level


def mlkd_mask_fractions(teacher_weak_logits: Tensor, percentile: float = MLKD_PERCENTILE) -> tuple[Tensor, Tensor]:
    """(sample fraction, class fraction) of MLKD's confidence masks, from the teacher's weak view.

    With p = softmax(z_t,weak) (temperature 1): the sample mask holds the samples whose
    confidence max_c p[b, c] is ≤ the ``percentile``-th percentile of the batch's confidences;
    the class mask the classes whose summed probability Σ_b p[b, c] is ≤ that percentile of the
    class sums (linear interpolation, as ``np.percentile``). In the published code each mask
    multiplies a batch-mean (already reduced) loss and is then averaged, so only the fraction of
    entries in the mask counts: these fractions are what the terms are scaled by. For N distinct
    values the fraction is (⌊(N − 1)·percentile/100⌋ + 1)/N whatever the values (1/2 for an even
    batch at the published 50th percentile); ties at the threshold raise it, and a confident
    teacher's max probability rounds to exactly 1 in the compute dtype (float32: once the other
    classes hold less than about 6e-8 together), so with many such samples every sample is in
    the mask.
    """
    z_t = _prepare_teacher(teacher_weak_logits)
    _check_percentile(percentile)
    return _mask_fractions(z_t, percentile)


def _mask_fractions(z_t: Tensor, percentile: float) -> tuple[Tensor, Tensor]:
    p = F.softmax(z_t.detach(), dim=1)
    q = percentile / 100.0
    confidence = p.amax(dim=1)
    class_confidence = p.sum(dim=0)
    samples = (confidence <= torch.quantile(confidence, q)).to(p.dtype).mean()
    classes = (class_confidence <= torch.quantile(class_confidence, q)).to(p.dtype).mean()
    return samples, classes


def _check_percentile(percentile: float) -> None:
    if not is_number(percentile) or not 0 <= percentile <= 100:
        raise LossInputError(f"percentile must be a number in [0, 100], got {percentile!r}")


def _prepare_views(
    student_weak: Tensor, teacher_weak: Tensor, student_strong: Tensor, teacher_strong: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    check_pair(student_weak, teacher_weak)
    for name, view in (("student_strong_logits", student_strong), ("teacher_strong_logits", teacher_strong)):
        if not isinstance(view, Tensor):
            raise LossInputError(f"{name} must be a torch.Tensor of shape (B, C), got {type(view).__name__}")
        if view.shape != student_weak.shape:
            raise LossInputError(
                f"{name} must have the shape of the weak view's logits {tuple(student_weak.shape)}, "
                f"got {tuple(view.shape)}"
            )
        if not view.is_floating_point():
            raise LossInputError(f"{name} must be a floating-point tensor, got {view.dtype}")
    dtype = compute_dtype(student_weak, teacher_weak, student_strong, teacher_strong)
    return tuple(z.to(dtype) for z in (student_weak, teacher_weak, student_strong, teacher_strong))


def mlkd_terms(
    student_weak_logits: Tensor,
    teacher_weak_logits: Tensor,
    student_strong_logits: Tensor,
    teacher_strong_logits: Tensor,
    temperature: float = 4.0,
    percentile: float = MLKD_PERCENTILE,
    standardize_kd: bool = False,
) -> dict[str, Tensor]:
    """The four distillation terms of MLKD as the published distiller computes them, unweighted.

    All logits (B, C); the weak and strong views are the same B images under the published
    weak (random crop and flip) and strong (the same, then RandAugment(2, 10)) augmentations of
    mdistiller/dataset/cifar100.py and imagenet.py. With the temperatures τ ∈ {T, 3, 5, 2, 6} and
    P = softmax(z/τ): KD_τ(s, t) = τ²·KL(P_t ‖ P_s) (batch mean), the class-level
    CC_τ = ‖P_tᵀP_t − P_sᵀP_s‖²_F / C and the batch-level BC_τ = ‖P_tP_tᵀ − P_sP_sᵀ‖²_F / B (no τ²),
    and m, m_c the mask fractions of :func:`mlkd_mask_fractions`:

    * ``kd_weak`` = m·Σ_τ KD_τ(weak student, weak teacher);
    * ``kd_strong`` = Σ_{τ∈{T,3,5}} KD_τ(strong student, strong teacher)
      + Σ_{τ∈{2,6}} KD_τ(weak student, weak teacher), the last two on the weak view and unmasked;
    * ``cc`` = m_c·Σ_τ CC_τ(weak student, weak teacher);
    * ``bc`` = m·Σ_τ BC_τ(weak student, weak teacher).

    The strong view enters only ``kd_strong`` (the published code also forms class- and
    batch-level terms on the strong view but leaves them out of the loss). Source:
    Jin-Ying/Multi-Level-Logit-Distillation, mdistiller/distillers/KD_ours.py.

    ``standardize_kd`` standardizes (:func:`standardize_logits`) the logits of the KD terms only,
    leaving the Gram terms and the masks on the raw logits, as the logit-standardization code
    does for MLKD (sunshangquan/logit-standardization-KD, mdistiller/distillers/MLKD.py).
    """
    z_sw, z_tw, z_ss, z_ts = _prepare_views(
        student_weak_logits, teacher_weak_logits, student_strong_logits, teacher_strong_logits
    )
    check_positive("temperature", temperature)
    _check_percentile(percentile)
    strong_view = (temperature, *MLKD_STRONG_VIEW_TEMPERATURES)
    temperatures = (*strong_view, *MLKD_WEAK_VIEW_TEMPERATURES)
    m, m_c = _mask_fractions(z_tw, percentile)
    k_sw, k_tw, k_ss, k_ts = (
        tuple(standardize_logits(z) for z in (z_sw, z_tw, z_ss, z_ts)) if standardize_kd else (z_sw, z_tw, z_ss, z_ts)
    )
    kd_weak = m * sum(_kd(k_sw, k_tw, t) for t in temperatures)
    kd_strong = sum(_kd(k_ss, k_ts, t) for t in strong_view) + sum(
        _kd(k_sw, k_tw, t) for t in MLKD_WEAK_VIEW_TEMPERATURES
    )
    grams = [_gram_losses(z_sw, z_tw, t) for t in temperatures]
    cc = m_c * sum(g[0] for g in grams)
    bc = m * sum(g[1] for g in grams)
    return {"kd_weak": kd_weak, "kd_strong": kd_strong, "cc": cc, "bc": bc}


def mlkd_loss(
    student_weak_logits: Tensor,
    teacher_weak_logits: Tensor,
    student_strong_logits: Tensor,
    teacher_strong_logits: Tensor,
    temperature: float = 4.0,
    percentile: float = MLKD_PERCENTILE,
    standardize_kd: bool = False,
) -> Tensor:
    """kd_weak + kd_strong + cc + bc of :func:`mlkd_terms` (the published code weights each by
    ``KD_WEIGHT``: 0.9 on CIFAR-100, 0.5 on ImageNet; see :class:`MLKDLoss`).

    Defaults: T = 4 (CIFAR-100); ImageNet uses T = 1 (configs/imagenet/r34_r18/kd_ours.yaml,
    configs/imagenet/r50_mv2/kd_ours.yaml).
    """
    terms = mlkd_terms(
        student_weak_logits,
        teacher_weak_logits,
        student_strong_logits,
        teacher_strong_logits,
        temperature,
        percentile,
        standardize_kd,
    )
    return sum(terms.values())


# ----------------------------------------------------------------------------------------- ABKD


def _check_exponent(name: str, value: float) -> None:
    if not is_number(value) or not math.isfinite(value):
        raise LossInputError(f"{name} must be a finite number (of any sign), got {value!r}")


def _ab_rows(log_p: Tensor, log_q: Tensor, alpha: float, beta: float) -> Tensor:
    """D_AB(p ‖ q) per row from log-probabilities (B, C) → (B,); every power is exp(exponent·log)."""
    s = alpha + beta
    if alpha == 0 and beta == 0:  # ½ Σ (log p − log q)²
        return 0.5 * (log_p - log_q).pow(2).sum(dim=1)
    if alpha == 0:  # (1/β²) Σ [q^β log(q^β / p^β) − q^β + p^β]
        q_b = torch.exp(beta * log_q)
        return (q_b * (beta * (log_q - log_p) - 1) + torch.exp(beta * log_p)).sum(dim=1) / beta**2
    if beta == 0:  # (1/α²) Σ [p^α log(p^α / q^α) − p^α + q^α]
        p_a = torch.exp(alpha * log_p)
        return (p_a * (alpha * (log_p - log_q) - 1) + torch.exp(alpha * log_q)).sum(dim=1) / alpha**2
    if s == 0:  # (1/α²) Σ [log(q^α / p^α) + p^α / q^α − 1]
        d = alpha * (log_p - log_q)
        return (torch.expm1(d) - d).sum(dim=1) / alpha**2
    # −(1/(αβ)) Σ [p^α q^β − α/(α+β) p^(α+β) − β/(α+β) q^(α+β)]
    cross = torch.exp(alpha * log_p + beta * log_q)
    terms = cross - (alpha / s) * torch.exp(s * log_p) - (beta / s) * torch.exp(s * log_q)
    return terms.sum(dim=1) / (-alpha * beta)


def ab_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    alpha: float = 0.8,
    beta: float = 0.3,
    temperature: float = 4.0,
) -> Tensor:
    """mean_b D_AB(p ‖ q), the α-β divergence of ABKD summed over the classes; no T² factor.

    student_logits, teacher_logits: (B, C); p = softmax(z_t/T) (the teacher, first argument),
    q = softmax(z_s/T). For α, β, α + β ≠ 0 (Cichocki, Cruces & Amari, Entropy 13:134, 2011):

        D_AB(p ‖ q) = −1/(αβ) Σ_k [p_k^α q_k^β − α/(α+β) p_k^(α+β) − β/(α+β) q_k^(α+β)],

    which is what ghwang-s/abkd computes (standard_classification/distiller_zoo/abkl.py:61-81,
    reduced by ``divergence.mean()`` at :92, with no T²; the published settings all fall in this
    case). At α = 0, β = 0 or α + β = 0 the value is the limit of this formula, so the loss is
    continuous in (α, β) (the same paper's definition at these points):

    * β = 0: (1/α²) Σ [p^α log(p^α/q^α) − p^α + q^α]; (1, 0) is KL(p ‖ q), the forward KL;
    * α = 0: (1/β²) Σ [q^β log(q^β/p^β) − q^β + p^β]; (0, 1) is KL(q ‖ p), the reverse KL;
    * α = −β ≠ 0: (1/α²) Σ [log(q^α/p^α) + p^α/q^α − 1];
    * α = β = 0: ½ Σ (log p − log q)².

    The published code's branches for the first three (abkl.py:29-60) normalise by 1/α (or 1/β)
    instead of 1/α² (1/β²): they differ from these limits by the factor α (β), so they agree only
    where it is 1, at (1, 0) and (0, 1). α and β may be any finite numbers (the published sweeps
    include negative β); with a negative exponent a vanishing probability makes the value large.

    Powers are computed as exp(exponent·log_softmax), in float32 (float64 for float64 inputs):
    for α, β ≥ 0 no term exceeds 1. Close to (not at) a special case the general formula is a
    difference quotient: its rounding error grows like ε/|αβ| near α = 0 or β = 0 and ε·|α/(α+β)|
    near α + β = 0 (ε ≈ 1e-7 in float32, 1e-16 in float64); pass float64 logits to evaluate it
    there precisely.
    """
    z_s, z_t, _ = prepare(student_logits, teacher_logits)
    _check_exponent("alpha", alpha)
    _check_exponent("beta", beta)
    check_positive("temperature", temperature)
    log_p = F.log_softmax(z_t / temperature, dim=1)
    log_q = F.log_softmax(z_s / temperature, dim=1)
    return _ab_rows(log_p, log_q, float(alpha), float(beta)).mean()


# ----------------------------------------------------------------------------------------- CRLD

# The published code: Weijia-Zhang/CRLD, mdistiller/distillers/CRLD.py (read through its copy
# scx-822/CRLD-main @ c9d6657; haiduo/DeepKD @ afb5964 mdistiller/distillers/CRLD.py:122-125 has the
# same loss lines) and mdistiller/engine/cfg.py (CFG.CRLD: TEMPERATURE 4, TAU_W 0.9, TAU_S 0.2).
CRLD_TAU_W = 0.9
CRLD_TAU_S = 0.2


def _check_threshold(name: str, value: float) -> None:
    if not is_number(value) or not 0 <= value <= 1:
        raise LossInputError(f"{name} must be a number in [0, 1] (a probability), got {value!r}")


def _confident(z_t: Tensor, tau: float) -> Tensor:
    """max_c softmax(z_t)[b, c] ≥ tau per sample (temperature 1, no gradient): bool (B,)."""
    return F.softmax(z_t.detach(), dim=1).amax(dim=1) >= tau


def crld_masks(
    teacher_weak_logits: Tensor, teacher_strong_logits: Tensor, tau_w: float = CRLD_TAU_W, tau_s: float = CRLD_TAU_S
) -> tuple[Tensor, Tensor]:
    """(mask_w, mask_s) of CRLD, bool (B,): the samples whose teacher confidence, the largest
    probability of softmax(z_t) at temperature 1, is ≥ ``tau_w`` on the weak view and ≥ ``tau_s``
    on the strong view (``conf_w.ge(self.tau_w)``, ``conf_s.ge(self.tau_s)`` in CRLD.forward_train).
    mask_w gates both within-view terms, mask_s both cross-view terms (:func:`crld_terms`)."""
    check_logits("teacher_weak_logits", teacher_weak_logits)
    check_logits("teacher_strong_logits", teacher_strong_logits)
    if teacher_strong_logits.shape != teacher_weak_logits.shape:
        raise LossInputError(
            "teacher_strong_logits must have the shape of the weak view's logits "
            f"{tuple(teacher_weak_logits.shape)}, got {tuple(teacher_strong_logits.shape)}"
        )
    _check_threshold("tau_w", tau_w)
    _check_threshold("tau_s", tau_s)
    dtype = compute_dtype(teacher_weak_logits, teacher_strong_logits)
    return _confident(teacher_weak_logits.to(dtype), tau_w), _confident(teacher_strong_logits.to(dtype), tau_s)


def _kd_rows(z_s: Tensor, z_t: Tensor, t: float) -> Tensor:
    """t²·KL(softmax(z_t/t) ‖ softmax(z_s/t)) per sample, (B,) (kd_loss of CRLD.py with reduce=False)."""
    return kl_rows(F.log_softmax(z_t / t, dim=1), F.log_softmax(z_s / t, dim=1)) * t**2


def crld_terms(
    student_weak_logits: Tensor,
    teacher_weak_logits: Tensor,
    student_strong_logits: Tensor,
    teacher_strong_logits: Tensor,
    temperature: float = 4.0,
    tau_w: float = CRLD_TAU_W,
    tau_s: float = CRLD_TAU_S,
) -> tuple[Tensor, Tensor]:
    """(within, cross), the two distillation terms of CRLD as its published distiller computes them,
    unweighted.

    All logits (B, C); the weak and strong views are the same B images under the weak (random crop
    and flip) and strong (the same, then RandAugment(2, 10) and Cutout) augmentations. With
    KD(s, t)_b = T²·KL(softmax(z_t,b/T) ‖ softmax(z_s,b/T)) per sample and the masks m_w, m_s of
    :func:`crld_masks` (teacher confidences at temperature 1, thresholds ≥ τ_w and ≥ τ_s):

    * ``within`` = (1/B)·Σ_b m_w,b·[KD(s_w, t_w)_b + KD(s_s, t_s)_b], each view's student to its own teacher;
    * ``cross``  = (1/B)·Σ_b m_s,b·[KD(s_s, t_w)_b + KD(s_w, t_s)_b], the weak view's teacher for the strong
      view's student and the strong view's teacher for the weak view's student.

    The pairing is the published one (``loss_kd_wv``, ``loss_kd_cv`` of CRLD.forward_train): the
    weak-view teacher's mask m_w gates *both* within-view terms (the strong view's pair included),
    the strong-view teacher's mask m_s *both* cross-view terms (the one whose target is the weak
    teacher's included). The masked sums are divided by the whole batch B (``.mean()`` over all
    samples), not by the number of samples kept: a term shrinks when fewer samples pass its
    threshold.
    """
    z_sw, z_tw, z_ss, z_ts = _prepare_views(
        student_weak_logits, teacher_weak_logits, student_strong_logits, teacher_strong_logits
    )
    check_positive("temperature", temperature)
    _check_threshold("tau_w", tau_w)
    _check_threshold("tau_s", tau_s)
    t = temperature
    m_w = _confident(z_tw, tau_w).to(z_sw.dtype)
    m_s = _confident(z_ts, tau_s).to(z_sw.dtype)
    within = (m_w * (_kd_rows(z_sw, z_tw, t) + _kd_rows(z_ss, z_ts, t))).mean()
    cross = (m_s * (_kd_rows(z_ss, z_tw, t) + _kd_rows(z_sw, z_ts, t))).mean()
    return within, cross


def crld_loss(
    student_weak_logits: Tensor,
    teacher_weak_logits: Tensor,
    student_strong_logits: Tensor,
    teacher_strong_logits: Tensor,
    temperature: float = 4.0,
    tau_w: float = CRLD_TAU_W,
    tau_s: float = CRLD_TAU_S,
    within_weight: float = 2.0,
    cross_weight: float = 0.5,
) -> Tensor:
    """within_weight·within + cross_weight·cross of :func:`crld_terms` (no CE; see :class:`CRLDLoss`).

    Defaults (mdistiller/engine/cfg.py of the published code): T = 4, τ_w = 0.9, τ_s = 0.2,
    WV_WEIGHT 2.0, CV_WEIGHT 0.5; ImageNet (configs/imagenet/{r34_r18,r50_mv1}/crld.yaml): T = 1.
    """
    check_weight("within_weight", within_weight)
    check_weight("cross_weight", cross_weight)
    within, cross = crld_terms(
        student_weak_logits,
        teacher_weak_logits,
        student_strong_logits,
        teacher_strong_logits,
        temperature,
        tau_w,
        tau_s,
    )
    return within_weight * within + cross_weight * cross


# -------------------------------------------------------------------------------------- modules


class DISTLoss(DistillationLoss):
    """ce_weight·CE + kd_weight·(β·inter + γ·intra) of DIST at temperature τ.

    Defaults: CIFAR-100 (hunto/image_classification_sota, configs/strategies/distill/dist_cifar.yaml:
    ``ori_loss_weight: 1``, ``kd_loss_weight: 2``, ``kd: dist_t4`` → β = γ = 1, τ = 4), one config
    for its six pairs (WRN-40-2→WRN-40-1, ResNet56→ResNet20, ResNet32x4→ResNet8x4,
    ResNet50→MobileNetV2, ResNet32x4→ShuffleNetV1/V2). ImageNet (resnet_dist.yaml, dist_b2.yaml):
    the same weights with τ = 1.
    """

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 4.0,
        kd_weight: float = 2.0,
        ce_weight: float = 1.0,
        **kw,
    ):
        super().__init__(ce_weight, **kw)
        for name, value in (("beta", beta), ("gamma", gamma), ("kd_weight", kd_weight)):
            check_weight(name, value)
        check_positive("temperature", temperature)
        self.beta, self.gamma, self.temperature, self.kd_weight = beta, gamma, temperature, kd_weight

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, epoch: float | Tensor = 1):
        check_target(target, student_logits)
        z_s, z_t = self.distill_inputs(student_logits, teacher_logits)
        inter, intra = dist_terms(z_s, z_t, self.temperature)
        w = self.kd_weight
        return self.total(
            {"ce": self.ce(student_logits, target), "inter": w * self.beta * inter, "intra": w * self.gamma * intra}
        )


class NKDLoss(DistillationLoss):
    """ce_weight·CE + target term + γ·non-target term of NKD at temperature τ.

    Defaults: CIFAR-100 (yzd-v/cls_KD, configs/distillers/cifar100/res34_distill_res18_cifar.py:
    temp=3.0, gamma=3.5, ResNet34→ResNet18); ImageNet CNNs (ResNet34→ResNet18, ResNet50→MobileNet):
    temp=1.0, gamma=1.5; DeiT pairs: temp=1.0, gamma=1.0. The student's own CE keeps weight 1
    (mmcls/models/classifiers/distiller.py adds the NKD loss to the head's loss).
    """

    def __init__(self, gamma: float = 3.5, temperature: float = 3.0, ce_weight: float = 1.0, **kw):
        super().__init__(ce_weight, **kw)
        check_weight("gamma", gamma)
        check_positive("temperature", temperature)
        self.gamma, self.temperature = gamma, temperature

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, epoch: float | Tensor = 1):
        z_s, z_t = self.distill_inputs(student_logits, teacher_logits)
        target_term, non_target = nkd_terms(z_s, z_t, target, self.temperature)
        ce = self.ce(student_logits, target)
        return self.total({"ce": ce, "target": target_term, "non_target": self.gamma * non_target})


class WTTMLoss(DistillationLoss):
    """ce_weight·CE + beta·wttm_loss(γ): zkxufo/TTM, helper/loops.py trains on r·CE + b·WTTM with the
    flags ``-r`` (default 1) and ``-b``, and train_student.py's ``--ttm_l`` (γ).

    ``gamma`` (the power, 1/T) and ``beta`` have no default: the repository sets them per
    teacher–student pair on the command line (its README's examples: ``--ttm_l 0.1 -b 45`` for TTM
    on VGG13→VGG8) and lists the values of every pair in the paper's appendix only.
    """

    def __init__(self, gamma: float | None = None, beta: float | None = None, ce_weight: float = 1.0, **kw):
        super().__init__(ce_weight, **kw)
        _check_gamma(gamma)
        if beta is None:
            raise LossInputError("WTTM needs beta, the weight of its distillation term (set per teacher-student pair)")
        check_weight("beta", beta)
        self.gamma, self.beta = gamma, beta

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, epoch: float | Tensor = 1):
        check_target(target, student_logits)
        z_s, z_t = self.distill_inputs(student_logits, teacher_logits)
        wttm = self.beta * wttm_loss(z_s, z_t, self.gamma)
        return self.total({"ce": self.ce(student_logits, target), "wttm": wttm})


class MLKDLoss(DistillationLoss):
    """ce_weight·(CE(weak) + CE(strong)) + kd_weight·(kd_weak + kd_strong + cc + bc) of MLKD.

    Called as ``loss(student_weak, teacher_weak, target, epoch, student_strong_logits=...,
    teacher_strong_logits=...)``: the positional logits are the weak view's (the student predicts
    with those); see :func:`mlkd_terms` for which view enters which term. Defaults: CIFAR-100
    (mdistiller/engine/cfg.py: T = 4, CE_WEIGHT 0.1, KD_WEIGHT 0.9, which every
    configs/cifar100/ours/*.yaml keeps); ImageNet (configs/imagenet/{r34_r18,r50_mv2}/kd_ours.yaml):
    T = 1, CE_WEIGHT 0.5, KD_WEIGHT 0.5. ``logit_standardization`` standardizes the logits of the
    KD terms only (see :func:`mlkd_terms`).
    """

    def __init__(
        self,
        temperature: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        percentile: float = MLKD_PERCENTILE,
        **kw,
    ):
        super().__init__(ce_weight, **kw)
        check_positive("temperature", temperature)
        check_weight("kd_weight", kd_weight)
        _check_percentile(percentile)
        self.temperature, self.kd_weight, self.percentile = temperature, kd_weight, percentile

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        target: Tensor,
        epoch: float | Tensor = 1,
        student_strong_logits: Tensor | None = None,
        teacher_strong_logits: Tensor | None = None,
    ) -> tuple[Tensor, Parts]:
        if student_strong_logits is None or teacher_strong_logits is None:
            raise LossInputError(
                "MLKD needs the logits of the strongly augmented view too: pass student_strong_logits= "
                "and teacher_strong_logits="
            )
        check_target(target, student_logits)
        terms = mlkd_terms(
            student_logits,
            teacher_logits,
            student_strong_logits,
            teacher_strong_logits,
            self.temperature,
            self.percentile,
            standardize_kd=self.logit_standardization,
        )
        ce = self.ce(student_logits, target) + self.ce(student_strong_logits, target)
        return self.total({"ce": ce, **{name: self.kd_weight * term for name, term in terms.items()}})


class ABKDLoss(DistillationLoss):
    """ce_weight·CE + kd_weight·D_AB(p_t ‖ p_s) of ABKD (:func:`ab_divergence`, no T² factor).

    Defaults: ghwang-s/abkd's resnet56→resnet20 setting, the one per-pair setting it publishes
    (README.md:166-174: α = 0.8, β = 0.3, ``b`` = 32; standard_classification/train_ab.sh:25:
    ``-r 1``; T = 4, train_student.py:66). helper/loops.py:94 trains on r·CE + b·ABKL.

    With ``logit_standardization`` the divergence reads standardized logits and is multiplied by
    T², as the published AB-LSD loss does (distiller_zoo/ls.py:49); the CE term reads the raw
    logits. The published AB-LSD hyper-parameters (CE 0.1, weight 9, T = 2) are set by the
    training presets (:mod:`rld.methods.abkd`), not by this module.
    """

    def __init__(
        self,
        alpha: float = 0.8,
        beta: float = 0.3,
        temperature: float = 4.0,
        kd_weight: float = 32.0,
        ce_weight: float = 1.0,
        **kw,
    ):
        super().__init__(ce_weight, **kw)
        _check_exponent("alpha", alpha)
        _check_exponent("beta", beta)
        check_positive("temperature", temperature)
        check_weight("kd_weight", kd_weight)
        self.alpha, self.beta, self.temperature, self.kd_weight = alpha, beta, temperature, kd_weight

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, epoch: float | Tensor = 1):
        check_target(target, student_logits)
        z_s, z_t = self.distill_inputs(student_logits, teacher_logits)
        divergence = ab_divergence(z_s, z_t, self.alpha, self.beta, self.temperature)
        if self.logit_standardization:
            divergence = divergence * self.temperature**2
        return self.total({"ce": self.ce(student_logits, target), "abkd": self.kd_weight * divergence})


class CRLDLoss(DistillationLoss):
    """ce_weight·(CE(weak) + CE(strong)) + within_weight·within + cross_weight·cross of CRLD.

    Called as ``loss(student_weak, teacher_weak, target, epoch, student_strong_logits=...,
    teacher_strong_logits=...)``: the positional logits are the weak view's (the student predicts
    with those); see :func:`crld_terms` for the terms and their masks. The two CEs are added, not
    averaged (CRLD.py: ``CE_WEIGHT * (CE(s_w, y) + CE(s_s, y))``). No warm-up: ``epoch`` is unused.
    Defaults: CIFAR-100 (mdistiller/engine/cfg.py: CE_WEIGHT 1.0, WV_WEIGHT 2.0, CV_WEIGHT 0.5,
    TEMPERATURE 4, TAU_W 0.9, TAU_S 0.2, which no configs/cifar100/crld/*.yaml changes); ImageNet
    (configs/imagenet/{r34_r18,r50_mv1}/crld.yaml): TEMPERATURE 1.0, CE_WEIGHT 2.0.

    ``logit_standardization`` is refused: the published code of logit standardization does not
    define it for CRLD.
    """

    def __init__(
        self,
        temperature: float = 4.0,
        tau_w: float = CRLD_TAU_W,
        tau_s: float = CRLD_TAU_S,
        within_weight: float = 2.0,
        cross_weight: float = 0.5,
        ce_weight: float = 1.0,
        **kw,
    ):
        super().__init__(ce_weight, **kw)
        if self.logit_standardization:
            raise LossInputError(
                "CRLD with logit standardization is not defined by the published code of logit standardization"
            )
        check_positive("temperature", temperature)
        _check_threshold("tau_w", tau_w)
        _check_threshold("tau_s", tau_s)
        check_weight("within_weight", within_weight)
        check_weight("cross_weight", cross_weight)
        self.temperature, self.tau_w, self.tau_s = temperature, tau_w, tau_s
        self.within_weight, self.cross_weight = within_weight, cross_weight

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        target: Tensor,
        epoch: float | Tensor = 1,
        student_strong_logits: Tensor | None = None,
        teacher_strong_logits: Tensor | None = None,
    ) -> tuple[Tensor, Parts]:
        if student_strong_logits is None or teacher_strong_logits is None:
            raise LossInputError(
                "CRLD needs the logits of the strongly augmented view too: pass student_strong_logits= "
                "and teacher_strong_logits="
            )
        check_target(target, student_logits)
        within, cross = crld_terms(
            student_logits,
            teacher_logits,
            student_strong_logits,
            teacher_strong_logits,
            self.temperature,
            self.tau_w,
            self.tau_s,
        )
        ce = self.ce(student_logits, target) + self.ce(student_strong_logits, target)
        return self.total({"ce": ce, "within": self.within_weight * within, "cross": self.cross_weight * cross})
