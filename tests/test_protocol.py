"""The published protocol around the losses: resolved method values (with and without logit
standardization), Table 6's per-pair settings, CTKD's curriculum, ImageNet baselines, precision
(train.amp) and the teacher's last epoch."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from rld.cli import main
from rld.config import resolve
from rld.data import build_data
from rld.engine import train
from rld.engine.distributed import World
from rld.engine.teacher import TeacherForward, build_teacher_fn
from rld.engine.trainer import Run, prepare_out_dir
from rld.errors import UserError
from rld.experiments import collect, plan_table, reproduce
from rld.experiments.plan import DONE, refresh_status
from rld.experiments.reproduce import execute_run
from rld.losses import ctkd_lambda
from rld.methods import build_method, method_params
from rld.models import create_model

FAST = ["train.batch_size=256", "data.eval_batch_size=512", "train.channels_last=false"]


CIFAR_PAIRS = {
    # pair: DKD's β as published for its teacher (mdistiller configs/cifar100/dkd/*.yaml)
    "resnet32x4-resnet8x4": 8.0,
    "resnet32x4-ShuffleV2": 8.0,
    "resnet32x4-wrn_16_2": 8.0,
    "resnet32x4-wrn_40_2": 8.0,
    "wrn_40_2-resnet8x4": 6.0,
    "wrn_40_2-MobileNetV2": 6.0,
    "wrn_40_2-wrn_16_2": 6.0,
    "wrn_40_2-wrn_40_1": 6.0,
    "vgg13-vgg8": 6.0,
    "vgg13-MobileNetV2": 6.0,
    "ResNet50-MobileNetV2": 8.0,
    "resnet56-resnet20": 2.0,
    "resnet110-resnet32": 2.0,
    "resnet110-resnet20": 2.0,
}


def _cifar(pair: str) -> dict[str, dict]:
    """Every CIFAR-100 method's full parameter set on ``pair``, written out by hand."""
    return {
        "kd": {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9},
        "dkd": {"alpha": 1.0, "beta": CIFAR_PAIRS[pair], "temperature": 4.0, "warmup_epochs": 20.0, "ce_weight": 1.0},
        "rld": {
            "alpha": 1.0,
            "beta": 8.0,
            "temperature": 4.0,
            "scd_temperature": None,
            "warmup_epochs": 20.0,
            "mask": "ge",
            "ce_weight": 1.0,
        },
        "la": {"temperature": 4.0, "kd_weight": 1.0, "ce_weight": 0.0},
        "rc": {"temperature": 4.0, "ce_weight": 1.0, "kd_weight": 1.0, "rc_weight": 0.1},
        "lr": {"lambda1": 4.0, "lambda2": 1.0, "eta": 0.8},
        "ctkd": {"ce_weight": 0.1, "kd_weight": 0.9, "t_min": 1.0, "t_range": 20.0, "ramp_epochs": 10.0},
    }


def _imagenet(pair: str) -> dict[str, dict]:
    r34 = pair == "ResNet34-ResNet18"
    beta = 0.5 if r34 else 2.0
    return {
        "kd": {"temperature": 1.0, "ce_weight": 1.0 if r34 else 0.5, "kd_weight": 0.5},
        "dkd": {"alpha": 1.0, "beta": beta, "temperature": 1.0, "warmup_epochs": 1.0, "ce_weight": 1.0},
        "rld": {
            "alpha": 1.0,
            "beta": beta,
            "temperature": 1.0,
            "scd_temperature": None,
            "warmup_epochs": 0.0,
            "mask": "ge",
            "ce_weight": 1.0,
        },
        "la": {"temperature": 1.0, "kd_weight": 1.0, "ce_weight": 0.0},
        "rc": {"temperature": 1.0, "ce_weight": 1.0, "kd_weight": 1.0, "rc_weight": 0.1},
        "lr": {"lambda1": 4.0, "lambda2": 1.0, "eta": 0.8},
        "ctkd": {"ce_weight": 1.0, "kd_weight": 1.0, "t_min": 1.0, "t_range": 20.0, "ramp_epochs": 5.0},
    }


