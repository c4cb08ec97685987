"""Feature-distillation losses against independent brute-force float64 references (plain Python loops
and math), with gradient checks, properties and the error messages of bad input."""

from __future__ import annotations

import math

import pytest
import torch

from rld.losses import (
    LossInputError,
    at_loss,
    attention_map,
    binarize_cams,
    cat_loss,
    class_activation_maps,
    crd_nce_loss,
    crd_scores,
    hcl_loss,
    hint_loss,
    ofd_loss,
    ofd_margin,
    rkd_loss,
    simkd_loss,
)

# ----------------------------------------------------------------------------- brute force (float64)


def _pool_1d(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """The windows of adaptive average pooling: [floor(i·n/m), ceil((i+1)·n/m)) for each output i."""
    return [(math.floor(i * n_in / n_out), math.ceil((i + 1) * n_in / n_out)) for i in range(n_out)]


def ref_pool(plane, h_out: int, w_out: int):
    """Adaptive average pooling of one H × W plane (a list of rows)."""
    rows, cols = _pool_1d(len(plane), h_out), _pool_1d(len(plane[0]), w_out)
    out = []
    for r0, r1 in rows:
        row = []
        for c0, c1 in cols:
            cells = [plane[r][c] for r in range(r0, r1) for c in range(c0, c1)]
            row.append(sum(cells) / len(cells))
        out.append(row)
    return out


def ref_pool_map(f, h_out: int, w_out: int):
    """[b][c][h][w] lists pooled plane by plane."""
    return [[ref_pool(plane, h_out, w_out) for plane in sample] for sample in f]


def _flat(f) -> list[float]:
    """Every number of a nested list, in order."""
    if isinstance(f, (int, float)):
        return [f]
    return [v for part in f for v in _flat(part)]


def ref_mse(a, b) -> float:
    xs, ys = _flat(a), _flat(b)
    return sum((x - y) ** 2 for x, y in zip(xs, ys)) / len(xs)


def _shape(f) -> tuple[int, int, int, int]:
    return len(f), len(f[0]), len(f[0][0]), len(f[0][0][0])


def ref_attention(sample, p: float) -> list[float]:
    """One sample's [c][h][w] → the L2-normalised channel mean of f^p, flattened."""
    c, h, w = len(sample), len(sample[0]), len(sample[0][0])
    q = [sum(sample[k][i][j] ** p for k in range(c)) / c for i in range(h) for j in range(w)]
    norm = math.sqrt(sum(v * v for v in q))
    return [v / max(norm, 1e-12) for v in q]


def ref_at(student_feats, teacher_feats, p: float) -> float:
    total = 0.0
    for fs, ft in zip(student_feats, teacher_feats):
        b, _, hs, ws = _shape(fs)
        _, _, ht, wt = _shape(ft)
        h, w = min(hs, ht), min(ws, wt)
        fs, ft = ref_pool_map(fs, h, w), ref_pool_map(ft, h, w)
        sq = 0.0
        for n in range(b):
            qs, qt = ref_attention(fs[n], p), ref_attention(ft[n], p)
            sq += sum((x - y) ** 2 for x, y in zip(qs, qt))
        total += sq / (b * h * w)
    return total


def _smooth_l1(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def ref_rkd(s, t, wd: float, wa: float, squared: bool, eps: float) -> float:
    b = len(s)

    def distances(e):
        d = [[0.0] * b for _ in range(b)]
        for i in range(b):
            for j in range(b):
                if i != j:
                    sq = max(sum((x - y) ** 2 for x, y in zip(e[i], e[j])), eps)
                    d[i][j] = sq if squared else math.sqrt(sq)
        mu = sum(d[i][j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
        return [[v / mu for v in row] for row in d]

    def cosines(e):
        out = []
        for i in range(b):
            for j in range(b):
                for k in range(b):
                    u = [x - y for x, y in zip(e[j], e[i])]
                    v = [x - y for x, y in zip(e[k], e[i])]
                    nu = max(math.sqrt(sum(x * x for x in u)), 1e-12)
                    nv = max(math.sqrt(sum(x * x for x in v)), 1e-12)
                    out.append(sum(x * y for x, y in zip(u, v)) / (nu * nv))
        return out

    ds, dt = distances(s), distances(t)
    loss_d = sum(_smooth_l1(ds[i][j] - dt[i][j]) for i in range(b) for j in range(b)) / b**2
    loss_a = sum(_smooth_l1(x - y) for x, y in zip(cosines(s), cosines(t))) / b**3
    return wd * loss_d + wa * loss_a


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def ref_margin(gamma: list[float], beta: list[float]) -> list[float]:
    out = []
    for g, m in zip(gamma, beta):
        s = abs(g)
        if s == 0:
            out.append(min(m, 0.0))
        elif _phi(-m / s) > 0.001:
            pdf = math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
            out.append(m - s * pdf / _phi(-m / s))
        else:
            out.append(-3 * s)
    return out


def ref_ofd(fs, ft, margin) -> float:
    b, c, h, w = _shape(fs)
    ft = ref_pool_map(ft, h, w)
    total = 0.0
    for n in range(b):
        for k in range(c):
            m = margin[k]
            for i in range(h):
                for j in range(w):
                    s, t = fs[n][k][i][j], ft[n][k][i][j]
                    if t <= m:  # teacher below the margin: only a student above the margin pays
                        total += (s - m) ** 2 if s > m else 0.0
                    elif t <= 0:  # teacher between the margin and 0: only a student above it pays
                        total += (s - t) ** 2 if s > t else 0.0
                    else:  # a positive teacher: plain L2
                        total += (s - t) ** 2
    return total / b


def ref_hcl(student_feats, teacher_feats) -> float:
    total = 0.0
    for fs, ft in zip(student_feats, teacher_feats):
        h = _shape(fs)[2]
        loss, weight, weights = ref_mse(fs, ft), 1.0, 1.0
        for level in (4, 2, 1):
            if level < h:
                weight /= 2
                loss += weight * ref_mse(ref_pool_map(fs, level, level), ref_pool_map(ft, level, level))
                weights += weight
        total += loss / weights
    return total


def ref_crd(scores, n_data: int, eps: float) -> float:
    b, k = len(scores), len(scores[0]) - 1
    noise = k / n_data
    total = 0.0
    for row in scores:
        total += math.log(row[0] / (row[0] + noise + eps))
        for p in row[1:]:
            total += math.log(noise / (p + noise + eps))
    return -total / b


def ref_scores(anchor, bank, temperature: float):
    return [
        [math.exp(sum(a * m for a, m in zip(anchor[n], row)) / temperature) for row in bank[n]]
        for n in range(len(anchor))
    ]


def ref_cams(feat, weight):
    b, c, h, w = _shape(feat)
    return [
        [
            [[sum(weight[k][ch] * feat[n][ch][i][j] for ch in range(c)) for j in range(w)] for i in range(h)]
            for k in range(len(weight))
        ]
        for n in range(b)
    ]


def ref_cat(cs, ct, r: int, normalize: bool, binarize: bool) -> float:
    if binarize:
        out = []
        for sample in ct:
            maps = []
            for plane in sample:
                cells = _flat(plane)
                threshold = sum(abs(v) for v in cells) / len(cells)
                maps.append([[1.0 if v > threshold else 0.0 for v in row] for row in plane])
            out.append(maps)
        ct = out
    cs, ct = ref_pool_map(cs, r, r), ref_pool_map(ct, r, r)
    if normalize:

        def unit(f):
            out = []
            for sample in f:
                maps = []
                for plane in sample:
                    norm = max(math.sqrt(sum(v * v for v in _flat(plane))), 1e-12)
                    maps.append([[v / norm for v in row] for row in plane])
                out.append(maps)
            return out

        cs, ct = unit(cs), unit(ct)
    return ref_mse(cs, ct)


def ref_simkd(fs, ft) -> float:
    _, _, h, w = _shape(fs)
    return ref_mse(fs, ref_pool_map(ft, h, w))


# ----------------------------------------------------------------------------- helpers


def _randn(*shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def _close(actual: torch.Tensor, expected: float) -> None:
    assert actual.dim() == 0 and actual.dtype == torch.float64
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)


def _lists(feats):
    return [f.tolist() for f in feats]


# AT stage pairs: equal sizes, student larger (8 → 4), teacher larger (2 → 4), non-square maps, an odd
# pooling window (5 → 3), and different channel counts throughout.
AT_STUDENT = [(3, 4, 4, 4), (3, 2, 8, 8), (3, 5, 2, 2), (3, 3, 6, 4), (3, 2, 5, 5)]
AT_TEACHER = [(3, 6, 4, 4), (3, 4, 4, 4), (3, 3, 4, 4), (3, 2, 3, 5), (3, 4, 3, 3)]


# ----------------------------------------------------------------------------- golden values


@pytest.mark.parametrize("p", [2.0, 3.0, 1.5])
def test_at_golden_values_with_stage_shape_mismatches(p):
    fs = [_randn(*s, seed=i) for i, s in enumerate(AT_STUDENT)]
    ft = [_randn(*s, seed=10 + i) for i, s in enumerate(AT_TEACHER)]
    if p != int(p):  # a fractional power of a negative number is undefined: post-ReLU features
        fs, ft = [f.relu() for f in fs], [f.relu() for f in ft]
    _close(at_loss(fs, ft, p), ref_at(_lists(fs), _lists(ft), p))
    for f_s, f_t in zip(fs, ft):  # one pair at a time too
        _close(at_loss([f_s], [f_t], p), ref_at([f_s.tolist()], [f_t.tolist()], p))


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("b,ds,dt,scale", [(2, 3, 3, 1.0), (5, 4, 6, 1.0), (6, 3, 2, 10.0), (4, 5, 5, 0.01)])
def test_rkd_golden_values(b, ds, dt, scale, squared):
    s, t = _randn(b, ds, seed=b + ds, scale=scale), _randn(b, dt, seed=100 + b, scale=scale)
    _close(rkd_loss(s, t, squared=squared), ref_rkd(s.tolist(), t.tolist(), 25.0, 50.0, squared, 1e-12))
    _close(
        rkd_loss(s, t, distance_weight=2.0, angle_weight=0.5, squared=squared),
        ref_rkd(s.tolist(), t.tolist(), 2.0, 0.5, squared, 1e-12),
    )


def test_rkd_flattens_feature_maps_and_uses_eps_for_coincident_samples():
    s, t = _randn(4, 2, 3, 1, seed=1), _randn(4, 3, seed=2)
    s[3] = s[0]  # two identical student embeddings: their distance is the floor sqrt(eps)
    ref = ref_rkd(s.reshape(4, -1).tolist(), t.tolist(), 25.0, 50.0, False, 1e-4)
    _close(rkd_loss(s, t, eps=1e-4), ref)


def test_hint_and_simkd_golden_values():
    fs, ft = _randn(2, 3, 4, 5, seed=3), _randn(2, 3, 4, 5, seed=4)
    _close(hint_loss(fs, ft), ref_mse(fs.tolist(), ft.tolist()))
    _close(hint_loss(fs.reshape(2, -1), ft.reshape(2, -1)), ref_mse(fs.tolist(), ft.tolist()))
    # SimKD: the teacher's larger map (6x6 → 4x4, 5x3 → 2x3) is pooled to the projected student's size.
    for t_shape, s_shape in [((2, 3, 4, 4), (2, 3, 4, 4)), ((2, 3, 6, 6), (2, 3, 4, 4)), ((2, 3, 5, 3), (2, 3, 2, 3))]:
        s, t = _randn(*s_shape, seed=5), _randn(*t_shape, seed=6)
        _close(simkd_loss(s, t), ref_simkd(s.tolist(), t.tolist()))


def test_ofd_margin_golden_values_and_both_published_branches():
    gamma = _randn(40, seed=7, scale=2.0)
    beta = _randn(40, seed=8, scale=3.0)
    gamma[:4] = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    beta[:4] = torch.tensor([4.0, 4.0, 2.0, -1.0], dtype=torch.float64)  # Φ(−β/|γ|) ≤ 0.001 for the first three
    gamma[4:7] = 0.0  # γ = 0: the limit min(β, 0)
    beta[4:7] = torch.tensor([-0.7, 0.0, 1.3], dtype=torch.float64)
    got = ofd_margin(gamma, beta)
    want = ref_margin(gamma.tolist(), beta.tolist())
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert got[:3].tolist() == [-3.0, -3.0, -1.5]
    assert got[4:7].tolist() == [-0.7, 0.0, 0.0]
    assert (got <= 0).all()


def test_ofd_margin_is_the_mean_of_the_negative_part_of_the_gaussian():
    """E[x | x < 0] for x ~ N(β, γ²) by numerical integration (midpoint rule on [β − 12|γ|, 0])."""
    for g, m in [(1.0, 0.0), (2.0, 1.0), (0.5, -0.3), (-1.5, 2.5), (3.0, -4.0)]:
        s, lo, n = abs(g), m - 12 * abs(g), 40000
        step = (0 - lo) / n
        xs = [lo + (i + 0.5) * step for i in range(n)]
        dens = [math.exp(-(((x - m) / s) ** 2) / 2) for x in xs]
        expected = sum(x * d for x, d in zip(xs, dens)) / sum(dens)
        got = ofd_margin(torch.tensor([g], dtype=torch.float64), torch.tensor([m], dtype=torch.float64))
        assert got.item() == pytest.approx(expected, rel=1e-6, abs=1e-9), (g, m)


@pytest.mark.parametrize("t_size", [(4, 4), (8, 8), (5, 3)])
def test_ofd_loss_golden_values(t_size):
    c = 5
    margin = ofd_margin(_randn(c, seed=9), _randn(c, seed=10))
    fs = _randn(3, c, 4, 4, seed=11)
    ft = _randn(3, c, *t_size, seed=12)
    _close(ofd_loss(fs, ft, margin), ref_ofd(fs.tolist(), ft.tolist(), margin.tolist()))


def test_hcl_golden_values_across_levels():
    # Heights 8 (levels 4, 2, 1), 4 (2, 1), 3 (2, 1), 2 (1), 1 (none), and a non-square map.
    shapes = [(2, 3, 8, 8), (2, 4, 4, 4), (2, 2, 3, 3), (2, 5, 2, 2), (2, 6, 1, 1), (2, 2, 5, 7)]
    fs = [_randn(*s, seed=20 + i) for i, s in enumerate(shapes)]
    ft = [_randn(*s, seed=40 + i) for i, s in enumerate(shapes)]
    _close(hcl_loss(fs, ft), ref_hcl(_lists(fs), _lists(ft)))
    for f_s, f_t in zip(fs, ft):
        _close(hcl_loss([f_s], [f_t]), ref_hcl([f_s.tolist()], [f_t.tolist()]))


@pytest.mark.parametrize("b,k,n_data,scale", [(1, 1, 10, 1.0), (3, 4, 50000, 1e-4), (4, 16, 100, 0.3)])
def test_crd_golden_values(b, k, n_data, scale):
    g = torch.Generator().manual_seed(b * k)
    scores = torch.rand(b, k + 1, generator=g, dtype=torch.float64) * scale + 1e-6
    _close(crd_nce_loss(scores, n_data), ref_crd(scores.tolist(), n_data, 1e-7))
    _close(crd_nce_loss(scores, n_data, eps=0.0), ref_crd(scores.tolist(), n_data, 0.0))


def test_crd_scores_golden_values():
    anchor = torch.nn.functional.normalize(_randn(3, 4, seed=13), dim=1)
    bank = torch.nn.functional.normalize(_randn(3, 6, 4, seed=14), dim=2)
    for t in (0.07, 1.0):
        want = torch.tensor(ref_scores(anchor.tolist(), bank.tolist(), t), dtype=torch.float64)
        torch.testing.assert_close(crd_scores(anchor, bank, t), want, rtol=1e-12, atol=0)


def test_cams_and_cat_golden_values():
    feat = _randn(2, 3, 4, 5, seed=15)
    weight = _randn(6, 3, seed=16)
    cams = class_activation_maps(feat, weight)
    want = torch.tensor(ref_cams(feat.tolist(), weight.tolist()), dtype=torch.float64)
    torch.testing.assert_close(cams, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(class_activation_maps(feat, weight[:, :, None, None]), want, rtol=0, atol=0)
    cs, ct = _randn(2, 6, 4, 4, seed=17), _randn(2, 6, 7, 5, seed=18)  # different CAM sizes
    for r in (1, 2, 3):
        for normalize in (False, True):
            for binarize in (False, True):
                _close(
                    cat_loss(cs, ct, r, normalize=normalize, binarize_teacher=binarize),
                    ref_cat(cs.tolist(), ct.tolist(), r, normalize, binarize),
                )


# ----------------------------------------------------------------------------- gradients


def test_gradcheck_float64_with_respect_to_the_student():
    margin = ofd_margin(_randn(3, seed=30), _randn(3, seed=31))
    t_maps = [_randn(2, 3, 4, 4, seed=32), _randn(2, 2, 2, 2, seed=33)]
    t_emb = _randn(4, 5, seed=34)
    t_cams = _randn(2, 4, 6, 6, seed=35)
    checks = {
        "at": (lambda a, b: at_loss([a, b], t_maps), [(2, 2, 8, 8), (2, 3, 2, 2)]),
        "at_p3": (lambda a, b: at_loss([a, b], t_maps, 3.0), [(2, 2, 8, 8), (2, 3, 2, 2)]),
        "rkd": (lambda a: rkd_loss(a, t_emb), [(4, 3)]),
        "rkd_squared": (lambda a: rkd_loss(a, t_emb, squared=True), [(4, 3)]),
        "hint": (lambda a: hint_loss(a, t_maps[0]), [(2, 3, 4, 4)]),
        "ofd": (lambda a: ofd_loss(a, t_maps[0], margin), [(2, 3, 4, 4)]),
        "ofd_pooled": (lambda a: ofd_loss(a, t_maps[0], margin), [(2, 3, 2, 2)]),
        "hcl": (lambda a, b: hcl_loss([a, b], t_maps), [(2, 3, 4, 4), (2, 2, 2, 2)]),
        "cat": (lambda a: cat_loss(a, t_cams), [(2, 4, 4, 4)]),
        "cat_normalized": (lambda a: cat_loss(a, t_cams, 2, normalize=True, binarize_teacher=True), [(2, 4, 4, 4)]),
        "cams": (lambda a, w: class_activation_maps(a, w).pow(2).sum(), [(2, 3, 2, 3), (4, 3)]),
        "simkd": (lambda a: simkd_loss(a, t_maps[0]), [(2, 3, 2, 2)]),
        "crd_nce": (lambda a: crd_nce_loss(a.exp(), 20), [(3, 5)]),
        "crd_scores": (lambda a, m: crd_scores(a, m, 0.5).sum(), [(2, 3), (2, 4, 3)]),
    }
    for name, (fn, shapes) in checks.items():
        inputs = [_randn(*s, seed=50 + i).requires_grad_(True) for i, s in enumerate(shapes)]
        assert torch.autograd.gradcheck(fn, inputs), name


# ----------------------------------------------------------------------------- properties


def test_identical_student_and_teacher_give_zero():
    f = _randn(2, 3, 4, 4, seed=60)
    zero = torch.tensor(0.0, dtype=torch.float64)
    torch.testing.assert_close(at_loss([f, f[:, :, :2]], [f, f[:, :, :2]]), zero)
    torch.testing.assert_close(hint_loss(f, f), zero)
    torch.testing.assert_close(hcl_loss([f, f[:, :1]], [f, f[:, :1]]), zero)
    torch.testing.assert_close(simkd_loss(f, f), zero)
    torch.testing.assert_close(cat_loss(f, f, normalize=True), zero)
    torch.testing.assert_close(rkd_loss(f.reshape(2, -1), f.reshape(2, -1)), zero)


def test_at_ignores_the_scale_and_channel_count_of_the_features():
    """Attention is a normalised channel mean: the same map from a scaled or repeated feature gives 0."""
    f = _randn(2, 3, 4, 4, seed=61)
    zero = torch.tensor(0.0, dtype=torch.float64)
    torch.testing.assert_close(at_loss([5.0 * f], [f]), zero)
    torch.testing.assert_close(at_loss([f.repeat(1, 4, 1, 1)], [f]), zero)
    torch.testing.assert_close(attention_map(f), attention_map(0.1 * f))
    assert at_loss([f], [f.flip(3)]).item() > 1e-3


def test_rkd_sees_only_the_relations_between_samples():
    """Rotating, shifting and scaling the student's embedding space (even into another dimension)
    leaves every distance ratio and angle, hence the loss, unchanged."""
    t = _randn(6, 4, seed=62)
    s = _randn(6, 4, seed=63)
    q, _ = torch.linalg.qr(_randn(5, 5, seed=64))
    moved = 7.5 * torch.cat([s, torch.zeros(6, 1, dtype=torch.float64)], 1) @ q + 3.0
    for squared in (False, True):
        base = rkd_loss(s, t, squared=squared)
        torch.testing.assert_close(rkd_loss(moved, t, squared=squared), base, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(rkd_loss(0.01 * s, 40.0 * t, squared=squared), base, rtol=1e-9, atol=1e-12)
        assert rkd_loss(moved, s, squared=squared).item() == pytest.approx(0.0, abs=1e-10)
    # Each term on its own is a real loss: a different student moves both.
    for w in ((1.0, 0.0), (0.0, 1.0)):
        assert rkd_loss(s, t, *w).item() > 1e-3


def test_ofd_loss_only_penalizes_a_student_above_the_clipped_target():
    c = 4
    margin = ofd_margin(torch.ones(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64))
    t = -_randn(2, c, 3, 3, seed=65).abs() - 0.01  # a negative teacher everywhere
    target = torch.maximum(t, margin.reshape(1, -1, 1, 1))
    below = target - _randn(2, c, 3, 3, seed=66).abs()  # the student under max(t, m) everywhere
    s = below.clone().requires_grad_(True)
    loss = ofd_loss(s, t, margin)
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.equal(grad, torch.zeros_like(grad))
    above = target + 0.25
    torch.testing.assert_close(ofd_loss(above, t, margin), torch.tensor(2 * c * 9 * 0.25**2 / 2, dtype=torch.float64))
    # A positive teacher is plain L2, summed and divided by the batch size.
    tp = _randn(2, c, 3, 3, seed=67).abs() + 0.01
    sp = _randn(2, c, 3, 3, seed=68)
    torch.testing.assert_close(ofd_loss(sp, tp, margin), (sp - tp).pow(2).sum() / 2)


def test_hcl_divides_by_the_total_weight():
    """A difference that is constant over each map has the same MSE at every pooled level, so the
    weighted mean of the levels is that MSE."""
    fs = _randn(2, 3, 8, 8, seed=69)
    offset = _randn(1, 3, 1, 1, seed=70)
    want = offset.pow(2).mean()
    torch.testing.assert_close(hcl_loss([fs + offset], [fs]), want)
    torch.testing.assert_close(hcl_loss([fs + offset, fs[:, :, :1, :1] + offset], [fs, fs[:, :, :1, :1]]), 2 * want)


def test_crd_nce_rewards_a_high_positive_and_low_negatives():
    scores = torch.full((2, 5), 1e-3, dtype=torch.float64, requires_grad=True)
    loss = crd_nce_loss(scores, 1000)
    (grad,) = torch.autograd.grad(loss, scores)
    assert (grad[:, 0] < 0).all() and (grad[:, 1:] > 0).all()
    # Scores equal to the noise level K·P_n: every posterior is ½ (eps aside), the loss (K + 1)·log 2.
    at_noise = torch.full((3, 5), 4 / 1000, dtype=torch.float64)
    assert crd_nce_loss(at_noise, 1000, eps=0.0).item() == pytest.approx(5 * math.log(2), rel=1e-12)


def test_cams_average_to_the_bias_free_logits_and_binarize_to_zero_one():
    feat = _randn(3, 4, 5, 5, seed=71)
    weight = _randn(7, 4, seed=72)
    cams = class_activation_maps(feat, weight)
    torch.testing.assert_close(cams.mean(dim=(2, 3)), feat.mean(dim=(2, 3)) @ weight.t())
    binary = binarize_cams(cams)
    assert set(binary.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(binary.bool(), cams > cams.abs().mean(dim=(2, 3), keepdim=True))
    # At the CAMs' own resolution, without normalisation, CAT is a plain MSE.
    other = _randn(3, 7, 5, 5, seed=73)
    torch.testing.assert_close(cat_loss(cams, other, 5), torch.nn.functional.mse_loss(cams, other))


def test_simkd_equals_hint_when_the_shapes_match_and_pools_the_teacher_otherwise():
    s, t = _randn(2, 3, 4, 4, seed=74), _randn(2, 3, 8, 8, seed=75)
    torch.testing.assert_close(simkd_loss(s, t[:, :, :4, :4]), hint_loss(s, t[:, :, :4, :4]))
    pooled = torch.nn.functional.avg_pool2d(t, 2)
    torch.testing.assert_close(simkd_loss(s, t), hint_loss(s, pooled))


def test_low_precision_inputs_are_computed_in_float32():
    margin = ofd_margin(_randn(3, seed=80), _randn(3, seed=81))
    a, b = _randn(4, 3, 4, 4, seed=82), _randn(4, 3, 4, 4, seed=83)
    calls = {
        "at": lambda x, y: at_loss([x], [y]),
        "rkd": lambda x, y: rkd_loss(x.flatten(1), y.flatten(1)),
        "hint": hint_loss,
        "ofd": lambda x, y: ofd_loss(x, y, margin),
        "hcl": lambda x, y: hcl_loss([x], [y]),
        "cat": cat_loss,
        "simkd": simkd_loss,
        "crd": lambda x, y: crd_nce_loss(x.flatten(1).abs(), 100),
    }
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        x, y = a.to(dtype), b.to(dtype)
        for name, fn in calls.items():
            got = fn(x, y)
            assert got.dtype == torch.float32, (name, dtype)
            assert got.item() == pytest.approx(fn(x.double(), y.double()).item(), rel=1e-5), (name, dtype)
    assert ofd_margin(_randn(3, seed=80).float(), _randn(3, seed=81).float()).dtype == torch.float32


# ----------------------------------------------------------------------------- bad input

M4 = _randn(4, 3, 4, 4, seed=90)


@pytest.mark.parametrize(
    "call,message",
    [
        (
            lambda: at_loss([M4, M4], [M4]),
            "student_feats and teacher_feats must have the same number of feature maps, got 2 and 1",
        ),
        (
            lambda: at_loss([M4], [M4[:3]]),
            r"student_feats\[0\] and teacher_feats\[0\] must have the same batch size B, got 4 and 3",
        ),
        (lambda: at_loss([], []), "student_feats must hold at least one feature map, got an empty list"),
        (lambda: at_loss(M4, M4), "student_feats must be a list of \\(B, C, H, W\\) tensors, got Tensor"),
        (lambda: at_loss([M4], [M4[0]]), r"teacher_feats\[0\] must have shape \(B, C, H, W\), got \(3, 4, 4\)"),
        (lambda: at_loss([M4], [M4], p=0), "p must be > 0, got 0"),
        (
            lambda: hcl_loss([M4, M4], [M4, M4[:, :2]]),
            r"student_feats\[1\] and teacher_feats\[1\] must have the same shape, got \(4, 3, 4, 4\) and \(4, 2, 4",
        ),
        (lambda: hcl_loss([M4], [M4[:2]]), r"must have the same batch size B, got 4 and 2"),
        (
            lambda: rkd_loss(M4[:, 0, 0], M4[:3, 0, 0]),
            "student and teacher must have the same batch size B, got 4 and 3",
        ),
        (lambda: rkd_loss(M4[:1, 0, 0], M4[:1, 0, 0]), "rkd_loss needs a batch of at least 2 samples, got B = 1"),
        (lambda: rkd_loss(M4[:, 0, 0], M4[:, 0, 0], angle_weight=-1.0), "angle_weight must be a number >= 0, got -1.0"),
        (lambda: rkd_loss(M4[:, 0, 0], M4[:, 0, 0], eps=0.0), "eps must be > 0, got 0.0"),
        (
            lambda: hint_loss(M4, M4[:, :, :2]),
            r"student_regressed and teacher_feat must have the same shape, got \(4, 3, 4, 4\) and \(4, 3, 2, 4\)",
        ),
        (
            lambda: hint_loss(M4[:2], M4),
            "student_regressed and teacher_feat must have the same batch size B, got 2 and 4",
        ),
        (lambda: hint_loss(M4.long(), M4), "student_regressed must be a floating-point tensor, got torch.int64"),
        (
            lambda: ofd_loss(M4, M4[:2], M4[0, 0, 0, :3]),
            "student_feat and teacher_feat must have the same batch size B, got 4 and 2",
        ),
        (
            lambda: ofd_loss(M4, M4, M4[0, 0, 0]),
            "student_feat, teacher_feat and margin must have the same number of channels C, got 3, 3 and 4",
        ),
        (
            lambda: ofd_margin(M4[0, 0, 0], M4[0, 0, 0, :3]),
            r"bn_weight and bn_bias must have the same shape \(C,\), got \(4,\) and \(3,\)",
        ),
        (
            lambda: simkd_loss(M4, M4[:, :, :2, :2]),
            "student_projected is 4x4 but teacher_feat only 2x2: pool the student's feature",
        ),
        (
            lambda: simkd_loss(M4, M4[:, :2]),
            "student_projected and teacher_feat must have the same number of channels, got 3 and 2",
        ),
        (lambda: simkd_loss(M4, M4[:3]), "must have the same batch size B, got 4 and 3"),
        (
            lambda: cat_loss(M4, M4[:, :2]),
            "student_cams and teacher_cams must have the same number of classes K, got 3 and 2",
        ),
        (lambda: cat_loss(M4, M4[:1]), "student_cams and teacher_cams must have the same batch size B, got 4 and 1"),
        (lambda: cat_loss(M4, M4, 0), "resolution must be an integer >= 1, got 0"),
        (lambda: cat_loss(M4, M4, normalize="yes"), "normalize must be True or False, got 'yes'"),
        (lambda: class_activation_maps(M4, M4[0, 0]), "classifier_weight has 4 input channels but feat has 3"),
        (
            lambda: class_activation_maps(M4, M4[0, 0, 0]),
            r"classifier_weight must have shape \(K, C\) or \(K, C, 1, 1\), got \(4,\)",
        ),
        (
            lambda: crd_nce_loss(M4[:, 0, 0, :1].exp(), 100),
            r"scores must have shape \(B, K \+ 1\) with K >= 1 negatives, got \(4, 1\)",
        ),
        (
            lambda: crd_nce_loss(M4[:, 0, 0], 100),
            "scores must be >= 0 \\(exponentials divided by Z\\), got a minimum of",
        ),
        (
            lambda: crd_nce_loss(M4[:, 0, 0].exp(), 0),
            "n_data must be the number of training samples, an integer >= 1, got 0",
        ),
        (
            lambda: crd_nce_loss(M4[:, 0, 0].exp(), 10.5),
            "n_data must be the number of training samples, an integer >= 1, got 10.5",
        ),
        (lambda: crd_nce_loss(M4[:, 0].exp(), 100), r"scores must have shape \(B, K \+ 1\), got \(4, 4, 4\)"),
        (
            lambda: crd_scores(M4[:, 0, 0], M4[:3, 0], 0.07),
            r"positives_and_negatives must have shape \(B, K \+ 1, D\) = \(4, K \+ 1, 4\)",
        ),
        (lambda: crd_scores(M4[:, 0, 0], M4[:, 0], 0.0), "temperature must be > 0, got 0.0"),
    ],
)
def test_bad_input_raises_loss_input_error_saying_what_is_wrong(call, message):
    with pytest.raises(LossInputError, match=message):
        call()
