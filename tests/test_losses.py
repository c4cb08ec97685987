"""rld.losses against an independent brute-force float64 implementation (plain Python loops and math)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from rld.losses import (
    CTKDLoss,
    DKDLoss,
    KDLoss,
    LALoss,
    LossInputError,
    LRLoss,
    RCLoss,
    RLDLoss,
    ctkd_lambda,
    dkd_loss,
    kd_loss,
    label_revision_loss,
    mask_ge,
    rc_loss,
    rld_loss,
    rld_terms,
    standardize_logits,
    swap_teacher_logits,
)

# ----------------------------------------------------------------------------- brute force (float64)


def _log_softmax(row, t, keep=None):
    keep = range(len(row)) if keep is None else keep
    m = max(row[i] / t for i in keep)
    lse = m + math.log(sum(math.exp(row[i] / t - m) for i in keep))
    return {i: row[i] / t - lse for i in keep}


def _kl(log_p, log_q):
    return sum(math.exp(log_p[i]) * (log_p[i] - log_q[i]) for i in log_p)


def _binary(row, t, k):
    """[p_k, 1 - p_k] as a dict of logs, with 1 - p_k summed over the other classes (no cancellation)."""
    lp = _log_softmax(row, t)
    rest = [lp[i] for i in lp if i != k]
    m = max(rest)
    return {0: lp[k], 1: m + math.log(sum(math.exp(v - m) for v in rest))}


def ref_kd(zs, zt, t):
    return sum(t * t * _kl(_log_softmax(a, t), _log_softmax(b, t)) for b, a in zip(zs, zt)) / len(zs)


def ref_dkd(zs, zt, y, alpha, beta, t):
    total = 0.0
    for s, te, c in zip(zs, zt, y):
        tckd = _kl(_binary(te, t, c), _binary(s, t, c))
        keep = [i for i in range(len(s)) if i != c]
        nckd = _kl(_log_softmax(te, t, keep), _log_softmax(s, t, keep))
        total += t * t * (alpha * tckd + beta * nckd)
    return total / len(zs)


def ref_rld(zs, zt, y, alpha, beta, t, t_scd=None, mask="ge"):
    t_scd = t if t_scd is None else t_scd
    total = 0.0
    for s, te, c in zip(zs, zt, y):
        top = max(range(len(te)), key=lambda i: te[i])
        scd = t_scd * t_scd * _kl(_binary(te, t_scd, top), _binary(s, t_scd, c))
        if mask == "ge":
            keep = [i for i in range(len(te)) if not te[i] >= te[c]]
        else:
            keep = [i for i in range(len(te)) if not te[i] > te[c]]
        mcd = t * t * _kl(_log_softmax(te, t, keep), _log_softmax(s, t, keep)) if keep else 0.0
        total += alpha * scd + beta * mcd
    return total / len(zs)


def ref_swap(zt, y):
    out = []
    for row, c in zip(zt, y):
        row = list(row)
        top = max(range(len(row)), key=lambda i: row[i])
        row[top], row[c] = row[c], row[top]
        out.append(row)
    return out


def ref_rc(zs, y, t):
    target = []
    for row, c in zip(zs, y):
        row = list(row)
        row[c] = row[c] + max(row)
        target.append(row)
    return ref_kd(zs, target, t)


def ref_lr(zs, zt, y, lambda1, lambda2, eta):
    right, wrong = [], []
    for s, te, c in zip(zs, zt, y):
        top = max(range(len(te)), key=lambda i: te[i])
        if top == c:
            ce = -_log_softmax(s, 1.0)[c]
            mse = sum((a - b) ** 2 for a, b in zip(s, te)) / len(s)
            right.append(ce + lambda1 * mse)
        else:
            ps = [math.exp(v) for v in _log_softmax(s, 1.0).values()]
            pt = [math.exp(v) for v in _log_softmax(te, 1.0).values()]
            rho = eta / (max(pt) - pt[c] + 1.0)
            revised = [rho * p + (1 - rho) * (1.0 if i == c else 0.0) for i, p in enumerate(pt)]
            wrong.append(lambda2 * sum((a - b) ** 2 for a, b in zip(ps, revised)) / len(s))
    return (sum(right) / len(right) if right else 0.0) + (sum(wrong) / len(wrong) if wrong else 0.0)


def ref_standardize(z, eps):
    out = []
    for row in z:
        n = len(row)
        mean = sum(row) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / (n - 1))
        out.append([(v - mean) / (eps + std) for v in row])
    return out


# ----------------------------------------------------------------------------- helpers


def _inputs(b, c, scale, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(b, c, generator=g, dtype=torch.float64) * scale
    zt = torch.randn(b, c, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, c, (b,), generator=g)
    return zs.to(dtype), zt.to(dtype), y


CASES = [
    (b, c, scale, seed)
    for seed, (b, c) in enumerate([(1, 2), (3, 5), (16, 10), (8, 100)])
    for scale in (0.1, 1, 10, 50)
]


def _close(actual: torch.Tensor, expected: float, rel=1e-6):
    assert actual.dtype == torch.float64
    assert actual.item() == pytest.approx(expected, rel=rel, abs=1e-12)


# ----------------------------------------------------------------------------- golden values


@pytest.mark.parametrize("b,c,scale,seed", CASES)
def test_golden_values_float64(b, c, scale, seed):
    zs, zt, y = _inputs(b, c, scale, seed)
    ls, lt, ly = zs.tolist(), zt.tolist(), y.tolist()
    for t in (1.0, 4.0):
        _close(kd_loss(zs, zt, temperature=t), ref_kd(ls, lt, t))
        _close(dkd_loss(zs, zt, y, alpha=0.7, beta=3.0, temperature=t), ref_dkd(ls, lt, ly, 0.7, 3.0, t))
        _close(rld_loss(zs, zt, y, alpha=1.5, beta=8.0, temperature=t), ref_rld(ls, lt, ly, 1.5, 8.0, t))
        _close(rld_loss(zs, zt, y, temperature=t, mask="g"), ref_rld(ls, lt, ly, 1.0, 8.0, t, mask="g"))
        _close(rld_loss(zs, zt, y, temperature=t, scd_temperature=2.0), ref_rld(ls, lt, ly, 1.0, 8.0, t, 2.0))
        _close(rc_loss(zs, y, temperature=t), ref_rc(ls, ly, t))
    _close(label_revision_loss(zs, zt, y, lambda1=4.0, lambda2=1.0, eta=0.8), ref_lr(ls, lt, ly, 4.0, 1.0, 0.8))
    assert swap_teacher_logits(zt, y).tolist() == ref_swap(lt, ly)
    assert torch.allclose(standardize_logits(zs), torch.tensor(ref_standardize(ls, 1e-7), dtype=torch.float64))


def test_label_revision_with_all_right_or_all_wrong_teacher():
    zs, zt, _ = _inputs(6, 7, 2.0, 11)
    right = zt.argmax(dim=1)
    wrong = (right + 1) % 7
    for y in (right, wrong):
        _close(label_revision_loss(zs, zt, y), ref_lr(zs.tolist(), zt.tolist(), y.tolist(), 4.0, 1.0, 0.8))


def test_ties_in_teacher_logits_are_masked_with_the_true_class():
    zt = torch.tensor([[2.0, 2.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    y = torch.tensor([1, 2])
    assert mask_ge(zt, y).tolist() == [[True, True, False, False], [True, True, True, True]]
    assert mask_ge(zt, y, "g").tolist() == [[False, False, False, False], [False] * 4]
    zs, _, _ = _inputs(2, 4, 1.0, 3)
    _close(rld_loss(zs, zt, y), ref_rld(zs.tolist(), zt.tolist(), y.tolist(), 1.0, 8.0, 4.0))


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("alpha,beta,t", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 6.0, 3.0)])
def test_rld_equals_dkd_when_the_teacher_is_always_right(dtype, alpha, beta, t):
    zs, zt, _ = _inputs(32, 100, 3.0, 5, dtype)
    y = zt.argmax(dim=1)
    r = rld_loss(zs, zt, y, alpha=alpha, beta=beta, temperature=t)
    d = dkd_loss(zs, zt, y, alpha=alpha, beta=beta, temperature=t)
    assert torch.allclose(r, d, rtol=1e-6 if dtype == torch.float32 else 1e-12)


def test_rld_differs_from_dkd_when_the_teacher_is_wrong():
    zs, zt, _ = _inputs(16, 10, 3.0, 6)
    y = (zt.argmax(dim=1) + 1) % 10
    assert not torch.allclose(rld_loss(zs, zt, y), dkd_loss(zs, zt, y))


def test_identical_logits_give_zero_kd_and_rld_with_a_right_teacher():
    z, _, _ = _inputs(8, 10, 2.0, 7)
    y = z.argmax(dim=1)
    assert kd_loss(z, z).item() == pytest.approx(0.0, abs=1e-12)
    assert rld_loss(z, z, y).item() == pytest.approx(0.0, abs=1e-12)


def test_swap_is_identity_when_the_teacher_is_right_and_moves_the_max_otherwise():
    zt, _, _ = _inputs(4, 6, 1.0, 8)
    right = zt.argmax(dim=1)
    assert torch.equal(swap_teacher_logits(zt, right), zt)
    y = (right + 2) % 6
    swapped = swap_teacher_logits(zt, y)
    assert torch.equal(swapped.argmax(dim=1), y)
    assert torch.equal(swapped.sort(dim=1).values, zt.sort(dim=1).values)


def test_rc_target_is_detached():
    zs, _, y = _inputs(4, 5, 1.0, 9)
    zs.requires_grad_(True)
    (g_rc,) = torch.autograd.grad(rc_loss(zs, y, temperature=2.0), zs)
    # Gradient of T²·KL(q ‖ softmax(z/T)) w.r.t. z with q fixed: T·(softmax(z/T) − q) / B.
    target = zs.detach().clone()
    target[torch.arange(4), y] += zs.detach().amax(dim=1)
    expected = 2.0 * (torch.softmax(zs.detach() / 2.0, 1) - torch.softmax(target / 2.0, 1)) / 4
    assert torch.allclose(g_rc, expected, atol=1e-12)


# ----------------------------------------------------------------------------- gradients


def test_gradcheck_float64():
    # rc_loss is left out on purpose: its target is the detached student (see test_rc_target_is_detached).
    zs, zt, y = _inputs(4, 6, 1.5, 10)
    zs.requires_grad_(True)
    zt.requires_grad_(True)
    checks = {
        "kd": lambda a, b: kd_loss(a, b, 3.0),
        "dkd": lambda a, b: dkd_loss(a, b, y, 1.0, 8.0, 3.0),
        "rld": lambda a, b: rld_loss(a, b, y, 1.0, 8.0, 3.0),
        "rld_g": lambda a, b: rld_loss(a, b, y, mask="g"),
        "rld_scd_t": lambda a, b: rld_loss(a, b, y, scd_temperature=2.0),
        "lr": lambda a, b: label_revision_loss(a, b, y),
        "la": lambda a, b: kd_loss(a, swap_teacher_logits(b, y)),
        "standardize": lambda a, b: (standardize_logits(a) * b).sum(),
    }
    for name, fn in checks.items():
        assert torch.autograd.gradcheck(fn, (zs, zt)), name


def test_fused_path_equals_the_composite_path():
    """A teacher without gradient takes the fused closed-form path; one with gradient the composite path."""
    zs, zt, y = _inputs(12, 9, 2.0, 21)
    zt[0] = zt[0].clamp(max=zt[0, y[0]].item())  # ties with the true class
    zt[1, y[1]] = zt[1].min() - 1.0  # every class masked
    calls = {
        "dkd": lambda a, b: dkd_loss(a, b, y, 1.0, 8.0, 3.0),
        "rld": lambda a, b: rld_loss(a, b, y, 1.0, 8.0, 4.0),
        "rld_g": lambda a, b: rld_loss(a, b, y, 2.0, 1.0, 2.0, mask="g"),
        "rld_scd_t": lambda a, b: rld_loss(a, b, y, temperature=4.0, scd_temperature=1.5),
    }
    for name, fn in calls.items():
        s1, s2 = zs.clone().requires_grad_(True), zs.clone().requires_grad_(True)
        fused = fn(s1, zt)
        composite = fn(s2, zt.clone().requires_grad_(True))
        assert torch.allclose(fused, composite, rtol=1e-12), name
        (g1,) = torch.autograd.grad(fused, s1)
        (g2,) = torch.autograd.grad(composite, s2)
        assert torch.allclose(g1, g2, rtol=1e-10, atol=1e-14), name
        assert torch.autograd.gradcheck(lambda a, fn=fn: fn(a, zt), (zs.clone().requires_grad_(True),)), name


def _all_losses(zs, zt, y):
    return {
        "kd": kd_loss(zs, zt),
        "dkd": dkd_loss(zs, zt, y),
        "rld": rld_loss(zs, zt, y),
        "rld_g": rld_loss(zs, zt, y, mask="g"),
        "la": kd_loss(zs, swap_teacher_logits(zt, y)),
        "rc": rc_loss(zs, y),
        "lr": label_revision_loss(zs, zt, y),
        "ls": kd_loss(standardize_logits(zs), standardize_logits(zt), 2.0),
        "ctkd": CTKDLoss()(zs, zt, y, epoch=5)[0],
    }


def _reference_losses(zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The brute-force float64 values of every loss of :func:`_all_losses`."""
    ls, lt, ly = zs.double().tolist(), zt.double().tolist(), y.tolist()
    tau_t = 1 + 20 * torch.sigmoid(torch.tensor(1.0))  # CTKD's τ at θ = 1: a float32 tensor, and so is τ²
    tau, tau2 = float(tau_t), float(tau_t * tau_t)
    ce = sum(-_log_softmax(s, 1.0)[c] for s, c in zip(ls, ly)) / len(ls)
    return {
        "kd": ref_kd(ls, lt, 4.0),
        "dkd": ref_dkd(ls, lt, ly, 1.0, 8.0, 4.0),
        "rld": ref_rld(ls, lt, ly, 1.0, 8.0, 4.0),
        "rld_g": ref_rld(ls, lt, ly, 1.0, 8.0, 4.0, mask="g"),
        "la": ref_kd(ls, ref_swap(lt, ly), 4.0),
        "rc": ref_rc(ls, ly, 4.0),
        "lr": ref_lr(ls, lt, ly, 4.0, 1.0, 0.8),
        "ls": ref_kd(ref_standardize(ls, 1e-7), ref_standardize(lt, 1e-7), 2.0),
        "ctkd": 0.1 * ce + 0.9 * ref_kd(ls, lt, tau) / tau**2 * tau2,
    }


