"""DIST, NKD, WTTM and MLKD against independent brute-force float64 references (plain Python loops
and math), properties that follow from their definitions, the loss modules, and input errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rld.losses import (
    DISTLoss,
    LossInputError,
    MLKDLoss,
    NKDLoss,
    WTTMLoss,
    dist_loss,
    dist_terms,
    dkd_terms,
    kd_loss,
    mlkd_loss,
    mlkd_mask_fractions,
    mlkd_terms,
    nkd_loss,
    nkd_terms,
    standardize_logits,
    wttm_loss,
    wttm_weights,
)

# ----------------------------------------------------------------------------- brute force (float64)


def _log_softmax(row, t=1.0, keep=None):
    keep = range(len(row)) if keep is None else keep
    m = max(row[i] / t for i in keep)
    lse = m + math.log(sum(math.exp(row[i] / t - m) for i in keep))
    return {i: row[i] / t - lse for i in keep}


def _softmax(row, t=1.0):
    lp = _log_softmax(row, t)
    return [math.exp(lp[i]) for i in range(len(row))]


def _kl(log_p, log_q):
    return sum(math.exp(log_p[i]) * (log_p[i] - log_q[i]) for i in log_p)


def _pearson(a, b, eps):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    na = math.sqrt(sum((x - ma) ** 2 for x in a))
    nb = math.sqrt(sum((y - mb) ** 2 for y in b))
    return num / (na * nb + eps)


def ref_dist(zs, zt, beta, gamma, tau, eps=1e-8):
    ys = [_softmax(r, tau) for r in zs]
    yt = [_softmax(r, tau) for r in zt]
    b, c = len(zs), len(zs[0])
    inter = 1 - sum(_pearson(ys[i], yt[i], eps) for i in range(b)) / b
    intra = 1 - sum(_pearson([ys[i][j] for i in range(b)], [yt[i][j] for i in range(b)], eps) for j in range(c)) / c
    return tau * tau * (beta * inter + gamma * intra)


def ref_nkd(zs, zt, y, gamma, tau):
    target_term = non_target = 0.0
    for s, t, k in zip(zs, zt, y):
        target_term += -math.exp(_log_softmax(t)[k]) * _log_softmax(s)[k]
        keep = [i for i in range(len(s)) if i != k]
        log_t_hat, log_s_hat = _log_softmax(t, tau, keep), _log_softmax(s, tau, keep)
        non_target += -sum(math.exp(log_t_hat[i]) * log_s_hat[i] for i in keep)
    return target_term / len(zs) + gamma * tau * tau * non_target / len(zs)


def ref_wttm(zs, zt, gamma):
    total = 0.0
    for s, t in zip(zs, zt):
        log_p = _log_softmax(t)
        powered = [math.exp(gamma * log_p[i]) for i in range(len(t))]  # p_i^γ
        u = sum(powered)
        log_p_tilde = {i: math.log(powered[i] / u) for i in range(len(t))}
        total += u * _kl(log_p_tilde, _log_softmax(s))
    return total / len(zs)


def _percentile(values, q):
    """np.percentile's default (linear) rule."""
    x = sorted(values)
    h = (len(x) - 1) * q / 100
    lo = math.floor(h)
    hi = min(lo + 1, len(x) - 1)
    return x[lo] + (h - lo) * (x[hi] - x[lo])


def _standardize(row, eps=1e-7):
    mean = sum(row) / len(row)
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
    return [(v - mean) / (eps + std) for v in row]


