"""SimKD and CAT-KD: their modules and losses against independent recomputations, SimKD's prediction
with the teacher's classifier through evaluation, rld eval and export, training on the demo data,
exact resume after a crash, and their presets."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_same_run_state, assert_user_error, load_last, metric_rows, run_rld
from rld.cli import main
from rld.config import list_presets, resolve
from rld.engine import train
from rld.engine.faults import FAULT_EXIT_STATUS
from rld.errors import UserError
from rld.experiments.tables import TABLE2_PAIRS, TABLE3_PAIRS, TABLE4_PAIRS
from rld.losses import cat_loss, class_activation_maps
from rld.methods import MethodContext, build_method
from rld.models import create_model

PAIRS = [*TABLE2_PAIRS, *TABLE3_PAIRS]  # the 14 CIFAR-100 pairs of the paper
IMAGENET_PAIRS = list(TABLE4_PAIRS)
METHODS = ["simkd", "catkd"]
STEPS_PER_EPOCH = 7  # 20 images of each of the 10 digits at batch 32
FAST = [
    "train.epochs=2",
    "train.batch_size=32",
    "data.eval_batch_size=512",
    "data.train_per_class=20",
    "data.image_size=16",
]


def _method(name: str, teacher: str, student: str, *overrides: str, seed: int = 0):
    """The method (a preset's values, with ``overrides``) built from fresh zoo models, as a run builds it."""
    torch.manual_seed(seed)
    t = create_model(teacher, num_classes=100).eval().requires_grad_(False)
    s = create_model(student, num_classes=100)
    cfg = resolve(f"cifar100/resnet56-resnet20/{name}", list(overrides))
    method = build_method(cfg.method, MethodContext(student=s, teacher=t, num_classes=100, seed=seed))
    return method, s, t


def _published_projector(s_n: int, t_n: int, factor: int) -> nn.Sequential:
    """DefangChen/SimKD models/util.py, class SimKD: written out independently of rld.methods.simkd."""
    m = t_n // factor
    return nn.Sequential(
        nn.Conv2d(s_n, m, 1, bias=False), nn.BatchNorm2d(m), nn.ReLU(),
        nn.Conv2d(m, m, 3, padding=1, bias=False), nn.BatchNorm2d(m), nn.ReLU(),
        nn.Conv2d(m, t_n, 1, bias=False), nn.BatchNorm2d(t_n), nn.ReLU(),
    )  # fmt: skip


def _independent_projector(method) -> nn.Sequential:
    """The published projector holding the method's weights (strict loading checks every shape)."""
    conv = [m for m in method.projector if isinstance(m, nn.Conv2d)]
    factor = conv[2].out_channels // conv[0].out_channels
    ref = _published_projector(conv[0].in_channels, conv[2].out_channels, factor)
    ref.load_state_dict(method.projector.state_dict())
    return ref


# ----------------------------------------------------------------------------- SimKD


@pytest.mark.parametrize(
    "pair,s_n,t_n,student_size",
    [
        ("resnet32x4-resnet8x4", 256, 256, (8, 8)),
        ("wrn_40_2-MobileNetV2", 160, 128, (2, 2)),  # the teacher's 8x8 map is pooled to 2x2 in the loss
        ("resnet32x4-ShuffleV2", 464, 256, (4, 4)),
        ("vgg13-vgg8", 512, 512, (4, 4)),
        ("vgg13-resnet8x4", 256, 512, (4, 4)),  # a student map larger than the teacher's is pooled first
    ],
)
def test_simkd_projector_shapes_and_extra_parameters(pair, s_n, t_n, student_size):
    teacher, student = pair.split("-")
    method, s, t = _method("simkd", teacher, student)
    conv = [(m.in_channels, m.out_channels, m.kernel_size, m.groups, m.bias) for m in method.projector[::3]]
    m = t_n // 2
    assert conv == [(s_n, m, (1, 1), 1, None), (m, m, (3, 3), 1, None), (m, t_n, (1, 1), 1, None)]
    assert [type(x) for x in method.projector] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 3
    assert method.extra_parameters() == s_n * m + 2 * m + 9 * m * m + 2 * m + m * t_n + 2 * t_n
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        projected = method.eval().project(s.eval().forward_features(x))
        loss, parts = method.train()(s.forward_features(x), t.forward_features(x), torch.tensor([1, 2]), 1)
    assert tuple(projected.shape) == (2, t_n, *student_size)
    assert list(parts) == ["simkd"] and torch.isfinite(loss)


def test_simkd_loss_and_prediction_equal_an_independent_recomputation():
    method, s, t = _method("simkd", "resnet32x4", "resnet8x4", seed=3)
    ref = _independent_projector(method)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 100, (6,))
    with torch.no_grad():
        f_t = t.forward_features(x).feats[-1]  # a post-activation ResNet: the classifier's input map
        f_s = s.forward_features(x).feats[-1]
    student = s.forward_features(x)
    before = copy.deepcopy(method.projector.state_dict())
    # training: the loss is the MSE of the projection (batch statistics) and the teacher's map
    total, parts = method.train()(student, t.forward_features(x), y, 1)
    expected = F.mse_loss(ref.train()(f_s), f_t)
    assert torch.allclose(total, expected, rtol=1e-6) and torch.equal(total, parts["simkd"])
    total.backward()
    assert all(p.grad is not None for p in method.projector.parameters())
    assert not any(p.requires_grad for p in s.get_classifier().parameters())  # no CE: nothing trains it
    running = method.projector[1].running_mean.clone()
    assert not torch.equal(running, before["1.running_mean"])  # one pass moved the running statistics
    # prediction in training mode: the same batch statistics, the running statistics left alone
    train_pred = method.predict(student)
    assert torch.equal(method.projector[1].running_mean, running)
    ref_train = copy.deepcopy(ref).train()
    ref_train.load_state_dict(before)
    expected = F.linear(F.adaptive_avg_pool2d(ref_train(f_s), 1).flatten(1), t.fc.weight, t.fc.bias)
    assert torch.allclose(train_pred.logits, expected, atol=1e-5)
    # evaluation: teacher classifier (avgpool (projector (f_s)))
    with torch.no_grad():
        method.eval()
        ref.load_state_dict(method.projector.state_dict())
        pred = method.predict(s.eval().forward_features(x))
        pooled = F.adaptive_avg_pool2d(ref.eval()(s.forward_features(x).feats[-1]), 1).flatten(1)
    assert torch.allclose(pred.pooled, pooled, atol=1e-6)
    assert torch.allclose(pred.logits, pooled @ t.fc.weight.T + t.fc.bias, atol=1e-5)


