"""Feature-distillation losses: pure functions on feature maps and embeddings, scalar out.

* :func:`hint_loss`  FitNets (Romero et al. 2015): MSE between regressed student and teacher features.
* :func:`at_loss`    Attention transfer (Zagoruyko & Komodakis 2017): spatial attention maps.
* :func:`rkd_loss`   Relational KD (Park et al. 2019): pairwise distances and triplet angles.
* :func:`ofd_margin`, :func:`ofd_loss`  Overhaul of feature distillation (Heo et al. 2019).
* :func:`hcl_loss`   ReviewKD (Chen et al. 2021): hierarchical context loss.
* :func:`class_activation_maps`, :func:`cat_loss`  CAT-KD (Guo et al. 2023).
* :func:`simkd_loss` SimKD (Chen et al. 2022): MSE to the teacher's last feature map.

CRD's contrastive objective lives in :mod:`rld.losses.crd`.

Each definition follows the published code cited next to it (megvii-research/mdistiller,
DefangChen/SimKD, GzyAftermath/CAT-KD); where that code leaves a case undefined, the docstring
says what is done. The modules a method trains (regressors, connectors, projectors) and the
choice of feature maps belong to the method; these functions only compare tensors. Teacher
inputs get no special treatment: pass them detached, as the published code computes them under
``torch.no_grad()``.

Inputs may be float16, bfloat16, float32 or float64; the work is done in float32 (float64 stays
float64). Bad inputs raise :class:`~rld.losses.LossInputError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rld.losses._common import LossInputError, check_positive, check_weight, compute_dtype

# F.normalize's default floor on the norm, which every published definition below relies on.
_NORM_EPS = 1e-12


# ----------------------------------------------------------------------------- input checks


def _check_tensor(name: str, t: Tensor, shape: str, dims: int | None = None, min_dims: int = 1) -> None:
    if not isinstance(t, Tensor):
        raise LossInputError(f"{name} must be a torch.Tensor of shape {shape}, got {type(t).__name__}")
    if (dims is not None and t.dim() != dims) or t.dim() < min_dims:
        raise LossInputError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise LossInputError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.numel() == 0:
        raise LossInputError(f"{name} must not be empty, got shape {tuple(t.shape)}")


def _check_map(name: str, t: Tensor) -> None:
    _check_tensor(name, t, "(B, C, H, W)", dims=4)


def _check_batch(names: tuple[str, str], a: Tensor, b: Tensor) -> None:
    if a.shape[0] != b.shape[0]:
        raise LossInputError(
            f"{names[0]} and {names[1]} must have the same batch size B, got {a.shape[0]} and {b.shape[0]}"
        )


def _check_same_shape(names: tuple[str, str], a: Tensor, b: Tensor) -> None:
    _check_batch(names, a, b)
    if a.shape != b.shape:
        raise LossInputError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _check_map_lists(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Check two lists of (B, C_i, H_i, W_i) maps pair by pair; return the pairs in the compute dtype."""
    for name, feats in (("student_feats", student_feats), ("teacher_feats", teacher_feats)):
        if isinstance(feats, Tensor) or not isinstance(feats, Sequence):
            raise LossInputError(f"{name} must be a list of (B, C, H, W) tensors, got {type(feats).__name__}")
        if len(feats) == 0:
            raise LossInputError(f"{name} must hold at least one feature map, got an empty list")
    if len(student_feats) != len(teacher_feats):
        raise LossInputError(
            "student_feats and teacher_feats must have the same number of feature maps, got "
            f"{len(student_feats)} and {len(teacher_feats)}"
        )
    for i, (f_s, f_t) in enumerate(zip(student_feats, teacher_feats)):
        names = (f"student_feats[{i}]", f"teacher_feats[{i}]")
        _check_map(names[0], f_s)
        _check_map(names[1], f_t)
        _check_batch(names, f_s, f_t)
    dtype = compute_dtype(*student_feats, *teacher_feats)
    return [(f_s.to(dtype), f_t.to(dtype)) for f_s, f_t in zip(student_feats, teacher_feats)]


