"""CRLD: the loss against a float64 brute force of the published code (per sample, both views, the
masks at their thresholds), its published defaults and presets, the registered method's step on both
views, training, exact resume, the refusals, sweep grouping and ``rld reproduce table_extra``."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from conftest import assert_same_run_state, assert_user_error, load_last, metric_rows, run_rld
from rld.cli import main
from rld.config import list_presets, resolve
from rld.engine import train
from rld.engine.faults import FAULT_EXIT_STATUS
from rld.engine.sweep import SweepRun, group_runs, stream_signature, train_runs
from rld.engine.trainer import StudentAndMethod
from rld.errors import UserError
from rld.experiments import collect, plan_table, to_markdown
from rld.experiments.tables import TABLE2_PAIRS, TABLE3_PAIRS
from rld.losses import CRLDLoss, LossInputError, crld_loss, crld_masks, crld_terms
from rld.methods import StrongView, build_method, get_spec, logits_only, method_params
from rld.methods.crld import CRLDConfig
from rld.models import create_model

# The published defaults, written out independently of the method file: mdistiller/engine/cfg.py of
# Weijia-Zhang/CRLD (read through scx-822/CRLD-main; haiduo/DeepKD cfg.py has the same values).
DEFAULTS = {
    "temperature": 4.0,  # CFG.CRLD.TEMPERATURE
    "tau_w": 0.9,  # CFG.CRLD.TAU_W
    "tau_s": 0.2,  # CFG.CRLD.TAU_S
    "within_weight": 2.0,  # CFG.CRLD.WV_WEIGHT
    "cross_weight": 0.5,  # CFG.CRLD.CV_WEIGHT
    "ce_weight": 1.0,  # CFG.CRLD.CE_WEIGHT
}
# configs/imagenet/r34_r18/crld.yaml, r50_mv1/crld.yaml: CRLD.TEMPERATURE 1.0, CE_WEIGHT 2.0
IMAGENET = {**DEFAULTS, "temperature": 1.0, "ce_weight": 2.0}
# configs/cifar100/crld/*.yaml: EPOCHS 240, BATCH_SIZE 64, LR per pair; pairs without a config (None)
# take the rule of their student kind (0.01 for ShuffleNet / MobileNetV2, else 0.05)
CIFAR_LR = {
    "resnet32x4-resnet8x4": 0.05,  # res32x4_res8x4.yaml
    "resnet56-resnet20": 0.05,  # res56_res20.yaml
    "resnet110-resnet32": 0.05,  # res110_res32.yaml
    "wrn_40_2-wrn_16_2": 0.05,  # wrn40_2_wrn16_2.yaml
    "wrn_40_2-wrn_40_1": 0.05,  # wrn40_2_wrn40_1.yaml
    "vgg13-vgg8": 0.05,  # vgg13_vgg8.yaml
    "wrn_40_2-resnet8x4": 0.05,  # wrn40_2_res8x4.yaml
    "resnet32x4-wrn_16_2": 0.05,  # res32x4_wrn_16_2.yaml
    "resnet32x4-ShuffleV2": 0.01,  # res32x4_shuv2.yaml
    "ResNet50-MobileNetV2": 0.01,  # res50_mv2.yaml
    "vgg13-MobileNetV2": 0.01,  # vgg13_mv2.yaml
    "wrn_40_2-MobileNetV2": 0.01,  # wrn40_2_mv2.yaml
    "resnet32x4-wrn_40_2": 0.05,  # no published config: a WRN student
    "resnet110-resnet20": 0.05,  # no published config: a ResNet student
}
SMALL = ["data.image_size=16", "data.train_per_class=30", "train.batch_size=32", "data.eval_batch_size=512"]


# ----------------------------------------------------------------------------- brute force


def _softmax(row, t):
    m = max(v / t for v in row)
    e = [math.exp(v / t - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _kd_sample(zs, zt, t):
    """t²·Σ_c p_t log(p_t / p_s) of one sample."""
    ps, pt = _softmax(zs, t), _softmax(zt, t)
    return t * t * sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt) if q > 0)


def _ce(z, y):
    return sum(math.log(sum(math.exp(v - max(row)) for v in row)) + max(row) - row[t] for row, t in zip(z, y)) / len(z)


def brute_force_crld(sw, tw, ss, ts, y=None, *, temperature, tau_w, tau_s, within_weight=2.0, cross_weight=0.5,
                     ce_weight=1.0):  # fmt: skip
    """CRLD.forward_train (mdistiller/distillers/CRLD.py) written out sample by sample; lists of rows."""
    within = cross = 0.0
    for b in range(len(sw)):
        conf_w, conf_s = max(_softmax(tw[b], 1.0)), max(_softmax(ts[b], 1.0))
        if conf_w >= tau_w:  # mask_w = conf_w.ge(tau_w): both within-view pairs
            within += _kd_sample(sw[b], tw[b], temperature) + _kd_sample(ss[b], ts[b], temperature)
        if conf_s >= tau_s:  # mask_s = conf_s.ge(tau_s): both cross-view pairs
            cross += _kd_sample(ss[b], tw[b], temperature) + _kd_sample(sw[b], ts[b], temperature)
    within, cross = within / len(sw), cross / len(sw)  # .mean() over the whole batch
    parts = {"within": within_weight * within, "cross": cross_weight * cross}
    if y is not None:
        parts = {"ce": ce_weight * (_ce(sw, y) + _ce(ss, y)), **parts}
    return (within, cross), parts


def _views(b, c, scale, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(b, c, generator=g, dtype=dtype) for _ in range(4)]  # sw, tw, ss, ts


# ----------------------------------------------------------------------------- the loss


@pytest.mark.parametrize(
    "b,c,scale,seed,temperature,tau_w,tau_s",
    [
        (8, 5, 3.0, 0, 4.0, 0.9, 0.2),  # the published thresholds
        (16, 7, 4.0, 1, 4.0, 0.6, 0.5),  # both masks partial
        (5, 100, 6.0, 2, 1.0, 0.3, 0.8),  # ImageNet's T = 1, many classes
        (1, 3, 2.0, 3, 2.0, 0.0, 1.0),  # one sample; everything / nothing passes
    ],
)
def test_terms_and_loss_equal_a_float64_brute_force(b, c, scale, seed, temperature, tau_w, tau_s):
    sw, tw, ss, ts = _views(b, c, scale, seed)
    y = torch.randint(0, c, (b,), generator=torch.Generator().manual_seed(seed))
    (within, cross), parts = brute_force_crld(
        *(z.tolist() for z in (sw, tw, ss, ts)), y.tolist(), temperature=temperature, tau_w=tau_w, tau_s=tau_s
    )
    got = crld_terms(sw, tw, ss, ts, temperature, tau_w, tau_s)
    assert all(t.dtype == torch.float64 for t in got)
    assert [t.item() for t in got] == pytest.approx([within, cross], rel=1e-10, abs=1e-12)
    loss = crld_loss(sw, tw, ss, ts, temperature, tau_w, tau_s, within_weight=2.0, cross_weight=0.5)
    assert loss.item() == pytest.approx(parts["within"] + parts["cross"], rel=1e-10, abs=1e-12)
    module = CRLDLoss(temperature, tau_w, tau_s)
    total, got_parts = module(sw, tw, y, 1, student_strong_logits=ss, teacher_strong_logits=ts)
    assert {k: v.item() for k, v in got_parts.items()} == pytest.approx(parts, rel=1e-10, abs=1e-12)
    assert total.item() == pytest.approx(sum(parts.values()), rel=1e-10)


# Teacher rows whose confidence (largest softmax probability at temperature 1) is exact in binary
# floating point: two tied classes and two that underflow give exactly 1/2, one class exactly 1,
# four equal logits exactly 1/4.
HALF, ONE, QUARTER = [5.0, 5.0, -1000.0, -1000.0], [0.0, -1000.0, -1000.0, -1000.0], [1.0, 1.0, 1.0, 1.0]
ABOVE_HALF = [5.0, 4.5, -1000.0, -1000.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_masks_keep_a_confidence_equal_to_the_threshold(dtype):
    tw = torch.tensor([HALF, ABOVE_HALF, QUARTER, ONE, HALF], dtype=dtype)
    ts = torch.tensor([QUARTER, HALF, ONE, QUARTER, ABOVE_HALF], dtype=dtype)
    m_w, m_s = crld_masks(tw, ts, tau_w=0.5, tau_s=0.25)
    assert m_w.tolist() == [True, True, False, True, True]  # 1/2 >= 1/2 kept, 1/4 dropped
    assert m_s.tolist() == [True, True, True, True, True]  # 1/4 >= 1/4 kept
    assert crld_masks(tw, ts, 1.0, 0.5)[0].tolist() == [False, False, False, True, False]  # only exactly 1
    assert crld_masks(tw, ts, 1.0, 0.5)[1].tolist() == [False, True, True, False, True]
    assert crld_masks(tw, ts, 0.0, 0.0)[0].all() and crld_masks(tw, ts, 0.0, 0.0)[1].all()
    # the terms at those thresholds equal the brute force, whose comparisons are plain >=
    g = torch.Generator().manual_seed(4)
    sw, ss = torch.randn(5, 4, generator=g, dtype=dtype), torch.randn(5, 4, generator=g, dtype=dtype)
    for tau_w, tau_s in ((0.5, 0.25), (1.0, 0.5), (0.5, 1.0)):
        (within, cross), _ = brute_force_crld(
            *(z.double().tolist() for z in (sw, tw, ss, ts)), temperature=4.0, tau_w=tau_w, tau_s=tau_s
        )
        got = crld_terms(sw, tw, ss, ts, 4.0, tau_w, tau_s)
        assert [t.item() for t in got] == pytest.approx([within, cross], rel=1e-5 if dtype == torch.float32 else 1e-10)


def test_the_masks_pair_as_published():
    """mask_w (the weak-view teacher) gates both within-view terms, the strong view's included;
    mask_s (the strong-view teacher) both cross-view terms, the weak teacher's target included."""
    sw, _, ss, _ = _views(2, 4, 2.0, 5)
    tw = torch.tensor([ONE, QUARTER], dtype=torch.float64)  # sample 0 confident on the weak view only
    ts = torch.tensor([QUARTER, ONE], dtype=torch.float64)  # sample 1 on the strong view only
    within, cross = crld_terms(sw, tw, ss, ts, 4.0, tau_w=0.9, tau_s=0.9)

    def kd(s, t):
        return _kd_sample(s.tolist(), t.tolist(), 4.0)

    assert within.item() == pytest.approx((kd(sw[0], tw[0]) + kd(ss[0], ts[0])) / 2, rel=1e-10)
    assert cross.item() == pytest.approx((kd(ss[1], tw[1]) + kd(sw[1], ts[1])) / 2, rel=1e-10)
    # divided by the whole batch, not by the samples kept: a third, unconfident sample scales both by 2/3
    sw3, ss3 = torch.cat([sw, sw[:1]]), torch.cat([ss, ss[:1]])
    tw3, ts3 = torch.cat([tw, tw[1:]]), torch.cat([ts, ts[:1]])
    within3, cross3 = crld_terms(sw3, tw3, ss3, ts3, 4.0, tau_w=0.9, tau_s=0.9)
    assert (within3.item(), cross3.item()) == pytest.approx((within.item() * 2 / 3, cross.item() * 2 / 3), rel=1e-10)


