"""SDD (scale decoupled distillation): the multi-scale pooling, the region weights, the per-row losses
and the totals of sd_kd, sd_dkd, sd_nkd and sd_rld against float64 brute force written from the
published code's equations (shicaiwei123/SDD-CVPR2024), gradients, the published defaults and
presets, training on the digits with an exact resume, refusals, and ``rld reproduce table_extra``."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_same_run_state, assert_user_error, load_last, metric_rows, run_rld
from rld.cli import main
from rld.config import list_presets, resolve, resolve_with_flags
from rld.engine import train
from rld.engine.faults import FAULT_EXIT_STATUS
from rld.errors import UserError
from rld.experiments.tables import TABLE2_PAIRS, TABLE3_PAIRS, TABLE4_PAIRS
from rld.losses import (
    KDLoss,
    dkd_loss,
    dkd_terms,
    kd_loss,
    nkd_loss,
    nkd_terms,
    rld_loss,
    rld_terms,
    sdd_local_logits,
    sdd_loss,
    sdd_pool,
    sdd_regions,
    sdd_weights,
)
from rld.methods import MethodContext, build_method, get_spec, method_params
from rld.methods.sdd import SDDKDConfig, SDKDConfig, SDNKDConfig, SDRLDConfig
from rld.models import create_model

METHODS = ("sd_kd", "sd_dkd", "sd_nkd", "sd_rld")
PARTS = {"sd_kd": ["ce", "kd"], "sd_dkd": ["ce", "tckd", "nckd"], "sd_nkd": ["ce", "target", "non_target"]}
PARTS["sd_rld"] = ["ce", "scd", "mcd"]
CIFAR_PAIRS = [*TABLE2_PAIRS, *TABLE3_PAIRS]  # the 14 CIFAR-100 pairs of the paper
F64 = torch.float64


# ----------------------------------------------------------------------------- brute force (float64)


def _bins(n: int, out: int) -> list[tuple[int, int]]:
    """The cells [start, end) of each of the ``out`` bins of adaptive average pooling over ``n`` cells."""
    return [(i * n // out, -(-(i + 1) * n // out)) for i in range(out)]


def _brute_pool(fmap: torch.Tensor, scales) -> torch.Tensor:
    """The published SPP by hand: pool the map to the largest grid, the smaller grids from that one,
    regions concatenated from the smallest scale up, row-major. (B, D, H, W) → (B, D, N), float64."""
    fmap = fmap.double()
    b, d, h, w = fmap.shape
    top = scales[-1]
    grid = torch.empty(b, d, top, top, dtype=F64)
    for r, (h0, h1) in enumerate(_bins(h, top)):
        for c, (w0, w1) in enumerate(_bins(w, top)):
            grid[:, :, r, c] = fmap[:, :, h0:h1, w0:w1].mean(dim=(2, 3))
    regions = []
    for s in scales:
        for h0, h1 in _bins(top, s):
            for w0, w1 in _bins(top, s):
                regions.append(grid[:, :, h0:h1, w0:w1].mean(dim=(2, 3)))
    return torch.stack(regions, dim=2)


def _softmax(v: torch.Tensor) -> torch.Tensor:
    e = torch.exp(v - v.max())
    return e / e.sum()


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.log() - q.log())).sum()


def _binary(p: torch.Tensor, k: int) -> torch.Tensor:
    return torch.stack([p[k], 1 - p[k]])


def _row_terms(name: str, p: dict, s: torch.Tensor, t: torch.Tensor, y: int) -> list[torch.Tensor]:
    """The unweighted terms of one row (one region of one sample), from the published equations."""
    tau = p["temperature"]
    rest = [j for j in range(len(s)) if j != y]
    if name == "sd_kd":  # KD.py:31-38: T^2 KL(softmax(t/T) || softmax(s/T))
        return [tau**2 * _kl(_softmax(t / tau), _softmax(s / tau))]
    if name == "sd_dkd":  # SDD_DKD.py:9-36: TCKD on [p_y, 1 - p_y], NCKD over the other classes
        ps, pt = _softmax(s / tau), _softmax(t / tau)
        tckd = tau**2 * _kl(_binary(pt, y), _binary(ps, y))
        nckd = tau**2 * _kl(_softmax(t[rest] / tau), _softmax(s[rest] / tau))
        return [tckd, nckd]
    if name == "sd_nkd":  # SDD_nkd.py:37-68: the target term at T = 1, the second over every class
        target = -_softmax(t)[y] * _softmax(s)[y].log()
        keep = rest if p["nkd_exclude_target"] else list(range(len(s)))
        non = -(tau**2) * (_softmax(t[keep] / tau) * _softmax(s[keep] / tau).log()).sum()
        return [target, non]
    # SD-RLD: RLD's SCD (the teacher's binary on its argmax, the student's on y) and MCD over the
    # classes the teacher ranks below the true one
    k = int(t.argmax())
    t_scd = p["scd_temperature"] or tau
    scd = t_scd**2 * _kl(_binary(_softmax(t / t_scd), k), _binary(_softmax(s / t_scd), y))
    kept = [j for j in range(len(s)) if t[j] < t[y]]
    mcd = tau**2 * _kl(_softmax(t[kept] / tau), _softmax(s[kept] / tau)) if kept else torch.zeros((), dtype=F64)
    return [scd, mcd]


def _term_weights(name: str, p: dict) -> list[float]:
    return {
        "sd_kd": [p.get("kd_weight")],
        "sd_dkd": [p.get("alpha"), p.get("beta")],
        "sd_nkd": [1.0, p.get("gamma")],
        "sd_rld": [p.get("alpha"), p.get("beta")],
    }[name]


def _brute_weights(zt: torch.Tensor, y: torch.Tensor, complementary: float = 2.0) -> torch.Tensor:
    """w[b, j] from KD.py:42-90: 2 for gt_lw and gw_lt (j > 0), 1 for gt_lt and gw_lw."""
    b, _, n = zt.shape
    w = torch.empty(b, n, dtype=F64)
    for i in range(b):
        global_right = int(zt[i, :, 0].argmax()) == int(y[i])
        for j in range(n):
            local_right = int(zt[i, :, j].argmax()) == int(y[i])
            w[i, j] = complementary if (j > 0 and local_right != global_right) else 1.0
    return w


def _brute_sd(name: str, p: dict, zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Each term of L_SD: Σ_{j,b} w_{j,b}·ℓ / (N·B), the loop over the published rows r = j·B + b."""
    b, _, n = zs.shape
    w = _brute_weights(zt, y, p["complementary_weight"])
    sums = None
    for j in range(n):
        for i in range(b):
            terms = _row_terms(name, p, zs[i, :, j].double(), zt[i, :, j].double(), int(y[i]))
            sums = [w[i, j] * t for t in terms] if sums is None else [a + w[i, j] * t for a, t in zip(sums, terms)]
    return [s / (n * b) for s in sums]


