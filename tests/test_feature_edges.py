"""The feature losses where the easy cases agree and only an edge tells right from wrong: OFD's
comparisons with the teacher exactly on the margin or on 0, the compute dtype when only one input
is float64 or both are half precision, pooling in that dtype, maps whose two sides pool
differently, the defaults, the device of the margin and of RKD's mask, and every refusal compared
whole. The references are brute force in float64 from the published definitions."""

from __future__ import annotations

import math

import pytest
import torch

from rld.losses import (
    LossInputError,
    at_loss,
    attention_map,
    cat_loss,
    class_activation_maps,
    crd_nce_loss,
    crd_scores,
    hint_loss,
    ofd_loss,
    ofd_margin,
    rkd_loss,
    simkd_loss,
)
from rld.losses.feature import _pool_to

# ----------------------------------------------------------------------------- brute force (float64)


def _windows(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """Adaptive average pooling's windows: [floor(i·n/m), ceil((i+1)·n/m)) for each output i."""
    return [(math.floor(i * n_in / n_out), math.ceil((i + 1) * n_in / n_out)) for i in range(n_out)]


def ref_pool(plane: list[list[float]], h: int, w: int) -> list[list[float]]:
    out = []
    for r0, r1 in _windows(len(plane), h):
        row = []
        for c0, c1 in _windows(len(plane[0]), w):
            cells = [plane[r][c] for r in range(r0, r1) for c in range(c0, c1)]
            row.append(sum(cells) / len(cells))
        out.append(row)
    return out


def ref_attention(sample: list, p: float) -> list[float]:
    """One sample's [c][h][w] → the L2-normalised channel mean of f^p, flattened."""
    c, h, w = len(sample), len(sample[0]), len(sample[0][0])
    q = [sum(sample[k][i][j] ** p for k in range(c)) / c for i in range(h) for j in range(w)]
    norm = max(math.sqrt(sum(v * v for v in q)), 1e-12)
    return [v / norm for v in q]


def ref_at_pair(fs: list, ft: list, p: float) -> float:
    """Σ over one pair: both maps pooled to (min H, min W), mean of (Q_s − Q_t)²."""
    h = min(len(fs[0][0]), len(ft[0][0]))
    w = min(len(fs[0][0][0]), len(ft[0][0][0]))
    total, count = 0.0, 0
    for s_n, t_n in zip(fs, ft):
        qs = ref_attention([ref_pool(plane, h, w) for plane in s_n], p)
        qt = ref_attention([ref_pool(plane, h, w) for plane in t_n], p)
        total += sum((x - y) ** 2 for x, y in zip(qs, qt))
        count += len(qs)
    return total / count


def ref_ofd_element(s: float, t: float, m: float) -> float:
    """The three published terms of OFD for one element (t already pooled)."""
    under = (s - m) ** 2 if (s > m and t <= m) else 0.0
    rest = (s - t) ** 2 if ((s > t and m < t <= 0) or t > 0) else 0.0
    return under + rest


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------- OFD on its boundaries

MARGIN = -0.5  # exactly representable: the teacher and the student can sit exactly on it


@pytest.mark.parametrize(
    "s,t,expected",
    [
        (1.0, MARGIN, 2.25),  # teacher on the margin: below-margin term (s − m)², counted once
        (-2.0, MARGIN, 0.0),  # ... and a student under the margin pays nothing
        (1.0, 0.0, 1.0),  # teacher exactly 0: the (m, 0] term, (s − t)² for a student above it
        (-1.0, 0.0, 0.0),  # ... and nothing for a student below a zero teacher (0 is not positive)
        (-1.0, 0.25, 1.5625),  # a positive teacher: plain (s − t)², whatever the student's side
        (MARGIN, -1.0, 0.0),  # a student exactly on the margin over a lower teacher: (s − m)² = 0
        (-0.25, -0.25, 0.0),  # student equal to a teacher in (m, 0]
        (0.5, -0.25, 0.5625),  # student above a teacher in (m, 0]
    ],
)
def test_ofd_loss_on_the_margin_and_on_zero(s, t, expected):
    assert ref_ofd_element(s, t, MARGIN) == expected
    student = torch.full((1, 1, 1, 1), s, dtype=torch.float64)
    teacher = torch.full((1, 1, 1, 1), t, dtype=torch.float64)
    got = ofd_loss(student, teacher, torch.tensor([MARGIN], dtype=torch.float64))
    assert got.dtype == torch.float64 and got.item() == expected


def test_ofd_loss_of_a_map_full_of_boundary_cases():
    # Two channels with margins -0.5 and -0.25; teachers on the margin, on 0, above and below.
    margin = torch.tensor([-0.5, -0.25], dtype=torch.float64)
    s = torch.tensor([[[[1.0, -1.0, 0.5, -0.5]], [[0.75, -0.25, 0.0, 2.0]]]], dtype=torch.float64)
    t = torch.tensor([[[[-0.5, 0.0, 0.0, -1.0]], [[-0.25, 0.0, -0.25, 0.5]]]], dtype=torch.float64)
    s, t = torch.cat([s, 0.5 * s]), torch.cat([t, t])  # B = 2: the sum is divided by 2
    expected = sum(
        ref_ofd_element(s[b, c, 0, j].item(), t[b, c, 0, j].item(), margin[c].item())
        for b in range(2)
        for c in range(2)
        for j in range(4)
    )
    assert ofd_loss(s, t, margin).item() == pytest.approx(expected / 2, rel=1e-15)


def test_ofd_loss_moves_the_margin_to_the_features_device():
    """The margin may be computed elsewhere (on the CPU) than the features; the meta device stands in
    for an accelerator."""
    s = torch.zeros(2, 3, 2, 2, device="meta")
    t = torch.zeros(2, 3, 4, 4, device="meta")
    got = ofd_loss(s, t, torch.tensor([-1.0, -0.5, -0.25]))
    assert (got.device.type, tuple(got.shape), got.dtype) == ("meta", (), torch.float32)


def test_rkd_loss_builds_its_diagonal_mask_on_the_inputs_device():
    got = rkd_loss(torch.zeros(4, 3, device="meta"), torch.zeros(4, 5, device="meta"))
    assert (got.device.type, tuple(got.shape), got.dtype) == ("meta", (), torch.float32)


# ----------------------------------------------------------------------------- compute dtype

_OFD_MARGIN32 = torch.tensor([-1.0, -0.5, -0.25])

# name: (call, shapes of the two inputs whose dtypes decide the compute dtype)
MIXED = {
    "at": (lambda a, b: at_loss([a], [b]), (2, 3, 4, 4), (2, 2, 4, 4)),
    "hint": (hint_loss, (2, 3, 4), (2, 3, 4)),
    "rkd": (rkd_loss, (4, 3), (4, 5)),
    "ofd_margin": (ofd_margin, (3,), (3,)),
    "ofd": (lambda a, b: ofd_loss(a, b, _OFD_MARGIN32), (2, 3, 2, 2), (2, 3, 4, 4)),
    "cams": (class_activation_maps, (2, 3, 2, 2), (4, 3)),
    "cat": (cat_loss, (2, 4, 4, 4), (2, 4, 6, 6)),
    "simkd": (simkd_loss, (2, 3, 2, 2), (2, 3, 4, 4)),
    "crd_scores": (crd_scores, (2, 3), (2, 5, 3)),
}


@pytest.mark.parametrize("name", list(MIXED))
@pytest.mark.parametrize("which", ["first", "second"])
def test_one_float64_input_makes_the_computation_float64(name, which):
    """A float64 input next to a float32 one: the float32 one is widened (exactly) and the work done
    in float64, so the result equals that of both inputs in float64, to the bit."""
    fn, shape_a, shape_b = MIXED[name]
    a, b = _randn(*shape_a, seed=1), _randn(*shape_b, seed=2)
    if which == "first":
        b = b.float()
    else:
        a = a.float()
    got = fn(a, b)
    want = fn(a.double(), b.double())
    assert got.dtype == want.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# 1 + 2⁻¹⁰ is a float16 number; the mean of a window [1, 1 + 2⁻¹⁰, 1, 1] is 1 + 2⁻¹², which float16
# rounds back to 1 but float32 holds.
_HALF_TEACHER = torch.tensor([[[[1.0, 1.0 + 2**-10], [1.0, 1.0]]]], dtype=torch.float16)


def test_ofd_loss_pools_a_half_precision_teacher_in_float32():
    student = torch.zeros(1, 1, 1, 1)
    got = ofd_loss(student, _HALF_TEACHER, torch.tensor([-1.0]))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx((1 + 2**-12) ** 2, rel=1e-6)  # a positive teacher: (0 − t)²


def test_simkd_loss_pools_a_half_precision_teacher_in_float32():
    got = simkd_loss(torch.zeros(1, 1, 1, 1, dtype=torch.float16), _HALF_TEACHER)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx((1 + 2**-12) ** 2, rel=1e-6)


def _ref_cams(feat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    f, w = feat.double().tolist(), weight.double().tolist()
    b, c, h, wd = feat.shape
    out = [
        [
            [[sum(w[k][ch] * f[n][ch][i][j] for ch in range(c)) for j in range(wd)] for i in range(h)]
            for k in range(len(w))
        ]
        for n in range(b)
    ]
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize(
    "feat_dtype,weight_dtype",
    [
        (torch.float16, torch.float16),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.bfloat16),
        (torch.bfloat16, torch.float16),
    ],
)
def test_class_activation_maps_of_half_precision_inputs_are_float32(feat_dtype, weight_dtype):
    # 16 channels of products near 1: a float16 sum would be off by ~1e-3, float32 by ~1e-6.
    feat = (1 + _randn(2, 16, 2, 3, seed=3).abs()).to(feat_dtype)
    weight = (1 + _randn(3, 16, seed=4).abs()).to(weight_dtype)
    got = class_activation_maps(feat, weight)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _ref_cams(feat, weight), rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- shapes and defaults


def test_at_loss_pools_each_side_of_a_non_square_pair_to_its_own_minimum():
    # Student 4x2, teacher 4x4: both are compared at (min H, min W) = 4x2 (not 2x2).
    fs, ft = _randn(2, 2, 4, 2, seed=5), _randn(2, 3, 4, 4, seed=6)
    want = ref_at_pair(fs.tolist(), ft.tolist(), 2.0)
    assert at_loss([fs], [ft]).item() == pytest.approx(want, rel=1e-12)
    assert at_loss([ft], [fs]).item() == pytest.approx(ref_at_pair(ft.tolist(), fs.tolist(), 2.0), rel=1e-12)


def test_pool_to_hands_back_a_map_that_already_fits():
    """No pooling at all when the size fits: CUDA's deterministic mode refuses to differentiate
    adaptive average pooling, so a student map of the right size must not go through it."""
    x = _randn(2, 3, 4, 2, seed=7)
    assert _pool_to(x, (4, 2)) is x
    pooled = _pool_to(x, (2, 1))
    want = [[ref_pool(plane, 2, 1) for plane in sample] for sample in x.tolist()]
    torch.testing.assert_close(pooled, torch.tensor(want, dtype=torch.float64), rtol=1e-15, atol=0)


def test_attention_map_defaults_to_p_2():
    feat = _randn(2, 3, 2, 2, seed=8)  # signed features: p = 2 and p = 3 differ
    want = torch.tensor([ref_attention(sample, 2.0) for sample in feat.tolist()], dtype=torch.float64)
    torch.testing.assert_close(attention_map(feat), want, rtol=1e-12, atol=1e-15)


def test_crd_scores_default_to_the_published_temperature():
    anchor = torch.nn.functional.normalize(_randn(2, 3, seed=9), dim=1)
    bank = torch.nn.functional.normalize(_randn(2, 4, 3, seed=10), dim=2)
    want = [
        [math.exp(sum(a * m for a, m in zip(anchor[n].tolist(), row)) / 0.07) for row in bank[n].tolist()]
        for n in range(2)
    ]
    torch.testing.assert_close(crd_scores(anchor, bank), torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)


def test_cat_loss_defaults_to_a_2x2_resolution():
    cs, ct = _randn(2, 3, 6, 6, seed=11), _randn(2, 3, 6, 6, seed=12)
    ps = [ref_pool(plane, 2, 2) for sample in cs.tolist() for plane in sample]
    pt = [ref_pool(plane, 2, 2) for sample in ct.tolist() for plane in sample]
    diffs = [(x - y) ** 2 for a, b in zip(ps, pt) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    assert cat_loss(cs, ct).item() == pytest.approx(sum(diffs) / len(diffs), rel=1e-12)


def _below_zero(z: float) -> float:
    """P(x < 0) for x ~ N(−z, 1) as ofd_margin computes it, for one channel."""
    return torch.special.ndtr(torch.tensor([z], dtype=torch.float64)).item()


def test_ofd_margin_on_both_sides_of_the_published_threshold():
    """m = −3|γ| where P(x < 0) = Φ(−β/|γ|) ≤ 0.001, E[x | x < 0] above: bisect to the two neighbouring
    float64 numbers z where P(x < 0) crosses 0.001, then β = −z with γ = 1 on each side."""
    lo, hi = -3.2, -3.0
    assert _below_zero(lo) <= 0.001 < _below_zero(hi)
    while math.nextafter(lo, 0.0) != hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _below_zero(mid) <= 0.001 else (lo, mid)
    one = torch.ones(1, dtype=torch.float64)
    assert ofd_margin(one, torch.tensor([-lo], dtype=torch.float64)).item() == -3.0
    pdf = math.exp(-(hi**2) / 2) / math.sqrt(2 * math.pi)
    got = ofd_margin(one, torch.tensor([-hi], dtype=torch.float64)).item()
    assert got == pytest.approx(-hi - pdf / _below_zero(hi), rel=1e-12)
    assert -0.5 < got < -0.1  # far from −3: the two branches really differ here


# ----------------------------------------------------------------------------- refusals, whole

M4 = _randn(4, 3, 4, 4, seed=90)
VEC = M4[0, 0, 0]  # (4,)


@pytest.mark.parametrize(
    "call,message",
    [
        # the lists of feature maps
        (lambda: at_loss([M4], M4), "teacher_feats must be a list of (B, C, H, W) tensors, got Tensor"),
        (lambda: at_loss(None, [M4]), "student_feats must be a list of (B, C, H, W) tensors, got NoneType"),
        (
            lambda: at_loss((f for f in [M4]), [M4]),
            "student_feats must be a list of (B, C, H, W) tensors, got generator",
        ),
        (lambda: at_loss([M4], iter([M4])), "teacher_feats must be a list of (B, C, H, W) tensors, got list_iterator"),
        (lambda: at_loss([M4], []), "teacher_feats must hold at least one feature map, got an empty list"),
        (lambda: at_loss([M4[0]], [M4]), "student_feats[0] must have shape (B, C, H, W), got (3, 4, 4)"),
        (lambda: at_loss([M4, M4], [M4, M4[0]]), "teacher_feats[1] must have shape (B, C, H, W), got (3, 4, 4)"),
        # FitNet and RKD want a batch dimension
        (lambda: hint_loss(VEC, VEC), "student_regressed must have shape (B, ...), got (4,)"),
        (lambda: hint_loss(M4[:, 0, 0], VEC), "teacher_feat must have shape (B, ...), got (4,)"),
        (lambda: rkd_loss(VEC, M4[:, 0, 0]), "student must have shape (B, D), got (4,)"),
        (lambda: rkd_loss(M4[:, 0, 0], VEC), "teacher must have shape (B, D), got (4,)"),
        # OFD's (C,) vectors
        (lambda: ofd_margin(M4[0, 0, :1, :3], M4[0, 0, :1, :3]), "bn_weight must have shape (C,), got (1, 3)"),
        (lambda: ofd_margin(M4[0, 0, 0, :3], M4[0, 0, :1, :3]), "bn_bias must have shape (C,), got (1, 3)"),
        (lambda: ofd_loss(M4, M4, M4[0, 0, :3, :1]), "margin must have shape (C,), got (3, 1)"),
        (lambda: ofd_loss(M4, M4, M4[0, 0, :1, :3]), "margin must have shape (C,), got (1, 3)"),
        # CAT-KD's classifier weight
        (
            lambda: class_activation_maps(M4, [[1.0, 2.0, 3.0]]),
            "classifier_weight must have shape (K, C) or (K, C, 1, 1), got None",
        ),
        (
            lambda: class_activation_maps(M4, M4[:, :, :2, :1]),
            "classifier_weight must have shape (K, C) or (K, C, 1, 1), got (4, 3, 2, 1)",
        ),
        (
            lambda: class_activation_maps(M4, M4[:, :, 0, 0].long()),
            "classifier_weight must be a floating-point tensor, got torch.int64",
        ),
        (
            lambda: class_activation_maps(M4, M4[:, :, :1, :1].int()),
            "classifier_weight must be a floating-point tensor, got torch.int32",
        ),
        (
            lambda: class_activation_maps(M4, M4[:0, :, 0, 0]),
            "classifier_weight must not be empty, got shape (0, 3)",
        ),
        (lambda: cat_loss(M4, M4, binarize_teacher=1), "binarize_teacher must be True or False, got 1"),
        # SimKD
        (
            lambda: simkd_loss(M4, M4[:3]),
            "student_projected and teacher_feat must have the same batch size B, got 4 and 3",
        ),
        (
            lambda: simkd_loss(M4[:, :, :, :2], M4[:, :, :2, :]),
            "student_projected is 4x2 but teacher_feat only 2x4: pool the student's feature to the teacher's "
            "size before the projector, as SimKD does",
        ),
        (
            lambda: simkd_loss(M4[:, :, :2, :], M4[:, :, :, :2]),
            "student_projected is 2x4 but teacher_feat only 4x2: pool the student's feature to the teacher's "
            "size before the projector, as SimKD does",
        ),
        # CRD
        (lambda: crd_scores("v", M4[:, :, 0]), "anchor must be a torch.Tensor of shape (B, D), got str"),
        (
            lambda: crd_scores(M4[:, 0, 0], None),
            "positives_and_negatives must be a torch.Tensor of shape (B, K + 1, D), got NoneType",
        ),
        (lambda: crd_scores(M4[:, 0, 0].long(), M4[:, 0]), "anchor must be a floating-point tensor, got torch.int64"),
        (
            lambda: crd_scores(M4[:, 0, 0], M4[:, 0].int()),
            "positives_and_negatives must be a floating-point tensor, got torch.int32",
        ),
        (lambda: crd_scores(M4[:0, 0, 0], M4[:0, 0]), "anchor must not be empty, got shape (0, 4)"),
        (
            lambda: crd_scores(M4[:1, 0, 0], M4[:1, :0, 0]),
            "positives_and_negatives must not be empty, got shape (1, 0, 4)",
        ),
        (lambda: crd_nce_loss([[1.0, 2.0]], 10), "scores must be a torch.Tensor of shape (B, K + 1), got list"),
        (lambda: crd_nce_loss(M4[:0, 0, 0, :2], 10), "scores must not be empty, got shape (0, 2)"),
    ],
)
def test_refusals_say_exactly_what_is_wrong(call, message):
    with pytest.raises(LossInputError) as err:
        call()
    assert str(err.value) == message
