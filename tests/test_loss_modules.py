"""The loss modules of rld.losses pass every parameter to its term.

The golden-value tests pin the pure functions; here each module is built with a value other than
its default for every parameter (a module that dropped one would fall back to the function's
default and pass a test at the defaults), with and without logit standardization, inside and after
the warm-up, with a float and a 0-d tensor epoch, and its parts are compared with the functions.
"""

from __future__ import annotations

import inspect
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

from rld import losses
from rld.losses import (
    ABKDLoss,
    CRLDLoss,
    CTKDLoss,
    DISTLoss,
    DKDLoss,
    KDLoss,
    LALoss,
    LRLoss,
    MLKDLoss,
    NKDLoss,
    RCLoss,
    RLDLoss,
    WTTMLoss,
    ab_divergence,
    crld_terms,
    dist_terms,
    dkd_loss,
    dkd_terms,
    kd_loss,
    label_revision_loss,
    mlkd_terms,
    nkd_terms,
    rc_loss,
    rld_loss,
    rld_terms,
    standardize_logits,
    swap_teacher_logits,
    wttm_loss,
)


def _inputs(seed: int = 0, b: int = 6, c: int = 7):
    g = torch.Generator().manual_seed(seed)
    zs, zt = (
        3 * torch.randn(b, c, generator=g, dtype=torch.float64),
        3 * torch.randn(b, c, generator=g, dtype=torch.float64),
    )
    y = torch.randint(0, c, (b,), generator=g)
    y[0] = zt[0].argmax()  # at least one sample the teacher gets right, and (seed 0) others it gets wrong
    return zs, zt, y


def _close(parts: dict, want: dict) -> None:
    assert set(parts) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(parts[k], torch.as_tensor(v, dtype=torch.float64), rtol=1e-10, atol=1e-12, msg=k)


def _ce(zs, y, w):
    return w * F.cross_entropy(zs, y)


def _std(on: bool, *z):
    return tuple(standardize_logits(t) for t in z) if on else z


EPOCHS = [3.0, 25.0, torch.tensor(3.0, dtype=torch.float64), torch.tensor(25.0, dtype=torch.float64)]


@pytest.mark.parametrize("std", [False, True])
def test_kd_la_rc_take_every_parameter(std):
    zs, zt, y = _inputs()
    s, t = _std(std, zs, zt)
    total, parts = KDLoss(temperature=2.5, ce_weight=0.3, kd_weight=1.7, logit_standardization=std)(zs, zt, y)
    _close(parts, {"ce": _ce(zs, y, 0.3), "kd": 1.7 * kd_loss(s, t, 2.5)})
    torch.testing.assert_close(total, parts["ce"] + parts["kd"])
    _, parts = LALoss(temperature=2.5, kd_weight=1.7, ce_weight=0.3, logit_standardization=std)(zs, zt, y)
    s_la, t_la = _std(std, zs, swap_teacher_logits(zt, y))
    _close(parts, {"ce": _ce(zs, y, 0.3), "kd": 1.7 * kd_loss(s_la, t_la, 2.5)})
    _, parts = LALoss(temperature=2.5, kd_weight=1.7, logit_standardization=std)(zs, zt, y)  # no CE part at weight 0
    assert set(parts) == {"kd"}
    _, parts = RCLoss(temperature=2.5, ce_weight=0.3, kd_weight=1.7, rc_weight=0.6, logit_standardization=std)(
        zs, zt, y
    )
    _close(parts, {"ce": _ce(zs, y, 0.3), "kd": 1.7 * kd_loss(s, t, 2.5), "rc": 0.6 * rc_loss(s, y, 2.5)})