def test_zero_when_the_student_is_the_teacher_and_the_views_agree():
    _, tw, _, _ = _views(6, 5, 3.0, 6)
    within, cross = crld_terms(tw.clone(), tw, tw.clone(), tw, tau_w=0.0, tau_s=0.0)
    assert within.item() == pytest.approx(0.0, abs=1e-12) and cross.item() == pytest.approx(0.0, abs=1e-12)


def test_gradcheck_float64_wrt_both_student_views():
    sw, tw, ss, ts = _views(5, 6, 2.0, 7)
    sw.requires_grad_(True)
    ss.requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3, 5])
    # thresholds that keep some samples and drop others on both views
    masks = crld_masks(tw, ts, 0.5, 0.5)
    assert 0 < masks[0].sum() < 5 or 0 < masks[1].sum() < 5
    assert torch.autograd.gradcheck(lambda a, b: crld_loss(a, tw, b, ts, 4.0, 0.5, 0.5), (sw, ss))
    module = CRLDLoss(tau_w=0.5, tau_s=0.5)
    assert torch.autograd.gradcheck(
        lambda a, b: module(a, tw, y, student_strong_logits=b, teacher_strong_logits=ts)[0], (sw, ss)
    )


def test_compute_dtype():
    sw, tw, ss, ts = _views(4, 5, 2.0, 8, dtype=torch.float32)
    half = [z.half() for z in (sw, tw, ss, ts)]
    assert all(t.dtype == torch.float32 for t in crld_terms(*half))
    assert crld_loss(sw, tw.double(), ss, ts).dtype == torch.float64
    m_w, m_s = crld_masks(tw.half(), ts.half())
    assert m_w.dtype == m_s.dtype == torch.bool and m_w.shape == (4,)