def _pool_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Adaptive average pooling of (B, C, H, W) to ``size``; the identity when the size already fits."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(x, size)


def _l2_normalize(x: Tensor, dim: int | tuple[int, ...]) -> Tensor:
    """x / max(‖x‖₂, 1e-12) along ``dim``, as F.normalize."""
    return x / torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min(_NORM_EPS)


# ----------------------------------------------------------------------------- FitNet


def hint_loss(student_regressed: Tensor, teacher_feat: Tensor) -> Tensor:
    """FitNets' hint loss: mean of (r(f_s) − f_t)² over every element (the paper's ½‖·‖² as a mean).

    student_regressed: the student's hint-layer feature after the method's regressor, any shape
    (B, ...); teacher_feat: the teacher's guided-layer feature, the same shape. The published
    code uses ``F.mse_loss`` with the default mean (mdistiller/distillers/FitNet.py).
    """
    _check_tensor("student_regressed", student_regressed, "(B, ...)", min_dims=2)
    _check_tensor("teacher_feat", teacher_feat, "(B, ...)", min_dims=2)
    _check_same_shape(("student_regressed", "teacher_feat"), student_regressed, teacher_feat)
    dtype = compute_dtype(student_regressed, teacher_feat)
    return F.mse_loss(student_regressed.to(dtype), teacher_feat.to(dtype))


# ----------------------------------------------------------------------------- AT


def _attention(feat: Tensor, p: float) -> Tensor:
    q = feat.pow(p).mean(dim=1).reshape(feat.shape[0], -1)
    return _l2_normalize(q, dim=1)


def attention_map(feat: Tensor, p: float = 2.0) -> Tensor:
    """Q = vec(mean_c f_c^p) / ‖·‖₂ per sample, the normalised attention map: (B, C, H, W) → (B, H·W).

    The published code raises the feature to the power p without an absolute value
    (``feat.pow(p).mean(1)``, mdistiller/distillers/AT.py); it equals the paper's |f|^p for even p
    and for non-negative (post-ReLU) features, which is what the method feeds it.
    """
    _check_map("feat", feat)
    check_positive("p", p)
    return _attention(feat.to(compute_dtype(feat)), p)


def at_loss(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], p: float = 2.0) -> Tensor:
    """Σ_pairs mean_{b, j} (Q_s − Q_t)²: the published mean of squares in place of the paper's β/2·‖·‖_p.

    student_feats, teacher_feats: lists of the same length of (B, C_i, H_i, W_i) maps; the channel
    counts of a pair may differ (attention averages them out). When a pair's spatial sizes differ,
    the larger map is adaptive-average-pooled to the smaller (mdistiller/distillers/AT.py, which
    compares heights and pools to a square; for non-square maps each side is pooled to
    (min H, min W), the same thing for square ones). ``p`` = 2 is the published default
    (mdistiller/engine/cfg.py, AT.P). mdistiller passes ``feats[1:]`` of both networks.
    """
    pairs = _check_map_lists(student_feats, teacher_feats)
    check_positive("p", p)
    total = []
    for f_s, f_t in pairs:
        size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
        q_s = _attention(_pool_to(f_s, size), p)
        q_t = _attention(_pool_to(f_t, size), p)
        total.append((q_s - q_t).pow(2).mean())
    return torch.stack(total).sum()


# ----------------------------------------------------------------------------- RKD