@pytest.mark.parametrize("std", [False, True])
@pytest.mark.parametrize("epoch", EPOCHS, ids=["3", "25", "tensor3", "tensor25"])
def test_dkd_and_rld_take_every_parameter_inside_and_after_the_warm_up(std, epoch):
    zs, zt, y = _inputs(1)
    s, t = _std(std, zs, zt)
    w = min(float(epoch) / 10.0, 1.0)  # warm-up of 10 epochs: 0.3 inside it, 1 after
    dkd = DKDLoss(alpha=0.7, beta=3.0, temperature=2.5, warmup_epochs=10, ce_weight=0.4, logit_standardization=std)
    _, parts = dkd(zs, zt, y, epoch)
    tckd, nckd = dkd_terms(s, t, y, 2.5)
    _close(parts, {"ce": _ce(zs, y, 0.4), "tckd": w * 0.7 * tckd, "nckd": w * 3.0 * nckd})
    for mask in ("ge", "g"):
        rld = RLDLoss(
            alpha=0.7, beta=3.0, temperature=2.5, scd_temperature=1.5, warmup_epochs=10, mask=mask, ce_weight=0.4,
            logit_standardization=std,
        )  # fmt: skip
        _, parts = rld(zs, zt, y, epoch)
        scd, mcd = rld_terms(s, t, y, 2.5, 1.5, mask)
        _close(parts, {"ce": _ce(zs, y, 0.4), "scd": w * 0.7 * scd, "mcd": w * 3.0 * mcd})


def test_lr_takes_every_parameter():
    zs, zt, y = _inputs(2)
    _, parts = LRLoss(lambda1=2.0, lambda2=0.5, eta=0.6)(zs, zt, y)
    assert set(parts) == {"lr"}
    torch.testing.assert_close(parts["lr"], label_revision_loss(zs, zt, y, 2.0, 0.5, 0.6))


@pytest.mark.parametrize("std", [False, True])
def test_dist_nkd_wttm_abkd_take_every_parameter(std):
    zs, zt, y = _inputs(3)
    s, t = _std(std, zs, zt)
    _, parts = DISTLoss(beta=0.5, gamma=1.5, temperature=2.5, kd_weight=3.0, ce_weight=0.3, logit_standardization=std)(
        zs, zt, y
    )
    inter, intra = dist_terms(s, t, 2.5)
    _close(parts, {"ce": _ce(zs, y, 0.3), "inter": 3.0 * 0.5 * inter, "intra": 3.0 * 1.5 * intra})
    _, parts = NKDLoss(gamma=2.0, temperature=2.5, ce_weight=0.3, logit_standardization=std)(zs, zt, y)
    target, non_target = nkd_terms(s, t, y, 2.5)
    _close(parts, {"ce": _ce(zs, y, 0.3), "target": target, "non_target": 2.0 * non_target})
    _, parts = WTTMLoss(gamma=0.3, beta=5.0, ce_weight=0.3, logit_standardization=std)(zs, zt, y)
    _close(parts, {"ce": _ce(zs, y, 0.3), "wttm": 5.0 * wttm_loss(s, t, 0.3)})
    _, parts = ABKDLoss(alpha=0.6, beta=0.4, temperature=2.5, kd_weight=5.0, ce_weight=0.3, logit_standardization=std)(
        zs, zt, y
    )
    divergence = ab_divergence(s, t, 0.6, 0.4, 2.5) * (2.5**2 if std else 1.0)  # AB-LSD multiplies by T²
    _close(parts, {"ce": _ce(zs, y, 0.3), "abkd": 5.0 * divergence})


@pytest.mark.parametrize("std", [False, True])
def test_mlkd_and_crld_take_every_parameter(std):
    zs, zt, y = _inputs(4)
    ss, ts, _ = _inputs(5)
    ce = _ce(zs, y, 0.3) + _ce(ss, y, 0.3)
    loss = MLKDLoss(temperature=2.5, ce_weight=0.3, kd_weight=1.7, percentile=30.0, logit_standardization=std)
    _, parts = loss(zs, zt, y, 1, student_strong_logits=ss, teacher_strong_logits=ts)
    terms = mlkd_terms(zs, zt, ss, ts, 2.5, 30.0, standardize_kd=std)
    _close(parts, {"ce": ce, **{k: 1.7 * v for k, v in terms.items()}})
    if std:
        return  # CRLD with logit standardization is refused (tests/test_crld.py)
    crld = CRLDLoss(temperature=2.5, tau_w=0.3, tau_s=0.1, within_weight=1.5, cross_weight=0.7, ce_weight=0.3)
    _, parts = crld(zs, zt, y, 1, student_strong_logits=ss, teacher_strong_logits=ts)
    within, cross = crld_terms(zs, zt, ss, ts, 2.5, 0.3, 0.1)
    _close(parts, {"ce": ce, "within": 1.5 * within, "cross": 0.7 * cross})