def _brute_total(name, p, fs, ft, s_cls, t_cls, y, epoch):
    """The published total: CE on the student's logits + warm-up · Σ λ_i·L_SD,i, in float64."""
    scales = p["scales"]

    def local(fmap, cls):
        pooled = _brute_pool(fmap, scales)  # (B, D, N)
        bias = cls.bias.double() if cls.bias is not None else 0.0
        return torch.einsum("kd,bdn->bkn", cls.weight.double(), pooled) + bias[None, :, None]

    zs, zt = local(fs.pre_pool.detach(), s_cls), local(ft.pre_pool, t_cls)
    terms = _brute_sd(name, p, zs, zt, y)
    warm = min(epoch / p["warmup_epochs"], 1.0) if p.get("warmup_epochs") else 1.0
    ce = p["ce_weight"] * F.cross_entropy(fs.logits.detach().double(), y)
    return ce + warm * sum(lam * t for lam, t in zip(_term_weights(name, p), terms)), terms


# ----------------------------------------------------------------------------- pooling


@pytest.mark.parametrize(
    "size,scales",
    [((8, 8), [1, 2, 4]), ((8, 8), [1, 2]), ((4, 4), [1, 2, 4]), ((7, 7), [1, 2, 4]), ((7, 7), [1, 2]),
     ((2, 2), [1, 2, 4]), ((6, 5), [1, 3, 6]), ((5, 5), [1]), ((9, 9), [1, 4])],
)  # fmt: skip
def test_pooling_equals_the_published_spp_by_hand(size, scales):
    torch.manual_seed(0)
    fmap = torch.randn(3, 4, *size)
    pooled = sdd_pool(fmap, scales)
    assert pooled.shape == (3, 4, sdd_regions(scales)) == (3, 4, sum(s * s for s in scales))
    torch.testing.assert_close(pooled.double(), _brute_pool(fmap, scales), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sdd_pool(fmap.double(), scales), _brute_pool(fmap, scales), rtol=1e-12, atol=1e-12)


def test_region_0_is_the_global_average_only_where_the_largest_grid_divides_the_map():
    torch.manual_seed(1)
    for side in (8, 4):  # CIFAR ResNets / WRNs, VGG / ShuffleNets / ResNet50
        fmap = torch.randn(2, 3, side, side, dtype=F64)
        torch.testing.assert_close(sdd_pool(fmap)[:, :, 0], fmap.mean(dim=(2, 3)))
    # ImageNet's 7x7 maps: the 4 adaptive bins {0,1} {1,2,3} {3,4,5} {5,6} overlap, so region 0 weighs the
    # rows and columns .125, .208, .083, .167, .083, .208, .125 instead of 1/7 each
    fmap = torch.randn(2, 3, 7, 7, dtype=F64)
    weights = torch.tensor([1 / 8, 5 / 24, 1 / 12, 1 / 6, 1 / 12, 5 / 24, 1 / 8], dtype=F64)
    assert float(weights.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(sdd_pool(fmap)[:, :, 0], torch.einsum("bdhw,h,w->bd", fmap, weights, weights))
    assert not torch.allclose(sdd_pool(fmap)[:, :, 0], fmap.mean(dim=(2, 3)))
    # a 2x2 map (the CIFAR MobileNetV2's) is repeated into the 4x4 grid: each cell 4 times
    fmap = torch.randn(1, 2, 2, 2, dtype=F64)
    grid = sdd_pool(fmap)[:, :, 5:].reshape(1, 2, 4, 4)
    torch.testing.assert_close(grid, fmap.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))


