"""Edges of SDD and of the loss helpers it shares: the weighted mean of a loss that returns one tensor
against float64 brute force, a complementary weight other than 2, maps and classifiers without a bias
or in other precisions, two classes, the refusals compared whole; the number check, the compute
dtype of mixed pairs, the warm-up of one epoch and the CE term's default weight and precision."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rld.losses import DistillationLoss, LossInputError, kd_loss, sdd_local_logits, sdd_loss, sdd_pool, sdd_weights
from rld.losses._common import check_positive, is_number, prepare
from rld.losses.modules import warmup_factor
from rld.losses.sdd import check_scales

F64 = torch.float64


def _refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(LossInputError) as err:
        fn(*args, **kwargs)
    return str(err.value)


# ----------------------------------------------------------------------------- brute force (float64)


def _pool_by_hand(fmap: torch.Tensor, scales) -> torch.Tensor:
    """(B, D, H, W) → (B, D, N) for maps the largest scale divides: block means of the largest grid,
    each smaller grid the block means of that grid, regions from the smallest scale up, row-major."""
    fmap = fmap.double()
    b, d, h, w = fmap.shape
    top = scales[-1]
    ch, cw = h // top, w // top
    grid = torch.empty(b, d, top, top, dtype=F64)
    for r in range(top):
        for c in range(top):
            grid[:, :, r, c] = fmap[:, :, r * ch : (r + 1) * ch, c * cw : (c + 1) * cw].mean(dim=(2, 3))
    regions = []
    for s in scales:
        k = top // s
        for r in range(s):
            for c in range(s):
                regions.append(grid[:, :, r * k : (r + 1) * k, c * k : (c + 1) * k].mean(dim=(2, 3)))
    return torch.stack(regions, dim=2)


def _kd_row(s: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    p, q = torch.softmax(t / tau, 0), torch.softmax(s / tau, 0)
    return tau**2 * (p * (p.log() - q.log())).sum()


def _sd_kd_by_hand(zs, zt, y, tau: float, complementary: float) -> torch.Tensor:
    """Σ_{j,b} w_{j,b}·KD(z^S_{j,b}, z^T_{j,b}) / (N·B), w = ``complementary`` where the teacher is right
    on region j and wrong on region 0 or the reverse, else 1."""
    b, _, n = zs.shape
    total = torch.zeros((), dtype=F64)
    for i in range(b):
        global_right = int(zt[i, :, 0].argmax()) == int(y[i])
        for j in range(n):
            local_right = int(zt[i, :, j].argmax()) == int(y[i])
            w = complementary if local_right != global_right else 1.0
            total = total + w * _kd_row(zs[i, :, j].double(), zt[i, :, j].double(), tau)
    return total / (n * b)


def _kd_rows(s, t, y):
    return kd_loss(s, t, 4.0, reduction="none")


def _local_pair(b: int = 3, k: int = 4, n: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    zs = 3 * torch.randn(b, k, n, generator=g, dtype=F64)
    zt = 3 * torch.randn(b, k, n, generator=g, dtype=F64)
    y = zt[:, :, 0].argmax(dim=1)  # the teacher globally right ...
    y[1] = zt[1, :, 3].argmax()  # ... but one sample right on region 3 and wrong on region 0
    if int(zt[1, :, 0].argmax()) == int(y[1]):
        zt[1, :, 0] = zt[1, :, 0].roll(1)
    return zs, zt, y


# ----------------------------------------------------------------------------- sdd_loss


def test_a_loss_of_one_tensor_per_row_is_weighted_and_averaged_over_the_n_b_rows():
    zs, zt, y = _local_pair(b=3, n=5)  # N ≠ B: the mean is over N·B = 15 rows
    assert (sdd_weights(zt, y) != 1).any()
    for cw in (2.0, 3.5, 0.0):
        got = sdd_loss(zs, zt, y, _kd_rows, cw)
        assert isinstance(got, torch.Tensor) and got.shape == () and got.dtype == F64
        torch.testing.assert_close(got, _sd_kd_by_hand(zs, zt, y, 4.0, cw), rtol=1e-12, atol=1e-12)
    default = sdd_loss(zs, zt, y, _kd_rows)
    assert default.item() == sdd_loss(zs, zt, y, _kd_rows, 2.0).item() != sdd_loss(zs, zt, y, _kd_rows, 1.0).item()
    # a tuple of terms gets the same weights as each single term
    pair = sdd_loss(zs, zt, y, lambda s, t, r: (_kd_rows(s, t, r), 2 * _kd_rows(s, t, r)), 3.5)
    torch.testing.assert_close(pair[0], sdd_loss(zs, zt, y, _kd_rows, 3.5), rtol=0, atol=0)
    torch.testing.assert_close(pair[1], 2 * pair[0], rtol=1e-15, atol=0)


def test_two_classes_are_enough():
    zs, zt, y = _local_pair(b=4, k=2, n=5, seed=1)
    torch.testing.assert_close(sdd_loss(zs, zt, y, _kd_rows), _sd_kd_by_hand(zs, zt, y, 4.0, 2.0))
    assert sdd_weights(zt, y).shape == (4, 5)


def test_refusals_of_sdd_loss_name_the_argument():
    zs, zt, y = _local_pair()
    prefix = "must be floating-point local logits of shape (B, K, N), got"
    assert _refusal(sdd_loss, zs.tolist(), zt, y, _kd_rows) == f"student_local_logits {prefix} list"
    assert _refusal(sdd_loss, zs, zt[:, :, 0], y, _kd_rows) == f"teacher_local_logits {prefix} (3, 4)"
    assert _refusal(sdd_loss, zs, zt.long(), y, _kd_rows) == f"teacher_local_logits {prefix} (3, 4, 5)"
    one = "needs at least 2 classes, got shape (3, 1, 5)"
    assert _refusal(sdd_loss, zs[:, :1], zt, y, _kd_rows) == f"student_local_logits {one}"
    assert _refusal(sdd_loss, zs, zt[:, :1], y, _kd_rows) == f"teacher_local_logits {one}"
    assert _refusal(sdd_loss, zs, zt[:, :, :1], y, _kd_rows) == (
        "student and teacher local logits must have the same shape (B, K, N), got (3, 4, 5) and (3, 4, 1)"
    )


# ----------------------------------------------------------------------------- sdd_weights


def test_weights_follow_the_teachers_precision_and_device():
    zs, zt, y = _local_pair()
    w = sdd_weights(zt, y, 3.5)
    assert w.dtype == F64 and w.device.type == "cpu"
    assert sdd_weights(zt.float(), y).dtype == torch.float32
    assert sdd_weights(zt.half(), y).dtype == torch.float32
    # the constants are made on the teacher's device, not on the default device
    with torch.device("meta"):
        w_meta_default = sdd_weights(zt, y, 3.5)
    assert w_meta_default.device.type == "cpu"
    torch.testing.assert_close(w_meta_default, w, rtol=0, atol=0)
    assert sorted(set(w.flatten().tolist())) == [1.0, 3.5]


# ----------------------------------------------------------------------------- pooling and local logits


def test_pooling_computes_half_precision_maps_in_float32():
    g = torch.Generator().manual_seed(2)
    fmap = torch.randn(2, 3, 4, 4, generator=g).half()
    for dtype in (torch.float16, torch.bfloat16):
        pooled = sdd_pool(fmap.to(dtype), [1, 2])
        assert pooled.dtype == torch.float32 and pooled.shape == (2, 3, 5)
        brute = _pool_by_hand(fmap.to(dtype), [1, 2])
        torch.testing.assert_close(pooled.double(), brute, rtol=1e-6, atol=1e-6)
    assert sdd_pool(fmap.double(), [1, 2]).dtype == F64


def test_local_logits_without_a_bias_and_with_a_classifier_in_another_precision():
    g = torch.Generator().manual_seed(3)
    fmap = torch.randn(2, 3, 4, 4, generator=g)  # D = 3 channels, N = 5 regions for [1, 2]
    weight, bias = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(6, generator=g, dtype=F64)
    pooled = _pool_by_hand(fmap, [1, 2])
    plain = torch.einsum("kd,bdn->bkn", weight, pooled)
    got = sdd_local_logits(fmap, weight, scales=[1, 2])  # bias=None
    assert got.shape == (2, 6, 5) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), plain, rtol=1e-5, atol=1e-5)
    got = sdd_local_logits(fmap, weight, bias, [1, 2])  # a float64 classifier on a float32 map: float32
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), plain + bias[None, :, None], rtol=1e-5, atol=1e-5)
    got = sdd_local_logits(fmap.half(), weight.half(), bias.half(), [1, 2])  # half precision: float32
    assert got.dtype == torch.float32
    brute = torch.einsum("kd,bdn->bkn", weight.half().double(), _pool_by_hand(fmap.half(), [1, 2]))
    torch.testing.assert_close(got.double(), brute + bias.half().double()[None, :, None], rtol=1e-5, atol=1e-5)
    got = sdd_local_logits(fmap.double(), weight.float(), bias.float(), [1, 2])
    assert got.dtype == F64
    # one region (scales [1]) or one channel: the regions' rows are contiguous, the bias is still cast
    got = sdd_local_logits(fmap, weight, bias, [1])
    assert got.shape == (2, 6, 1) and got.dtype == torch.float32
    expected = fmap.double().mean(dim=(2, 3)) @ weight.T + bias
    torch.testing.assert_close(got[:, :, 0].double(), expected, rtol=1e-5, atol=1e-5)
    got = sdd_local_logits(fmap[:, :1], weight[:, :1], bias, [1, 2])
    assert got.dtype == torch.float32
    expected = torch.einsum("kd,bdn->bkn", weight[:, :1], _pool_by_hand(fmap[:, :1], [1, 2])) + bias[None, :, None]
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_refusals_of_the_pooling_and_the_classifier():
    fmap = torch.randn(2, 3, 4, 4)
    prefix = "feature_map must be a floating-point (B, D, H, W) tensor, got"
    assert _refusal(sdd_pool, fmap[0]) == f"{prefix} (3, 4, 4)"
    assert _refusal(sdd_pool, fmap.long()) == f"{prefix} (2, 3, 4, 4)"
    assert _refusal(sdd_pool, fmap.tolist()) == f"{prefix} list"
    assert _refusal(sdd_local_logits, fmap[0], torch.randn(6, 3)) == f"{prefix} (3, 4, 4)"
    prefix = "weight must be a (K, 3) tensor for a 3-channel map, got"  # D = 3, N = 5: the channels named
    assert _refusal(sdd_local_logits, fmap, torch.randn(6, 5), scales=[1, 2]) == f"{prefix} (6, 5)"
    assert _refusal(sdd_local_logits, fmap, torch.randn(6, 3, 1), scales=[1, 2]) == f"{prefix} (6, 3, 1)"
    assert _refusal(sdd_local_logits, fmap, torch.randn(6, 3).tolist(), scales=[1, 2]) == f"{prefix} list"


def test_refusals_of_the_scales():
    listed = "scales must be a non-empty list of integers such as [1, 2, 4], got"
    assert _refusal(check_scales, "124") == f"{listed} '124'"
    assert _refusal(check_scales, 4) == f"{listed} 4"
    assert _refusal(check_scales, ()) == f"{listed} ()"
    assert _refusal(check_scales, (1, 2.0)) == "scales must be integers, e.g. [1, 2, 4]; got [1, 2.0]"
    assert _refusal(check_scales, (True, 2)) == "scales must be integers, e.g. [1, 2, 4]; got [True, 2]"
    assert _refusal(check_scales, [1, 3, 5, 8]) == (
        "every scale must divide the largest, 8 (the smaller grids are pooled from its 8x8 grid): 3, 5 does "
        "not; e.g. [1, 2, 4] or [1, 3, 6]"
    )
    assert check_scales([1, 3, 6]) == (1, 3, 6)


# ----------------------------------------------------------------------------- shared helpers


def test_numbers_are_any_real_but_not_a_bool():
    for value in (2, 2.5, Fraction(1, 2), np.float32(0.5), np.int64(3)):
        assert is_number(value) is True, value
    for value in (True, False, "2", None, 1j, torch.tensor(2.0)):
        assert is_number(value) is False, value
    check_positive("temperature", Fraction(1, 2))  # a Fraction is a temperature
    assert _refusal(check_positive, "temperature", math.inf) == "temperature must be a finite number > 0, got inf"
    assert _refusal(check_positive, "temperature", True) == "temperature must be a number, got True"


def test_a_mixed_pair_is_computed_in_float64_whichever_side_is_float64():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(3, 5, generator=g, dtype=F64), torch.randn(3, 5, generator=g, dtype=F64)
    for zs, zt in ((s, t.float()), (s.float(), t)):
        a, b, target = prepare(zs, zt, torch.tensor([0, 4, 2], dtype=torch.int32))
        assert (a.dtype, b.dtype, target.dtype) == (F64, F64, torch.int64)
        got = kd_loss(zs, zt, 2.0)
        assert got.dtype == F64
        torch.testing.assert_close(got, kd_loss(zs.double(), zt.double(), 2.0), rtol=0, atol=0)
    a, b, target = prepare(s.half(), t.bfloat16())
    assert (a.dtype, b.dtype, target) == (torch.float32, torch.float32, None)


def test_a_warm_up_of_one_epoch_ramps_and_none_does_not():
    assert warmup_factor(0.5, 1) == 0.5
    assert warmup_factor(1, 1) == 1.0 and warmup_factor(3, 1) == 1.0
    assert warmup_factor(0.25, 0.5) == 0.5
    assert warmup_factor(torch.tensor(0.5), 1.0).item() == 0.5
    assert warmup_factor(0.5, 0) == 1.0 and warmup_factor(torch.tensor(0.5), 0.0) == 1.0


def test_ce_term_default_weight_and_precision():
    g = torch.Generator().manual_seed(5)
    logits, y = 4 * torch.randn(6, 7, generator=g), torch.randint(0, 7, (6,), generator=g)
    expected = F.cross_entropy(logits.double(), y)
    assert DistillationLoss().ce_weight == 1.0
    torch.testing.assert_close(DistillationLoss().ce(logits.double(), y), expected, rtol=0, atol=0)
    torch.testing.assert_close(DistillationLoss(0.5).ce(logits.double(), y), expected / 2, rtol=0, atol=0)
    half = logits.half()
    got = DistillationLoss().ce(half, y.int())  # half precision: computed in float32
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, F.cross_entropy(half.float(), y), rtol=0, atol=0)
    assert DistillationLoss().ce(logits, y).dtype == torch.float32
