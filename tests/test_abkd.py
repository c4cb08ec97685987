"""ABKD: the α-β divergence against an independent brute-force float64 reference (plain Python over
the classes), its limits and their continuity, forward and reverse KL, gradients, precision, the loss
module, the published defaults in the registry and the presets, training (a falling loss, the static
step, an exact resume after a crash, stacked students), logit standardization (the published AB-LSD),
user errors, and ``rld reproduce table_extra``."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import pytest
import torch
from torch.testing import assert_close

from conftest import assert_same_run_state, assert_user_error, load_last, metric_rows
from rld.cli import main
from rld.config import key_help, list_presets, resolve
from rld.engine import faults, train
from rld.engine.trainer import StudentAndMethod
from rld.errors import UserError
from rld.experiments import collect, plan_table, to_markdown
from rld.experiments.tables import TABLE2_PAIRS, TABLE3_PAIRS, TABLE4_PAIRS
from rld.losses import ABKDLoss, KDLoss, LossInputError, ab_divergence, kd_loss, standardize_logits
from rld.methods import build_method, get_spec, ls_adjustments, method_params, resolved_params
from rld.methods.abkd import ABKDConfig
from rld.models import create_model

CIFAR_PAIRS = [*TABLE2_PAIRS, *TABLE3_PAIRS]  # the 14 CIFAR-100 pairs of the paper
IMAGENET_PAIRS = list(TABLE4_PAIRS)

# ghwang-s/abkd, written out independently of the method file: README.md:166-174 (resnet56 -> resnet20:
# alpha + beta 1.1, alpha 0.8, b 32), train_ab.sh:25 (-r 1), train_student.py:66 (--kd_T 4).
PUBLISHED = {"alpha": 0.8, "beta": 0.3, "temperature": 4.0, "kd_weight": 32.0, "ce_weight": 1.0}
# The published AB-LSD: train_ls.sh:12, 27-31 (b 9, -r 0.1, --kd_T 2), README.md:183-186 (alpha 0.9,
# beta 0.3 for resnet56 -> resnet20); ls.py:49 multiplies the divergence by T^2.
AB_LSD = {"alpha": 0.9, "beta": 0.3, "temperature": 2.0, "kd_weight": 9.0, "ce_weight": 0.1}

# ----------------------------------------------------------------------------- brute force (float64)


def _softmax(row, t):
    m = max(v / t for v in row)
    e = [math.exp(v / t - m) for v in row]
    z = sum(e)
    return [x / z for x in e]


def ref_ab_row(p, q, a, b):
    """D_AB(p ‖ q) of Cichocki, Cruces & Amari (2011), with its definition at the special points."""
    if a == 0 and b == 0:
        return 0.5 * sum((math.log(pk) - math.log(qk)) ** 2 for pk, qk in zip(p, q))
    if a == 0:
        return sum(qk**b * math.log(qk**b / pk**b) - qk**b + pk**b for pk, qk in zip(p, q)) / b**2
    if b == 0:
        return sum(pk**a * math.log(pk**a / qk**a) - pk**a + qk**a for pk, qk in zip(p, q)) / a**2
    if a + b == 0:
        return sum(math.log(qk**a / pk**a) + (qk**a / pk**a) ** -1 - 1 for pk, qk in zip(p, q)) / a**2
    s = a + b
    return -sum(pk**a * qk**b - a / s * pk**s - b / s * qk**s for pk, qk in zip(p, q)) / (a * b)


def ref_ab(zs, zt, a, b, t):
    """mean over the batch of D_AB(softmax(z_t/T) ‖ softmax(z_s/T)) (teacher first)."""
    return sum(ref_ab_row(_softmax(rt, t), _softmax(rs, t), a, b) for rs, rt in zip(zs, zt)) / len(zs)


def published_branch_row(p, q, a, b):
    """The published special-case branches (standard_classification/distiller_zoo/abkl.py:29-60): 1/α, 1/β."""
    if a == 0:
        return sum(qk**b * math.log(qk**b / pk**b) - qk**b + pk**b for pk, qk in zip(p, q)) / b
    if b == 0:
        return sum(pk**a * math.log(pk**a / qk**a) - pk**a + qk**a for pk, qk in zip(p, q)) / a
    return sum((math.log(qk**a / pk**a) + (qk**a / pk**a) ** -1 - 1) / a for pk, qk in zip(p, q))


# ----------------------------------------------------------------------------- helpers


def _logits(b, c, scale, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    zs, zt = (torch.randn(b, c, generator=g, dtype=torch.float64) * scale for _ in range(2))
    y = torch.randint(0, c, (b,), generator=g)
    return zs.to(dtype), zt.to(dtype), y


def _t(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# the published settings, the sweeps' negative beta, the special points and their neighbours
EXPONENTS = [
    (0.8, 0.3),
    (0.9, 0.3),
    (0.5, 0.5),
    (1.2, -0.2),
    (2.0, 1.0),
    (-0.3, 0.8),
    (1.0, 0.0),
    (0.5, 0.0),
    (0.0, 1.0),
    (0.0, 0.4),
    (0.6, -0.6),
    (-0.4, 0.4),
    (0.0, 0.0),
]
CASES = [(b, c, scale, seed) for seed, (b, c) in enumerate([(2, 2), (3, 5), (16, 10), (7, 33)]) for scale in (0.3, 3)]

# ----------------------------------------------------------------------------- golden values


@pytest.mark.parametrize("b,c,scale,seed", CASES)
def test_ab_divergence_golden_values(b, c, scale, seed):
    zs, zt, _ = _logits(b, c, scale, seed)
    ls, lt = zs.tolist(), zt.tolist()
    for alpha, beta in EXPONENTS:
        for t in (1.0, 4.0):
            got = ab_divergence(zs, zt, alpha, beta, t)
            assert_close(got, _t(ref_ab(ls, lt, alpha, beta, t)), rtol=1e-9, atol=1e-12, msg=(alpha, beta, t))
    assert_close(ab_divergence(zs, zt), _t(ref_ab(ls, lt, 0.8, 0.3, 4.0)), rtol=1e-9, atol=1e-12)


def test_large_logits_golden_values():
    zs, zt, _ = _logits(6, 12, 30.0, 9)
    for alpha, beta in [(0.8, 0.3), (1.0, 0.0), (0.0, 1.0), (0.0, 0.0), (1.2, -0.2)]:
        want = ref_ab(zs.tolist(), zt.tolist(), alpha, beta, 4.0)
        assert_close(ab_divergence(zs, zt, alpha, beta, 4.0), _t(want), rtol=1e-8, atol=1e-10, msg=(alpha, beta))


# ----------------------------------------------------------------------------- limits and continuity


def test_the_special_cases_are_the_limits_of_the_general_formula():
    """Approaching α = 0, β = 0, α + β = 0 (and both) the general formula tends to the value rld
    takes there: the loss is continuous in (α, β). In float64 the general formula's rounding there is
    ~1e-16/|αβ| (or |α/(α+β)|), far below the O(distance) change of the value itself."""
    zs, zt, _ = _logits(8, 10, 2.0, 11)
    for at, near in [
        ((0.8, 0.0), (0.8, 1e-7)),
        ((0.8, 0.0), (0.8, -1e-7)),
        ((1.0, 0.0), (1.0, 1e-7)),
        ((0.0, 0.5), (1e-7, 0.5)),
        ((0.0, 1.0), (-1e-7, 1.0)),
        ((0.6, -0.6), (0.6, -0.6 + 1e-7)),
        ((-0.4, 0.4), (-0.4, 0.4 - 1e-7)),
    ]:
        limit, close = ab_divergence(zs, zt, *at), ab_divergence(zs, zt, *near)
        assert_close(close, limit, rtol=1e-6, atol=0, msg=(at, near))
    # both exponents small: the rounding is ~1e-16/(αβ) = 1e-6 relative at 1e-5 each
    assert_close(ab_divergence(zs, zt, 1e-5, 1e-5), ab_divergence(zs, zt, 0.0, 0.0), rtol=1e-4, atol=0)
    # and the value moves smoothly across a special point (no jump of a factor α, as the published branch has)
    values = [ab_divergence(zs, zt, 0.5, beta).item() for beta in (-2e-3, -1e-3, 0.0, 1e-3, 2e-3)]
    steps = [b - a for a, b in zip(values, values[1:])]
    assert max(abs(s) for s in steps) < 1e-2 * values[2]
    assert max(steps) - min(steps) < 1e-2 * max(abs(s) for s in steps)  # smooth: no jump at beta = 0


def test_the_published_branches_differ_by_the_factor_alpha_or_beta_except_at_fkl_and_rkl():
    """abkl.py's α = 0, β = 0 and α + β = 0 branches normalise by 1/α (1/β) where the limit has 1/α²
    (1/β²): rld's value times α (β) is the published branch, the same at (1, 0) and (0, 1)."""
    zs, zt, _ = _logits(5, 9, 2.0, 12)
    rows = [(_softmax(rt, 4.0), _softmax(rs, 4.0)) for rs, rt in zip(zs.tolist(), zt.tolist())]
    for alpha, beta, factor in [(0.5, 0.0, 0.5), (2.0, 0.0, 2.0), (0.0, 0.4, 0.4), (0.6, -0.6, 0.6), (-0.5, 0.5, -0.5)]:
        published = sum(published_branch_row(p, q, alpha, beta) for p, q in rows) / len(rows)
        assert_close(factor * ab_divergence(zs, zt, alpha, beta), _t(published), rtol=1e-10, atol=0)
    for alpha, beta in [(1.0, 0.0), (0.0, 1.0)]:
        published = sum(published_branch_row(p, q, alpha, beta) for p, q in rows) / len(rows)
        assert_close(ab_divergence(zs, zt, alpha, beta), _t(published), rtol=1e-10, atol=0)


