"""SDD, scale decoupled distillation (Wei et al., CVPR 2024): a logit loss applied to local logits.

The final feature map of each network is average-pooled into regions at several scales, each
region's pooled vector goes through that network's own classifier (its *local logits*), and a logit
loss ℓ compares the student's and the teacher's local logits region by region. A region whose
teacher prediction is right where the teacher's global prediction is wrong, or the reverse (a
*complementary* region), weighs 2; the others (*consistent*) weigh 1:

    L_SD = (1 / (N·B)) · Σ_{j,b} w_{j,b} · ℓ(z^S_{j,b}, z^T_{j,b}, y_b)
    w_{j,b} = 2 if [argmax z^T_{j,b} = y_b] ≠ [argmax z^T_{0,b} = y_b], else 1

over the N regions j (region 0 the 1×1 one) and the B samples b. The arithmetic is that of the
published code (shicaiwei123/SDD-CVPR2024): the pooling of class ``SPP`` in
``mdistiller/models/cifar/utils.py:5-39``, the local logits of the ``*_SDD`` models (e.g.
``mdistiller/models/cifar/resnet.py:202-209``), the weights and the mean over the N·B rows of
``sdd_kd_loss`` (``mdistiller/distillers/KD.py:16-98``), ``multi_dkd`` (``SDD_DKD.py:39-124``) and
``multi_nkd_loss`` (``SDD_nkd.py:71-154``).

Layout: local logits are (B, K, N) as the published ``patch_score``: sample, class, region, with the
regions in the order [1×1, 2×2, 4×4] and row-major inside each scale. Inside the loss they become
N·B rows, row r = j·B + b (the published ``permute(2, 0, 1)`` and reshape).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rld.losses._common import LossInputError, check_target, check_weight, compute_dtype

SDD_SCALES = (1, 2, 4)  # the published default M '[1,2,4]' (SDD-CVPR2024 train.py:184)
SDD_COMPLEMENTARY_WEIGHT = 2.0  # hard-coded in the published code (KD.py:89-90, SDD_DKD.py, SDD_nkd.py:141-142)

RowLoss = Callable[[Tensor, Tensor, Tensor], Tensor | tuple[Tensor, ...]]


def check_scales(scales: Sequence[int]) -> tuple[int, ...]:
    """The scales as a tuple; LossInputError unless they are increasing integers that start at 1
    (region 0, the one that decides the weights, is the 1×1 region) and divide the largest (every
    smaller scale is pooled from the largest one's grid in whole cells)."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        raise LossInputError(f"scales must be a non-empty list of integers such as [1, 2, 4], got {scales!r}")
    if any(isinstance(s, bool) or not isinstance(s, int) for s in scales):
        raise LossInputError(f"scales must be integers, e.g. [1, 2, 4]; got {list(scales)!r}")
    scales = tuple(scales)
    if scales[0] != 1 or any(b <= a for a, b in zip(scales, scales[1:])):
        raise LossInputError(
            f"scales must increase and start at 1 (the 1x1 region decides the weights), e.g. [1, 2, 4] or [1, 2]; "
            f"got {list(scales)}"
        )
    largest = scales[-1]
    bad = [s for s in scales if largest % s]
    if bad:
        raise LossInputError(
            f"every scale must divide the largest, {largest} (the smaller grids are pooled from its "
            f"{largest}x{largest} grid): {', '.join(map(str, bad))} does not; e.g. [1, 2, 4] or [1, 3, 6]"
        )
    return scales


def sdd_regions(scales: Sequence[int]) -> int:
    """N, the number of regions of ``scales``: Σ s² (21 for [1, 2, 4], 5 for [1, 2])."""
    return sum(s * s for s in check_scales(scales))


def sdd_pool(feature_map: Tensor, scales: Sequence[int] = SDD_SCALES) -> Tensor:
    """The regions' average-pooled vectors: feature_map (B, D, H, W) → (B, D, N).

    As the published ``SPP``: the map is adaptively average-pooled to the largest scale s_max
    (``nn.AdaptiveAvgPool2d``, whose bins overlap when s_max does not divide H), and every smaller
    scale is pooled from that s_max × s_max grid, not from the map. Regions are concatenated from
    the smallest scale to the largest, row-major inside each. So region 0 is the mean of the
    s_max-pooled grid: the global average of the map when s_max divides H and W (an 8×8 or 4×4 map
    and [1, 2, 4]), a non-uniformly weighted mean otherwise (a 7×7 ImageNet map). A map smaller
    than s_max is upsampled by repetition (a 2×2 map pooled to 4×4 repeats each cell 4 times).
    Computed in float32 (float64 stays float64).
    """
    scales = check_scales(scales)
    if not isinstance(feature_map, Tensor) or feature_map.dim() != 4 or not feature_map.is_floating_point():
        shape = tuple(feature_map.shape) if isinstance(feature_map, Tensor) else type(feature_map).__name__
        raise LossInputError(f"feature_map must be a floating-point (B, D, H, W) tensor, got {shape}")
    f = feature_map.to(compute_dtype(feature_map))
    top = F.adaptive_avg_pool2d(f, scales[-1])
    grids = [top if s == scales[-1] else F.adaptive_avg_pool2d(top, s) for s in scales]
    return torch.cat([g.flatten(2) for g in grids], dim=2)


def sdd_local_logits(
    feature_map: Tensor, weight: Tensor, bias: Tensor | None = None, scales: Sequence[int] = SDD_SCALES
) -> Tensor:
    """Each region's logits from a network's own linear classifier: (B, D, H, W) → (B, K, N).

    ``weight`` (K, D) and ``bias`` (K,) are the classifier's (``model.get_classifier()``), the
    same that makes the network's global logits from its globally pooled feature.
    """
    pooled = sdd_pool(feature_map, scales)  # (B, D, N)
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[1] != pooled.shape[1]:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        d = pooled.shape[1]
        raise LossInputError(f"weight must be a (K, {d}) tensor for a {d}-channel map, got {got}")
    dtype = pooled.dtype
    b = None if bias is None else bias.to(dtype)
    return F.linear(pooled.transpose(1, 2), weight.to(dtype), b).transpose(1, 2)


def _check_local(name: str, local: Tensor) -> None:
    if not isinstance(local, Tensor) or local.dim() != 3 or not local.is_floating_point():
        shape = tuple(local.shape) if isinstance(local, Tensor) else type(local).__name__
        raise LossInputError(f"{name} must be floating-point local logits of shape (B, K, N), got {shape}")
    if local.shape[1] < 2:
        raise LossInputError(f"{name} needs at least 2 classes, got shape {tuple(local.shape)}")


def sdd_rows(local_logits: Tensor) -> Tensor:
    """(B, K, N) → (N·B, K), row r = j·B + b, as the published ``permute(2, 0, 1)`` and reshape."""
    b, k, n = local_logits.shape
    return local_logits.permute(2, 0, 1).reshape(n * b, k)


def sdd_weights(
    teacher_local_logits: Tensor, target: Tensor, complementary_weight: float = SDD_COMPLEMENTARY_WEIGHT
) -> Tensor:
    """The weight of each region of each sample, (B, K, N) → (B, N): ``complementary_weight`` where
    the teacher's prediction on region j is right and on region 0 wrong, or the reverse; 1
    elsewhere (region 0 always 1). Only the teacher decides (SDD-CVPR2024 KD.py:42-90)."""
    _check_local("teacher_local_logits", teacher_local_logits)
    check_target(target, teacher_local_logits[:, :, 0])
    check_weight("complementary_weight", complementary_weight)
    right = teacher_local_logits.detach().argmax(dim=1) == target[:, None].long()  # (B, N)
    complementary = right != right[:, :1]
    dtype = compute_dtype(teacher_local_logits)
    one = torch.ones((), dtype=dtype, device=right.device)
    return torch.where(complementary, one * complementary_weight, one)


def sdd_loss(
    student_local_logits: Tensor,
    teacher_local_logits: Tensor,
    target: Tensor,
    row_loss: RowLoss,
    complementary_weight: float = SDD_COMPLEMENTARY_WEIGHT,
) -> Tensor | tuple[Tensor, ...]:
    """L_SD = Σ_r w_r·ℓ_r / (N·B) over the N·B rows (region, sample) of the local logits (B, K, N).

    ``row_loss(student_rows, teacher_rows, target_rows)`` gets (N·B, K), (N·B, K) and (N·B,) and
    returns the loss of every row, (N·B,) — or a tuple of such terms, each then reduced alike (a
    tuple back). The loss functions of :mod:`rld.losses` give per-row values with
    ``reduction="none"``, e.g. ``lambda s, t, y: kd_loss(s, t, 4.0, reduction="none")``
    (SD-KD), ``dkd_terms(s, t, y, 4.0, reduction="none")`` (SD-DKD's TCKD and NCKD). The weights
    are :func:`sdd_weights`; the teacher's local logits carry no gradient into them.
    """
    _check_local("student_local_logits", student_local_logits)
    _check_local("teacher_local_logits", teacher_local_logits)
    if student_local_logits.shape != teacher_local_logits.shape:
        raise LossInputError(
            "student and teacher local logits must have the same shape (B, K, N), got "
            f"{tuple(student_local_logits.shape)} and {tuple(teacher_local_logits.shape)}"
        )
    b, _, n = student_local_logits.shape
    w = sdd_weights(teacher_local_logits, target, complementary_weight).T.reshape(n * b)  # row order j·B + b
    rows = row_loss(sdd_rows(student_local_logits), sdd_rows(teacher_local_logits), target.repeat(n))
    if isinstance(rows, tuple):
        return tuple((w * r).sum() / (n * b) for r in rows)
    return (w * rows).sum() / (n * b)