def _pairwise_distances(e: Tensor, squared: bool, eps: float) -> Tensor:
    """(B, D) → (B, B): ‖e_i − e_j‖² from the Gram matrix, floored at eps, rooted unless ``squared``,
    with a zero diagonal (mdistiller/distillers/RKD.py, _pdist)."""
    sq = e.pow(2).sum(dim=1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    return d.masked_fill(torch.eye(e.shape[0], dtype=torch.bool, device=e.device), 0.0)


def _triplet_cosines(e: Tensor) -> Tensor:
    """(B, D) → (B·B·B,): cos∠(e_j − e_i, e_k − e_i) at [i, j, k], 0 where j = i or k = i
    (the zero vector normalises to 0)."""
    diff = e[None, :, :] - e[:, None, :]  # [i, j] = e_j − e_i
    unit = _l2_normalize(diff, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2)).reshape(-1)


def rkd_loss(
    student: Tensor,
    teacher: Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    squared: bool = False,
    eps: float = 1e-12,
) -> Tensor:
    """w_d · L_RKD-D + w_a · L_RKD-A, the paper's Huber loss being smooth-L1 with β = 1.

    student: (B, D_s), teacher: (B, D_t) embeddings (extra dimensions are flattened); D_s and D_t
    may differ, B ≥ 2. Distance term: ψ_D(i, j) = ‖e_i − e_j‖ / μ with μ the mean over the positive
    entries of the distance matrix (its off-diagonal), smooth-L1 averaged over all B² entries.
    Angle term: ψ_A(i, j, k) = cos∠(e_j − e_i, e_k − e_i), smooth-L1 averaged over all B³ triplets
    (degenerate ones, j = i or k = i, are 0 on both sides). Following mdistiller/distillers/RKD.py:
    squared distances come from the Gram matrix and are clamped below at ``eps`` before the root,
    the diagonal is then set to 0; the defaults (25, 50, squared=False, eps=1e-12) are
    mdistiller/engine/cfg.py's RKD section. mdistiller passes the pooled features.
    """
    _check_tensor("student", student, "(B, D)", min_dims=2)
    _check_tensor("teacher", teacher, "(B, D)", min_dims=2)
    _check_batch(("student", "teacher"), student, teacher)
    if student.shape[0] < 2:
        raise LossInputError(f"rkd_loss needs a batch of at least 2 samples, got B = {student.shape[0]}")
    check_weight("distance_weight", distance_weight)
    check_weight("angle_weight", angle_weight)
    check_positive("eps", eps)
    if not isinstance(squared, bool):
        raise LossInputError(f"squared must be True or False, got {squared!r}")
    dtype = compute_dtype(student, teacher)
    s = student.reshape(student.shape[0], -1).to(dtype)
    t = teacher.reshape(teacher.shape[0], -1).to(dtype)

    def normalized_distances(e: Tensor) -> Tensor:
        d = _pairwise_distances(e, squared, eps)
        # μ = mean of the positive entries, written without boolean indexing (no host synchronisation).
        return d / (d.sum() / (d > 0).sum())

    loss_d = F.smooth_l1_loss(normalized_distances(s), normalized_distances(t))
    loss_a = F.smooth_l1_loss(_triplet_cosines(s), _triplet_cosines(t))
    return distance_weight * loss_d + angle_weight * loss_a


# ----------------------------------------------------------------------------- OFD