def test_fkl_and_rkl_are_kd_without_its_t_squared():
    """(α, β) = (1, 0) is KL(p_t ‖ p_s), kd_loss / T² (kd_loss includes T²); (0, 1) is KL(p_s ‖ p_t)."""
    zs, zt, _ = _logits(9, 10, 3.0, 13)
    for t in (1.0, 2.0, 4.0):
        assert_close(ab_divergence(zs, zt, 1.0, 0.0, t), kd_loss(zs, zt, t) / t**2)
        assert_close(ab_divergence(zs, zt, 0.0, 1.0, t), kd_loss(zt, zs, t) / t**2)


def test_properties_zero_at_the_teacher_nonnegative_and_dual():
    zs, zt, _ = _logits(7, 8, 2.0, 14)
    for alpha, beta in EXPONENTS:
        assert_close(ab_divergence(zt.clone(), zt, alpha, beta), _t(0.0), atol=1e-14, rtol=0)
        assert ab_divergence(zs, zt, alpha, beta).item() > 0
        # duality: D_AB^(α,β)(p ‖ q) = D_AB^(β,α)(q ‖ p)
        assert_close(ab_divergence(zs, zt, alpha, beta), ab_divergence(zt, zs, beta, alpha))
    # α = β = 1/2: twice the squared Hellinger distance, 2·Σ(√p − √q)²
    p, q = torch.softmax(zt / 4, 1), torch.softmax(zs / 4, 1)
    assert_close(ab_divergence(zs, zt, 0.5, 0.5), 2 * ((p.sqrt() - q.sqrt()) ** 2).sum(1).mean())