@pytest.mark.parametrize("std", [False, True])
def test_ctkd_takes_every_parameter(std):
    zs, zt, y = _inputs(6)
    s, t = _std(std, zs, zt)
    loss = CTKDLoss(ce_weight=0.3, kd_weight=1.7, t_min=2.0, t_range=5.0, ramp_epochs=4.0, logit_standardization=std)
    assert (loss.temperature.t_min, loss.temperature.t_range, loss.temperature.ramp_epochs) == (2.0, 5.0, 4.0)
    _, parts = loss(zs, zt, y, 2.0)
    tau = parts.pop("temperature")
    assert tau.item() == pytest.approx(2.0 + 5.0 * torch.sigmoid(torch.tensor(1.0)).item(), rel=1e-6)  # θ starts at 1
    _close(parts, {"ce": _ce(zs, y, 0.3), "kd": 1.7 * kd_loss(s, t, tau)})


@pytest.mark.parametrize("kind", ["dkd", "rld-ge", "rld-g"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_kernels_gradients_of_each_term_equal_the_composite_forms(kind, dtype):
    """dkd_terms / rld_terms run the closed-form kernel for a teacher without gradient and the
    composite form for one with: the student's gradient of each term alone, and of weighted sums
    (a module's parts, the α/β-weighted loss), agree."""
    zs, zt, y = _inputs(7, b=8, c=9)
    zs, zt = zs.to(dtype), zt.to(dtype)

    def terms(student, teacher):
        if kind == "dkd":
            return dkd_terms(student, teacher, y, 2.5)
        return rld_terms(student, teacher, y, 2.5, 1.5, kind.split("-")[1])

    tol = {"rtol": 1e-5, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-13}
    for weights in ((1.0, 0.0), (0.0, 1.0), (0.3, 1.7)):
        grads = []
        for teacher_grad in (False, True):  # the kernel, then the composite form
            s = zs.clone().requires_grad_(True)
            t = zt.clone().requires_grad_(teacher_grad)
            first, second = terms(s, t)
            loss = weights[0] * first if weights[1] == 0 else weights[1] * second
            if weights[0] and weights[1]:
                loss = weights[0] * first + weights[1] * second
            (grad,) = torch.autograd.grad(loss, s)
            grads.append(grad)
        torch.testing.assert_close(grads[0], grads[1], **tol, msg=f"{kind} {weights}")
        assert grads[0].abs().sum() > 0
    # the α/β-weighted loss, whose gradient the kernel sums itself
    for teacher_grad in (False, True):
        s = zs.clone().requires_grad_(True)
        t = zt.clone().requires_grad_(teacher_grad)
        if kind == "dkd":
            loss = dkd_loss(s, t, y, alpha=0.3, beta=1.7, temperature=2.5)
        else:
            loss = rld_loss(s, t, y, alpha=0.3, beta=1.7, temperature=2.5, scd_temperature=1.5, mask=kind[4:])
        (grad,) = torch.autograd.grad(loss, s)
        grads.append(grad)
    torch.testing.assert_close(grads[-2], grads[-1], **tol)
    torch.testing.assert_close(grads[-2], grads[1], **tol)  # = the weighted sum of the terms


# Every numeric parameter of rld.losses' functions and modules refuses a negative and a NaN value
# with a message that names it. Left out, as documented: the exponents of ABKD (α, β may be
# negative), θ's start of CTKD (any real), standardize_logits' eps and ctkd_lambda's ramp.
FREE = {("ab_divergence", "alpha"), ("ab_divergence", "beta"), ("ABKDLoss", "alpha"), ("ABKDLoss", "beta")}
FREE |= {("CTKDTemperature", "init"), ("standardize_logits", "eps"), ("ctkd_lambda", "ramp_epochs")}


def _valid_args() -> dict[str, tuple]:
    """Valid positional arguments of the functions of rld.losses that check their inputs."""
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    feat = torch.rand(6, 4, 3, 3, generator=g)
    args = {
        "kd_loss": (zs, zt),
        "dkd_loss": (zs, zt, y),
        "dkd_terms": (zs, zt, y),
        "rld_loss": (zs, zt, y),
        "rld_terms": (zs, zt, y),
        "rc_loss": (zs, y),
        "label_revision_loss": (zs, zt, y),
        "dist_loss": (zs, zt),
        "dist_terms": (zs, zt),
        "nkd_loss": (zs, zt, y),
        "nkd_terms": (zs, zt, y),
        "wttm_loss": (zs, zt),
        "wttm_weights": (zt,),
        "mlkd_loss": (zs, zt, zs, zt),
        "mlkd_terms": (zs, zt, zs, zt),
        "mlkd_mask_fractions": (zt,),
        "ab_divergence": (zs, zt),
        "crld_loss": (zs, zt, zs, zt),
        "crld_terms": (zs, zt, zs, zt),
        "crld_masks": (zt, zt),
        "standardize_logits": (zs,),
        "at_loss": ([feat], [feat]),
        "attention_map": (feat,),
        "crd_scores": (torch.randn(6, 8, generator=g), torch.randn(6, 3, 8, generator=g)),
        "crd_nce_loss": (torch.rand(6, 4, generator=g), 100),
        "rkd_loss": (torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)),
        "sdd_weights": (torch.randn(6, 5, 3, generator=g), y),
        "ctkd_lambda": (3.0,),
        "hint_loss": (feat, feat),
        "ofd_margin": (torch.rand(4, generator=g), torch.randn(4, generator=g)),
        "ofd_loss": (feat, feat, torch.randn(4, generator=g)),
        "class_activation_maps": (feat, torch.randn(7, 4, generator=g)),
        "binarize_cams": (feat,),
        "cat_loss": (feat, feat),
        "simkd_loss": (feat, feat),
    }
    return args


def _checked_calls():
    modules = ["KDLoss", "DKDLoss", "RLDLoss", "LALoss", "RCLoss", "LRLoss", "CTKDLoss", "DISTLoss", "NKDLoss"]
    modules += ["WTTMLoss", "MLKDLoss", "ABKDLoss", "CRLDLoss", "CTKDTemperature"]
    calls = []
    for name, positional in _valid_args().items():
        fn = getattr(losses, name)
        for p in inspect.signature(fn).parameters.values():
            numeric = isinstance(p.default, int | float) and not isinstance(p.default, bool)
            if numeric or p.name == "gamma":
                calls.append((name, p.name, fn, positional, {}))
    for name in modules:
        cls = getattr(losses, name)
        given = {"gamma": 0.2, "beta": 4.0} if name == "WTTMLoss" else {}
        params = [p.name for p in inspect.signature(cls).parameters.values() if p.kind != p.VAR_KEYWORD]
        params += ["t_min", "t_range", "ramp_epochs"] if name == "CTKDLoss" else []
        for param in params:
            if param not in ("mask", "logit_standardization"):
                calls.append((name, param, cls, (), given))
    return [c for c in calls if c[:2] not in FREE]


@pytest.mark.parametrize("bad", [-1.0, math.nan])
def test_every_numeric_parameter_refuses_a_bad_value_naming_itself(bad):
    calls = _checked_calls()
    assert len(calls) > 80
    for name, param, fn, positional, given in calls:
        with pytest.raises(ValueError) as err:
            fn(*positional, **{**given, param: bad})
        assert re.match(rf"{param} must ", str(err.value)), (name, param, str(err.value))


def test_every_tensor_argument_of_a_wrong_shape_is_refused_naming_itself():
    """A 0-d tensor in place of each tensor argument: the message names the argument (the weak view's
    logits of MLKD and CRLD are checked, and named, as the plain logits), the shape it must have and
    the shape it has."""
    checked = 0
    for name, positional in _valid_args().items():
        fn = getattr(losses, name)
        params = list(inspect.signature(fn).parameters)
        given = {"gamma": 0.5} if name.startswith("wttm") else {}
        for i, value in enumerate(positional):
            if not isinstance(value, torch.Tensor):
                continue
            bad = [*positional[:i], torch.zeros(()), *positional[i + 1 :]]
            with pytest.raises(ValueError) as err:
                fn(*bad, **given)
            names = "|".join((params[i], params[i].replace("_weak", "")))
            shape = r"shape \([A-Z](,|(, [A-Z0-9_ +.]+)+)\)( = \(6,\)| or \(K, C, 1, 1\))?"
            shape += r"|the shape of the weak view's logits \(6, 5\)"
            pattern = rf"({names}) must (have|be floating-point local logits of) ({shape}), got \(\)"
            assert re.fullmatch(pattern, str(err.value)), (name, params[i], str(err.value))
            checked += 1
    assert checked > 50


def test_the_edges_of_the_input_rules_are_accepted_as_documented():
    """The smallest accepted values sit on the edge of each rule (K = 1 negative, one training sample,
    a score of 0), and a CAM equal to its map's mean absolute activation is not above it."""
    scores = torch.tensor([[0.5, 0.0]], dtype=torch.float64)  # K = 1 negative, of score 0
    got = losses.crd_nce_loss(scores, 1, eps=0.0)  # n_data = 1: the noise term K·P_n is 1
    assert got.item() == pytest.approx(-(math.log(0.5 / 1.5) + math.log(1 / 1)), rel=1e-12)
    with pytest.raises(ValueError, match=r"n_data must be the number of training samples, an integer >= 1, got 0"):
        losses.crd_nce_loss(scores, 0)
    with pytest.raises(ValueError, match=r"scores must be >= 0 \(exponentials divided by Z\), got a minimum of -1"):
        losses.crd_nce_loss(torch.tensor([[1.0, -1.0]]), 1)
    with pytest.raises(ValueError, match=r"with K >= 1 negatives, got \(1, 1\)"):
        losses.crd_nce_loss(torch.ones(1, 1), 1)
    cams = torch.tensor([[[[1.5, 1.5], [3.0, -3.0]]]])  # mean |CAM| = 2.25: only 3.0 is above it
    assert losses.binarize_cams(cams).tolist() == [[[[0.0, 0.0], [1.0, 0.0]]]]
    tie = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]]])  # every value equals the mean: none above it
    assert losses.binarize_cams(tie).tolist() == [[[[0.0, 0.0], [0.0, 0.0]]]]