def ref_mlkd(sw, tw, ss, ts, temperature, percentile=50.0, standardize_kd=False):
    b, c = len(sw), len(sw[0])

    def kd(zs, zt, tau):
        if standardize_kd:
            zs, zt = [_standardize(r) for r in zs], [_standardize(r) for r in zt]
        return tau * tau * sum(_kl(_log_softmax(t, tau), _log_softmax(s, tau)) for s, t in zip(zs, zt)) / len(zs)

    def grams(zs, zt, tau):
        ps, pt = [_softmax(r, tau) for r in zs], [_softmax(r, tau) for r in zt]
        cc = sum(
            (sum(pt[n][i] * pt[n][j] for n in range(b)) - sum(ps[n][i] * ps[n][j] for n in range(b))) ** 2
            for i in range(c)
            for j in range(c)
        )
        bc = sum(
            (sum(pt[m][k] * pt[n][k] for k in range(c)) - sum(ps[m][k] * ps[n][k] for k in range(c))) ** 2
            for m in range(b)
            for n in range(b)
        )
        return cc / c, bc / b

    p = [_softmax(r) for r in tw]
    conf = [max(r) for r in p]
    class_conf = [sum(p[n][k] for n in range(b)) for k in range(c)]
    thr, class_thr = _percentile(conf, percentile), _percentile(class_conf, percentile)
    m = sum(v <= thr for v in conf) / b
    m_c = sum(v <= class_thr for v in class_conf) / c

    taus = [temperature, 3.0, 5.0, 2.0, 6.0]
    g = [grams(sw, tw, tau) for tau in taus]
    return {
        "kd_weak": m * sum(kd(sw, tw, tau) for tau in taus),
        "kd_strong": sum(kd(ss, ts, tau) for tau in taus[:3]) + sum(kd(sw, tw, tau) for tau in taus[3:]),
        "cc": m_c * sum(x[0] for x in g),
        "bc": m * sum(x[1] for x in g),
    }


# ----------------------------------------------------------------------------- helpers