def _with_ls(method: str, p: dict, b: float = 2.0, w: float = 9.0) -> dict:
    """The logit-standardization rules of the published training script, one method at a time."""
    p = dict(p)
    if method == "kd":
        p.update(kd_weight=w, temperature=b)  # set, not multiplied
    elif method == "ctkd":
        p.update(kd_weight=w)
    elif method == "la":
        p.update(temperature=b)  # its weight stays
    elif method == "dkd":
        p.update(alpha=p["alpha"] * w, beta=p["beta"] * w, temperature=b)
    elif method == "rld":
        p.update(alpha=p["alpha"] * w, beta=p["beta"] * w, temperature=b, scd_temperature=b)
    elif method == "rc":
        p.update(kd_weight=p["kd_weight"] * w, rc_weight=p["rc_weight"] * w, temperature=b)
    return {**p, "logit_standardization": True}


CASES = [("cifar100", pair, _cifar) for pair in CIFAR_PAIRS] + [
    ("imagenet", pair, _imagenet) for pair in ("ResNet34-ResNet18", "ResNet50-MobileNetV1")
]


@pytest.mark.parametrize("family,pair,expected", CASES, ids=[f"{f}/{p}" for f, p, _ in CASES])
def test_every_method_preset_resolves_to_the_published_values(family, pair, expected):
    for method, values in expected(pair).items():
        preset = f"{family}/{pair}/{method}"
        assert method_params(resolve(preset).method) == {**values, "logit_standardization": False}, preset
        if method == "lr":
            with pytest.raises(UserError, match="method 'lr' with method.logit_standardization=true is not defined"):
                resolve(preset, ["method.logit_standardization=true"])
            continue
        ls = resolve(preset, ["method.logit_standardization=true"]).method
        assert method_params(ls) == pytest.approx(_with_ls(method, values)), preset
        assert (ls.ls_temperature, ls.ls_weight) == (2.0, 9.0)
        other = resolve(preset, ["method.logit_standardization=true", "method.ls_temperature=3", "method.ls_weight=5"])
        assert method_params(other.method) == pytest.approx(_with_ls(method, values, 3.0, 5.0)), preset


def test_explicit_values_win_over_logit_standardization_and_its_keys_need_it():
    c = resolve("cifar100/resnet32x4-resnet8x4/rld", ["method.logit_standardization=true", "method.beta=4"])
    assert (c.method.alpha, c.method.beta, c.method.temperature, c.method.scd_temperature) == (9.0, 4.0, 2.0, 2.0)
    c = resolve("cifar100/resnet32x4-resnet8x4/kd", ["method.logit_standardization=true", "method.temperature=5"])
    assert (c.method.kd_weight, c.method.temperature) == (9.0, 5.0)
    with pytest.raises(UserError, match=r"method.ls_weight applies only with method.logit_standardization=true"):
        resolve("cifar100/resnet32x4-resnet8x4/kd", ["method.ls_weight=3"])
    with pytest.raises(UserError, match="method 'vanilla' has no distillation term"):
        resolve("demo/vanilla", ["method.logit_standardization=true"])
    assert main(["train", "cifar100/resnet56-resnet20/lr", "method.logit_standardization=true", "--dry-run"]) == 2


def test_imagenet_ctkd_runs_its_own_published_protocol():
    for pair in ("ResNet34-ResNet18", "ResNet50-MobileNetV1"):
        t = resolve(f"imagenet/{pair}/ctkd").train
        assert (t.epochs, t.batch_size, t.lr, t.lr_step, t.lr_milestones, t.weight_decay) == (
            120,
            256,
            0.1,
            None,
            [30, 60, 90],
            1e-4,
        )
        other = resolve(f"imagenet/{pair}/kd").train  # the common protocol stays for the others
        assert (other.epochs, other.batch_size, other.lr, other.lr_step) == (100, 512, 0.2, 30)
    assert resolve("cifar100/resnet56-resnet20/ctkd").train.epochs == 240


# ----------------------------------------------------------------------------- CTKD's curriculum