def _no_strong(sw, tw, ss, ts, y):
    return CRLDLoss()(sw, tw, y)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda sw, tw, ss, ts, y: crld_terms(sw, tw, ss, ts, tau_w=1.5), r"tau_w must be a number in \[0, 1\]"),
        (lambda sw, tw, ss, ts, y: crld_terms(sw, tw, ss, ts, tau_s=-0.1), r"tau_s must be a number in \[0, 1\]"),
        (lambda sw, tw, ss, ts, y: crld_terms(sw, tw, ss, ts, tau_w=math.nan), r"tau_w .* got nan"),
        (lambda sw, tw, ss, ts, y: crld_terms(sw, tw, ss, ts, tau_s=math.inf), r"tau_s .* got inf"),
        (lambda sw, tw, ss, ts, y: crld_masks(tw, ts, tau_w=True), r"tau_w .* got True"),
        (lambda sw, tw, ss, ts, y: crld_masks(tw, ts, tau_s="0.2"), r"tau_s .* got '0.2'"),
        (lambda sw, tw, ss, ts, y: crld_masks(tw, ts[:2]), "teacher_strong_logits must have the shape"),
        (lambda sw, tw, ss, ts, y: crld_terms(sw, tw, ss, ts, temperature=0), "temperature must be > 0"),
        (lambda sw, tw, ss, ts, y: crld_terms(sw, tw, ss[:2], ts), "student_strong_logits must have the shape"),
        (lambda sw, tw, ss, ts, y: crld_terms(sw, tw, ss, ts.long()), "teacher_strong_logits must be a floating"),
        (lambda sw, tw, ss, ts, y: crld_terms(sw, tw[:, :3], ss, ts), "must have the same shape"),
        (lambda sw, tw, ss, ts, y: crld_loss(sw, tw, ss, ts, cross_weight=-1), "cross_weight must be a number >= 0"),
        (lambda sw, tw, ss, ts, y: CRLDLoss(within_weight=math.inf), "within_weight must be a finite number"),
        (lambda sw, tw, ss, ts, y: CRLDLoss(tau_w=math.nan), r"tau_w must be a number in \[0, 1\]"),
        (lambda sw, tw, ss, ts, y: CRLDLoss(logit_standardization=True), "CRLD with logit standardization is not"),
        (_no_strong, "CRLD needs the logits of the strongly augmented view too"),
        (
            lambda sw, tw, ss, ts, y: CRLDLoss()(sw, tw, y[:2], student_strong_logits=ss, teacher_strong_logits=ts),
            "target must have shape",
        ),
    ],
)
def test_bad_input_raises_loss_input_error_saying_what_is_wrong(call, message):
    sw, tw, ss, ts = _views(4, 5, 1.0, 9, dtype=torch.float32)
    with pytest.raises(LossInputError, match=message):
        call(sw, tw, ss, ts, torch.tensor([0, 1, 2, 3]))