def test_local_logits_on_a_7x7_map_are_not_the_model_logits_but_are_on_8x8():
    torch.manual_seed(2)
    model = create_model("resnet8", num_classes=10).eval()
    cls = model.get_classifier()
    with torch.no_grad():
        for side, same in ((32, True), (28, False)):  # resnet8: an 8x8 final map at 32 px, 7x7 at 28 px
            f = model.forward_features(torch.randn(2, 3, side, side))
            assert f.pre_pool.shape[-1] == side // 4
            z = sdd_local_logits(f.pre_pool, cls.weight, cls.bias)
            assert z.shape == (2, 10, 21)
            assert torch.allclose(z[:, :, 0], f.logits, atol=1e-5) is same


# the side of the final map the published *_SDD models pool (post-ReLU in every one of them)
PUBLISHED_MAPS = {
    "resnet20": 8, "resnet8x4": 8, "resnet32x4": 8, "wrn_16_2": 8, "wrn_40_2": 8,  # resnet.py:199, wrn.py:138
    "vgg8": 4, "vgg13": 4, "ResNet50": 4, "ShuffleV1": 4, "ShuffleV2": 4,  # vgg.py:98, resnetv2.py, Shufflenet*.py
    "MobileNetV2": 2,  # mobilenetv2.py:155-158, after conv_1x1_bn and its ReLU
}  # fmt: skip


def test_final_maps_are_the_post_relu_maps_the_published_models_pool():
    torch.manual_seed(8)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for name, side in PUBLISHED_MAPS.items():
            f = create_model(name, num_classes=10).eval().forward_features(x)
            assert f.pre_pool.shape[-2:] == (side, side) and bool((f.pre_pool >= 0).all()), name
            assert (f.pre_pool == 0).any(), name  # a ReLU's output
        for name in ("ResNet18", "MobileNetV1"):  # imagenet/resnet.py:328-330, imagenet/mobilenetv2.py:53-55
            f = (
                create_model(name, num_classes=10, dataset="imagenet")
                .eval()
                .forward_features(torch.randn(1, 3, 224, 224))
            )
            assert f.pre_pool.shape[-2:] == (7, 7) and bool((f.pre_pool >= 0).all()), name


# ----------------------------------------------------------------------------- weights and row losses


def test_weights_are_decided_by_the_teacher_alone():
    # 1 sample per case, 3 classes, regions [global, a, b]: right = argmax == label 0
    right, wrong = [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]
    zt = torch.tensor([[right, right, wrong], [wrong, right, wrong], [wrong, wrong, right]]).transpose(1, 2)
    y = torch.zeros(3, dtype=torch.long)
    expected = torch.tensor([[1.0, 1.0, 2.0], [1.0, 2.0, 1.0], [1.0, 1.0, 2.0]])
    torch.testing.assert_close(sdd_weights(zt, y), expected)
    torch.testing.assert_close(sdd_weights(zt, y, 3.5), torch.where(expected == 2, 3.5, 1.0))
    torch.manual_seed(3)
    zt = torch.randn(16, 4, 21)
    y = torch.randint(0, 4, (16,))
    w = sdd_weights(zt, y)
    torch.testing.assert_close(w.double(), _brute_weights(zt, y))
    assert set(w.unique().tolist()) == {1.0, 2.0} and bool((w[:, 0] == 1).all())


def _rows(name: str, p: dict):
    """The per-row terms rld uses for ``name``'s base loss (reduction="none")."""
    t = p["temperature"]
    return {
        "sd_kd": lambda s, z, y: (kd_loss(s, z, t, reduction="none"),),
        "sd_dkd": lambda s, z, y: dkd_terms(s, z, y, t, reduction="none"),
        "sd_nkd": lambda s, z, y: nkd_terms(s, z, y, t, reduction="none", exclude_target=p["nkd_exclude_target"]),
        "sd_rld": lambda s, z, y: rld_terms(s, z, y, t, p["scd_temperature"], "ge", reduction="none"),
    }[name]


VARIANTS = [
    ("sd_kd", {}),
    ("sd_kd", {"temperature": 2.0}),
    ("sd_dkd", {}),
    ("sd_nkd", {}),
    ("sd_nkd", {"nkd_exclude_target": True, "temperature": 1.0}),
    ("sd_rld", {}),
    ("sd_rld", {"scd_temperature": 2.0}),
]