# Low-precision inputs are computed in float32: at |z| = 1e4, z/T = 2.5e3 is rounded to ~1.5e-4, which
# bounds the relative error of the losses (measured: ≤ 3.3e-5) and of the float32 gradients (≤ 1e-4).
# bfloat16/float16 gradients are stored in their own dtype (relative precision 2^-8 / 2^-11).
LOSS_REL = {torch.float64: 1e-12, torch.float32: 1e-4, torch.bfloat16: 1e-4, torch.float16: 1e-4}
GRAD_REL = {torch.float64: 1e-12, torch.float32: 1e-3, torch.bfloat16: 1e-2, torch.float16: 5e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("c", [2, 10, 100])
def test_extreme_logits_give_the_float64_reference_losses_and_gradients(dtype, c):
    """Logits of ±1e4: every loss equals the brute-force float64 value of the same (rounded) inputs,
    and its gradient the float64 gradient."""
    g = torch.Generator().manual_seed(c)
    # ±1e4 as required; for float16 ±1e3, since the true LR gradient at 1e4 (λ1·2·Δz/C ≈ 8e4) exceeds
    # float16's range (6.5e4) and so cannot be stored in a float16 .grad at all.
    big = 1e3 if dtype == torch.float16 else 1e4
    signs = torch.randint(0, 2, (8, c), generator=g) * 2 - 1
    zs = (signs * big).to(dtype).requires_grad_(True)
    zt = (torch.randn(8, c, generator=g) * big).clamp(-big, big).to(dtype)
    y = torch.randint(0, c, (8,), generator=g)
    reference = _reference_losses(zs.detach(), zt, y)
    zs64 = zs.detach().double().requires_grad_(True)
    exact = _all_losses(zs64, zt.double(), y)
    for name, loss in _all_losses(zs, zt, y).items():
        assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32), name
        assert loss.item() == pytest.approx(reference[name], rel=LOSS_REL[dtype], abs=1e-12), name
        if name == "ls" and dtype == torch.float16:
            continue  # at a constant row the true gradient of standardization is 1/eps = 1e7: beyond float16
        (grad,) = torch.autograd.grad(loss, zs)
        (grad64,) = torch.autograd.grad(exact[name], zs64)
        assert grad.dtype == dtype, name
        err = (grad.double() - grad64).abs().max() / grad64.abs().max()
        assert err <= GRAD_REL[dtype], (name, err.item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_class_masked_gives_zero_mcd_and_finite_gradients(dtype):
    # The true class carries the teacher's smallest logit: M_ge holds every class.
    zt = torch.tensor([[3.0, 2.0, 1.0, -1e4], [1e4, 0.0, 5.0, -2.0]], dtype=dtype)
    y = torch.tensor([3, 3])
    assert mask_ge(zt, y).all()
    zs = torch.randn(2, 4, dtype=dtype).requires_grad_(True)
    scd, mcd = rld_terms(zs, zt, y)
    assert mcd.item() == 0.0
    (grad,) = torch.autograd.grad(rld_loss(zs, zt, y), zs)
    assert torch.isfinite(grad).all()
    # Constant teacher rows (all tied) are fully masked too.
    flat = torch.zeros(2, 4, dtype=dtype)
    assert rld_terms(zs, flat, torch.tensor([0, 1]))[1].item() == 0.0


def test_standardize_constant_row_is_finite():
    z = torch.full((2, 5), 3.0, requires_grad=True)
    out = standardize_logits(z)
    assert torch.equal(out, torch.zeros(2, 5))
    (grad,) = torch.autograd.grad(out.sum(), z)
    assert torch.isfinite(grad).all()


def test_low_precision_inputs_are_computed_in_float32():
    """float16/bfloat16 logits give the float64 loss of the same rounded values, to float32 precision."""
    zs, zt, y = _inputs(16, 10, 3.0, 12)
    for dtype in (torch.float16, torch.bfloat16):
        s, t = zs.to(dtype), zt.to(dtype)
        for fn in (rld_loss, dkd_loss):
            got = fn(s, t, y)
            assert got.dtype == torch.float32
            assert got.item() == pytest.approx(fn(s.double(), t.double(), y).item(), rel=1e-6), (dtype, fn)
        assert kd_loss(s, t).item() == pytest.approx(kd_loss(s.double(), t.double()).item(), rel=1e-6), dtype


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda zs, zt, y: kd_loss(zs, zt[:, :5]), r"same shape \(B, C\), got \(4, 6\) and \(4, 5\)"),
        (lambda zs, zt, y: kd_loss(zs[0], zt[0]), r"student_logits must have shape \(B, C\), got \(6,\)"),
        (lambda zs, zt, y: kd_loss(zs, zt, temperature=0), "temperature must be > 0, got 0"),
        (lambda zs, zt, y: kd_loss(zs, zt, temperature=-1.0), "temperature must be > 0, got -1.0"),
        (lambda zs, zt, y: dkd_loss(zs, zt, y + 6), r"class indices in \[6, \d+\] but the logits have 6 classes"),
        (lambda zs, zt, y: rld_loss(zs, zt, y - 10), r"class indices in \[-\d+, -\d+\]"),
        (lambda zs, zt, y: rld_loss(zs, zt, y[:2]), r"target must have shape \(B,\) = \(4,\), got \(2,\)"),
        (lambda zs, zt, y: rld_loss(zs, zt, y.float()), "target must hold integer class indices"),
        (lambda zs, zt, y: rld_loss(zs, zt, y, mask="gt"), "mask must be one of 'ge', 'g', got 'gt'"),
        (lambda zs, zt, y: rld_loss(zs, zt, y, scd_temperature=0.0), "scd_temperature must be > 0"),
        (lambda zs, zt, y: rld_loss(zs, zt, y, alpha=-1.0), "alpha must be a number >= 0"),
        (lambda zs, zt, y: kd_loss(zs[:, :1], zt[:, :1]), "needs at least 2 classes"),
        (lambda zs, zt, y: kd_loss(zs.long(), zt), "must be a floating-point tensor"),
        (lambda zs, zt, y: swap_teacher_logits(zt, y + 100), "but the logits have 6 classes"),
        (lambda zs, zt, y: rc_loss(zs, y, temperature=0.0), "temperature must be > 0"),
        (lambda zs, zt, y: label_revision_loss(zs, zt, y, eta=float("nan")), "eta must be a number >= 0"),
        (lambda zs, zt, y: RLDLoss(mask="x"), "mask must be one of"),
        (lambda zs, zt, y: DKDLoss(temperature=0), "temperature must be > 0"),
    ],
)
def test_bad_input_raises_value_error_saying_what_is_wrong(call, message):
    zs, zt, y = _inputs(4, 6, 1.0, 13)
    with pytest.raises(ValueError, match=message) as info:
        call(zs, zt, y)
    assert isinstance(info.value, LossInputError)