# ----------------------------------------------------------------------------- defaults and presets


def test_published_defaults_are_the_configs_and_the_losss():
    cfg = CRLDConfig()
    assert (cfg.name, cfg.temperature, cfg.tau_w, cfg.tau_s, cfg.within_weight, cfg.cross_weight, cfg.ce_weight) == (
        "crld", 4.0, 0.9, 0.2, 2.0, 0.5, 1.0,
    )  # fmt: skip
    loss = CRLDLoss()
    assert (loss.temperature, loss.tau_w, loss.tau_s, loss.within_weight, loss.cross_weight, loss.ce_weight) == (
        4.0, 0.9, 0.2, 2.0, 0.5, 1.0,
    )  # fmt: skip
    spec = get_spec("crld")
    assert spec.views == ("weak", "strong") and spec.teacher_needs == ("logits",) and spec.ls is None
    assert method_params({"name": "crld"}) == {**DEFAULTS, "logit_standardization": False}


def test_presets_are_listed_with_the_published_protocols(capsys):
    expected = {"demo/crld", *(f"cifar100/{p}/crld" for p in CIFAR_LR)}
    expected |= {"imagenet/ResNet34-ResNet18/crld", "imagenet/ResNet50-MobileNetV1/crld"}
    assert set(CIFAR_LR) == {*TABLE2_PAIRS, *TABLE3_PAIRS}  # every CIFAR-100 pair of the paper
    assert expected <= set(list_presets())
    assert main(["presets", "crld"]) == 0
    assert expected <= set(capsys.readouterr().out.split())
    for pair, lr in CIFAR_LR.items():
        t = resolve(f"cifar100/{pair}/crld").train
        assert (t.epochs, t.batch_size, t.lr, t.lr_milestones, t.lr_decay, t.weight_decay, t.momentum) == (
            240, 64, lr, [150, 180, 210], 0.1, 5e-4, 0.9,
        ), pair  # fmt: skip
        assert method_params(resolve(f"cifar100/{pair}/crld").method) == {**DEFAULTS, "logit_standardization": False}
    for pair in ("ResNet34-ResNet18", "ResNet50-MobileNetV1"):
        cfg = resolve(f"imagenet/{pair}/crld")
        t = cfg.train
        assert (t.epochs, t.batch_size, t.lr, t.lr_step, t.lr_decay, t.weight_decay, t.momentum) == (
            100, 512, 0.2, 30, 0.1, 1e-4, 0.9,
        )  # fmt: skip
        assert method_params(cfg.method) == {**IMAGENET, "logit_standardization": False}
    demo = resolve("demo/crld")
    assert (demo.model.teacher, demo.model.student, demo.data.name, demo.train.epochs) == (
        "resnet20", "resnet8", "digits", 10,
    )  # fmt: skip
    assert method_params(demo.method) == {**DEFAULTS, "logit_standardization": False}