@pytest.mark.parametrize("name,changes", VARIANTS)
def test_per_row_losses_and_the_weighted_mean_equal_the_published_equations(name, changes):
    p = {**get_spec(name).params, **changes}
    torch.manual_seed(4)
    zs, zt = 3 * torch.randn(5, 6, 5), 3 * torch.randn(5, 6, 5)
    y = zt[:, :, 0].argmax(dim=1)
    y[::2] = zt[::2, :, 3].argmax(dim=1)  # some globally wrong, locally right regions
    flat_s, flat_t = (z.double().permute(2, 0, 1).reshape(25, 6) for z in (zs, zt))  # the published row order
    rows = [r.reshape(5, 5) for r in _rows(name, p)(flat_s, flat_t, y.repeat(5))]
    for j in range(5):  # row r = j·B + b holds region j of sample b
        for b in range(5):
            brute = _row_terms(name, p, zs[b, :, j].double(), zt[b, :, j].double(), int(y[b]))
            torch.testing.assert_close(torch.stack([r[j, b] for r in rows]), torch.stack(brute), rtol=1e-10, atol=1e-12)
    got = sdd_loss(zs, zt, y, _rows(name, p), p["complementary_weight"])
    brute = _brute_sd(name, p, zs, zt, y)
    torch.testing.assert_close(torch.stack(got).double(), torch.stack(brute), rtol=1e-6, atol=1e-7)
    assert (sdd_weights(zt, y) == 2).any()


def test_per_row_values_average_to_the_batch_losses():
    torch.manual_seed(5)
    s, t, y = 3 * torch.randn(9, 7), 3 * torch.randn(9, 7), torch.randint(0, 7, (9,))
    pairs = [
        (kd_loss(s, t, 3.0), kd_loss(s, t, 3.0, reduction="none")),
        (dkd_loss(s, t, y, 1.0, 8.0, 4.0), dkd_loss(s, t, y, 1.0, 8.0, 4.0, reduction="none")),
        (rld_loss(s, t, y), rld_loss(s, t, y, reduction="none")),
        (nkd_loss(s, t, y), nkd_loss(s, t, y, reduction="none")),
        *zip(dkd_terms(s, t, y), dkd_terms(s, t, y, reduction="none")),
        *zip(rld_terms(s, t, y, mask="g"), rld_terms(s, t, y, mask="g", reduction="none")),
        *zip(nkd_terms(s, t, y), nkd_terms(s, t, y, reduction="none")),
    ]
    for mean, rows in pairs:
        assert rows.shape == (9,)
        torch.testing.assert_close(rows.mean(), mean, rtol=1e-6, atol=1e-7)
    # the published SDD NKD keeps the target class: its second term is the full cross-entropy
    _, full = nkd_terms(s, t, y, 3.0, reduction="none", exclude_target=False)
    torch.testing.assert_close(full, -9 * (F.softmax(t / 3, 1) * F.log_softmax(s / 3, 1)).sum(1))
    with pytest.raises(ValueError, match="reduction must be 'mean'"):
        kd_loss(s, t, reduction="sum")


@pytest.mark.parametrize("name,changes", VARIANTS[::2])
def test_gradcheck(name, changes):
    p = {**get_spec(name).params, **changes}
    torch.manual_seed(6)
    zt = 2 * torch.randn(3, 5, 5, dtype=F64)
    y = torch.tensor([0, 1, 2])
    zs = (2 * torch.randn(3, 5, 5, dtype=F64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: sdd_loss(z, zt, y, _rows(name, p)), (zs,))
    fmap = torch.randn(2, 3, 7, 7, dtype=F64, requires_grad=True)
    weight = torch.randn(5, 3, dtype=F64, requires_grad=True)
    bias = torch.randn(5, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w, b: sdd_local_logits(f, w, b, [1, 2, 4]), (fmap, weight, bias))


# ----------------------------------------------------------------------------- the method


def _method(name: str, *overrides: str, teacher="resnet20", student="resnet8", classes=10):
    torch.manual_seed(7)
    t = create_model(teacher, num_classes=classes).eval().requires_grad_(False)
    s = create_model(student, num_classes=classes)
    cfg = resolve(f"demo/{name}", list(overrides))
    return build_method(cfg.method, MethodContext(student=s, teacher=t, num_classes=classes)), s, t, cfg


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("sd_kd", ()),
        ("sd_kd", ("method.scales=[1,2]", "method.complementary_weight=3")),
        ("sd_dkd", ()),
        ("sd_dkd", ("method.beta=6", "method.warmup_epochs=20")),
        ("sd_nkd", ()),
        ("sd_nkd", ("method.nkd_exclude_target=true", "method.gamma=1.5")),
        ("sd_rld", ()),
        ("sd_rld", ("method.scd_temperature=2", "method.scales=[1]")),
    ],
)
def test_the_step_total_equals_a_float64_brute_force(name, overrides):
    method, s, t, cfg = _method(name, *overrides)
    p = method_params(cfg.method)
    x = torch.randn(8, 3, 32, 32)
    fs = s.train().forward_features(x)
    with torch.no_grad():
        ft = t.forward_features(x)
    y = ft.logits.argmax(dim=1)
    y[::2] = (y[::2] + 1) % 10  # the teacher wrong on some samples
    epoch = 2
    total, parts = method(fs, ft, y, epoch)
    assert list(parts) == PARTS[name]
    torch.testing.assert_close(sum(parts.values()), total, rtol=0, atol=0)
    brute, _ = _brute_total(name, p, fs, ft, s.get_classifier(), t.get_classifier(), y, epoch)
    torch.testing.assert_close(total.detach().double(), brute, rtol=2e-5, atol=1e-6)
    total.backward()
    assert s.get_classifier().weight.grad is not None and s.get_classifier().bias.grad is not None
    assert all(p.grad is not None for p in s.parameters())


