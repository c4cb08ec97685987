"""The feature-distillation methods FitNet, AT, RKD and OFD: each total against an independent
recomputation from the pure losses and the method's own modules, the regressor and connector
shapes on pairs of the CIFAR-100 zoo, the teachers' BatchNorms of OFD, timm stage features, two
epochs of each demo preset (a falling loss, an exact resume after a kill), the refusals, presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_same_run_state, assert_user_error, load_last, metric_lines, metric_rows, rld_processes
from rld.cli import main
from rld.config import list_presets, resolve
from rld.engine.faults import FAULT_EXIT_STATUS
from rld.errors import UserError
from rld.experiments.tables import TABLE2_PAIRS, TABLE3_PAIRS, TABLE4_PAIRS
from rld.losses import at_loss, hint_loss, ofd_loss, ofd_margin, rkd_loss
from rld.methods import MethodContext, build_method
from rld.models import create_model
from rld.viz.compute import time_accuracy_points

METHODS = ["fitnet", "at", "rkd", "ofd"]
# Digits at 16x16, 10 images per class, batch 32: 4 steps per epoch (the last one of 4 images).
TINY = ["data.image_size=16", "data.train_per_class=10", "train.batch_size=32", "data.eval_batch_size=512"]
STEPS_PER_EPOCH = 4
PAIRS = [*TABLE2_PAIRS, *TABLE3_PAIRS]  # the 14 CIFAR-100 pairs of the paper
IMAGENET_PAIRS = list(TABLE4_PAIRS)


def _context(student: nn.Module, teacher: nn.Module, side: int = 16) -> MethodContext:
    return MethodContext(student=student, teacher=teacher, num_classes=10, input_shape=(3, side, side), seed=0)


def _randomize_teacher_bns(teacher: nn.Module) -> None:
    """BatchNorms before the stage ReLUs with both margin branches: γ of either sign, and β well
    above 3|γ| in a quarter of the channels (almost no mass below 0: the margin is −3|γ|)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for bn in teacher.bn_before_relu():
            c = bn.num_features
            bn.weight.copy_((torch.rand(c, generator=g) + 0.2) * torch.where(torch.rand(c, generator=g) < 0.5, -1, 1))
            bn.bias.copy_(torch.randn(c, generator=g))
            bn.bias[: c // 4] = 5 * bn.weight[: c // 4].abs()


# ----------------------------------------------------------------------------- totals


WEIGHTS = {
    "fitnet": {"ce_weight": 0.7, "feat_weight": 2.5, "hint_layer": 2},
    "at": {"ce_weight": 0.7, "feat_weight": 2.5, "p": 4.0},
    "rkd": {"ce_weight": 0.7, "feat_weight": 2.5, "distance_weight": 3.0, "angle_weight": 5.0},
    "ofd": {"ce_weight": 0.7, "feat_weight": 2.5, "connector_kernel": 3},
}


def _expected_feature_term(name: str, method, s, t, teacher: nn.Module) -> torch.Tensor:
    """The method's distillation term recomputed from the pure losses and its own modules."""
    w = WEIGHTS[name]
    if name == "fitnet":
        return hint_loss(method.regressor(s.feats[2]), t.feats[2])
    if name == "at":
        return at_loss(s.feats[1:], t.feats[1:], p=w["p"])
    if name == "rkd":
        return rkd_loss(s.pooled, t.pooled, w["distance_weight"], w["angle_weight"])
    # OFD: the three stages after the stem, margins from the teacher's BatchNorms, weights 1/4, 1/2, 1
    margins = [ofd_margin(bn.weight, bn.bias) for bn in teacher.bn_before_relu()]
    stages = zip(method.connectors, s.preact_feats[1:], t.preact_feats[1:], margins, (4.0, 2.0, 1.0), strict=True)
    return sum(ofd_loss(conn(f_s), f_t, m) / weight for conn, f_s, f_t, m, weight in stages)


@pytest.mark.parametrize("name", METHODS)
def test_total_is_ce_plus_the_weighted_published_term(name):
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", num_classes=10), create_model("resnet20", num_classes=10)
    if name == "ofd":
        _randomize_teacher_bns(teacher)
    method = build_method({"name": name, **WEIGHTS[name]}, _context(student, teacher)).train()
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    s = student.train().forward_features(x)
    with torch.no_grad():
        t = teacher.eval().forward_features(x)
    total, parts = method(s, t, y, 1, torch.arange(6))

    assert set(parts) == {"ce", "feat"}
    torch.testing.assert_close(parts["ce"] + parts["feat"], total, rtol=0, atol=0)
    torch.testing.assert_close(parts["ce"], 0.7 * F.cross_entropy(s.logits, y), rtol=1e-6, atol=0)
    torch.testing.assert_close(
        parts["feat"], 2.5 * _expected_feature_term(name, method, s, t, teacher), rtol=1e-5, atol=0
    )
    assert parts["feat"] > 0

    total.backward()  # the gradient reaches the student and the method's own modules
    assert student.conv1.weight.grad.abs().sum() > 0
    trained = [p for p in method.parameters() if p.requires_grad]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    assert method.extra_parameters() == sum(p.numel() for p in trained)
    assert (method.extra_parameters() > 0) == (name in ("fitnet", "ofd"))


def test_ofd_margins_are_buffers_from_the_teachers_batchnorms():
    student, teacher = create_model("resnet8", num_classes=10), create_model("wrn_16_2", num_classes=10)
    _randomize_teacher_bns(teacher)
    method = build_method({"name": "ofd"}, _context(student, teacher))
    state = method.state_dict()
    expected = [ofd_margin(bn.weight, bn.bias) for bn in teacher.bn_before_relu()]
    assert [k for k in state if k.startswith("margin")] == ["margin0", "margin1", "margin2"]
    for i, margin in enumerate(expected):
        assert torch.equal(state[f"margin{i}"], margin)
    assert any((m == -3 * bn.weight.abs()).any() for m, bn in zip(expected, teacher.bn_before_relu()))
    assert [p.numel() for p in method.parameters()] == [16 * 32, 32, 32, 32 * 64, 64, 64, 64 * 128, 128, 128]
    assert not any(b.requires_grad for b in method.buffers())


def test_rkd_of_a_single_sample_has_no_relational_term():
    student, teacher = create_model("resnet8", num_classes=10), create_model("resnet20", num_classes=10)
    method = build_method({"name": "rkd"}, _context(student, teacher))
    x, y = torch.randn(1, 3, 16, 16), torch.tensor([3])
    s = student.train().forward_features(x)
    with torch.no_grad():
        t = teacher.eval().forward_features(x)
    total, parts = method(s, t, y, 1, None)
    assert parts["feat"] == 0 and torch.equal(total, parts["ce"]) and torch.isfinite(total)


# ----------------------------------------------------------------------------- shapes on the zoo

# pair → (FitNet's regressor: convolution type, in, out channels; OFD's connectors: (in, out) per stage)
EXPECTED_MODULES = {
    "resnet32x4-resnet8x4": ((nn.Conv2d, 128, 128), [(64, 64), (128, 128), (256, 256)]),
    "wrn_40_2-wrn_16_2": ((nn.Conv2d, 64, 64), [(32, 32), (64, 64), (128, 128)]),
    "vgg13-MobileNetV2": ((nn.Conv2d, 16, 256), [(12, 128), (16, 256), (48, 512), (160, 512)]),
    "resnet32x4-ShuffleV2": ((nn.ConvTranspose2d, 232, 128), [(116, 64), (232, 128), (464, 256)]),
    # the student's last three stages against the teacher's three
    "wrn_40_2-MobileNetV2": ((nn.ConvTranspose2d, 16, 64), [(16, 32), (48, 64), (160, 128)]),
}


@pytest.mark.parametrize("pair", list(EXPECTED_MODULES))
def test_regressors_and_connectors_fit_pairs_of_the_zoo(pair):
    teacher_name, student_name = pair.split("-")
    torch.manual_seed(0)
    student = create_model(student_name, num_classes=100)
    teacher = create_model(teacher_name, num_classes=100).eval()
    ctx = _context(student, teacher, side=32)
    fitnet, at, rkd, ofd = (build_method(resolve(f"cifar100/{pair}/{m}").method, ctx) for m in METHODS)
    (kind, c_in, c_out), connectors = EXPECTED_MODULES[pair]
    conv = fitnet.regressor.conv
    assert type(conv) is kind and (conv.in_channels, conv.out_channels) == (c_in, c_out)
    if kind is nn.Conv2d:
        assert conv.kernel_size == (1, 1)
    assert [(c[0].in_channels, c[0].out_channels) for c in ofd.connectors] == connectors
    assert all(c[0].kernel_size == (1, 1) for c in ofd.connectors)

    x, y = torch.randn(3, 3, 32, 32), torch.tensor([1, 2, 3])  # (RKD's angles need 3 samples)
    s = student.train().forward_features(x)
    with torch.no_grad():
        t = teacher.forward_features(x)
    for method in (fitnet, at, rkd, ofd):
        total, parts = method.train()(s, t, y, 1, None)  # no shape error
        assert torch.isfinite(total) and parts["feat"] > 0, method.name


def test_ofd_batchnorms_match_the_pre_activation_stages():
    """``bn_before_relu()`` of each teacher family: one BatchNorm per distilled stage with its
    channels; where a stage's pre-activation is the BatchNorm's output itself (WRN, VGG,
    MobileNetV1) it is that output exactly."""
    models = [
        ("resnet8", "cifar100", 32, 3, False),
        ("wrn_16_1", "cifar100", 32, 3, True),
        ("vgg8", "cifar100", 32, 4, True),
        ("MobileNetV2", "cifar100", 32, 4, False),
        ("ResNet18", "cifar100", 32, 4, False),
        ("ResNet18", "imagenet", 64, 4, False),  # stages 1-4, as the OFD authors' ImageNet ResNet
        ("MobileNetV1", "imagenet", 64, 4, True),
    ]
    for name, dataset, side, count, exact in models:
        model = create_model(name, num_classes=10, dataset=dataset).eval()
        outputs: list[torch.Tensor] = []
        bns = model.bn_before_relu()
        hooks = [bn.register_forward_hook(lambda m, i, o, out=outputs: out.append(o)) for bn in bns]
        with torch.no_grad():
            preacts = model.forward_features(torch.randn(2, 3, side, side)).preact_feats
        for h in hooks:
            h.remove()
        assert len(bns) == count and len(preacts) >= count + 1, name
        for bn, preact in zip(bns, preacts[-count:]):
            assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == preact.shape[1], name
        if exact:
            assert all(any(torch.equal(o, p) for o in outputs) for p in preacts[-count:]), name


@pytest.mark.parametrize("teacher", ["ShuffleV2", "ShuffleV1"])
def test_ofd_refuses_teachers_without_their_batchnorms(teacher):
    student, model = create_model("resnet8", num_classes=10), create_model(teacher, num_classes=10)
    with pytest.raises(UserError, match=rf"method 'ofd': .*the teacher '{teacher}' does not name them"):
        build_method({"name": "ofd"}, _context(student, model))


def test_fitnet_refuses_a_hint_layer_past_the_last_map():
    student, teacher = create_model("resnet8", num_classes=10), create_model("resnet20", num_classes=10)
    with pytest.raises(UserError, match=r"hint_layer 4 is past the student's last feature map: resnet8 has 4"):
        build_method({"name": "fitnet", "hint_layer": 4}, _context(student, teacher))


@pytest.mark.parametrize(
    "override,message",
    [
        ("method.hint_layer=-1", r"method 'fitnet': hint_layer must be an integer >= 0"),
        ("method.feat_weight=-2", r"method 'fitnet': feat_weight must be a number >= 0"),
    ],
)
def test_fitnet_parameter_errors(override, message):
    with pytest.raises(UserError, match=message):
        resolve("demo/fitnet", [override])


@pytest.mark.parametrize(
    "name,override,message",
    [
        ("at", "method.p=0", r"method 'at': p must be > 0, got 0"),
        ("rkd", "method.angle_weight=-1", r"method 'rkd': angle_weight must be a number >= 0"),
        ("ofd", "method.connector_kernel=0", r"method 'ofd': connector_kernel must be an integer >= 1, got 0"),
        ("ofd", "method.hint_layer=1", r"method 'ofd' does not take hint_layer"),
    ],
)
def test_parameter_errors(name, override, message):
    with pytest.raises(UserError, match=message):
        resolve(f"demo/{name}", [override])


# ----------------------------------------------------------------------------- external models


def test_timm_models_give_stage_features_of_one_pass():
    model = create_model("timm:test_resnet", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = model.forward_features(x)
        logits = model(x)
    assert [tuple(t.shape) for t in f.feats] == [(2, 32, 16, 16), (2, 32, 8, 8), (2, 48, 4, 4), (2, 192, 2, 2),
                                                 (2, 96, 1, 1)]  # fmt: skip
    assert f.preact_feats is f.feats and tuple(f.pooled.shape) == (2, 96)
    assert torch.equal(f.logits, logits)
    assert torch.equal(model.get_classifier()(f.pooled), logits)
    # a stage-feature method trains a timm student (AT: its stages after the stem, paired in order)
    teacher = create_model("resnet20", num_classes=10).eval()
    method = build_method({"name": "at"}, _context(model, teacher, side=32))
    s = model.train().forward_features(x)
    with torch.no_grad():
        t = teacher.forward_features(x)
    total, parts = method(s, t, torch.tensor([0, 1]), 1, None)
    expected = 1000.0 * at_loss(s.feats[1:4], t.feats[1:4])
    torch.testing.assert_close(parts["feat"], expected, rtol=1e-6, atol=0)


def test_torchvision_models_have_no_stage_features():
    model = create_model("torchvision:resnet18", num_classes=10).eval()
    with torch.no_grad():
        f = model.forward_features(torch.randn(2, 3, 32, 32))
    assert f.feats == [] and f.preact_feats == [] and tuple(f.pooled.shape) == (2, 512)
    teacher = create_model("resnet20", num_classes=10)
    with pytest.raises(
        UserError, match=r"method 'ofd': OFD reads the teacher's stage features.*'torchvision:resnet18'"
    ):
        build_method({"name": "ofd"}, _context(create_model("resnet8", num_classes=10), model))
    build_method({"name": "rkd"}, _context(model, teacher))  # RKD reads the pooled features only


def test_a_torchvision_student_with_fitnet_is_refused(capsys, tmp_path, teacher_ckpt):
    out = tmp_path / "tv"
    code = main(["train", "demo/fitnet", "model.student=torchvision:resnet18", *TINY, "--teacher", str(teacher_ckpt),
                 "--out", str(out)])  # fmt: skip
    message = "method 'fitnet': FitNet reads the student's stage features (Features.feats), and the student "
    assert_user_error(code, capsys.readouterr().err.strip(), message + "'torchvision:resnet18' has none")
    assert not out.exists()


@pytest.mark.parametrize("name", METHODS)
def test_the_teacher_logit_cache_is_refused(capsys, tmp_path, teacher_ckpt, name):
    code = main(["train", f"demo/{name}", "train.teacher_cache=lazy", "--teacher", str(teacher_ckpt),
                 "--out", str(tmp_path / "run")])  # fmt: skip
    message = (
        f"method {name!r} reads the teacher's features, which the teacher-logit cache does not hold: "
        "set train.teacher_cache=off"
    )
    assert_user_error(code, capsys.readouterr().err.strip(), message)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- training and resume


@pytest.fixture(scope="module")
def killed_runs(request, tmp_path_factory, teacher_ckpt):
    """Each method's demo run killed by RLD_FAULT inside its second epoch (after step 6 of 8): the
    processes of the selected tests, started together (most of a process's time is its imports)."""
    root = tmp_path_factory.mktemp("killed")
    fault = f"after_step:{STEPS_PER_EPOCH + 2}"
    test = test_two_demo_epochs_lower_the_loss_and_a_killed_run_resumes_exactly.__name__
    selected = {item.callspec.params["name"] for item in request.session.items if item.originalname == test}
    jobs = {name: (_train_args(name, teacher_ckpt, root / name), fault) for name in METHODS if name in selected}
    with rld_processes(root, jobs) as procs:
        yield root, procs


def _train_args(name: str, teacher_ckpt: Path, out: Path) -> list[str]:
    return ["train", f"demo/{name}", "--epochs", "2", *TINY, "--teacher", str(teacher_ckpt), "--out", str(out)]


@pytest.mark.parametrize("name", METHODS)
def test_two_demo_epochs_lower_the_loss_and_a_killed_run_resumes_exactly(tmp_path, teacher_ckpt, killed_runs, name):
    """``rld train demo/<name> --epochs 2``: the training loss falls; the same run killed in its second
    epoch and resumed ends with the uninterrupted run's last.pt (student, optimizer, the method's
    modules and buffers, RNG, history) and metrics.csv."""
    ref = tmp_path / "ref"
    assert main(_train_args(name, teacher_ckpt, ref)) == 0
    rows = metric_rows(ref / "metrics.csv")
    assert [r["steps"] for r in rows] == [str(STEPS_PER_EPOCH)] * 2
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])  # it learns
    assert float(rows[1]["loss_feat"]) < float(rows[0]["loss_feat"])

    root, procs = killed_runs
    proc, _ = procs[name]
    assert proc.wait(timeout=300) == FAULT_EXIT_STATUS, (root / f"{name}.log").read_text()[-2000:]
    out = root / name
    assert load_last(out)["epoch"] == 1
    kept = metric_lines(out)
    # resumed with the whole-step execution (an execution setting): it trains as the plain loop
    assert main([*_train_args(name, teacher_ckpt, out), "--resume", "train.static_step=on"]) == 0
    assert metric_lines(out)[:2] == kept  # resumed after epoch 1, not trained again
    ref_state, state = load_last(ref), load_last(out)
    assert ref_state["method"].keys() == state["method"].keys()
    if name in ("fitnet", "ofd"):  # the trained regressor / connectors (and OFD's margins) are saved and restored
        assert ref_state["method_parameters"] > 0 and any("running_mean" in k for k in state["method"])
    # Figure 6's bubble: the trainable parameters the method added, as the run counted them
    trained = sum(v.numel() for k, v in ref_state["method"].items() if not k.endswith(BUFFER_SUFFIXES))
    (point,) = time_accuracy_points([ref])
    assert point.extra_params == ref_state["method_parameters"] == trained
    assert_same_run_state(ref_state, state, ignore_config=("train.static_step",))
    assert metric_rows(ref / "metrics.csv") == metric_rows(out / "metrics.csv")


BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked") + tuple(f"margin{i}" for i in range(8))


# ----------------------------------------------------------------------------- presets


def test_presets_for_every_pair_resolve_with_the_published_values(capsys):
    assert main(["presets"]) == 0
    listed = set(capsys.readouterr().out.split())
    names = [f"cifar100/{p}/{m}" for p in PAIRS for m in METHODS]
    names += [f"imagenet/{p}/{m}" for p in IMAGENET_PAIRS for m in ("at", "ofd")]
    names += [f"demo/{m}" for m in METHODS]
    assert set(names) <= listed and set(names) <= set(list_presets())
    published = {
        "fitnet": {"ce_weight": 1.0, "feat_weight": 100.0, "hint_layer": 2},
        "at": {"ce_weight": 1.0, "feat_weight": 1000.0, "p": 2.0},
        "rkd": {"ce_weight": 1.0, "feat_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0},
        "ofd": {"ce_weight": 1.0, "feat_weight": 0.001, "connector_kernel": 1},
    }
    for name in names:
        cfg = resolve(name)
        method = name.rsplit("/", 1)[1]
        values = {k: getattr(cfg.method, k) for k in published[method]}
        if name.startswith("imagenet/") and method == "ofd":  # configs/imagenet/r50_mv1/ofd.yaml
            assert values == {**published["ofd"], "feat_weight": 0.0001}, name
            # the OFD authors' ImageNet/train_with_distillation.py: Nesterov, batch 256, lr 0.1
            assert (cfg.train.batch_size, cfg.train.lr, cfg.train.epochs) == (256, 0.1, 100), name
            assert cfg.train.nesterov is True, name
        else:
            assert values == published[method], name
        if name.startswith("imagenet/") and method == "at":
            assert (cfg.train.batch_size, cfg.train.lr, cfg.train.lr_step) == (512, 0.2, 30), name
        if name.startswith("cifar100/"):
            assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr_milestones) == (240, 64, [150, 180, 210])
            assert cfg.train.lr == (0.01 if name.split("/")[1].endswith(("MobileNetV2", "ShuffleV2")) else 0.05)
        if name.startswith("demo/"):
            assert (cfg.model.teacher, cfg.model.student, cfg.data.name) == ("resnet20", "resnet8", "digits")