# ----------------------------------------------------------------------------- gradients and precision


def test_gradcheck_float64_wrt_student():
    zs, zt, _ = _logits(4, 6, 1.5, 20)
    for alpha, beta in [(0.8, 0.3), (1.2, -0.2), (1.0, 0.0), (0.5, 0.0), (0.0, 1.0), (0.6, -0.6), (0.0, 0.0)]:
        x = zs.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda a, ab=(alpha, beta): ab_divergence(a, zt, *ab, 2.0), (x,)), (alpha, beta)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_and_low_precision_logits_give_the_float64_values(dtype):
    """Logits of ±1e4 in float32 / bfloat16: computed in float32, equal to float64 on the same values
    (for α, β ≥ 0 every power is exp of a non-positive number: nothing overflows)."""
    g = torch.Generator().manual_seed(70)
    zs, zt = ((torch.randn(8, 10, generator=g) * 1e4).to(dtype) for _ in range(2))
    for alpha, beta in [(0.8, 0.3), (1.0, 0.0), (0.0, 1.0), (0.5, 0.0), (0.0, 0.0)]:
        s, s64 = zs.clone().requires_grad_(True), zs.double().requires_grad_(True)
        loss, exact = ab_divergence(s, zt, alpha, beta), ab_divergence(s64, zt.double(), alpha, beta)
        assert loss.dtype == torch.float32
        assert torch.isfinite(loss) and loss.item() == pytest.approx(exact.item(), rel=1e-4), (alpha, beta)
        (grad,), (grad64,) = torch.autograd.grad(loss, s), torch.autograd.grad(exact, s64)
        assert grad.dtype == dtype and torch.isfinite(grad.float()).all()
        scale = grad64.abs().max().clamp_min(1e-12)
        assert ((grad.double() - grad64).abs().max() / scale).item() <= 1e-2, (alpha, beta)