def test_the_loss_functions_run_without_a_warning():
    """No deprecation or user warning on valid inputs (a softmax without its dim, for one, warns)."""
    for name, positional in _valid_args().items():
        given = {"gamma": 0.5} if name.startswith("wttm") else {}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            getattr(losses, name)(*positional, **given)


def test_attention_and_review_losses_on_maps_that_are_not_square():
    """AT pools each side of a pair to the smaller one, (min H, min W); ReviewKD's HCL keeps a pooled
    level l only while l < the map's height. Checked on maps taller than wide and the reverse."""
    g = torch.Generator().manual_seed(3)
    f_s = torch.rand(2, 3, 8, 4, generator=g, dtype=torch.float64)
    f_t = torch.rand(2, 5, 4, 6, generator=g, dtype=torch.float64)

    def attention(f):  # mean over channels of f², flattened, unit length per sample
        q = f.pow(2).mean(dim=1).flatten(1)
        return q / q.norm(dim=1, keepdim=True)

    pooled = [F.adaptive_avg_pool2d(f, (4, 4)) for f in (f_s, f_t)]
    want = (attention(pooled[0]) - attention(pooled[1])).pow(2).mean()
    torch.testing.assert_close(losses.at_loss([f_s], [f_t]), want, rtol=1e-12, atol=0)

    for h, w, levels in ((3, 8, (2, 1)), (8, 3, (4, 2, 1))):
        a = torch.rand(2, 3, h, w, generator=g, dtype=torch.float64)
        b = torch.rand(2, 3, h, w, generator=g, dtype=torch.float64)
        loss, weight, weights = F.mse_loss(a, b), 1.0, 1.0
        for level in levels:
            weight /= 2
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(a, level), F.adaptive_avg_pool2d(b, level))
            weights += weight
        torch.testing.assert_close(losses.hcl_loss([a], [b]), loss / weights, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_loss_function_computes_low_precision_inputs_in_float32(dtype):
    """Inputs in float16 / bfloat16 give what their float32 values give, as a float32 result."""
    for name, positional in _valid_args().items():
        if name in ("ctkd_lambda", "binarize_cams", "class_activation_maps", "ofd_margin"):
            continue  # not losses: no float32 promise (maps and margins keep their inputs' dtype)
        given = {"gamma": 0.5} if name.startswith("wttm") else {}

        def cast(x, to):
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                return x.to(dtype).to(to)
            if isinstance(x, list):
                return [cast(v, to) for v in x]
            return x

        low = getattr(losses, name)(*[cast(a, dtype) for a in positional], **given)
        full = getattr(losses, name)(*[cast(a, torch.float32) for a in positional], **given)

        def outputs(x):  # a tensor, a tuple of them, or a dict of named terms (mlkd_terms)
            return list(x.values()) if isinstance(x, dict) else list(x) if isinstance(x, tuple) else [x]

        for got, want in zip(outputs(low), outputs(full), strict=True):
            if want.dtype == torch.bool:  # crld_masks
                assert torch.equal(got, want), name
                continue
            assert got.dtype == torch.float32, (name, got.dtype)
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=name)