def test_ctkd_range_and_ramp_are_settable():
    cfg = resolve("cifar100/resnet56-resnet20/ctkd", ["method.t_min=2", "method.t_range=40", "method.ramp_epochs=4"])
    method = build_method(cfg.method)
    temperature = method.loss.temperature
    theta = temperature.theta
    assert theta.item() == 1.0  # the published initial θ
    tau = temperature(torch.tensor(2.0))  # half-way through the 4-epoch ramp: λ = −1/2
    sig = 1 / (1 + math.exp(-1.0))
    assert tau.item() == pytest.approx(2 + 40 * sig, rel=1e-6)
    tau.backward()
    assert theta.grad.item() == pytest.approx(-0.5 * 40 * sig * (1 - sig), rel=1e-5)
    assert ctkd_lambda(4.0, 4.0) == -1.0 and ctkd_lambda(1.0, 4.0) == pytest.approx((math.cos(math.pi / 4) - 1) / 2)
    with pytest.raises(UserError, match="ramp_epochs must be > 0"):
        resolve("cifar100/resnet56-resnet20/ctkd", ["method.ramp_epochs=0"])
    with pytest.raises(UserError, match="method 'kd' does not take t_min"):
        resolve("cifar100/resnet56-resnet20/kd", ["method.t_min=2"])


def test_reproduce_epochs_scale_ctkds_ramp_like_the_warmup(tmp_path):
    plan = plan_table("table3", tmp_path, seeds=[0], epochs=24, pairs=["resnet56-resnet20"], methods=["ctkd", "rld"])
    ctkd = plan.run("cifar100/resnet56-resnet20/ctkd/seed0").config().method
    rld = plan.run("cifar100/resnet56-resnet20/rld/seed0").config().method
    assert (ctkd.ramp_epochs, rld.warmup_epochs) == (1.0, 2.0)


# ----------------------------------------------------------------------------- Table 6


TABLE6 = {
    # row: {pair: expected values}, as the published logs of logit standardization name them
    "kd_ls": {
        "wrn_40_2-MobileNetV2": {"temperature": 3.0, "kd_weight": 9.0, "ce_weight": 0.1},
        "vgg13-MobileNetV2": {"temperature": 3.0, "kd_weight": 9.0, "ce_weight": 0.1},
        "ResNet50-MobileNetV2": {"temperature": 3.0, "kd_weight": 1.0, "ce_weight": 0.1},
    },
    "ctkd_ls": dict.fromkeys(
        ("wrn_40_2-MobileNetV2", "vgg13-MobileNetV2", "ResNet50-MobileNetV2"),
        {"kd_weight": 9.0, "ce_weight": 0.1, "t_min": 2.0, "t_range": 40.0},
    ),
    "dkd_ls": {
        "wrn_40_2-MobileNetV2": {"temperature": 2.0, "alpha": 15.0, "beta": 30.0},
        "vgg13-MobileNetV2": {"temperature": 3.0, "alpha": 9.0, "beta": 18.0},
        "ResNet50-MobileNetV2": {"temperature": 2.0, "alpha": 15.0, "beta": 30.0},
    },
    "rld_ls": dict.fromkeys(
        ("wrn_40_2-MobileNetV2", "vgg13-MobileNetV2", "ResNet50-MobileNetV2"),
        {"temperature": 2.0, "scd_temperature": 2.0, "alpha": 9.0, "beta": 72.0},
    ),
}


def test_table6_plans_the_published_per_pair_settings(tmp_path, capsys):
    plan_file = tmp_path / "plan.json"
    assert (
        main(["reproduce", "table6", "--dry-run", "--seeds", "0", "--json", str(plan_file), "--out", str(tmp_path)])
        == 0
    )
    printed = capsys.readouterr().out
    runs = {r["name"]: r for r in json.loads(plan_file.read_text())["runs"]}
    for variant, pairs in TABLE6.items():
        for pair, expected in pairs.items():
            run = runs[f"cifar100/{pair}/{variant}/seed0"]
            params = run["method_params"]
            assert params["logit_standardization"] is True
            assert {k: params[k] for k in expected} == expected, (variant, pair)
            assert run["precision"]["teacher_logits"] == "float32" and run["precision"]["evaluation"] == "float32"
    assert "cifar100/vgg13-MobileNetV2/dkd_ls/seed0  [alpha=9.0 beta=18.0 temperature=3.0" in printed