# ----------------------------------------------------------------------------- the loss module


def test_module_parts_sum_to_the_total_and_the_published_equation():
    zs, zt, y = _logits(8, 10, 2.0, 80)
    loss = ABKDLoss()
    assert (loss.alpha, loss.beta, loss.temperature, loss.kd_weight, loss.ce_weight) == (0.8, 0.3, 4.0, 32.0, 1.0)
    total, parts = loss(zs, zt, y)
    assert list(parts) == ["ce", "abkd"]
    assert_close(sum(parts.values()), total)
    want = torch.nn.functional.cross_entropy(zs, y) + 32 * ref_ab(zs.tolist(), zt.tolist(), 0.8, 0.3, 4.0)
    assert_close(total, want)
    # ABKD at (1, 0) with weight 32 is the repository's KD baseline: -b 2 at T 4 (train_kd.sh), x T^2 inside
    fkl = ABKDLoss(alpha=1.0, beta=0.0)(zs, zt, y)[0]
    assert_close(fkl, KDLoss(temperature=4.0, ce_weight=1.0, kd_weight=2.0)(zs, zt, y)[0])
    half = ABKDLoss(ce_weight=0.5)(zs, zt, y)[1]
    assert_close(half["ce"], 0.5 * parts["ce"]) and assert_close(half["abkd"], parts["abkd"])


def test_module_with_logit_standardization_is_the_published_ab_lsd():
    """ls.py: the divergence of the standardized logits (unbiased std, + 1e-7) times T²; CE on the raw logits."""
    zs, zt, y = _logits(8, 10, 5.0, 81)
    loss = ABKDLoss(**AB_LSD, logit_standardization=True)
    total, parts = loss(zs, zt, y)

    def published_normalize(z):  # ls.py:6-9
        return (z - z.mean(dim=-1, keepdim=True)) / (1e-7 + z.std(dim=-1, keepdim=True))

    d = ref_ab(published_normalize(zs).tolist(), published_normalize(zt).tolist(), 0.9, 0.3, 2.0)
    assert_close(parts["abkd"], _t(9.0 * 4.0 * d))
    assert_close(parts["ce"], 0.1 * torch.nn.functional.cross_entropy(zs, y))
    assert_close(total, parts["ce"] + parts["abkd"])
    plain = ABKDLoss(**AB_LSD)(standardize_logits(zs), standardize_logits(zt), y)[1]["abkd"]
    assert_close(parts["abkd"], 4.0 * plain)


# ----------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda s, t, y: ab_divergence(s, t, float("nan"), 0.3), "alpha must be a finite number"),
        (lambda s, t, y: ab_divergence(s, t, 0.8, float("inf")), "beta must be a finite number .*, got inf"),
        (lambda s, t, y: ab_divergence(s, t, 0.8, -float("inf")), "beta must be a finite number .*, got -inf"),
        (lambda s, t, y: ab_divergence(s, t, None, 0.3), "alpha must be a finite number .*, got None"),
        (lambda s, t, y: ab_divergence(s, t, "0.8", 0.3), "alpha must be a finite number .*, got '0.8'"),
        (lambda s, t, y: ab_divergence(s, t, True, 0.3), "alpha must be a finite number"),
        (lambda s, t, y: ab_divergence(s, t, temperature=0), "temperature must be > 0, got 0"),
        (lambda s, t, y: ab_divergence(s, t, temperature=float("nan")), "temperature must be > 0, got nan"),
        (lambda s, t, y: ab_divergence(s, t[:, :5]), r"same shape \(B, C\), got \(4, 6\) and \(4, 5\)"),
        (lambda s, t, y: ab_divergence(s[0], t[0]), r"student_logits must have shape \(B, C\), got \(6,\)"),
        (lambda s, t, y: ab_divergence(s.long(), t), "student_logits must be a floating-point tensor"),
        (lambda s, t, y: ABKDLoss(kd_weight=-1.0), "kd_weight must be a number >= 0, got -1.0"),
        (lambda s, t, y: ABKDLoss(kd_weight=float("nan")), "kd_weight must be a number >= 0, got nan"),
        (lambda s, t, y: ABKDLoss(kd_weight=float("inf")), "kd_weight must be a finite number >= 0, got inf"),
        (lambda s, t, y: ABKDLoss(ce_weight=-0.5), "ce_weight must be a number >= 0, got -0.5"),
        (lambda s, t, y: ABKDLoss(alpha=float("nan")), "alpha must be a finite number"),
        (lambda s, t, y: ABKDLoss()(s, t, y + 6), r"class indices in \[\d+, \d+\] but the logits have 6 classes"),
        (lambda s, t, y: ABKDLoss()(s, t, y.float()), "target must hold integer class indices"),
        (lambda s, t, y: ABKDLoss()(s, t, y[:3]), r"target must have shape \(B,\) = \(4,\), got \(3,\)"),
    ],
)
def test_bad_input_raises_loss_input_error_saying_what_is_wrong(call, message):
    zs, zt, y = _logits(4, 6, 1.0, 90)
    with pytest.raises(LossInputError, match=message):
        call(zs, zt, y)