def test_simkd_reads_the_classifier_input_of_a_pre_activation_teacher():
    """wrn_40_2's classifier reads relu(bn1(block3 output)), not the block output feats[-1]."""
    method, s, t = _method("simkd", "wrn_40_2", "wrn_16_2")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ft = t.forward_features(x)
        target = F.relu(t.bn1(ft.feats[-1]))
        loss, _ = method.train()(s.forward_features(x), ft, torch.zeros(4, dtype=torch.long), 1)
        projected = method.project(s.forward_features(x), update_stats=False)
    assert torch.allclose(loss, F.mse_loss(projected, target), rtol=1e-6)


def test_simkd_ce_term_reads_the_student_own_logits():
    """With -c > 0 the published loop's CE term reads the student's logits (helper/loops.py)."""
    method, s, t = _method("simkd", "resnet56", "resnet20", "method.ce_weight=0.5")
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([1, 5, 7, 9])
    fs = s.forward_features(x)
    total, parts = method(fs, t.forward_features(x), y, 1)
    assert list(parts) == ["ce", "simkd"] and torch.allclose(total, parts["ce"] + parts["simkd"], rtol=1e-6)
    assert torch.allclose(parts["ce"], 0.5 * F.cross_entropy(fs.logits, y), rtol=1e-6)
    assert all(p.requires_grad for p in s.get_classifier().parameters())