def ofd_margin(bn_weight: Tensor, bn_bias: Tensor) -> Tensor:
    """m_c = E[x | x < 0] for x ~ N(β_c, γ_c²), from the BatchNorm before the teacher's ReLU (the margin).

    bn_weight (γ), bn_bias (β): (C,) → (C,), detached. With s = |γ| and Φ the standard normal CDF:
    m = β − s·φ(β/s)/Φ(−β/s) where Φ(−β/s) > 0.001, and m = −3s otherwise (almost no mass below 0),
    as get_margin_from_BN / init_ofd_modules in mdistiller/distillers/OFD.py. That code divides by
    s and fails at γ = 0; here γ = 0 takes the limit s → 0 of the same expression: min(β, 0).
    Computed in float64 and returned in float32 (float64 for float64 inputs).
    """
    _check_tensor("bn_weight", bn_weight, "(C,)", dims=1)
    _check_tensor("bn_bias", bn_bias, "(C,)", dims=1)
    if bn_weight.shape != bn_bias.shape:
        raise LossInputError(
            f"bn_weight and bn_bias must have the same shape (C,), got {tuple(bn_weight.shape)} and "
            f"{tuple(bn_bias.shape)}"
        )
    out_dtype = compute_dtype(bn_weight, bn_bias)
    s = bn_weight.detach().double().abs()
    m = bn_bias.detach().double()
    degenerate = s == 0
    safe_s = torch.where(degenerate, torch.ones_like(s), s)
    z = m / safe_s
    below = torch.special.ndtr(-z)  # P(x < 0)
    pdf = torch.exp(-(z**2) / 2) / math.sqrt(2 * math.pi)
    conditional = m - safe_s * pdf / below.clamp_min(torch.finfo(torch.float64).tiny)
    margin = torch.where(below > 0.001, conditional, -3 * s)  # threshold: mdistiller/distillers/OFD.py
    margin = torch.where(degenerate, m.clamp(max=0.0), margin)
    return margin.to(out_dtype)


def ofd_loss(student_feat: Tensor, teacher_feat: Tensor, margin: Tensor) -> Tensor:
    """OFD's partial L2 distance to the margin-clipped teacher, summed over elements, divided by B.

    student_feat: (B, C, H, W), the student's pre-ReLU feature after the method's connector;
    teacher_feat: (B, C, H', W'), the teacher's pre-ReLU feature, adaptive-average-pooled to (H, W)
    when the sizes differ; margin: (C,) from :func:`ofd_margin` (≤ 0). With T = max(f_t, m), an
    element counts (f_s − T)² when f_s > T or f_t > 0, else 0. The code sums the three masked
    terms of feat_loss in mdistiller/distillers/OFD.py as written there (so a positive margin
    behaves as there too), and its ``.mean(dim=0).sum()`` is the sum over C, H, W divided by B.
    The method weights stage i of n by 1 / 2^(n − 1 − i) (OFD.ofd_loss there).
    """
    _check_map("student_feat", student_feat)
    _check_map("teacher_feat", teacher_feat)
    _check_batch(("student_feat", "teacher_feat"), student_feat, teacher_feat)
    _check_tensor("margin", margin, "(C,)", dims=1)
    if student_feat.shape[1] != teacher_feat.shape[1] or margin.shape[0] != teacher_feat.shape[1]:
        raise LossInputError(
            "student_feat, teacher_feat and margin must have the same number of channels C, got "
            f"{student_feat.shape[1]}, {teacher_feat.shape[1]} and {margin.shape[0]}"
        )
    dtype = compute_dtype(student_feat, teacher_feat)
    s = student_feat.to(dtype)
    t = _pool_to(teacher_feat.to(dtype), tuple(s.shape[-2:]))
    m = margin.to(device=s.device, dtype=dtype).reshape(1, -1, 1, 1)
    # The published three terms: below-margin teacher, teacher in (m, 0], positive teacher.
    under = (s > m) & (t <= m)
    between = (s > t) & (t > m) & (t <= 0)
    positive = t > 0
    loss = (s - m).pow(2) * under + (s - t).pow(2) * (between | positive)
    return loss.sum() / s.shape[0]


# ----------------------------------------------------------------------------- ReviewKD


# The pooled levels of the hierarchical context loss, each weighted half the one before, the full
# resolution weighing 1 (mdistiller/distillers/ReviewKD.py, hcl_loss).
HCL_LEVELS = (4, 2, 1)