# ----------------------------------------------------------------------------- the method's step


def test_step_loss_equals_a_float64_brute_force_on_both_views():
    """Through the engine's module: the student runs on each view, the method gets both views' logits."""
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=7).double()
    cfg = resolve("demo/crld", ["method.tau_w=0.5", "method.tau_s=0.9"])  # masks that keep some samples
    module = StudentAndMethod(student, build_method(cfg.method), amp=False)
    weak, strong = torch.randn(6, 3, 16, 16, dtype=torch.float64), torch.randn(6, 3, 16, 16, dtype=torch.float64)
    t_weak, t_strong = 3 * torch.randn(6, 7, dtype=torch.float64), 3 * torch.randn(6, 7, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 6])
    logits, total, parts = module(weak, t_weak, y, 1, None, strong=strong, teacher_strong=t_strong)
    with torch.no_grad():
        sw, ss = student(weak), student(strong)
    assert torch.equal(logits, sw.float())  # the prediction is the weak view's (the method gets float32 logits)
    masks = crld_masks(t_weak, t_strong, 0.5, 0.9)
    assert all(0 < m.sum() < 6 for m in masks)

    def reference(sw, ss):
        return brute_force_crld(
            sw.tolist(), t_weak.tolist(), ss.tolist(), t_strong.tolist(), y.tolist(),
            temperature=4.0, tau_w=0.5, tau_s=0.9,
        )[1]  # fmt: skip

    ref = reference(sw.float().double(), ss.float().double())
    assert total.item() == pytest.approx(sum(ref.values()), rel=1e-5)
    assert {k: v.item() for k, v in parts.items()} == pytest.approx(ref, rel=1e-5, abs=1e-7)
    # the views are not interchangeable: swapping them changes the loss
    _, swapped, _ = module(strong, t_strong, y, 1, None, strong=weak, teacher_strong=t_weak)
    assert not math.isclose(swapped.item(), total.item(), rel_tol=1e-3)
    # the method itself on float64 Features computes in float64: equal to the brute force to 1e-10
    got, got_parts = module.method(
        logits_only(sw), logits_only(t_weak), y, 1, strong=StrongView(logits_only(ss), logits_only(t_strong))
    )
    ref = reference(sw, ss)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(sum(ref.values()), rel=1e-10)
    assert {k: v.item() for k, v in got_parts.items()} == pytest.approx(ref, rel=1e-10, abs=1e-12)