@pytest.mark.parametrize(
    "override,message",
    [
        ("method.alpha=nan", "method 'abkd': alpha must be a finite number (of any sign), got nan"),
        ("method.beta=inf", "method 'abkd': beta must be a finite number (of any sign), got inf"),
        ("method.kd_weight=-32", "method 'abkd': kd_weight must be a number >= 0, got -32.0"),
        ("method.kd_weight=nan", "method 'abkd': kd_weight must be a number >= 0, got nan"),
        ("method.ce_weight=-1", "method 'abkd': ce_weight must be a number >= 0, got -1.0"),
        ("method.temperature=0", "method 'abkd': temperature must be > 0, got 0.0"),
        ("method.gamma=1", "method 'abkd' does not take gamma"),
    ],
)
def test_bad_values_are_one_line_user_errors(override, message, capsys, tmp_path):
    with pytest.raises(UserError):
        method_params(resolve("demo/abkd", [override]).method)
    code = main(["train", "demo/abkd", override, "--dry-run", "--out", str(tmp_path / "run")])
    assert_user_error(code, capsys.readouterr().err, message)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- defaults and presets


def test_published_defaults_on_the_config_the_registry_and_the_presets(capsys):
    fields = {k: v for k, v in dataclasses.asdict(ABKDConfig()).items() if k in PUBLISHED}
    assert fields == {"alpha": 0.8, "beta": 0.3, "temperature": 4.0, "kd_weight": 32.0, "ce_weight": 1.0}
    assert ABKDConfig().name == "abkd" and ABKDConfig().logit_standardization is False
    spec = get_spec("abkd")
    assert spec.params == PUBLISHED and spec.teacher_needs == ("logits",) and not spec.reads_features
    params = {**PUBLISHED, "logit_standardization": False}
    names = {
        "demo/abkd",
        *(f"cifar100/{pair}/abkd" for pair in CIFAR_PAIRS),
        *(f"imagenet/{pair}/abkd" for pair in IMAGENET_PAIRS),
    }
    assert names <= set(list_presets())
    for name in sorted(names):  # no other published values: every pair takes resnet56 -> resnet20's
        cfg = resolve(name)
        assert method_params(cfg.method) == params, name
        assert cfg.method.name == "abkd" and cfg.model.teacher and cfg.model.student
    demo = resolve("demo/abkd")
    assert (demo.model.teacher, demo.model.student, demo.data.name) == ("resnet20", "resnet8", "digits")
    # the published protocol is the family's (train_student.py: 240 epochs, batch 64, lr 0.05, x0.1 at
    # 150/180/210, wd 5e-4, momentum 0.9; lr 0.01 for MobileNetV2 and the ShuffleNets), no warm-up
    c = resolve("cifar100/resnet56-resnet20/abkd").train
    assert (c.epochs, c.batch_size, c.lr, c.lr_milestones, c.lr_decay, c.weight_decay, c.momentum) == (
        240,
        64,
        0.05,
        [150, 180, 210],
        0.1,
        5e-4,
        0.9,
    )
    for student_pair in ("wrn_40_2-MobileNetV2", "resnet32x4-ShuffleV2"):
        assert resolve(f"cifar100/{student_pair}/abkd").train.lr == 0.01
    assert main(["presets", "abkd"]) == 0
    assert names <= set(capsys.readouterr().out.split())
    assert "ABKD: exponent alpha" in key_help()["method.alpha"] and "ABKD" in key_help()["method.beta"]