def test_scales_1_is_plain_kd_and_the_method_owns_nothing():
    method, s, t, _ = _method("sd_kd", "method.scales=[1]")
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    fs, ft = s.forward_features(x), t.forward_features(x)
    total, parts = method(fs, ft, y, 1)
    plain_total, plain_parts = KDLoss(temperature=4.0, ce_weight=0.1, kd_weight=0.9)(fs.logits, ft.logits, y)
    torch.testing.assert_close(total, plain_total, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(parts["kd"], plain_parts["kd"], rtol=1e-6, atol=1e-6)
    assert method.extra_parameters() == 0 and method.state_dict() == {} and not list(method.parameters())
    assert s.get_classifier() not in list(method.modules())  # the student's, trained and saved with it
    # the teacher's classifier is a frozen copy: changing the teacher afterwards changes nothing
    before = method(fs, ft, y, 1)[0]
    with torch.no_grad():
        t.get_classifier().weight.add_(1.0)
    torch.testing.assert_close(method(fs, ft, y, 1)[0], before, rtol=0, atol=0)


def test_warm_up_as_published():
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    for name, warm in (("sd_kd", None), ("sd_dkd", 20.0), ("sd_nkd", 20.0), ("sd_rld", 20.0)):
        method, s, t, _ = _method(name, *(() if warm is None else ("method.warmup_epochs=20",)))
        fs, ft = s.forward_features(x), t.forward_features(x)
        full = {k: v for k, v in method(fs, ft, y, 40)[1].items() if k != "ce"}
        for epoch in (1, torch.tensor(5.0)):  # a 0-d tensor inside captured steps
            parts = method(fs, ft, y, epoch)[1]
            factor = 1.0 if warm is None else float(epoch) / warm
            for k, v in full.items():
                torch.testing.assert_close(parts[k], factor * v)


# ----------------------------------------------------------------------------- defaults and presets


def test_published_defaults():
    base = {"logit_standardization": False, "ls_temperature": None, "ls_weight": None}
    sdd = {"scales": [1, 2, 4], "complementary_weight": 2.0}  # train.py:184's --M; the hard-coded 2
    assert dataclasses.asdict(SDKDConfig()) == {  # mdistiller/engine/cfg.py:61-64
        "name": "sd_kd", **base, **sdd, "temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9,
    }  # fmt: skip
    assert dataclasses.asdict(SDDKDConfig()) == {  # cfg.py:163-166; --warmup 20 (train_origin.py:198)
        "name": "sd_dkd", **base, **sdd, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 20.0,
        "ce_weight": 1.0,
    }  # fmt: skip
    assert dataclasses.asdict(SDNKDConfig()) == {  # SDD_nkd.py:162-165 (the DKD section), mask of line 53
        "name": "sd_nkd", **base, **sdd, "gamma": 8.0, "temperature": 4.0, "warmup_epochs": 20.0, "ce_weight": 1.0,
        "nkd_exclude_target": False,
    }  # fmt: skip
    assert dataclasses.asdict(SDRLDConfig()) == {  # RLD's own defaults: beyond the published code
        "name": "sd_rld", **base, **sdd, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "scd_temperature": None,
        "warmup_epochs": 20.0, "mask": "ge", "ce_weight": 1.0,
    }  # fmt: skip
    for name in METHODS:
        spec = get_spec(name)
        assert spec.teacher_needs == ("feats", "classifier") and spec.student_features and spec.ls is None


# pair -> (SD-KD scales, SD-DKD scales (also SD-RLD's), SD-NKD scales, SD-DKD beta = SD-NKD gamma): the
# --M of the commented commands in teacher_*.sh ([1,2,4], train.py's default, where none is given) and
# the BETA of configs/cifar100/sdd_{dkd,nkd}/*.yaml (8 where a config has no DKD block)
S124, S12 = [1, 2, 4], [1, 2]
CIFAR = {
    "resnet32x4-resnet8x4": (S12, S124, S12, 8.0),
    "resnet32x4-ShuffleV2": (S124, S124, S124, 8.0),
    "resnet32x4-wrn_16_2": (S124, S124, S124, 8.0),  # not published: every resnet32x4 config's 8
    "resnet32x4-wrn_40_2": (S124, S124, S124, 8.0),
    "wrn_40_2-resnet8x4": (S124, S124, S124, 6.0),  # not published: wrn40_2_wrn_*'s 6
    "wrn_40_2-MobileNetV2": (S124, S124, S124, 6.0),
    "wrn_40_2-wrn_16_2": (S124, S124, S124, 6.0),
    "wrn_40_2-wrn_40_1": (S124, S124, S124, 6.0),
    "vgg13-vgg8": (S12, S12, S12, 6.0),
    "vgg13-MobileNetV2": (S124, S124, S124, 6.0),
    "ResNet50-MobileNetV2": (S124, S124, S124, 8.0),
    "resnet56-resnet20": (S124, S124, S124, 2.0),
    "resnet110-resnet32": (S124, S124, S124, 2.0),
    "resnet110-resnet20": (S124, S124, S124, 2.0),  # not published: res110_res32.yaml's
}


def test_presets_cover_every_pair_with_the_published_values(capsys):
    assert sorted(CIFAR) == sorted(CIFAR_PAIRS)
    names = {f"cifar100/{p}/{m}" for p in CIFAR_PAIRS for m in METHODS}
    names |= {f"imagenet/{p}/{m}" for p in TABLE4_PAIRS for m in METHODS} | {f"demo/{m}" for m in METHODS}
    assert {n for n in list_presets() if n.rsplit("/", 1)[-1] in METHODS} == names  # no pair added
    assert main(["presets"]) == 0 and names <= set(capsys.readouterr().out.split())
    sdd = {"complementary_weight": 2.0, "logit_standardization": False}
    for pair, (kd_m, dkd_m, nkd_m, beta) in CIFAR.items():
        got = {m: method_params(resolve(f"cifar100/{pair}/{m}").method) for m in METHODS}
        assert got["sd_kd"] == {**sdd, "scales": kd_m, "temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}
        assert got["sd_dkd"] == {
            **sdd, "scales": dkd_m, "alpha": 1.0, "beta": beta, "temperature": 4.0, "warmup_epochs": 20.0,
            "ce_weight": 1.0,
        }, pair  # fmt: skip
        assert got["sd_nkd"] == {
            **sdd, "scales": nkd_m, "gamma": beta, "temperature": 4.0, "warmup_epochs": 20.0, "ce_weight": 1.0,
            "nkd_exclude_target": False,
        }, pair  # fmt: skip
        assert got["sd_rld"] == {  # RLD's CIFAR-100 values, SD-DKD's scales
            **sdd, "scales": dkd_m, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "scd_temperature": None,
            "warmup_epochs": 20.0, "mask": "ge", "ce_weight": 1.0,
        }, pair  # fmt: skip
        t = resolve(f"cifar100/{pair}/sd_dkd").train  # the configs' SOLVER: the family's protocol
        lr = 0.01 if pair.endswith(("MobileNetV2", "ShuffleV2")) else 0.05
        assert (t.epochs, t.batch_size, t.lr, t.lr_milestones, t.weight_decay) == (240, 64, lr, [150, 180, 210], 5e-4)
        for m in METHODS:  # the published trainer's clipping (mdistiller/engine/trainer.py:189); SD-RLD's too
            assert resolve(f"cifar100/{pair}/{m}").train.grad_clip_norm == 40.0, (pair, m)
    # ImageNet: configs/imagenet/{r34_r18,r50_mv2}/sdd_*.yaml and run.sh's --M
    imagenet = {
        ("ResNet34-ResNet18", "sd_dkd"): {"scales": S12, "alpha": 1.0, "beta": 0.5, "temperature": 1.0,
                                          "warmup_epochs": 1.0, "ce_weight": 1.0},
        ("ResNet50-MobileNetV1", "sd_dkd"): {"scales": S124, "alpha": 1.0, "beta": 2.0, "temperature": 1.0,
                                             "warmup_epochs": 1.0, "ce_weight": 1.0},
        ("ResNet34-ResNet18", "sd_nkd"): {"scales": S124, "gamma": 0.5, "temperature": 1.0, "warmup_epochs": 1.0,
                                          "ce_weight": 1.0, "nkd_exclude_target": False},
        ("ResNet50-MobileNetV1", "sd_nkd"): {"scales": S124, "gamma": 2.0, "temperature": 1.0, "warmup_epochs": 1.0,
                                             "ce_weight": 1.0, "nkd_exclude_target": False},
        ("ResNet34-ResNet18", "sd_rld"): {"scales": S12, "alpha": 1.0, "beta": 0.5, "temperature": 1.0,
                                          "scd_temperature": None, "warmup_epochs": 0.0, "mask": "ge",
                                          "ce_weight": 1.0},
        ("ResNet50-MobileNetV1", "sd_rld"): {"scales": S124, "alpha": 1.0, "beta": 2.0, "temperature": 1.0,
                                             "scd_temperature": None, "warmup_epochs": 0.0, "mask": "ge",
                                             "ce_weight": 1.0},
    }  # fmt: skip
    for pair in TABLE4_PAIRS:  # no KD block in sdd_kd.yaml: cfg.py's T 4, 0.1, 0.9
        imagenet[(pair, "sd_kd")] = {"scales": S124, "temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}
    for (pair, m), values in imagenet.items():
        cfg = resolve(f"imagenet/{pair}/{m}")
        assert method_params(cfg.method) == {**sdd, **values}, (pair, m)
        t = cfg.train  # 256 per process on 2 processes (not r34_r18/sdd_dkd.yaml's BATCH_SIZE 4)
        assert (t.epochs, t.batch_size, t.lr, t.lr_step, t.weight_decay) == (100, 512, 0.2, 30, 1e-4)
        assert t.grad_clip_norm == 40.0
    for m in METHODS:
        demo = resolve(f"demo/{m}")
        assert (demo.model.teacher, demo.model.student, demo.data.name) == ("resnet20", "resnet8", "digits")
        assert demo.method.scales == S124 and getattr(demo.method, "warmup_epochs", 3.0) == 3.0
        assert demo.train.grad_clip_norm is None


# ----------------------------------------------------------------------------- refusals


def test_refusals_are_one_line_user_errors(capsys):
    for scales, message in [
        ("[1,3,4]", "every scale must divide the largest, 4"),
        ("[2,4]", "scales must increase and start at 1"),
        ("[1,4,2]", "scales must increase and start at 1"),
        ("[1,1]", "scales must increase and start at 1"),
        ("[]", "scales must be a non-empty list"),
    ]:
        with pytest.raises(UserError, match=message):
            resolve("demo/sd_kd", [f"method.scales={scales}"])
        assert main(["train", "demo/sd_dkd", f"method.scales={scales}", "--dry-run"]) == 2
        assert_user_error(2, capsys.readouterr().err, message)
    with pytest.raises(UserError, match="method.scales takes a list"):
        resolve("demo/sd_kd", ["method.scales=4"])
    for override, message in [
        ("method.complementary_weight=-1", "complementary_weight must be a number >= 0"),
        ("method.temperature=0", "temperature must be > 0"),
        ("method.logit_standardization=true", "not defined by the published code"),
        ("method.nkd_exclude_target=true", "does not take nkd_exclude_target"),
    ]:
        with pytest.raises(UserError, match=message):
            resolve("demo/sd_kd", [override])
    with pytest.raises(UserError, match="mask must be one of"):
        resolve("demo/sd_rld", ["method.mask=x"])
    # models without a final feature map or without a linear classifier reading it
    from rld.models import ExternalModel

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    external = ExternalModel(net, "4")  # what create_model("torchvision:...") gives: logits and pooled only
    external.model_name = "torchvision:tiny"
    zoo = create_model("resnet20", num_classes=10)
    for student, teacher, message in [
        (external, zoo, "SD-KD reads the student's final feature map, which model 'torchvision:tiny' does not"),
        (zoo, external, "SD-KD reads the teacher's final feature map, which model 'torchvision:tiny' does not"),
        (create_model("resnet8", num_classes=5), zoo, "the student classifies 5 classes and the teacher 10"),
    ]:
        with pytest.raises(UserError, match=message) as err:
            build_method({"name": "sd_kd"}, MethodContext(student=student, teacher=teacher, num_classes=10))
        assert "\n" not in str(err.value) and str(err.value).startswith("method 'sd_kd': ")


# ----------------------------------------------------------------------------- training and resume

STEPS_PER_EPOCH = 7  # 20 images of each of the 10 digits at batch 32
SMALL = ["train.batch_size=32", "data.eval_batch_size=512", "data.train_per_class=20", "train.device=cpu"]
SMALL += ["data.image_size=16"]  # 16 px: 4x4 final maps, still whole cells for [1, 2, 4]
FAST = ["train.epochs=2", *SMALL]  # the demo's schedule, cut after 2 epochs: the warm-up still ramps


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, teacher_ckpt) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    shutil.copy(teacher_ckpt, path)
    return path


@pytest.mark.parametrize("name", METHODS)
def test_demo_trains_with_a_falling_loss(name, teacher_file, tmp_path):
    # --epochs 2: the schedule and the warm-up scaled to 2 epochs (a ramping weight would raise the loss)
    cfg = resolve_with_flags(f"demo/{name}", [*SMALL, f"model.teacher_checkpoint={teacher_file}"], epochs=2)
    train(cfg, tmp_path / name)
    rows = metric_rows(tmp_path / name / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["steps"] for r in rows] == [str(STEPS_PER_EPOCH)] * 2
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    for row in rows:  # the logged parts are the method's and sum to the loss
        total = sum(float(row[f"loss_{p}"]) for p in PARTS[name])
        assert total == pytest.approx(float(row["train_loss"]), rel=1e-4)


def test_resumes_exactly_after_a_crash_with_static_steps(teacher_file, tmp_path):
    over = [*FAST, f"model.teacher_checkpoint={teacher_file}"]
    ref = tmp_path / "ref"
    train(resolve("demo/sd_dkd", over), ref)  # warm-up: the epoch enters the loss
    out = tmp_path / "crashed"
    args = ["train", "demo/sd_dkd", *over, "--out", str(out), "--resume"]
    crashed = run_rld(*args, fault=f"after_step:{STEPS_PER_EPOCH + 2}")  # inside epoch 2
    assert crashed.returncode == FAULT_EXIT_STATUS, crashed.stderr[-2000:]
    assert load_last(out)["epoch"] == 1
    assert main([*args, "train.static_step=on"]) == 0  # an execution setting may change on resume
    assert metric_rows(out / "metrics.csv") == metric_rows(ref / "metrics.csv")
    assert_same_run_state(load_last(ref), load_last(out), ignore_config=("train.static_step",))


def test_a_step_reads_nothing_on_the_host(teacher_ckpt, tmp_path):
    """What a CUDA-graph step needs, proved on the CPU: plain and static steps (the epoch as a device
    scalar) of every variant without a host synchronisation."""
    from rld.engine.distributed import World
    from rld.engine.loop import Member
    from rld.engine.static import StaticSteps
    from rld.engine.syncs import HostSyncCounter
    from rld.engine.teacher import build_teacher_fn
    from rld.engine.trainer import Run, build_run_data, method_inputs, prepare_out_dir
    from rld.losses import value_checks

    cpu = torch.device("cpu")
    for method in METHODS:
        cfg = resolve(f"demo/{method}", [*FAST, f"model.teacher_checkpoint={teacher_ckpt}"])
        data = build_run_data(cfg, cpu, World())
        teacher_fn = build_teacher_fn(cfg, data.num_classes, cpu)
        prepare_out_dir(tmp_path / method, resume=False)
        run = Run(
            cfg, tmp_path / method, world=World(), device=cpu, num_classes=10, resume_from=None, resume=False,
            **method_inputs(cfg, data, teacher_fn),
        )  # fmt: skip
        batch = next(iter(data.train))
        run.begin_epoch(1)
        static = StaticSteps([Member(run)], data.train, teacher_fn, capture=False)
        static.start_epoch(1)
        with value_checks(False), HostSyncCounter(fail=True):
            run.step(batch, teacher_fn(batch, features=True), 1)
            static.step(32)
        assert run.steps == 2, method


# ----------------------------------------------------------------------------- table_extra


def test_table_extra_dry_run_lists_the_sdd_runs_with_their_parameters(tmp_path, capsys):
    out, plan_file = tmp_path / "repro", tmp_path / "plan.json"
    args = ["reproduce", "table_extra", "--dry-run", "--seeds", "0", "--json", str(plan_file), "--out", str(out)]
    assert main([*args, "--methods", ",".join(METHODS)]) == 0
    printed = capsys.readouterr().out
    assert "table_extra: 33 runs (5 teacher, 28 distill)" in printed
    line = (
        "cifar100/vgg13-vgg8/sd_dkd/seed0  [scales=[1, 2] complementary_weight=2.0 alpha=1.0 beta=6.0 "
        "temperature=4.0 warmup_epochs=20.0 ce_weight=1.0]"
    )
    assert line in printed
    body = json.loads(plan_file.read_text())
    distilled = [r for r in body["runs"] if r["roles"] == ["distill"]]
    assert {(f"{r['teacher']}-{r['student']}", r["method"]) for r in distilled} == {
        (p, m) for p in TABLE3_PAIRS for m in METHODS
    }
    for r in distilled:
        preset = f"cifar100/{r['teacher']}-{r['student']}/{r['method']}"
        assert r["preset"] == preset and r["method_params"] == method_params(resolve(preset).method)
        kd_m, dkd_m, nkd_m, beta = CIFAR[f"{r['teacher']}-{r['student']}"]
        scales = {"sd_kd": kd_m, "sd_dkd": dkd_m, "sd_nkd": nkd_m, "sd_rld": dkd_m}[r["method"]]
        assert r["method_params"]["scales"] == scales
    rows = list(dict.fromkeys(c["row"] for c in body["cells"]))
    assert rows[-4:] == ["SD-KD", "SD-DKD", "SD-NKD", "SD-RLD"]
    from rld.experiments import collect, plan_table, to_markdown

    markdown = to_markdown(collect(plan_table("table_extra", out, seeds=[0], methods=list(METHODS))))
    assert "| SDD | SD-KD (published with gradient clipping) | — |" in markdown
    assert "| SDD | SD-RLD (beyond the published code) | — |" in markdown
    assert "SD-DKD: published with gradient clipping (gradient norm clipped at 40" in markdown