def _refusals():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    feat = torch.rand(6, 4, 3, 3, generator=g)
    # (what is wrong, the call, the whole message)
    return [
        (
            "not a tensor",
            lambda: losses.kd_loss([[1.0, 2.0]], zt),
            "student_logits must be a torch.Tensor of shape (B, C), got list",
        ),
        (
            "integer logits",
            lambda: losses.kd_loss(zs.long(), zt),
            "student_logits must be a floating-point tensor, got torch.int64",
        ),
        (
            "one class",
            lambda: losses.kd_loss(zs[:, :1], zt[:, :1]),
            "student_logits needs at least 2 classes, got shape (6, 1)",
        ),
        (
            "shapes differ",
            lambda: losses.kd_loss(zs, zt[:, :4]),
            "student_logits and teacher_logits must have the same shape (B, C), got (6, 5) and (6, 4)",
        ),
        (
            "target not a tensor",
            lambda: losses.dkd_loss(zs, zt, [0, 1, 2, 3, 4, 0]),
            "target must be a torch.Tensor of class indices, got list",
        ),
        (
            "target float",
            lambda: losses.dkd_loss(zs, zt, y.float()),
            "target must hold integer class indices, got dtype torch.float32",
        ),
        (
            "target out of range",
            lambda: losses.dkd_loss(zs, zt, y + 1),
            "target holds class indices in [1, 5] but the logits have 5 classes (valid: 0..4)",
        ),
        (
            "target negative",
            lambda: losses.rld_loss(zs, zt, y - 1),
            "target holds class indices in [-1, 3] but the logits have 5 classes (valid: 0..4)",
        ),
        (
            "reduction",
            lambda: losses.kd_loss(zs, zt, reduction="sum"),
            "reduction must be 'mean' (a batch mean) or 'none' (per row), got 'sum'",
        ),
        ("mask", lambda: losses.rld_terms(zs, zt, y, mask="gt"), "mask must be one of 'ge', 'g', got 'gt'"),
        ("mask_ge mask", lambda: losses.mask_ge(zt, y, mask="x"), "mask must be one of 'ge', 'g', got 'x'"),
        (
            "temperature a string",
            lambda: losses.kd_loss(zs, zt, temperature="4"),
            "temperature must be a number, got '4'",
        ),
        ("weight a string", lambda: losses.dkd_loss(zs, zt, y, alpha="1"), "alpha must be a number >= 0, got '1'"),
        (
            "map not a tensor",
            lambda: losses.attention_map([1.0]),
            "feat must be a torch.Tensor of shape (B, C, H, W), got list",
        ),
        (
            "map integer",
            lambda: losses.attention_map(feat.long()),
            "feat must be a floating-point tensor, got torch.int64",
        ),
        ("map empty", lambda: losses.attention_map(feat[:0]), "feat must not be empty, got shape (0, 4, 3, 3)"),
        (
            "map lists not lists",
            lambda: losses.at_loss(feat, [feat]),
            "student_feats must be a list of (B, C, H, W) tensors, got Tensor",
        ),
        (
            "map lists empty",
            lambda: losses.at_loss([], []),
            "student_feats must hold at least one feature map, got an empty list",
        ),
        (
            "map lists lengths",
            lambda: losses.at_loss([feat, feat], [feat]),
            "student_feats and teacher_feats must have the same number of feature maps, got 2 and 1",
        ),
        (
            "hint batch",
            lambda: losses.hint_loss(feat, feat[:3]),
            "student_regressed and teacher_feat must have the same batch size B, got 6 and 3",
        ),
        (
            "hint shapes",
            lambda: losses.hint_loss(feat, feat[:, :2]),
            "student_regressed and teacher_feat must have the same shape, got (6, 4, 3, 3) and (6, 2, 3, 3)",
        ),
        (
            "hcl shapes",
            lambda: losses.hcl_loss([feat], [feat[:, :2]]),
            "student_feats[0] and teacher_feats[0] must have the same shape, got (6, 4, 3, 3) and (6, 2, 3, 3)",
        ),
        (
            "rkd one sample",
            lambda: losses.rkd_loss(torch.randn(1, 4), torch.randn(1, 4)),
            "rkd_loss needs a batch of at least 2 samples, got B = 1",
        ),
        (
            "rkd squared",
            lambda: losses.rkd_loss(torch.randn(3, 4), torch.randn(3, 4), squared=1),
            "squared must be True or False, got 1",
        ),
        (
            "ofd margin shapes",
            lambda: losses.ofd_margin(torch.rand(4), torch.rand(3)),
            "bn_weight and bn_bias must have the same shape (C,), got (4,) and (3,)",
        ),
        (
            "ofd channels",
            lambda: losses.ofd_loss(feat, feat, torch.rand(3)),
            "student_feat, teacher_feat and margin must have the same number of channels C, got 4, 4 and 3",
        ),
        (
            "cam weight shape",
            lambda: losses.class_activation_maps(feat, torch.randn(7, 4, 2)),
            "classifier_weight must have shape (K, C) or (K, C, 1, 1), got (7, 4, 2)",
        ),
        (
            "cam channels",
            lambda: losses.class_activation_maps(feat, torch.randn(7, 3)),
            "classifier_weight has 3 input channels but feat has 4 (shape (6, 4, 3, 3))",
        ),
        (
            "cat classes",
            lambda: losses.cat_loss(feat, feat[:, :2]),
            "student_cams and teacher_cams must have the same number of classes K, got 4 and 2",
        ),
        (
            "cat resolution",
            lambda: losses.cat_loss(feat, feat, resolution=0),
            "resolution must be an integer >= 1, got 0",
        ),
        ("cat flag", lambda: losses.cat_loss(feat, feat, normalize=1), "normalize must be True or False, got 1"),
        (
            "simkd channels",
            lambda: losses.simkd_loss(feat, feat[:, :2]),
            (
                "student_projected and teacher_feat must have the same number of channels, got 4 and 2: the "
                "projector maps the student to the teacher's channels"
            ),
        ),
        (
            "simkd size",
            lambda: losses.simkd_loss(feat, feat[:, :, :2, :2]),
            (
                "student_projected is 3x3 but teacher_feat only 2x2: pool the student's feature to the "
                "teacher's size before the projector, as SimKD does"
            ),
        ),
        (
            "crd anchor/pn",
            lambda: losses.crd_scores(torch.randn(6, 8), torch.randn(6, 3, 7)),
            (
                "positives_and_negatives must have shape (B, K + 1, D) = (6, K + 1, 8) to match anchor (6, 8), "
                "got (6, 3, 7)"
            ),
        ),
        (
            "nkd exclude",
            lambda: losses.nkd_terms(zs, zt, y, exclude_target=1),
            "exclude_target must be True or False, got 1",
        ),
        ("dist eps", lambda: losses.dist_terms(zs, zt, eps=-1.0), "eps must be a number >= 0, got -1.0"),
        (
            "wttm no gamma",
            lambda: losses.WTTMLoss(beta=4.0),
            (
                "WTTM needs gamma, the power applied to the teacher's probabilities (1/T); the published code "
                "has no per-pair default (its --ttm_l default is 1): set it"
            ),
        ),
        (
            "wttm no beta",
            lambda: losses.WTTMLoss(gamma=0.2),
            "WTTM needs beta, the weight of its distillation term (set per teacher-student pair)",
        ),
        (
            "percentile",
            lambda: losses.mlkd_mask_fractions(zt, percentile=101),
            "percentile must be a number in [0, 100], got 101",
        ),
        (
            "exponent nan",
            lambda: losses.ab_divergence(zs, zt, alpha=math.nan),
            "alpha must be a finite number (of any sign), got nan",
        ),
        (
            "threshold",
            lambda: losses.crld_masks(zt, zt, tau_w=1.5),
            "tau_w must be a number in [0, 1] (a probability), got 1.5",
        ),
        (
            "strong view shape",
            lambda: losses.mlkd_terms(zs, zt, zs[:, :4], zt),
            "student_strong_logits must have the shape of the weak view's logits (6, 5), got (6, 4)",
        ),
        (
            "strong view not a tensor",
            lambda: losses.mlkd_terms(zs, zt, [1.0], zt),
            "student_strong_logits must be a torch.Tensor of shape (B, C), got list",
        ),
        (
            "strong view integer",
            lambda: losses.mlkd_terms(zs, zt, zs.long(), zt),
            "student_strong_logits must be a floating-point tensor, got torch.int64",
        ),
        (
            "crld masks shapes",
            lambda: losses.crld_masks(zt, zt[:, :4]),
            "teacher_strong_logits must have the shape of the weak view's logits (6, 5), got (6, 4)",
        ),
        (
            "mlkd one view",
            lambda: losses.MLKDLoss()(zs, zt, y, 1, student_strong_logits=zs),
            (
                "MLKD needs the logits of the strongly augmented view too: pass student_strong_logits= and "
                "teacher_strong_logits="
            ),
        ),
        (
            "crld one view",
            lambda: losses.CRLDLoss()(zs, zt, y, 1, teacher_strong_logits=zt),
            (
                "CRLD needs the logits of the strongly augmented view too: pass student_strong_logits= and "
                "teacher_strong_logits="
            ),
        ),
        (
            "crld ls",
            lambda: losses.CRLDLoss(logit_standardization=True),
            "CRLD with logit standardization is not defined by the published code of logit standardization",
        ),
    ]


def test_every_refusal_of_the_losses_says_exactly_what_is_wrong():
    refusals = _refusals()
    assert len(refusals) == len({what for what, _, _ in refusals})
    for what, call, message in refusals:
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == message, what