def test_simkd_teacher_classifier_copy_is_frozen_and_travels_with_the_method():
    method, _, t = _method("simkd", "resnet32x4", "resnet8x4")
    state = method.state_dict()
    assert torch.equal(state["teacher_weight"], t.fc.weight) and torch.equal(state["teacher_bias"], t.fc.bias)
    assert not method.teacher_weight.requires_grad and not method.teacher_bias.requires_grad
    names = {n for n, _ in method.named_parameters()}
    assert names and all(n.startswith("projector.") for n in names)  # the copy is no parameter
    assert method.extra_parameters() == sum(p.numel() for p in method.projector.parameters())
    with torch.no_grad():
        t.fc.weight.add_(1.0)  # a copy: later changes of the teacher do not reach it
    assert not torch.equal(method.teacher_weight, t.fc.weight)
    other, _, fresh = _method("simkd", "resnet32x4", "resnet8x4", seed=7)
    assert not torch.equal(other.teacher_weight, method.teacher_weight)
    other.load_state_dict(state)  # a method rebuilt with a fresh teacher gets the copy back
    assert torch.equal(other.teacher_weight, state["teacher_weight"]) and torch.equal(
        other.teacher_bias, state["teacher_bias"]
    )


def test_simkd_and_catkd_refuse_models_without_stage_features_and_bad_values():
    from rld.models import ExternalModel

    t = create_model("resnet20", num_classes=10)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    s = ExternalModel(net, "4")  # what create_model("torchvision:...") gives: logits and pooled only
    s.model_name = "torchvision:tiny"
    for name in METHODS:
        ctx = MethodContext(student=s, teacher=t, num_classes=10)
        with pytest.raises(UserError, match=f"method '{name}': .*'torchvision:tiny' does not provide"):
            build_method({"name": name}, ctx)
    for name, override, message in [
        ("simkd", "method.factor=0", "factor must be an integer >= 1"),
        ("simkd", "method.feat_weight=-1", "feat_weight must be a number >= 0"),
        ("catkd", "method.cam_resolution=0", "cam_resolution must be an integer >= 1"),
        ("catkd", "method.logit_standardization=true", "not defined by the published code"),
    ]:
        with pytest.raises(UserError, match=message):
            resolve(f"demo/{name}", [override])


# ----------------------------------------------------------------------------- CAT-KD


@pytest.mark.parametrize(
    "pair,overrides",
    [
        ("resnet32x4-resnet8x4", ()),
        ("wrn_40_2-MobileNetV2", ("method.normalize=true",)),
        ("resnet32x4-ShuffleV2", ("method.cam_resolution=4", "method.normalize=true", "method.binarize_teacher=true")),
    ],
)
def test_catkd_loss_equals_an_independent_recomputation(pair, overrides):
    teacher, student = pair.split("-")
    method, s, t = _method(
        "catkd", teacher, student, "method.feat_weight=15", "method.ce_weight=0.5", *overrides, seed=1
    )
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    fs = s.train().forward_features(x)
    with torch.no_grad():
        ft = t.forward_features(x)
    total, parts = method(fs, ft, y, 1)
    assert list(parts) == ["ce", "cat"] and torch.allclose(total, parts["ce"] + parts["cat"], rtol=1e-6)
    # the published networks: their classifiers are bias-free 1x1 convolutions before the pooling,
    # so each one's logits (minus a bias) are the spatial means of its CAMs
    cam_s = class_activation_maps(fs.pre_pool, s.get_classifier().weight)
    cam_t = class_activation_maps(ft.pre_pool, t.get_classifier().weight)
    assert torch.allclose(cam_s.mean(dim=(2, 3)), fs.logits, atol=1e-5)
    assert torch.allclose(cam_t.mean(dim=(2, 3)), ft.logits - t.get_classifier().bias, atol=1e-4)
    cat = cat_loss(cam_s, cam_t, method.cam_resolution, method.normalize, method.binarize_teacher)
    assert torch.allclose(parts["cat"], 15 * cat, rtol=1e-6)
    assert torch.allclose(parts["ce"], 0.5 * F.cross_entropy(fs.logits, y), rtol=1e-6)
    total.backward()
    assert s.get_classifier().weight.grad is not None and s.get_classifier().bias.grad is None