def test_the_method_refuses_a_step_without_the_strong_view():
    torch.manual_seed(0)
    module = StudentAndMethod(create_model("resnet8", num_classes=5), build_method({"name": "crld"}), amp=False)
    with pytest.raises(UserError, match=r"method 'crld' trains on a strongly augmented view too: its batches need"):
        module(torch.randn(4, 3, 16, 16), torch.randn(4, 5), torch.tensor([0, 1, 2, 3]), 1, None)
    z = logits_only(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"method 'crld' trains on the strong view too: call it with strong="):
        module.method(z, z, torch.tensor([0, 1, 2, 3]), 1)


# ----------------------------------------------------------------------------- training


def test_demo_preset_trains_two_epochs_with_a_falling_loss(tmp_path, teacher_ckpt):
    # the test's teacher has random weights and is never 0.9-confident: at the published tau_w the
    # within-view terms would be zero throughout, so a lower threshold lets all three terms train
    over = ["train.epochs=2", "train.device=cpu", f"model.teacher_checkpoint={teacher_ckpt}", *SMALL]
    train(resolve("demo/crld", [*over, "method.tau_w=0.1"]), tmp_path / "run")
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    losses = [float(r["train_loss"]) for r in rows]
    assert all(map(math.isfinite, losses)) and losses[1] < 0.8 * losses[0], losses
    for row in rows:  # the logged parts are CRLD's and sum to the loss
        parts = [float(row[f"loss_{p}"]) for p in ("ce", "within", "cross")]
        assert sum(parts) == pytest.approx(float(row["train_loss"]), rel=1e-4) and min(parts) > 0


def test_a_crash_inside_an_epoch_then_resume_is_exact(tmp_path, teacher_ckpt, tiny_cifar):
    """Killed after step 5 (inside epoch 2; its position saved after step 4, the epoch's first): the
    resumed run, whose strong views continue from the saved position, ends with the uninterrupted
    run's state."""
    over = [
        "data.name=cifar100", f"data.path={tiny_cifar}", "train.batch_size=48", "train.epochs=3",
        f"model.teacher_checkpoint={teacher_ckpt}", "train.checkpoint_every_steps=1",
        "method.tau_w=0.1",  # the random teacher is unsure: a threshold that lets the within-view terms count
    ]  # fmt: skip
    train(resolve("demo/crld", over), tmp_path / "ref")
    out = tmp_path / "crashed"
    args = ["train", "demo/crld", *over, "--out", str(out), "--resume"]
    crashed = run_rld(*args, fault="after_step:5")
    assert crashed.returncode == FAULT_EXIT_STATUS, crashed.stderr[-2000:]
    assert load_last(out)["epoch"] == 1 and (out / "checkpoints" / "step.pt").is_file()
    assert main(args) == 0
    assert_same_run_state(load_last(tmp_path / "ref"), load_last(out))
    rows = metric_rows(tmp_path / "ref" / "metrics.csv")
    assert rows == metric_rows(out / "metrics.csv")
    assert all(float(r["loss_within"]) > 0 and float(r["loss_cross"]) > 0 for r in rows)


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "setting,message",
    [
        (
            "train.teacher_cache=lazy",
            "method 'crld' trains on a strongly augmented view drawn afresh every step, which the teacher-logit "
            "cache cannot hold: set train.teacher_cache=off",
        ),
        ("train.teacher_cache=full", "which the teacher-logit cache cannot hold"),
        (
            "train.static_step=on",
            "train.static_step=on cannot run a method that trains on a strongly augmented view (MLKD, CRLD)",
        ),
        (
            "method.logit_standardization=true",
            "method 'crld' with method.logit_standardization=true is not defined by the published code",
        ),
        ("method.tau_s=1.2", "method 'crld': tau_s must be a number in [0, 1] (a probability), got 1.2"),
        ("method.percentile=50", "method 'crld' does not take percentile"),
    ],
)
def test_refusals_are_one_line(setting, message, tmp_path, teacher_ckpt, capsys):
    args = ["train", "demo/crld", setting, *SMALL, f"model.teacher_checkpoint={teacher_ckpt}"]
    code = main([*args, "train.device=cpu", "--out", str(tmp_path / "run")])
    assert_user_error(code, capsys.readouterr().err.strip(), message)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- sweeps