# ----------------------------------------------------------------------------- the step's loss


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["method.alpha=1.0", "method.beta=0.0"],
        ["method.alpha=0.0", "method.beta=0.0", "method.temperature=2"],
        ["method.alpha=1.2", "method.beta=-0.2", "method.kd_weight=8", "method.ce_weight=0.5"],
    ],
)
def test_the_step_total_is_the_loss_module_and_the_published_equation(overrides):
    cfg = resolve("demo/abkd", overrides)
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=10)
    model = StudentAndMethod(student, build_method(cfg.method), amp=False)
    x, y = torch.randn(12, 3, 32, 32), torch.randint(0, 10, (12,))
    teacher = 3 * torch.randn(12, 10)
    logits, total, parts = model(x, teacher, y, torch.tensor(1.0), torch.arange(12))
    assert list(parts) == ["ce", "abkd"]
    torch.testing.assert_close(sum(parts.values()), total, rtol=0, atol=0)
    p = method_params(cfg.method)
    module_total, _ = ABKDLoss(**p)(logits, teacher, y)
    torch.testing.assert_close(total, module_total, rtol=0, atol=0)
    s = logits.detach().double()
    ce = torch.nn.functional.cross_entropy(s, y)
    d = ref_ab(s.tolist(), teacher.double().tolist(), p["alpha"], p["beta"], p["temperature"])
    reference = p["ce_weight"] * ce + p["kd_weight"] * d
    torch.testing.assert_close(total.detach().double(), reference, rtol=1e-5, atol=1e-5)
    total.backward()
    assert all(q.grad is not None for q in student.parameters() if q.requires_grad)


# ----------------------------------------------------------------------------- logit standardization


def test_logit_standardization_sets_the_published_ab_lsd(capsys):
    assert ls_adjustments({"name": "abkd"}) == {"temperature": 2.0, "kd_weight": 9.0, "ce_weight": 0.1,
                                                "alpha": 0.9, "beta": 0.3}  # fmt: skip
    cfg = resolve("cifar100/resnet56-resnet20/abkd", ["method.logit_standardization=true"])
    assert method_params(cfg.method) == {**AB_LSD, "logit_standardization": True}
    assert resolved_params(cfg.method) == {**AB_LSD, "logit_standardization": True, "ls_temperature": 2.0,
                                           "ls_weight": 9.0}  # fmt: skip
    loss = build_method(cfg.method).loss
    assert loss.logit_standardization is True
    # values set explicitly win; b and w move the temperature and the weight
    over = ["method.logit_standardization=true", "method.alpha=0.7", "method.ce_weight=1", "method.ls_weight=4",
            "method.ls_temperature=3"]  # fmt: skip
    assert method_params(resolve("demo/abkd", over).method) == {
        "alpha": 0.7, "beta": 0.3, "temperature": 3.0, "kd_weight": 4.0, "ce_weight": 1.0, "logit_standardization": True
    }  # fmt: skip
    # the step: 0.1 CE + 9 T^2 D_AB of the standardized logits at T = 2
    torch.manual_seed(1)
    student = create_model("resnet8", num_classes=10)
    model = StudentAndMethod(student, build_method(cfg.method), amp=False)
    x, y, teacher = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,)), 4 * torch.randn(6, 10)
    logits, total, parts = model(x, teacher, y, torch.tensor(1.0), torch.arange(6))
    zs, zt = (standardize_logits(z.detach().double()) for z in (logits, teacher))
    want = 0.1 * torch.nn.functional.cross_entropy(logits.detach().double(), y) + 9 * 4 * ref_ab(
        zs.tolist(), zt.tolist(), 0.9, 0.3, 2.0
    )
    torch.testing.assert_close(total.detach().double(), want, rtol=1e-5, atol=1e-5)
    assert main(["train", "demo/abkd", "method.logit_standardization=true", "--dry-run"]) == 0
    assert "ce_weight=0.1" in capsys.readouterr().out
    # off (the default, or said explicitly): the raw logits
    assert (
        build_method(resolve("demo/abkd", ["method.logit_standardization=false"]).method).loss.logit_standardization
        is False
    )