# ----------------------------------------------------------------------------- modules


def test_rld_module_is_ce_plus_warmed_up_rld_loss():
    zs, zt, y = _inputs(8, 10, 2.0, 14)
    ce = torch.nn.functional.cross_entropy(zs, y)
    module = RLDLoss(alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=20)
    for epoch, w in ((1, 0.05), (10, 0.5), (20, 1.0), (200, 1.0)):
        total, parts = module(zs, zt, y, epoch=epoch)
        assert set(parts) == {"ce", "scd", "mcd"}
        assert torch.allclose(total, ce + w * rld_loss(zs, zt, y), rtol=1e-12)
        assert torch.allclose(sum(parts.values()), total, rtol=1e-12)
    total_t, _ = module(zs, zt, y, epoch=torch.tensor(10.0, dtype=torch.float64))
    assert torch.allclose(total_t, ce + 0.5 * rld_loss(zs, zt, y), rtol=1e-12)


def test_module_family_matches_the_functions():
    zs, zt, y = _inputs(8, 10, 2.0, 15)
    ce = torch.nn.functional.cross_entropy(zs, y)
    assert torch.allclose(KDLoss()(zs, zt, y)[0], 0.1 * ce + 0.9 * kd_loss(zs, zt, 4.0))
    assert torch.allclose(DKDLoss(beta=2.0)(zs, zt, y, epoch=40)[0], ce + dkd_loss(zs, zt, y, beta=2.0))
    la_total, la_parts = LALoss()(zs, zt, y)
    assert set(la_parts) == {"kd"} and torch.allclose(la_total, kd_loss(zs, swap_teacher_logits(zt, y)))
    assert torch.allclose(RCLoss()(zs, zt, y)[0], ce + kd_loss(zs, zt) + 0.1 * rc_loss(zs, y))
    assert torch.allclose(LRLoss()(zs, zt, y)[0], label_revision_loss(zs, zt, y))
    std = KDLoss(temperature=2.0, ce_weight=1.0, kd_weight=9.0, logit_standardization=True)(zs, zt, y)[0]
    expected = ce + 9.0 * kd_loss(standardize_logits(zs), standardize_logits(zt), 2.0)
    assert torch.allclose(std, expected)