def hcl_loss(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """Σ_pairs (MSE + Σ_l w_l · MSE(pool_l(f_s), pool_l(f_t))) / (1 + Σ_l w_l) (ReviewKD's HCL).

    student_feats, teacher_feats: lists of the same length of (B, C_i, H_i, W_i) maps, each pair
    of the same shape (ReviewKD's fusion modules produce the teacher's shapes). Levels l = 4, 2, 1
    (each kept only when l < H, the pair's height) are adaptive-average-pooled to l × l and
    weighted 1/2, 1/4, 1/8 in turn, the full-resolution MSE 1; the sum is divided by the total
    weight (mdistiller/distillers/ReviewKD.py, hcl_loss). Every MSE is a mean over elements.
    """
    pairs = _check_map_lists(student_feats, teacher_feats)
    total = []
    for i, (f_s, f_t) in enumerate(pairs):
        _check_same_shape((f"student_feats[{i}]", f"teacher_feats[{i}]"), f_s, f_t)
        loss = F.mse_loss(f_s, f_t)
        weight, weights = 1.0, 1.0
        for level in HCL_LEVELS:
            if level >= f_s.shape[2]:
                continue
            weight /= 2.0
            pooled = (F.adaptive_avg_pool2d(f, (level, level)) for f in (f_s, f_t))
            loss = loss + weight * F.mse_loss(*pooled)
            weights += weight
        total.append(loss / weights)
    return torch.stack(total).sum()


# ----------------------------------------------------------------------------- CAT-KD


def class_activation_maps(feat: Tensor, classifier_weight: Tensor) -> Tensor:
    """CAM_k = Σ_c W_kc · f_c: the classifier applied at every position, (B, C, H, W) → (B, K, H, W).

    classifier_weight: (K, C), the weight of the final linear layer (or the (K, C, 1, 1) weight of
    the equivalent 1×1 convolution). CAT-KD turns the classifier into a bias-free 1×1 convolution
    before the global pooling, so the logits are the spatial means of these maps; the teacher's
    linear weight is copied into it and its bias dropped (GzyAftermath/CAT-KD tools/train.py and
    the ``*_test`` models in mdistiller/models/cifar/resnet.py there).
    """
    _check_map("feat", feat)
    if not isinstance(classifier_weight, Tensor) or classifier_weight.dim() not in (2, 4):
        shape = tuple(classifier_weight.shape) if isinstance(classifier_weight, Tensor) else None
        raise LossInputError(f"classifier_weight must have shape (K, C) or (K, C, 1, 1), got {shape}")
    w = classifier_weight
    if w.dim() == 4:
        if w.shape[2:] != (1, 1):
            raise LossInputError(f"classifier_weight must have shape (K, C) or (K, C, 1, 1), got {tuple(w.shape)}")
        w = w.reshape(w.shape[0], w.shape[1])
    _check_tensor("classifier_weight", w, "(K, C)", dims=2)
    if w.shape[1] != feat.shape[1]:
        raise LossInputError(
            f"classifier_weight has {w.shape[1]} input channels but feat has {feat.shape[1]} (shape "
            f"{tuple(feat.shape)})"
        )
    dtype = compute_dtype(feat, w)
    return torch.einsum("bchw,kc->bkhw", feat.to(dtype), w.to(dtype))


def binarize_cams(cams: Tensor) -> Tensor:
    """1 where a CAM exceeds its own mean absolute activation, else 0: (B, K, H, W) → (B, K, H, W).

    CAT-KD's binarization of the teacher's CAMs (IF_BINARIZE in mdistiller/distillers/CAT_KD.py
    of GzyAftermath/CAT-KD: threshold ‖CAM‖₁ / (H·W) per map, strict inequality). Not differentiable.
    """
    _check_map("cams", cams)
    threshold = cams.abs().mean(dim=(2, 3), keepdim=True)
    return (cams > threshold).to(cams.dtype)


def cat_loss(
    student_cams: Tensor,
    teacher_cams: Tensor,
    resolution: int = 2,
    normalize: bool = False,
    binarize_teacher: bool = False,
) -> Tensor:
    """CAT: MSE between the class activation maps pooled to resolution × resolution (mean over elements).

    student_cams: (B, K, H, W), teacher_cams: (B, K, H', W') from :func:`class_activation_maps`
    (the spatial sizes may differ). Steps, as CAT_loss / CAT_KD.forward_train in
    mdistiller/distillers/CAT_KD.py of GzyAftermath/CAT-KD: optionally binarize the teacher's maps
    at full resolution (:func:`binarize_cams`); adaptive-average-pool both to
    (resolution, resolution); optionally L2-normalise each pooled map over its spatial positions
    (F.normalize over dims 2, 3); then ``F.mse_loss``. The defaults are the CAT-KD configs
    (configs/cifar100/CAT_KD/*.yaml: CAM_RESOLUTION 2, IF_NORMALIZE False; ImageNet uses 4); the
    binarization ablation (configs/cifar100/CAT/CAT_Binarization) sets normalize and binarize.
    """
    _check_map("student_cams", student_cams)
    _check_map("teacher_cams", teacher_cams)
    _check_batch(("student_cams", "teacher_cams"), student_cams, teacher_cams)
    if student_cams.shape[1] != teacher_cams.shape[1]:
        raise LossInputError(
            "student_cams and teacher_cams must have the same number of classes K, got "
            f"{student_cams.shape[1]} and {teacher_cams.shape[1]}"
        )
    if type(resolution) is not int or resolution < 1:
        raise LossInputError(f"resolution must be an integer >= 1, got {resolution!r}")
    for name, flag in (("normalize", normalize), ("binarize_teacher", binarize_teacher)):
        if not isinstance(flag, bool):
            raise LossInputError(f"{name} must be True or False, got {flag!r}")
    dtype = compute_dtype(student_cams, teacher_cams)
    s, t = student_cams.to(dtype), teacher_cams.to(dtype)
    if binarize_teacher:
        t = binarize_cams(t)
    size = (resolution, resolution)
    s, t = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
    if normalize:
        s, t = _l2_normalize(s, dim=(2, 3)), _l2_normalize(t, dim=(2, 3))
    return F.mse_loss(s, t)


# ----------------------------------------------------------------------------- SimKD


def simkd_loss(student_projected: Tensor, teacher_feat: Tensor) -> Tensor:
    """SimKD's feature alignment: mean of (P(f_s) − f_t)² over every element.

    student_projected: (B, C_t, H, W), the student's last feature map after the method's projector;
    teacher_feat: (B, C_t, H', W'), the teacher's last feature map (the input of its pooling and
    reused classifier). SimKD aligns the spatial sizes by adaptive-average-pooling the larger map
    to the smaller: the student *before* the projector, the teacher here (DefangChen/SimKD
    models/util.py, SimKD.forward); the loss is ``nn.MSELoss()`` (train_student.py,
    helper/loops.py). So the teacher is pooled to (H, W) when it is larger, and a student map
    larger than the teacher's is an error (pool it before the projector).
    """
    _check_map("student_projected", student_projected)
    _check_map("teacher_feat", teacher_feat)
    _check_batch(("student_projected", "teacher_feat"), student_projected, teacher_feat)
    if student_projected.shape[1] != teacher_feat.shape[1]:
        raise LossInputError(
            "student_projected and teacher_feat must have the same number of channels, got "
            f"{student_projected.shape[1]} and {teacher_feat.shape[1]}: the projector maps the student to the "
            "teacher's channels"
        )
    (h, w), (ht, wt) = student_projected.shape[-2:], teacher_feat.shape[-2:]
    if h > ht or w > wt:
        raise LossInputError(
            f"student_projected is {h}x{w} but teacher_feat only {ht}x{wt}: pool the student's feature "
            "to the teacher's size before the projector, as SimKD does"
        )
    dtype = compute_dtype(student_projected, teacher_feat)
    target = _pool_to(teacher_feat.to(dtype), (h, w))
    return F.mse_loss(student_projected.to(dtype), target)