# ----------------------------------------------------------------------------- training

# Digits at 16x16, 10 images per class, batch 32: 4 steps per epoch (the last one of 4 images).
TINY = ["data.image_size=16", "data.train_per_class=10", "train.batch_size=32", "data.eval_batch_size=512"]


def test_two_demo_epochs_lower_the_loss_static_step_and_a_crashed_run_resumes_exactly(
    tmp_path, teacher_ckpt, monkeypatch
):
    """``demo/abkd`` for 2 epochs: the loss falls and its parts sum to it; with ``train.static_step=on``
    the same metrics and last.pt; killed after step 6 (inside epoch 2) and resumed, the same again."""
    over = ["train.epochs=2", "train.device=cpu", f"model.teacher_checkpoint={teacher_ckpt}", *TINY]
    train(resolve("demo/abkd", over), tmp_path / "ref")
    rows = list(csv.DictReader(open(tmp_path / "ref" / "metrics.csv")))
    assert [r["steps"] for r in rows] == ["4", "4"]
    losses = [float(r["train_loss"]) for r in rows]
    assert all(math.isfinite(v) for v in losses) and losses[1] < losses[0], losses
    for row in rows:
        assert float(row["loss_ce"]) + float(row["loss_abkd"]) == pytest.approx(float(row["train_loss"]), rel=1e-4)

    train(resolve("demo/abkd", [*over, "train.static_step=on"]), tmp_path / "static")
    assert metric_rows(tmp_path / "static" / "metrics.csv") == metric_rows(tmp_path / "ref" / "metrics.csv")
    assert_same_run_state(
        load_last(tmp_path / "ref"), load_last(tmp_path / "static"), ignore_config=("train.static_step",)
    )

    class Crash(BaseException):
        pass

    def crash(status):
        raise Crash(status)

    monkeypatch.setattr(faults.os, "_exit", crash)  # the process "ends" at the fault point, writing nothing
    monkeypatch.setattr(faults, "_spec", faults._parse("after_step:6"))
    monkeypatch.setattr(faults, "_counts", dict.fromkeys(faults.POINTS, 0))
    out = tmp_path / "crashed"
    with pytest.raises(Crash):
        train(resolve("demo/abkd", over), out)
    assert load_last(out)["epoch"] == 1
    monkeypatch.setattr(faults, "_spec", None)
    train(resolve("demo/abkd", over), out, resume=True)
    assert metric_rows(out / "metrics.csv") == metric_rows(tmp_path / "ref" / "metrics.csv")
    assert_same_run_state(load_last(tmp_path / "ref"), load_last(out))


def test_stacked_abkd_students_step_as_each_run_alone(tmp_path, monkeypatch):
    """Runs of ABKD with their own α, β and learning rate, stacked (train.batch_students): in float64
    each ends with the parameters of its own steps (as test_batched checks for KD, DKD and RLD)."""
    from rld.data.types import Batch
    from rld.engine.batched import StudentStack, why_not_stacked
    from rld.engine.distributed import World
    from rld.engine.step import train_step
    from rld.engine.trainer import Run

    monkeypatch.setattr(torch.Tensor, "float", lambda self: self)
    specs = [["method.alpha=0.8", "train.lr=0.05"], ["method.alpha=1.0", "method.beta=0.0", "train.lr=0.02"]]

    def runs(tag):
        made = []
        for k, over in enumerate(specs):
            out = tmp_path / f"{tag}{k}"
            (out / "checkpoints").mkdir(parents=True)
            cfg = resolve("demo/abkd", [*over, "train.device=cpu"])
            run = Run(cfg, out, world=World(), device=torch.device("cpu"), num_classes=10, resume_from=None,
                      resume=False, input_shape=(3, 32, 32), labels=torch.arange(10).repeat(4))  # fmt: skip
            run.begin_epoch(1)
            run.student.double()
            made.append(run)
        return made

    torch.manual_seed(0)
    stacked, alone = runs("s"), runs("a")
    assert why_not_stacked(stacked[0]) is None
    stack = StudentStack(stacked, [0, 0])
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        batch = Batch(torch.randn(24, 3, 32, 32, generator=g, dtype=torch.float64),
                      torch.randint(0, 10, (24,), generator=g), None, None)  # fmt: skip
        teacher = 3 * torch.randn(24, 10, generator=g, dtype=torch.float64)
        train_step(stack.forward([batch], [teacher], 1))
        for run in alone:
            run.step(batch, teacher, 1)
    for a, b in zip(stacked, alone):
        sa, sb = a.student.state_dict(), b.student.state_dict()
        for name in sb:
            if sb[name].is_floating_point():
                assert_close(sa[name], sb[name], rtol=0, atol=1e-12, msg=name)
        for key in b.metrics.sums:
            assert_close(a.metrics.sums[key], b.metrics.sums[key], rtol=1e-12, atol=0)
    assert (alone[0].student.conv1.weight - alone[1].student.conv1.weight).abs().max() > 1e-3