def test_train_dry_run_prints_the_resolved_configuration_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "cifar100/vgg13-MobileNetV2/kd", "method.logit_standardization=true", "--out", str(out)]
    assert main([*argv, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "  name: kd\n" in printed and "  kd_weight: 9.0\n" in printed and "  amp: false\n" in printed
    assert "# method parameters: temperature=2.0, ce_weight=0.1, kd_weight=9.0, logit_standardization=True" in printed
    assert "# precision: student float32, teacher_logits float32, losses float32, evaluation float32" in printed
    assert not out.exists()


# ----------------------------------------------------------------------------- precision


def test_amp_is_opt_in_everywhere():
    from rld.config import list_presets

    assert not any(resolve(name).train.amp for name in list_presets())


def _teacher(seed: int = 3) -> torch.nn.Module:
    """A resnet8 with BatchNorm statistics spread by a few training-mode passes (wide logits)."""
    torch.manual_seed(seed)
    model = create_model("resnet8", num_classes=10)
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(64, 3, 32, 32) * 3)
    return model.eval().requires_grad_(False)


class _Batch:
    def __init__(self, images):
        self.images = images


def test_bf16_teacher_body_keeps_a_float32_classifier_bit_exact():
    teacher, x = _teacher(), torch.randn(16, 3, 32, 32)
    got = TeacherForward(teacher, amp=True, bf16_body=True)(_Batch(x))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = teacher.forward_features(x).pooled
    assert pooled.dtype == torch.bfloat16  # the body did run in bf16
    fc = teacher.get_classifier()
    with torch.no_grad():
        expected = torch.nn.functional.linear(pooled.float(), fc.weight.float(), fc.bias.float())
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert not torch.equal(got, got.bfloat16().float())  # not bf16-rounded logits
    # on the CPU, amp alone keeps the whole teacher in float32 (cheaper there)
    auto = TeacherForward(teacher, amp=True)
    assert (auto.bf16_body, auto.precision) == (False, "float32")
    with torch.no_grad():
        assert torch.equal(auto(_Batch(x)), teacher(x))
    assert TeacherForward(teacher, amp=True, bf16_body=True).precision == "bf16-body+float32-classifier"


def test_amp_step_uses_float32_teacher_logits_and_a_bf16_student(tmp_path, teacher_ckpt):
    cfg = resolve("demo/rld", [*FAST, "train.amp=true", f"model.teacher_checkpoint={teacher_ckpt}"])
    world, device = World(), torch.device("cpu")
    data = build_data("digits", None, batch_size=64, eval_batch_size=512, device=device, seed=0)
    out = tmp_path / "run"
    prepare_out_dir(out, resume=False)
    run = Run(cfg, out, world=world, device=device, num_classes=10, resume_from=None, resume=False)
    teacher_fn = build_teacher_fn(cfg, 10, device)
    seen = {}
    run.student.register_forward_hook(lambda m, i, o: seen.update(student_dtype=o.dtype))
    real = run.method.forward

    def spy(student, teacher, target, epoch, index):
        seen["teacher"] = teacher.logits
        return real(student, teacher, target, epoch, index)

    run.method.forward = spy
    batch = next(iter(data.train))
    run.begin_epoch(1)
    run.step(batch, teacher_fn(batch), 1)
    assert seen["student_dtype"] == torch.bfloat16
    teacher = create_model("resnet20", num_classes=10)
    teacher.load_state_dict(torch.load(teacher_ckpt, weights_only=True)["model"])
    with torch.no_grad():
        expected = teacher.eval()(batch.images)  # plain float32
    assert seen["teacher"].dtype == torch.float32 and torch.equal(seen["teacher"], expected)

    # Evaluation is float32 whatever train.amp: the reported numbers equal a plain float32 pass.
    row = run.end_epoch(1, data.test)
    loss = correct = n = 0
    student = run.student.eval()
    with torch.no_grad():
        for b in data.test:
            logits = student(b.images)
            loss += torch.nn.functional.cross_entropy(logits, b.targets, reduction="sum").double().item()
            correct += int((logits.argmax(1) == b.targets).sum())
            n += len(b.targets)
    assert row["test_loss"] == loss / n and row["test_top1"] == 100 * correct / n
    first = next(iter(data.test))
    with torch.no_grad():
        fp32 = student(first.images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = student(first.images).float()
    assert not torch.equal(fp32, bf16)  # a bf16 evaluation would have been visible


def test_resume_refuses_a_changed_amp_and_the_cache_key_tells_precisions_apart(tmp_path, teacher_ckpt):
    over = [*FAST, "train.epochs=1"]
    train(resolve("demo/vanilla", over), tmp_path / "run")
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.suffix != ".yaml"}
    with pytest.raises(UserError, match=r"trained with another configuration \(differs in train.amp\)"):
        train(resolve("demo/vanilla", [*over, "train.amp=true"]), tmp_path / "run", resume=True)
    assert {p: p.read_bytes() for p in before} == before

    from rld.data.device_loader import DeviceLoader
    from rld.fast.key import cache_key

    data = build_data("digits", None, batch_size=64, eval_batch_size=512, device="cpu", seed=0)
    assert isinstance(data.train, DeviceLoader)
    teacher = _teacher()
    keys = {
        p: cache_key(
            teacher_name="resnet8",
            teacher=teacher,
            num_classes=10,
            loader=data.train,
            precision="float32",
            teacher_precision=p,
        )
        for p in ("float32", "bf16-body+float32-classifier")
    }
    assert len(set(keys.values())) == 2


# ----------------------------------------------------------------------------- the teacher's last epoch


def _make_best_differ(run_dir: Path) -> None:
    """Make a finished 2-epoch teacher run's best epoch differ from its last: best.pt holds other
    weights (epoch 1) and metrics.csv says epoch 1 scored higher. The engine writes best.pt only
    when an epoch improves, so which epoch wins depends on the data; this fixes it."""
    ckpt = run_dir / "checkpoints"
    state = torch.load(ckpt / "last.pt", weights_only=True)
    assert state["epoch"] == 2
    torch.manual_seed(99)
    other = create_model(state["config"]["model"]["student"], num_classes=state["num_classes"]).state_dict()
    torch.save({**state, "model": other, "epoch": 1, "optimizer": None}, ckpt / "best.pt")
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    rows[0]["test_top1"] = str(float(rows[1]["test_top1"]) + 5.0)
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_demo_distils_from_the_teachers_last_epoch(tmp_path):
    from rld.experiments.demo import run_demo

    over = [*FAST, "train.epochs=2"]
    out = tmp_path / "demo"
    train(resolve("demo/few/teacher", over), out / "teacher")
    _make_best_differ(out / "teacher")
    result = run_demo(out, over, methods=("kd",), seeds=(0,), report=False)  # the teacher is finished
    assert [m.method for m in result.methods] == ["kd"] and not (out / "report.html").exists()
    teacher_dir = out / "teacher" / "checkpoints"
    student = out / "kd" / "seed0"
    assert resolve(str(student / "config.yaml")).model.teacher_checkpoint == str(teacher_dir / "last.pt")
    # the same student distilled from last.pt explicitly: identical (from best.pt it could not be:
    # best.pt holds other weights)
    train(
        resolve("demo/few/kd", [*over, "seed=0", f"model.teacher_checkpoint={teacher_dir / 'last.pt'}"]),
        tmp_path / "last",
    )
    assert _same(_final_weights(student), _final_weights(tmp_path / "last"))


def test_reproduce_distils_from_and_reports_the_teachers_last_epoch(tmp_path):
    from test_experiments import _fake_cifar100

    data = _fake_cifar100(tmp_path / "data")
    options = dict(seeds=[0], epochs=2, pairs=["resnet56-resnet20"], methods=["kd"], data=str(data))
    plan = plan_table("table3", tmp_path / "repro", overrides=["train.batch_size=128"], **options)
    teacher = plan.runs[0]
    assert "teacher" in teacher.roles
    execute_run(teacher)
    _make_best_differ(Path(teacher.out))
    assert refresh_status(teacher) == DONE
    result = reproduce(plan)
    kd = Path(plan.run("cifar100/resnet56-resnet20/kd/seed0").out)
    assert result.trained == ["cifar100/resnet56-resnet20/kd/seed0"]
    config = resolve(str(kd / "config.yaml"))
    assert config.model.teacher_checkpoint == str(Path(teacher.out) / "checkpoints" / "last.pt")
    shutil.copytree(kd, tmp_path / "kd-copy")
    for name in ("last", "best"):
        cfg = resolve(str(kd / "config.yaml"), [f"model.teacher_checkpoint={Path(teacher.out)}/checkpoints/{name}.pt"])
        train(cfg, tmp_path / name)
    assert _same(_final_weights(kd), _final_weights(tmp_path / "last"))
    assert not _same(_final_weights(kd), _final_weights(tmp_path / "best"))
    # the Teacher row shows the last epoch, whatever --metric
    rows = list(csv.DictReader((Path(teacher.out) / "metrics.csv").open()))
    for metric in ("best", "last"):
        cell = collect(plan, metric).cell("Teacher", "resnet56 → resnet20")
        assert cell.values[metric] == [float(rows[1]["test_top1"])]