def test_catkd_student_classifier_has_no_bias_and_the_method_no_parameters():
    method, s, _ = _method("catkd", "resnet56", "resnet20")
    bias = s.get_classifier().bias
    assert not bias.requires_grad and torch.equal(bias, torch.zeros_like(bias))
    assert method.extra_parameters() == 0 and method.state_dict() == {}
    assert s.get_classifier() not in list(method.modules())  # the student's, trained and saved with it
    method, s, t = _method("catkd", "resnet56", "resnet20", "method.ce_weight=0")  # onlyCAT
    x = torch.randn(2, 3, 32, 32)
    total, parts = method(s.forward_features(x), t.forward_features(x), torch.tensor([0, 1]), 1)
    assert list(parts) == ["cat"] and torch.equal(total, parts["cat"])


# ----------------------------------------------------------------------------- training, resume, export


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, teacher_ckpt) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    shutil.copy(teacher_ckpt, path)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, teacher_file):
    """Uninterrupted 2-epoch runs of each method's demo preset, trained once for the module."""
    root, runs = tmp_path_factory.mktemp("reference"), {}

    def get(name: str) -> Path:
        if name not in runs:
            train(resolve(f"demo/{name}", [*FAST, f"model.teacher_checkpoint={teacher_file}"]), root / name)
            runs[name] = root / name
        return runs[name]

    return get


@pytest.mark.parametrize("name", METHODS)
def test_demo_trains_with_a_falling_loss_and_resumes_exactly_after_a_crash(name, reference, teacher_file, tmp_path):
    ref = reference(name)
    rows = metric_rows(ref / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["steps"] for r in rows] == [str(STEPS_PER_EPOCH)] * 2
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    parts = {"simkd": ["loss_simkd"], "catkd": ["loss_ce", "loss_cat"]}[name]
    for row in rows:
        assert abs(sum(float(row[p]) for p in parts) - float(row["train_loss"])) < 1e-4 * float(row["train_loss"])
    out = tmp_path / "crashed"
    args = ["train", f"demo/{name}", *FAST, f"model.teacher_checkpoint={teacher_file}", "--out", str(out), "--resume"]
    crashed = run_rld(*args, fault=f"after_step:{STEPS_PER_EPOCH + 2}")  # inside epoch 2
    assert crashed.returncode == FAULT_EXIT_STATUS, crashed.stderr[-2000:]
    assert load_last(out)["epoch"] == 1
    assert main([*args, "train.static_step=on"]) == 0  # an execution setting may change on resume
    assert metric_rows(out / "metrics.csv") == rows
    assert_same_run_state(load_last(ref), load_last(out), ignore_config=("train.static_step",))