def _logits(b, c, scale, seed, n=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    out = [(torch.randn(b, c, generator=g, dtype=torch.float64) * scale).to(dtype) for _ in range(n)]
    y = torch.randint(0, c, (b,), generator=g)
    return (*out, y)


def _t(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


CASES = [
    (b, c, scale, seed) for seed, (b, c) in enumerate([(2, 2), (3, 5), (16, 10), (7, 33)]) for scale in (0.3, 3, 30)
]

# ----------------------------------------------------------------------------- golden values


@pytest.mark.parametrize("b,c,scale,seed", CASES)
def test_dist_nkd_wttm_golden_values(b, c, scale, seed):
    zs, zt, y = _logits(b, c, scale, seed)
    ls, lt, ly = zs.tolist(), zt.tolist(), y.tolist()
    for tau in (1.0, 4.0):
        assert_close(dist_loss(zs, zt, beta=0.7, gamma=1.3, temperature=tau), _t(ref_dist(ls, lt, 0.7, 1.3, tau)))
        assert_close(nkd_loss(zs, zt, y, gamma=1.5, temperature=tau), _t(ref_nkd(ls, lt, ly, 1.5, tau)))
    assert_close(dist_loss(zs, zt, eps=0.0), _t(ref_dist(ls, lt, 1.0, 1.0, 4.0, eps=0.0)))
    assert_close(nkd_loss(zs, zt, y), _t(ref_nkd(ls, lt, ly, 3.5, 3.0)))
    for gamma in (0.1, 0.5, 1.0, 2.0):
        assert_close(wttm_loss(zs, zt, gamma), _t(ref_wttm(ls, lt, gamma)))


@pytest.mark.parametrize("b,c,scale,seed", [(1, 3, 1, 0), (4, 6, 2, 1), (7, 5, 5, 2), (12, 9, 1, 3), (6, 40, 3, 4)])
def test_mlkd_golden_values(b, c, scale, seed):
    sw, tw, ss, ts, _ = _logits(b, c, scale, seed, n=4)
    lists = [z.tolist() for z in (sw, tw, ss, ts)]
    for temperature, percentile, std in ((4.0, 50.0, False), (1.0, 50.0, False), (4.0, 30.0, True)):
        got = mlkd_terms(sw, tw, ss, ts, temperature, percentile, standardize_kd=std)
        want = ref_mlkd(*lists, temperature, percentile, standardize_kd=std)
        assert set(got) == set(want)
        for name in want:
            assert_close(got[name], _t(want[name]), msg=name)
        assert_close(mlkd_loss(sw, tw, ss, ts, temperature, percentile, std), _t(sum(want.values())))


# ----------------------------------------------------------------------------- gradients


def test_gradcheck_float64_wrt_student():
    zs, zt, y = _logits(5, 7, 1.5, 20)
    sw, tw, ss, ts, _ = _logits(6, 5, 1.5, 21, n=4)
    checks = {
        "dist": (lambda a: dist_loss(a, zt, 0.5, 2.0, 2.0), (zs,)),
        "nkd": (lambda a: nkd_loss(a, zt, y, 1.5, 2.0), (zs,)),
        "wttm": (lambda a: wttm_loss(a, zt, 0.3), (zs,)),
        "mlkd": (lambda a, b: mlkd_loss(a, tw, b, ts), (sw, ss)),
        "mlkd_std": (lambda a, b: mlkd_loss(a, tw, b, ts, 1.0, standardize_kd=True), (sw, ss)),
    }
    for name, (fn, inputs) in checks.items():
        inputs = tuple(x.clone().requires_grad_(True) for x in inputs)
        assert torch.autograd.gradcheck(fn, inputs), name


# ----------------------------------------------------------------------------- DIST properties


def test_dist_is_zero_when_the_student_softmax_is_a_shrunk_teacher_softmax():
    """ρ is invariant to a positive affine map of either argument: y_s = a·y_t + (1 − a)/C with one
    a > 0 for the batch keeps every row and every column perfectly correlated."""
    _, zt, _ = _logits(9, 6, 2.0, 30)
    tau, c = 2.0, 6
    y_t = torch.softmax(zt / tau, dim=1)
    shift = torch.randn(9, 1, dtype=torch.float64)  # per-row logit shifts leave the softmax alone
    zs = tau * torch.log(0.3 * y_t + 0.7 / c) + shift
    inter, intra = dist_terms(zs, zt, tau, eps=0.0)
    assert_close(inter, _t(0.0), atol=1e-12, rtol=0)
    assert_close(intra, _t(0.0), atol=1e-12, rtol=0)
    # One a per sample keeps the rows correlated (inter = 0) but not the columns (intra > 0).
    a = torch.linspace(0.1, 1.0, 9, dtype=torch.float64)[:, None]
    inter, intra = dist_terms(tau * torch.log(a * y_t + (1 - a) / c), zt, tau, eps=0.0)
    assert_close(inter, _t(0.0), atol=1e-12, rtol=0)
    assert intra.item() > 1e-3


def test_dist_terms_scale_with_tau_squared_and_are_symmetric():
    zs, zt, _ = _logits(8, 10, 3.0, 31)
    for tau in (0.5, 2.0, 4.0):
        for got, want in zip(dist_terms(zs, zt, tau), dist_terms(zs / tau, zt / tau, 1.0)):
            assert_close(got, tau**2 * want)
    for got, want in zip(dist_terms(zs, zt, 4.0), dist_terms(zt, zs, 4.0)):
        assert_close(got, want)


def test_dist_single_sample_and_constant_rows_are_finite():
    zs, zt, _ = _logits(1, 5, 1.0, 32)
    zs.requires_grad_(True)
    inter, intra = dist_terms(zs, zt, 4.0)
    assert intra.item() == 16.0  # a single sample's columns are constant: correlation 0
    (grad,) = torch.autograd.grad(inter + intra, zs)
    assert torch.isfinite(grad).all()
    flat = torch.zeros(3, 5, dtype=torch.float64, requires_grad=True)  # uniform student rows
    (grad,) = torch.autograd.grad(dist_loss(flat, _logits(3, 5, 1.0, 33)[1]), flat)
    assert torch.isfinite(grad).all()


# ----------------------------------------------------------------------------- NKD properties


def test_nkd_non_target_term_is_nckd_plus_the_teacher_entropy():
    """−Σ T̂ log Ŝ = KL(T̂ ‖ Ŝ) + H(T̂): NKD's non-target term is DKD's NCKD plus τ²·H(T̂)."""
    zs, zt, y = _logits(12, 9, 2.0, 40)
    for tau in (1.0, 3.0):
        target_term, non_target = nkd_terms(zs, zt, y, tau)
        nckd = dkd_terms(zs, zt, y, tau)[1]
        t_hat = torch.softmax((zt / tau).scatter(1, y[:, None], -math.inf), dim=1)
        entropy = -(t_hat * torch.log(t_hat.clamp_min(1e-300))).sum(dim=1).mean()
        assert_close(non_target, nckd + tau**2 * entropy)
        p_t, log_p_s = torch.softmax(zt, 1), torch.log_softmax(zs, 1)
        assert_close(target_term, -(p_t.gather(1, y[:, None]) * log_p_s.gather(1, y[:, None])).mean())
        assert_close(nkd_loss(zs, zt, y, gamma=0.0, temperature=tau), target_term)


def test_nkd_target_weight_is_detached_from_the_teacher():
    zs, zt, y = _logits(6, 5, 1.0, 41)
    zt.requires_grad_(True)
    target_term, non_target = nkd_terms(zs, zt, y, 2.0)
    assert not target_term.requires_grad
    (grad,) = torch.autograd.grad(non_target, zt)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# ----------------------------------------------------------------------------- WTTM properties


def test_wttm_with_gamma_one_is_kd_at_temperature_one():
    zs, zt, _ = _logits(10, 8, 3.0, 50)
    assert_close(wttm_weights(zt, 1.0), torch.ones(10, dtype=torch.float64))
    assert_close(wttm_loss(zs, zt, 1.0), kd_loss(zs, zt, 1.0))


def test_wttm_is_weighted_kd_towards_the_teacher_at_temperature_one_over_gamma():
    """p_t^γ / Σ p_t^γ = softmax(γ·z_t): each sample is U_b·KL(softmax(γ z_t) ‖ softmax(z_s))."""
    zs, zt, _ = _logits(6, 7, 2.0, 51)
    gamma = 0.25
    u = wttm_weights(zt, gamma)
    per_sample = [u[b] * kd_loss(zs[b : b + 1], gamma * zt[b : b + 1], 1.0) for b in range(6)]
    assert_close(wttm_loss(zs, zt, gamma), torch.stack(per_sample).mean())


def test_wttm_weights_lie_between_one_and_c_to_the_one_minus_gamma():
    c, gamma = 10, 0.2
    zt = torch.zeros(3, c, dtype=torch.float64)
    zt[1, 0] = 3.0
    zt[2, 0] = 1e4  # one-hot teacher
    u = wttm_weights(zt, gamma)
    assert_close(u[0], _t(c ** (1 - gamma)))  # uniform teacher: the largest weight
    assert 1.0 < u[1].item() < c ** (1 - gamma)
    assert_close(u[2], _t(1.0))
    zs = _logits(3, c, 1.0, 52)[0]
    kl_uniform = -math.log(c) - torch.log_softmax(zs[0], 0).mean()
    assert_close(wttm_loss(zs[:1], zt[:1], gamma), c ** (1 - gamma) * kl_uniform)


# ----------------------------------------------------------------------------- MLKD properties


def test_mlkd_is_zero_when_the_student_is_the_teacher():
    _, tw, _, ts, _ = _logits(8, 10, 2.0, 60, n=4)
    terms = mlkd_terms(tw.clone(), tw, ts.clone(), ts)
    for name, value in terms.items():
        assert_close(value, _t(0.0), atol=1e-14, rtol=0, msg=name)


def test_mlkd_mask_fractions():
    # Distinct confidences: an even batch masks half the samples, an odd one (B + 1) / 2 of them.
    for b, c in ((8, 10), (7, 9)):
        tw = _logits(b, c, 2.0, 61)[1]
        m, m_c = mlkd_mask_fractions(tw)
        assert m.item() == pytest.approx((b + (b % 2)) / (2 * b))
        assert m_c.item() == pytest.approx((c + (c % 2)) / (2 * c))
        assert [x.item() for x in mlkd_mask_fractions(tw, 100.0)] == [1.0, 1.0]
        assert [x.item() for x in mlkd_mask_fractions(tw, 0.0)] == [1 / b, 1 / c]
    # Ties at the threshold are in the mask: a constant teacher masks everything.
    assert [x.item() for x in mlkd_mask_fractions(torch.zeros(4, 5))] == [1.0, 1.0]


def test_mlkd_confidences_saturated_at_one_tie_in_the_compute_dtype():
    """With distinct confidences the fraction depends on B and the percentile only; a confident
    teacher's max probability rounds to exactly 1, and those ties put every sample in the mask."""
    zt = torch.zeros(4, 3)
    zt[:, 0] = torch.tensor([20.0, 25.0, 30.0, 1.0])  # softmax at temperature 1: 1, 1, 1, 0.58 in float32
    assert mlkd_mask_fractions(zt)[0].item() == 1.0
    assert mlkd_mask_fractions(zt.double())[0].item() == 0.5  # float64 keeps them apart
    zt64 = zt.double()
    zt64[:3, 0] = torch.tensor([60.0, 80.0, 100.0], dtype=torch.float64)  # distinct at any temperature > 1
    assert mlkd_mask_fractions(zt64)[0].item() == 1.0


def test_mlkd_terms_read_the_views_as_published():
    sw, tw, ss, ts, _ = _logits(8, 10, 2.0, 62, n=4)
    terms = mlkd_terms(sw, tw, ss, ts, temperature=4.0, percentile=100.0)
    assert_close(terms["kd_weak"], sum(kd_loss(sw, tw, t) for t in (4.0, 3.0, 5.0, 2.0, 6.0)))
    strong = sum(kd_loss(ss, ts, t) for t in (4.0, 3.0, 5.0)) + sum(kd_loss(sw, tw, t) for t in (2.0, 6.0))
    assert_close(terms["kd_strong"], strong)
    # The strong view enters kd_strong only.
    ss = ss.clone().requires_grad_(True)
    terms = mlkd_terms(sw, tw, ss, ts)
    for name in ("kd_weak", "cc", "bc"):
        assert not terms[name].requires_grad, name
    (grad,) = torch.autograd.grad(terms["kd_strong"], ss)
    assert grad.abs().sum() > 0


def test_mlkd_is_invariant_to_permuting_samples_or_classes():
    sw, tw, ss, ts, _ = _logits(9, 7, 2.0, 63, n=4)
    rows, cols = torch.randperm(9), torch.randperm(7)
    base = mlkd_loss(sw, tw, ss, ts)
    assert_close(mlkd_loss(*(z[rows] for z in (sw, tw, ss, ts))), base)
    assert_close(mlkd_loss(*(z[:, cols] for z in (sw, tw, ss, ts))), base)


def test_mlkd_standardization_reaches_the_kd_terms_only():
    sw, tw, ss, ts, _ = _logits(8, 10, 5.0, 64, n=4)
    raw = mlkd_terms(sw, tw, ss, ts)
    std = mlkd_terms(sw, tw, ss, ts, standardize_kd=True)
    assert_close(std["cc"], raw["cc"])
    assert_close(std["bc"], raw["bc"])
    z = [standardize_logits(x) for x in (sw, tw, ss, ts)]
    m, _ = mlkd_mask_fractions(tw)
    assert_close(std["kd_weak"], m * sum(kd_loss(z[0], z[1], t) for t in (4.0, 3.0, 5.0, 2.0, 6.0)))
    assert not torch.allclose(std["kd_weak"], raw["kd_weak"])


# ----------------------------------------------------------------------------- precision


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_and_low_precision_logits_give_the_float64_values(dtype):
    """Logits of ±1e4 in float32 / bfloat16: computed in float32, equal to float64 on the same values."""
    g = torch.Generator().manual_seed(70)
    views = [(torch.randn(8, 10, generator=g) * 1e4).to(dtype) for _ in range(4)]
    y = torch.randint(0, 10, (8,), generator=g)
    calls = {
        "dist": lambda a, b, c, d: dist_loss(a, b),
        "nkd": lambda a, b, c, d: nkd_loss(a, b, y),
        "wttm": lambda a, b, c, d: wttm_loss(a, b, 0.2),
        "mlkd": lambda a, b, c, d: mlkd_loss(a, b, c, d),
    }
    for name, fn in calls.items():
        s = views[0].clone().requires_grad_(True)
        s64 = views[0].double().requires_grad_(True)
        loss = fn(s, views[1], views[2], views[3])
        exact = fn(s64, *(v.double() for v in views[1:]))
        assert loss.dtype == torch.float32, name
        assert torch.isfinite(loss) and loss.item() == pytest.approx(exact.item(), rel=1e-4, abs=1e-6), name
        (grad,) = torch.autograd.grad(loss, s)
        (grad64,) = torch.autograd.grad(exact, s64)
        assert grad.dtype == dtype and torch.isfinite(grad.float()).all(), name
        scale = grad64.abs().max().clamp_min(1e-12)
        assert ((grad.double() - grad64).abs().max() / scale).item() <= 1e-2, name


# ----------------------------------------------------------------------------- modules


def _views(b=8, c=10, seed=80):
    sw, tw, ss, ts, y = _logits(b, c, 2.0, seed, n=4)
    return sw, tw, ss, ts, y


def _module_calls(sw, tw, ss, ts, y, ls=False, ce_weight=None):
    kw = {"logit_standardization": ls} | ({} if ce_weight is None else {"ce_weight": ce_weight})
    return {
        "dist": (DISTLoss(**kw)(sw, tw, y), {"ce", "inter", "intra"}),
        "nkd": (NKDLoss(**kw)(sw, tw, y), {"ce", "target", "non_target"}),
        "wttm": (WTTMLoss(gamma=0.2, beta=4.0, **kw)(sw, tw, y), {"ce", "wttm"}),
        "mlkd": (
            MLKDLoss(**kw)(sw, tw, y, student_strong_logits=ss, teacher_strong_logits=ts),
            {"ce", "kd_weak", "kd_strong", "cc", "bc"},
        ),
    }


def test_modules_parts_sum_to_total_and_match_the_functions():
    sw, tw, ss, ts, y = _views()
    ce = torch.nn.functional.cross_entropy(sw, y)
    ce_strong = torch.nn.functional.cross_entropy(ss, y)
    expected = {
        "dist": ce + 2.0 * dist_loss(sw, tw, 1.0, 1.0, 4.0),
        "nkd": ce + nkd_loss(sw, tw, y, 3.5, 3.0),
        "wttm": ce + 4.0 * wttm_loss(sw, tw, 0.2),
        "mlkd": 0.1 * (ce + ce_strong) + 0.9 * mlkd_loss(sw, tw, ss, ts, 4.0),
    }
    for name, ((total, parts), keys) in _module_calls(sw, tw, ss, ts, y).items():
        assert set(parts) == keys, name
        assert_close(sum(parts.values()), total, msg=name)
        assert_close(total, expected[name], msg=name)


def test_module_ce_weight_scales_the_ce_part_only():
    sw, tw, ss, ts, y = _views(seed=81)
    base = _module_calls(sw, tw, ss, ts, y, ce_weight=1.0)
    scaled = _module_calls(sw, tw, ss, ts, y, ce_weight=0.25)
    for name in base:
        (_, p1), (_, p2) = base[name][0], scaled[name][0]
        assert_close(p2["ce"], 0.25 * p1["ce"], msg=name)
        for key in p1.keys() - {"ce"}:
            assert_close(p2[key], p1[key], msg=(name, key))


def test_logit_standardization_changes_the_distillation_inputs_only():
    sw, tw, ss, ts, y = _views(seed=82)
    sw, tw, ss, ts = (5.0 * z for z in (sw, tw, ss, ts))
    ce = torch.nn.functional.cross_entropy(sw, y)
    ce_strong = torch.nn.functional.cross_entropy(ss, y)
    zs, zt = standardize_logits(sw), standardize_logits(tw)
    expected = {
        "dist": ce + 2.0 * dist_loss(zs, zt, 1.0, 1.0, 4.0),
        "nkd": ce + nkd_loss(zs, zt, y, 3.5, 3.0),
        "wttm": ce + 4.0 * wttm_loss(zs, zt, 0.2),
        "mlkd": 0.1 * (ce + ce_strong) + 0.9 * mlkd_loss(sw, tw, ss, ts, 4.0, standardize_kd=True),
    }
    plain = _module_calls(sw, tw, ss, ts, y)
    for name, ((total, parts), _) in _module_calls(sw, tw, ss, ts, y, ls=True).items():
        assert_close(total, expected[name], msg=name)
        assert_close(parts["ce"], plain[name][0][1]["ce"], msg=name)  # the CE term reads the raw logits
        assert not torch.allclose(total, plain[name][0][0]), name


def test_module_defaults_are_the_published_cifar100_settings():
    d, n, m = DISTLoss(), NKDLoss(), MLKDLoss()
    assert (d.beta, d.gamma, d.temperature, d.kd_weight, d.ce_weight) == (1.0, 1.0, 4.0, 2.0, 1.0)
    assert (n.gamma, n.temperature, n.ce_weight) == (3.5, 3.0, 1.0)
    assert (m.temperature, m.ce_weight, m.kd_weight, m.percentile) == (4.0, 0.1, 0.9, 50.0)
    assert not d.logit_standardization and not m.logit_standardization


# ----------------------------------------------------------------------------- bad input


def _call_mlkd_module_without_strong(sw, tw, ss, ts, y):
    return MLKDLoss()(sw, tw, y)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda sw, tw, ss, ts, y: dist_loss(sw, tw[:, :5]), r"same shape \(B, C\), got \(4, 6\) and \(4, 5\)"),
        (lambda sw, tw, ss, ts, y: dist_loss(sw, tw, temperature=0), "temperature must be > 0, got 0"),
        (lambda sw, tw, ss, ts, y: dist_loss(sw, tw, eps=-1.0), "eps must be a number >= 0, got -1.0"),
        (lambda sw, tw, ss, ts, y: dist_loss(sw, tw, beta=-1.0), "beta must be a number >= 0, got -1.0"),
        (
            lambda sw, tw, ss, ts, y: nkd_loss(sw, tw, y + 6),
            r"class indices in \[\d+, \d+\] but the logits have 6 classes",
        ),
        (lambda sw, tw, ss, ts, y: nkd_loss(sw, tw, y.float()), "target must hold integer class indices"),
        (lambda sw, tw, ss, ts, y: nkd_loss(sw, tw, y, gamma=float("nan")), "gamma must be a number >= 0, got nan"),
        (lambda sw, tw, ss, ts, y: wttm_loss(sw, tw, 0), "gamma must be > 0, got 0"),
        (lambda sw, tw, ss, ts, y: wttm_loss(sw, tw, None), "WTTM needs gamma"),
        (lambda sw, tw, ss, ts, y: wttm_weights(tw[0], 0.5), r"teacher_logits must have shape \(B, C\), got \(6,\)"),
        (
            lambda sw, tw, ss, ts, y: mlkd_loss(sw, tw, ss[:2], ts),
            r"student_strong_logits must have the shape .*\(2, 6\)",
        ),
        (lambda sw, tw, ss, ts, y: mlkd_loss(sw, tw, ss, ts.long()), "teacher_strong_logits must be a floating-point"),
        (lambda sw, tw, ss, ts, y: mlkd_loss(sw, tw, ss, ts.tolist()), "teacher_strong_logits must be a torch.Tensor"),
        (
            lambda sw, tw, ss, ts, y: mlkd_loss(sw, tw, ss, ts, percentile=101),
            r"percentile must be a number in \[0, 100\]",
        ),
        (lambda sw, tw, ss, ts, y: mlkd_loss(sw[:, :1], tw[:, :1], ss[:, :1], ts[:, :1]), "needs at least 2 classes"),
        (_call_mlkd_module_without_strong, "MLKD needs the logits of the strongly augmented view too"),
        (lambda sw, tw, ss, ts, y: DISTLoss()(sw, tw, y[:3]), r"target must have shape \(B,\) = \(4,\), got \(3,\)"),
        (lambda sw, tw, ss, ts, y: WTTMLoss(gamma=0.5), "WTTM needs beta"),
        (lambda sw, tw, ss, ts, y: WTTMLoss(beta=1.0), "WTTM needs gamma"),
        (lambda sw, tw, ss, ts, y: NKDLoss(temperature=-2.0), "temperature must be > 0, got -2.0"),
        (lambda sw, tw, ss, ts, y: MLKDLoss(percentile=-1), r"percentile must be a number in \[0, 100\], got -1"),
    ],
)
def test_bad_input_raises_loss_input_error_saying_what_is_wrong(call, message):
    sw, tw, ss, ts, y = _logits(4, 6, 1.0, 90, n=4)
    with pytest.raises(LossInputError, match=message):
        call(sw, tw, ss, ts, y)