def test_ctkd_curriculum_and_gradient_reversal():
    assert ctkd_lambda(0) == 0.0
    assert ctkd_lambda(5) == pytest.approx(-0.5)
    assert ctkd_lambda(10) == pytest.approx(-1.0) and ctkd_lambda(30) == pytest.approx(-1.0)
    zs, zt, y = _inputs(8, 10, 2.0, 16)
    loss = CTKDLoss()
    theta = loss.temperature.theta
    assert theta.item() == 1.0
    total, parts = loss(zs, zt, y, epoch=5)
    tau = 1 + 20 * torch.sigmoid(torch.tensor(1.0))
    assert parts["temperature"].item() == pytest.approx(tau.item())
    expected = 0.1 * torch.nn.functional.cross_entropy(zs, y) + 0.9 * kd_loss(zs, zt, tau.double())
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    (g_rev,) = torch.autograd.grad(total, theta)
    # The same loss with a plain (not reversed) temperature: the reversed gradient is λ(5) = −0.5 times it.
    theta_plain = torch.tensor(1.0, requires_grad=True)
    plain = 0.9 * kd_loss(zs, zt, 1 + 20 * torch.sigmoid(theta_plain))
    (g_plain,) = torch.autograd.grad(plain, theta_plain)
    assert g_rev.item() == pytest.approx(-0.5 * g_plain.item(), rel=1e-5)
    assert list(loss.parameters()) == [theta]
    # The epoch as a 0-d tensor (the static training step): the same λ and gradient, no host read.
    assert ctkd_lambda(torch.tensor(5.0)).item() == pytest.approx(-0.5)
    assert ctkd_lambda(torch.tensor(30.0)).item() == pytest.approx(-1.0)
    (g_tensor,) = torch.autograd.grad(loss(zs, zt, y, epoch=torch.tensor(5.0))[0], theta)
    assert g_tensor.item() == pytest.approx(g_rev.item(), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_kernel_equals_the_eager_kernel_and_the_brute_force(compiled_losses, dtype):
    """torch.compile fuses the DKD/RLD kernel (C++ on the CPU) without changing values or gradients;
    per mask, one compile for the first batch size and one (dynamic) for every other. Skipped only
    without a C++ compiler: with one, a compile that fails (and falls back to eager) fails the test."""
    fused, counter = compiled_losses
    rel = 1e-5 if dtype == torch.float32 else 1e-10
    compiles = []
    for i, (b, c, t) in enumerate([(12, 9, 3.0), (33, 9, 3.0), (20, 9, 3.0)]):
        zs, zt, y = _inputs(b, c, 3.0, 40 + i)
        zt[0] = zt[0].clamp(max=zt[0, y[0]].item())  # ties with the true class
        zt[1, y[1]] = zt[1].min() - 1.0  # every class masked
        zs, zt = zs.to(dtype), zt.to(dtype)
        for mask in (None, "ge", "g"):
            args = (zt, y, mask, t, 2.0 if mask == "g" else t, 1.0, 8.0)
            got = fused.run_kernel(zs, *args)
            want = fused.decoupled_kernel(zs, *args)
            for g, w in zip(got, want):
                assert g.dtype == dtype, (b, c, mask)
                assert torch.allclose(g, w, rtol=rel, atol=rel * w.abs().max().item()), (b, c, mask)
        s = zs.clone().requires_grad_(True)
        loss = rld_loss(s, zt, y, temperature=t)
        want = ref_rld(zs.double().tolist(), zt.double().tolist(), y.tolist(), 1.0, 8.0, t)
        assert loss.item() == pytest.approx(want, rel=10 * rel)
        (grad,) = torch.autograd.grad(loss, s)
        s_ref = zs.clone().requires_grad_(True)
        (grad_ref,) = torch.autograd.grad(rld_loss(s_ref, zt.clone().requires_grad_(True), y, temperature=t), s_ref)
        assert torch.allclose(grad, grad_ref, rtol=10 * rel, atol=10 * rel * grad_ref.abs().max().item())
        compiles.append(counter.frame_count)
    assert compiles == [3, 3, 3]  # DKD, RLD "ge", RLD "g", each dynamic from the start: no more
    assert fused._Compiled.failed == set()


def test_one_compiled_kernel_serves_a_batch_size_whatever_ran_before(loss_compiler):
    """Two runs of one configuration in one process (a sweep's, rld tune's) step with the same code:
    a batch size is served by the same compiled version before and after other sizes and weights."""
    fused, _ = loss_compiler
    versions, served = [], []

    def tracing_backend(gm, example_inputs):
        version = len(versions)
        versions.append(example_inputs)

        def run(*args):
            served.append(version)
            return gm.forward(*args)

        return run

    fused._Compiled.backend = tracing_backend

    def step(batch: int, beta: float):
        zs, zt, y = _inputs(batch, 10, 2.0, 7)
        return fused.run_kernel(zs, zt, y, "ge", 4.0, 4.0, 1.0, beta)

    first = step(64, 8.0)  # a first run: full batches ...
    step(16, 8.0)  # ... and its last partial one
    step(64, 2.0)  # another run, another weight
    again = step(64, 8.0)  # the first configuration once more
    assert served == [0, 0, 0, 0] and len(versions) == 1
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_a_kernel_that_cannot_be_compiled_runs_eagerly_with_one_warning(loss_compiler):
    fused, _ = loss_compiler

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C++ compiler found\nsecond line")

    fused._Compiled.backend = broken_backend
    zs, zt, y = _inputs(6, 5, 2.0, 50)
    expected = r"could not compile the DKD/RLD loss kernel for cpu \(RuntimeError: no C\+\+ compiler found\)"
    with pytest.warns(RuntimeWarning, match=expected):
        loss = rld_loss(zs, zt, y)
    _close(loss, ref_rld(zs.tolist(), zt.tolist(), y.tolist(), 1.0, 8.0, 4.0))
    assert "cpu" in fused._Compiled.failed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second try
        _close(rld_loss(zs, zt, y), ref_rld(zs.tolist(), zt.tolist(), y.tolist(), 1.0, 8.0, 4.0))


def test_a_student_sure_of_the_target_keeps_an_exact_binary_term():
    """1 − p_y underflows even in float64 here; the kernel takes it from a log-normaliser instead."""
    zs, zt, y = _inputs(10, 7, 2.0, 31)
    zs[torch.arange(10), y] = 1e5
    s1, s2 = zs.clone().requires_grad_(True), zs.clone().requires_grad_(True)
    loss = rld_loss(s1, zt, y)
    _close(loss, ref_rld(zs.tolist(), zt.tolist(), y.tolist(), 1.0, 8.0, 4.0), rel=1e-9)
    (grad,) = torch.autograd.grad(loss, s1)
    (grad_ref,) = torch.autograd.grad(rld_loss(s2, zt.clone().requires_grad_(True), y), s2)  # composite form
    assert torch.isfinite(grad).all() and torch.allclose(grad, grad_ref, rtol=1e-9, atol=1e-15)


def test_losses_trace_inside_a_callers_torch_compile_without_graph_breaks():
    """A user who compiles their whole step gets the kernel traced into their graph (fullgraph)."""
    zs, zt, y = _inputs(8, 10, 2.0, 60)
    s1, s2 = zs.clone().requires_grad_(True), zs.clone().requires_grad_(True)
    step = torch.compile(lambda a, b, c: RLDLoss()(a, b, c, torch.tensor(5.0))[0], backend="aot_eager", fullgraph=True)
    got = step(s1, zt, y)
    want = RLDLoss()(s2, zt, y, torch.tensor(5.0))[0]
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    (g1,) = torch.autograd.grad(got, s1)
    (g2,) = torch.autograd.grad(want, s2)
    assert torch.allclose(g1, g2, rtol=1e-10, atol=1e-14)
    torch._dynamo.reset()