def _test_images(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's test split, preprocessed as its evaluation reads it."""
    from rld.data import build_data
    from rld.engine.trainer import data_options

    cfg = resolve(str(run / "config.yaml"))
    data = build_data(
        cfg.data.name, cfg.data.path, batch_size=512, eval_batch_size=512, device="cpu", **data_options(cfg)
    )
    batches = list(data.test)
    return torch.cat([b.images for b in batches]), torch.cat([b.targets for b in batches])


def _simkd_logits(state: dict, teacher_file: Path, images: torch.Tensor) -> torch.Tensor:
    """Independently: the student's last feature, the published projector with the run's weights,
    global average pooling, and the classifier of the teacher checkpoint the run was trained with."""
    student = create_model("resnet8", num_classes=10)
    student.load_state_dict(state["model"])
    teacher = create_model("resnet20", num_classes=10)
    teacher.load_state_dict(torch.load(teacher_file, weights_only=True)["model"])
    projector = _published_projector(64, 64, 2)
    projector.load_state_dict({k.removeprefix("projector."): v for k, v in state["method"].items() if "projector" in k})
    with torch.no_grad():
        f_s = student.eval().forward_features(images.float()).feats[-1]
        return teacher.fc(F.adaptive_avg_pool2d(projector.eval()(f_s), 1).flatten(1))


def _assert_scores(logits: torch.Tensor, targets: torch.Tensor, reported: dict) -> None:
    """Top-1, top-5 (as reported, 6 significant digits) and the test loss of ``logits``."""
    top = logits.topk(5, dim=1).indices == targets[:, None]
    for key, value in (("test_top1", top[:, 0]), ("test_top5", top.any(dim=1))):
        assert f"{float(reported[key]):.6g}" == f"{100 * value.double().mean().item():.6g}", key
    loss = F.cross_entropy(logits.double(), targets).item()
    assert abs(float(reported["test_loss"]) - loss) <= 1e-5 * loss


def test_simkd_run_predicts_with_the_teacher_classifier_in_eval_and_export(reference, teacher_file, tmp_path, capsys):
    run = reference("simkd")
    best = run / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    images, targets = _test_images(run)
    logits = _simkd_logits(state, teacher_file, images)
    row = metric_rows(run / "metrics.csv")[state["epoch"] - 1]
    _assert_scores(logits, targets, row)
    # the optimizer trains the student and the projector, not the teacher classifier's copy, nor
    # (without a CE term) the student's own classifier
    last = load_last(run)
    n_params = len(list(create_model("resnet8", num_classes=10).parameters())) - 2 + 9  # projector: 3 conv, 3 BN x 2
    assert len(last["optimizer"]["param_groups"][0]["params"]) == len(last["optimizer"]["state"]) == n_params
    assert last["method_parameters"] == 64 * 32 + 9 * 32 * 32 + 32 * 64 + 2 * (32 + 32 + 64)
    # rld eval, rld predict and the exports need no teacher checkpoint: the copy is in the run
    hidden = teacher_file.with_suffix(".hidden")
    teacher_file.rename(hidden)
    capsys.readouterr()  # the log of the reference run, when this test is the first to ask for it
    try:
        assert main(["eval", str(best), "--json"]) == 0
        (result,) = json.loads(capsys.readouterr().out)
        _assert_scores(logits, targets, result)
        from rld.export import Predictor, export

        assert torch.allclose(Predictor(run).logits(images[:16]), logits[:16], atol=1e-5)
        onnx_file = export(run, "onnx", tmp_path / "simkd.onnx")
        assert torch.allclose(Predictor(onnx_file).logits(images[:16].contiguous()), logits[:16], atol=1e-4)
        code = main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "simkd.safetensors")])
        assert_user_error(code, capsys.readouterr().err, "export it as onnx or torchscript")
        assert not (tmp_path / "simkd.safetensors").exists()
    finally:
        hidden.rename(teacher_file)


# ----------------------------------------------------------------------------- presets


def test_presets_cover_every_pair_and_resolve(capsys):
    assert main(["presets"]) == 0
    listed = set(capsys.readouterr().out.split())
    names = [f"cifar100/{p}/{m}" for p in PAIRS for m in METHODS]
    names += [f"imagenet/{p}/{m}" for p in IMAGENET_PAIRS for m in METHODS]
    names += [f"demo/{m}" for m in METHODS]
    assert set(names) <= listed and set(names) <= set(list_presets())
    for name in names:
        cfg = resolve(name)
        assert cfg.method.name == name.rsplit("/", 1)[-1]
    simkd = resolve("cifar100/vgg13-MobileNetV2/simkd")
    assert (simkd.method.ce_weight, simkd.method.feat_weight, simkd.method.factor) == (0.0, 1.0, 2)
    assert (simkd.train.epochs, simkd.train.batch_size, simkd.train.lr) == (240, 64, 0.01)
    t = resolve("imagenet/ResNet34-ResNet18/simkd").train
    assert (t.epochs, t.batch_size, t.lr, t.lr_milestones, t.lr_step) == (120, 256, 0.1, [30, 60, 90], None)
    published = {  # GzyAftermath/CAT-KD configs/cifar100/CAT_KD/*.yaml and configs/imagenet/CAT-KD/*.yaml
        "cifar100/resnet32x4-resnet8x4": (15.0, 2, False),
        "cifar100/resnet32x4-ShuffleV2": (600.0, 4, True),
        "cifar100/ResNet50-MobileNetV2": (40.0, 2, True),
        "cifar100/resnet56-resnet20": (0.7, 2, False),
        "cifar100/wrn_40_2-wrn_40_1": (1.5, 2, False),
        "imagenet/ResNet34-ResNet18": (0.5, 4, False),
    }
    for pair, values in published.items():
        m = resolve(f"{pair}/catkd").method
        assert (m.feat_weight, m.cam_resolution, m.normalize, m.ce_weight, m.binarize_teacher) == (*values, 1.0, False)
    assert resolve("imagenet/ResNet50-MobileNetV1/catkd").train.batch_size == 512