def test_a_sweep_groups_crld_with_mlkd_and_not_with_a_single_view_method(tmp_path, teacher_ckpt):
    """CRLD and MLKD read the same two views of the same batches (and the teacher's outputs on both):
    one stream serves both. A single-view method sees other batches: never in their group."""
    kd, mlkd, crld = (resolve(f"demo/{m}") for m in ("kd", "mlkd", "crld"))
    assert stream_signature(crld) == stream_signature(mlkd) != stream_signature(kd)
    over = ["train.epochs=1", "train.device=cpu", f"model.teacher_checkpoint={teacher_ckpt}", *SMALL]
    runs = [SweepRun(m, {}, resolve(f"demo/{m}", over), tmp_path / "sweep" / m) for m in ("crld", "mlkd", "kd")]
    assert [[r.name for r in g] for g in group_runs(runs)] == [["crld", "mlkd"], ["kd"]]
    # trained in one group, CRLD's run is the run it is alone
    train_runs(runs[:2])
    train(resolve("demo/crld", over), tmp_path / "alone")
    assert_same_run_state(load_last(tmp_path / "alone"), load_last(tmp_path / "sweep" / "crld"))


# ----------------------------------------------------------------------------- table_extra


def test_table_extra_lists_crld_with_its_parameters_and_marks_its_protocol(tmp_path, capsys):
    out, plan_file = tmp_path / "repro", tmp_path / "plan.json"
    args = ["reproduce", "table_extra", "--dry-run", "--seeds", "0", "--json", str(plan_file), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert (
        "cifar100/resnet56-resnet20/crld/seed0  [temperature=4.0 tau_w=0.9 tau_s=0.2 within_weight=2.0 "
        "cross_weight=0.5 ce_weight=1.0]" in printed
    )
    body = json.loads(plan_file.read_text())
    crld = [r for r in body["runs"] if r["method"] == "crld"]
    assert [f"{r['teacher']}-{r['student']}" for r in crld] == list(TABLE3_PAIRS)
    for r in crld:
        assert r["method_params"] == {**DEFAULTS, "logit_standardization": False}
        assert r["preset"] == f"cifar100/{r['teacher']}-{r['student']}/crld" and r["variant"] == "crld"
    cells = {(c["row"], c["column"]): c["runs"] for c in body["cells"]}
    rows = list(dict.fromkeys(row for row, _ in cells))
    assert rows[rows.index("MLKD") + 1] == "CRLD"  # beside the other two-view method
    plan = plan_table("table_extra", tmp_path, seeds=[0], pairs=["resnet56-resnet20"], methods=["crld"])
    (run,) = [r for r in plan.runs if r.method == "crld"]
    assert run.name == "cifar100/resnet56-resnet20/crld/seed0" and run.config().train.lr == 0.05
    markdown = to_markdown(collect(plan))
    assert "| Newer logit | CRLD (different protocol) | — |" in markdown
    assert "CRLD: different protocol (its own strong augmentation, RandAugment and Cutout" in markdown
