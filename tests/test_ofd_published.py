"""OFD as its published code runs it: the teacher's BatchNorms on the batch's statistics during
distillation (``method.teacher_train_mode``, default on) and, on ImageNet, the authors' four stages
(``method.stages``; mdistiller's three as an option). Resume and the whole-step path with the
teacher in training mode: tests/test_method_fitnet_at_rkd_ofd.py (the demo runs use the default)."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import assert_user_error, metric_rows, run_rld
from rld.config import resolve
from rld.engine import train
from rld.engine.sweep import group_runs, plan_sweep
from rld.engine.teacher import TeacherForward, teacher_outputs
from rld.errors import UserError
from rld.losses import ofd_loss
from rld.methods import MethodContext, build_method
from rld.models import create_model

TINY = ["train.batch_size=128", "data.eval_batch_size=512", "train.epochs=1", "data.train_per_class=30"]


def _imagenet_ctx(student: str, teacher: str) -> MethodContext:
    s = create_model(student, num_classes=10, dataset="imagenet")
    t = create_model(teacher, num_classes=10, dataset="imagenet")
    return MethodContext(student=s, teacher=t, num_classes=10, input_shape=(3, 64, 64))


@pytest.mark.parametrize(
    ("student", "teacher", "channels"),
    [
        # clovaai/overhaul-distillation ImageNet/distiller.py: every stage of ResNet.py's get_bn_before_relu
        ("ResNet18", "ResNet34", [(64, 64), (128, 128), (256, 256), (512, 512)]),
        # ... MobileNet model[3], [5], [11], [13] against ResNet50 layer1-4
        ("MobileNetV1", "ResNet50", [(128, 256), (256, 512), (512, 1024), (1024, 2048)]),
    ],
)
def test_imagenet_pairs_distil_the_authors_four_stages_and_mdistillers_three_on_request(student, teacher, channels):
    ctx = _imagenet_ctx(student, teacher)
    method = build_method(resolve(f"imagenet/{teacher}-{student}/ofd").method, ctx)
    assert [(c[0].in_channels, c[0].out_channels) for c in method.connectors] == channels
    bns = ctx.teacher.bn_before_relu()
    assert [m.shape[0] for m in method.margins()] == [bn.num_features for bn in bns] == [t for _, t in channels]
    three = build_method({"name": "ofd", "stages": 3}, ctx)
    assert [(c[0].in_channels, c[0].out_channels) for c in three.connectors] == channels[1:]
    # the stage weights 1/8, 1/4, 1/2, 1 of the four (1/4, 1/2, 1 of the three): each stage's distance
    # scaled alone shows its weight in the total
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        f_s, f_t = ctx.student.forward_features(x), ctx.teacher.forward_features(x)
        target = torch.zeros(2, dtype=torch.long)
        method.ce_weight = 0.0
        _, parts = method(f_s, f_t, target, 1)
        n = len(method.connectors)
        weights = (1 / 8, 1 / 4, 1 / 2, 1)
        stages = zip(method.connectors, f_s.preact_feats[-n:], f_t.preact_feats[-n:], method.margins(), weights)
        by_hand = sum(ofd_loss(r(s), t, m) * w for r, s, t, m, w in stages)
    assert parts["feat"].item() == pytest.approx(1e-4 * by_hand.item(), rel=1e-5)


def test_stages_are_checked():
    ctx = _imagenet_ctx("ResNet18", "ResNet34")
    with pytest.raises(UserError, match=r"method 'ofd': stages=5, but .* pair 4 stages; use stages <= 4"):
        build_method({"name": "ofd", "stages": 5}, ctx)
    with pytest.raises(UserError, match=r"method 'ofd': stages must be an integer >= 1, got 0"):
        build_method({"name": "ofd", "stages": 0}, ctx)
    with pytest.raises(UserError, match=r"method 'ofd': teacher_train_mode must be true or false, got 'yes'"):
        build_method({"name": "ofd", "teacher_train_mode": "yes"}, ctx)


def _modes_seen(monkeypatch) -> list[bool]:
    seen: list[bool] = []
    original = TeacherForward._forward

    def spy(self, batch, features):
        seen.append(self.teacher.training)
        return original(self, batch, features)

    monkeypatch.setattr(TeacherForward, "_forward", spy)
    return seen


@pytest.mark.parametrize("train_mode", [True, False])
def test_the_teacher_runs_in_the_mode_the_method_asks_and_is_left_in_eval_mode(
    train_mode, teacher_ckpt, tmp_path, monkeypatch
):
    seen = _modes_seen(monkeypatch)
    over = [*TINY, f"model.teacher_checkpoint={teacher_ckpt}", f"method.teacher_train_mode={str(train_mode).lower()}"]
    run = train(resolve("demo/ofd", over), tmp_path / "run")
    assert seen == [train_mode] * 3  # 300 digits at batch 128: three steps, one teacher pass each
    assert run is not None
    assert metric_rows(tmp_path / "run" / "metrics.csv")[0]["steps"] == "3"


def test_the_step_reads_the_batch_statistics_of_the_teacher(teacher_ckpt):
    """The features a training step hands OFD are those of the teacher in training mode (its
    BatchNorms normalise with the batch's statistics), not of the eval-mode teacher; the teacher
    is in eval mode again afterwards, with running statistics moved as the published code's."""
    teacher = create_model("resnet20", num_classes=10)
    teacher.load_state_dict(torch.load(teacher_ckpt, weights_only=False)["model"])
    teacher.eval().requires_grad_(False)
    reference = copy.deepcopy(teacher)
    forward = TeacherForward(teacher, amp=False)
    ctx = MethodContext(create_model("resnet8", num_classes=10), teacher, 10)
    ofd = build_method({"name": "ofd"}, ctx)
    eval_mode = build_method({"name": "ofd", "teacher_train_mode": False}, ctx)
    x = torch.randn(16, 3, 32, 32)
    batch = type("B", (), {"images": x, "strong": None})()
    (train_feats,) = teacher_outputs(forward, [batch], [[ofd]])
    (eval_feats,) = teacher_outputs(forward, [batch], [[eval_mode]])
    assert not teacher.training
    with torch.no_grad():
        expected_train = copy.deepcopy(reference).train().forward_features(x)
        expected_eval = teacher.forward_features(x)  # its running statistics, moved by the pass in training mode
    # the running statistics move as in the published code (they take no part in a training-mode pass)
    assert not torch.equal(teacher.bn1.running_mean, reference.bn1.running_mean)
    for got, want in zip(train_feats.preact_feats, expected_train.preact_feats, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for got, want in zip(eval_feats.preact_feats, expected_eval.preact_feats, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(train_feats.preact_feats[-1], eval_feats.preact_feats[-1])
    with pytest.raises(ValueError, match="read the teacher in different modes"):
        teacher_outputs(forward, [batch], [[ofd, eval_mode]])


def test_a_sweep_keeps_teachers_of_both_modes_in_separate_streams(tmp_path, teacher_ckpt):
    runs = plan_sweep(
        "demo/ofd",
        ["method.teacher_train_mode=true,false", f"model.teacher_checkpoint={teacher_ckpt}"],
        seeds=None,
        out=tmp_path,
    )
    assert len(runs) == 2
    assert len(group_runs(runs)) == 2
    grid = ["method.feat_weight=0.001,0.01", f"model.teacher_checkpoint={teacher_ckpt}"]
    same = plan_sweep("demo/ofd", grid, seeds=None, out=tmp_path)
    assert len(group_runs(same)) == 1


def test_the_published_mode_is_the_default_and_eval_mode_changes_the_run(tmp_path, teacher_ckpt):
    assert resolve("demo/ofd").method.teacher_train_mode is True
    for pair in ("resnet32x4-resnet8x4", "vgg13-vgg8"):
        assert resolve(f"cifar100/{pair}/ofd").method.teacher_train_mode is True
    over = [*TINY, f"model.teacher_checkpoint={teacher_ckpt}"]
    train(resolve("demo/ofd", over), tmp_path / "train")
    train(resolve("demo/ofd", [*over, "method.teacher_train_mode=false"]), tmp_path / "eval")
    a, b = metric_rows(tmp_path / "train" / "metrics.csv"), metric_rows(tmp_path / "eval" / "metrics.csv")
    assert a[0]["loss_feat"] != b[0]["loss_feat"]


def test_a_bad_mode_is_one_line():
    done = run_rld("train", "demo/ofd", "--dry-run", "method.teacher_train_mode=maybe")
    assert_user_error(done.returncode, done.stderr.strip(), "method.teacher_train_mode")


@pytest.mark.parametrize(("setting", "expected"), [([], False), (["method.teacher_train_mode=true"], True)])
def test_reviewkd_keeps_mdistillers_eval_mode_teacher_and_offers_the_authors_cifar_one(
    setting, expected, teacher_ckpt, tmp_path, monkeypatch
):
    seen = _modes_seen(monkeypatch)
    train(resolve("demo/reviewkd", [*TINY, f"model.teacher_checkpoint={teacher_ckpt}", *setting]), tmp_path / "r")
    assert seen == [expected] * 3
    assert resolve("cifar100/resnet32x4-resnet8x4/reviewkd").method.teacher_train_mode is False