# ----------------------------------------------------------------------------- table_extra


def test_table_extra_plans_abkd_on_table3s_pairs(tmp_path, capsys):
    out, plan_file = tmp_path / "repro", tmp_path / "plan.json"
    plan = plan_table("table_extra", out)
    abkd = [r for r in plan.runs if r.method == "abkd"]
    assert {(f"{r.teacher}-{r.student}", r.seed) for r in abkd} == {(p, s) for p in TABLE3_PAIRS for s in (0, 1, 2)}
    args = ["reproduce", "table_extra", "--dry-run", "--seeds", "0", "--json", str(plan_file), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    line = "cifar100/resnet56-resnet20/abkd/seed0  [alpha=0.8 beta=0.3 temperature=4.0 kd_weight=32.0 ce_weight=1.0]"
    assert line in printed
    body = json.loads(plan_file.read_text())
    runs = [r for r in body["runs"] if r["method"] == "abkd"]
    assert len(runs) == len(TABLE3_PAIRS)
    for r in runs:
        assert r["method_params"] == {**PUBLISHED, "logit_standardization": False}
        assert r["preset"] == f"cifar100/{r['teacher']}-{r['student']}/abkd"
    cells = {(c["row"], c["column"]): c["runs"] for c in body["cells"]}
    assert [c for r, c in cells if r == "ABKD"] == [pair.replace("-", " → ") for pair in TABLE3_PAIRS]
    # the family's protocol (best-epoch accuracy reported, as for the other rows): not marked
    assert "ABKD" not in plan.table.row_notes
    markdown = to_markdown(collect(plan_table("table_extra", out, seeds=[0], pairs=["resnet56-resnet20"])))
    assert "| Newer logit | ABKD | — |" in markdown and "ABKD (different protocol)" not in markdown


def test_no_host_sync_in_a_step_plain_or_static(teacher_ckpt, tmp_path):
    """What a CUDA-graph step needs, proved on the CPU: an ABKD step never reads the host, at the
    published exponents and at a special point."""
    from rld.data import build_data
    from rld.engine.distributed import World
    from rld.engine.loop import Member
    from rld.engine.static import StaticSteps
    from rld.engine.syncs import HostSyncCounter
    from rld.engine.teacher import build_teacher_fn
    from rld.engine.trainer import Run, prepare_out_dir
    from rld.losses import value_checks

    data = build_data("digits", None, batch_size=16, eval_batch_size=512, device="cpu", seed=0, image_size=16)
    batch = next(iter(data.train))
    for over in ([], ["method.alpha=1", "method.beta=0"], ["method.logit_standardization=true"]):
        cfg = resolve("demo/abkd", [*over, "train.channels_last=false", f"model.teacher_checkpoint={teacher_ckpt}"])
        teacher_fn = build_teacher_fn(cfg, 10, torch.device("cpu"))
        runs = []
        for kind in ("plain", "static"):
            out = tmp_path / f"{len(over)}-{kind}"
            prepare_out_dir(out, resume=False)
            runs.append(
                Run(cfg, out, world=World(), device=torch.device("cpu"), num_classes=10, resume_from=None, resume=False)
            )
        plain, static_run = runs
        plain.begin_epoch(1)
        with value_checks(False), HostSyncCounter(fail=True):
            plain.step(batch, teacher_fn(batch), 1)
        static = StaticSteps([Member(static_run)], data.train, teacher_fn, capture=False)
        static_run.begin_epoch(1)
        static.start_epoch(1)
        counter = HostSyncCounter(fail=True)
        with value_checks(False), counter:
            static.step(static.batch_sizes()[0])
        assert (plain.steps, static_run.steps, counter.events) == (1, 1, []), over
