"""Configuration, methods, the training engine (exact resume after SIGKILL) and the CLI's user errors."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rld.cli import main
from rld.config import list_presets, resolve
from rld.engine import lr_at, train
from rld.errors import UserError
from rld.methods import build_method
from rld.models import create_model

FAST = ["train.batch_size=256", "data.eval_batch_size=512"]
PAIRS = [
    "resnet32x4-resnet8x4",
    "resnet32x4-ShuffleV2",
    "resnet32x4-wrn_16_2",
    "resnet32x4-wrn_40_2",
    "wrn_40_2-resnet8x4",
    "wrn_40_2-MobileNetV2",
    "wrn_40_2-wrn_16_2",
    "wrn_40_2-wrn_40_1",
    "vgg13-vgg8",
    "vgg13-MobileNetV2",
    "ResNet50-MobileNetV2",
    "resnet56-resnet20",
    "resnet110-resnet32",
    "resnet110-resnet20",
]
METHODS = ["kd", "dkd", "rld", "la", "rc", "lr", "ctkd"]


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A resnet20 teacher in the shared checkpoint format (random weights: enough for these tests)."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save({"model": create_model("resnet20", num_classes=10).state_dict(), "epoch": 240}, path)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in ("epoch_time", "train_time")} for row in csv.DictReader(f)]


# ----------------------------------------------------------------------------- configuration


def test_presets_cover_every_pair_and_method_of_the_paper():
    names = set(list_presets())
    assert {f"cifar100/{p}/{m}" for p in PAIRS for m in METHODS} <= names
    teachers = {"resnet32x4", "wrn_40_2", "vgg13", "ResNet50", "resnet56", "resnet110"}
    assert {f"cifar100/{t}/vanilla" for t in teachers} <= names
    assert {f"imagenet/{p}/{m}" for p in ("ResNet34-ResNet18", "ResNet50-MobileNetV1") for m in METHODS} <= names
    assert {f"demo/{n}" for n in ("teacher", "vanilla", "kd", "dkd", "rld")} <= names


def test_published_hyperparameters():
    c = resolve("cifar100/resnet32x4-resnet8x4/rld")
    assert (c.method.alpha, c.method.beta, c.method.temperature, c.method.warmup_epochs) == (1.0, 8.0, 4.0, 20.0)
    assert (c.train.epochs, c.train.batch_size, c.train.lr, c.train.lr_milestones) == (240, 64, 0.05, [150, 180, 210])
    assert (c.train.weight_decay, c.train.momentum) == (5e-4, 0.9)
    assert resolve("cifar100/resnet56-resnet20/dkd").method.beta == 2.0
    assert resolve("cifar100/resnet110-resnet32/dkd").method.beta == 2.0
    assert resolve("cifar100/vgg13-vgg8/dkd").method.beta == 6.0
    assert resolve("cifar100/wrn_40_2-wrn_16_2/dkd").method.beta == 6.0
    assert resolve("cifar100/resnet32x4-resnet8x4/dkd").method.beta == 8.0
    assert resolve("cifar100/wrn_40_2-MobileNetV2/kd").train.lr == 0.01
    assert resolve("cifar100/resnet32x4-ShuffleV2/rld").train.lr == 0.01
    kd = resolve("cifar100/resnet32x4-resnet8x4/kd").method
    assert (kd.temperature, kd.ce_weight, kd.kd_weight) == (4.0, 0.1, 0.9)
    r34 = resolve("imagenet/ResNet34-ResNet18/rld")
    assert (r34.method.beta, r34.method.temperature, r34.method.warmup_epochs) == (0.5, 1.0, 0.0)
    assert (r34.train.epochs, r34.train.batch_size, r34.train.lr, r34.train.lr_step) == (100, 512, 0.2, 30)
    assert resolve("imagenet/ResNet50-MobileNetV1/rld").method.beta == 2.0
    assert resolve("imagenet/ResNet34-ResNet18/kd").method.temperature == 1.0


def test_logit_standardization_adjusts_preset_values_but_not_explicit_ones():
    c = resolve("cifar100/resnet32x4-resnet8x4/kd", ["method.logit_standardization=true"])
    assert (c.method.temperature, c.method.kd_weight, c.method.ce_weight) == (2.0, 9.0, 0.1)  # set, not 0.9·9
    c = resolve("cifar100/resnet32x4-resnet8x4/rld", ["method.logit_standardization=true", "method.beta=4"])
    assert (c.method.temperature, c.method.alpha, c.method.beta) == (2.0, 9.0, 4.0)


def test_overrides_and_yaml_files(tmp_path):
    c = resolve("demo/rld", ["method.beta=2", "train.lr_milestones=[3,5]", "seed=7"])
    assert (c.method.beta, c.train.lr_milestones, c.seed) == (2.0, [3, 5], 7)
    f = tmp_path / "mine.yaml"
    f.write_text("preset: demo/kd\nmethod: {temperature: 2.0}\ntrain: {epochs: 3}\n")
    c = resolve(str(f))
    assert (c.method.name, c.method.temperature, c.train.epochs, c.data.name) == ("kd", 2.0, 3, "digits")


@pytest.mark.parametrize(
    "source,overrides,message",
    [
        (
            "demo/rld",
            ["train.epoch=3"],
            r"unknown config key 'train.epoch'.*valid keys: train.epochs, train.batch_size",
        ),
        ("demo/rld", ["modle.student=x"], r"unknown config key 'modle'.*valid keys: seed, data.name"),
        ("demo/rld", ["train.epochs=abc"], r"invalid value for train.epochs"),
        ("demo/rld", ["train.epochs=0"], r"train.epochs must be > 0, got 0"),
        ("demo/rld", ["method.temperature=-1"], r"method 'rld': temperature must be > 0, got -1.0"),
        ("demo/rld", ["method.mask=gt"], r"mask must be one of 'ge', 'g'"),
        ("demo/kd", ["method.mask=g"], r"method 'kd' does not take mask \(it takes: temperature, ce_weight"),
        ("demo/rld", ["method.name=fitnet"], r"unknown method 'fitnet'; available: vanilla, kd, dkd, rld"),
        ("demo/rld", ["beta"], r"overrides must look like KEY=VALUE"),
        ("cifar100/resnet32x4-resnet8x4/rdl", [], r"unknown preset .*did you mean cifar100/resnet32x4-resnet8x4/rld"),
    ],
)
def test_configuration_errors_say_what_is_wrong(source, overrides, message):
    with pytest.raises(UserError, match=message):
        resolve(source, overrides)


def test_learning_rate_schedule():
    c = resolve("cifar100/resnet32x4-resnet8x4/rld")
    assert [lr_at(c, e) for e in (1, 150, 151, 180, 181, 211, 240)] == pytest.approx(
        [0.05, 0.05, 0.005, 0.005, 0.0005, 0.00005, 0.00005]
    )
    i = resolve("imagenet/ResNet34-ResNet18/kd")
    assert [lr_at(i, e) for e in (1, 30, 31, 61, 100)] == pytest.approx([0.2, 0.2, 0.02, 0.002, 0.0002])


def test_methods_declare_what_they_need():
    assert not build_method(resolve("demo/vanilla").method).needs_teacher
    assert build_method(resolve("demo/rld").method).needs_teacher
    ctkd = build_method(resolve("cifar100/resnet32x4-resnet8x4/ctkd").method)
    assert [p.numel() for p in ctkd.parameters()] == [1]  # the learnable temperature joins the optimizer


# ----------------------------------------------------------------------------- engine


def test_training_writes_the_run_folder_and_eval_reproduces_best(tmp_path, teacher_ckpt):
    cfg = resolve("demo/rld", [*FAST, "train.epochs=2", f"model.teacher_checkpoint={teacher_ckpt}"])
    summary = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and resolve(str(run / "config.yaml")) == cfg
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for col in ("train_loss", "test_top1", "test_top5", "lr", "epoch_time", "loss_ce", "loss_scd", "loss_mcd"):
        assert col in rows[0]
    assert float(rows[0]["lr"]) == 0.05
    best = max(float(r["test_top1"]) for r in rows)
    assert summary["best_top1"] == pytest.approx(best, abs=1e-3)
    from rld.engine import evaluate_checkpoint

    again = evaluate_checkpoint(run / "checkpoints" / "best.pt")
    assert again["test_top1"] == pytest.approx(best, abs=1e-3)


def test_same_seed_same_metrics_and_resume_continues_exactly(tmp_path, teacher_ckpt):
    over = [*FAST, "train.epochs=3", f"model.teacher_checkpoint={teacher_ckpt}"]
    train(resolve("demo/dkd", over), tmp_path / "a")
    # Stop after epoch 1, then resume to epoch 3: the same rows as the uninterrupted run.
    train(resolve("demo/dkd", [*over[:-2], "train.epochs=1", over[-1]]), tmp_path / "b")
    with pytest.raises(UserError, match="trained with another configuration \\(differs in train.epochs\\)"):
        train(resolve("demo/dkd", over), tmp_path / "b", resume=True)
    # Same configuration resumed (epochs given from the start): rewrite the saved config to 3 epochs.
    state = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)
    state["config"]["train"]["epochs"] = 3
    torch.save(state, tmp_path / "b/checkpoints/last.pt")
    train(resolve("demo/dkd", over), tmp_path / "b", resume=True)
    assert _rows(tmp_path / "a/metrics.csv") == _rows(tmp_path / "b/metrics.csv")


def test_sigkill_at_arbitrary_moments_then_resume_gives_identical_metrics(tmp_path, teacher_ckpt):
    args = ["train", "demo/rld", "--teacher", str(teacher_ckpt), "--epochs", "4", "--seed", "0", *FAST]
    cmd = [sys.executable, "-m", "rld.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*cmd, "--out", str(tmp_path / "ref")], check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    kills = 0
    for delay in (6.0, 2.5, 4.0, 3.0, 5.0):  # after start-up; lands inside epochs or checkpoint writes
        proc = subprocess.Popen([*cmd, "--out", str(out), "--resume"], env=env, stdout=subprocess.DEVNULL)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    subprocess.run([*cmd, "--out", str(out), "--resume"], check=True, env=env, capture_output=True)
    assert kills >= 1
    assert _rows(tmp_path / "ref/metrics.csv") == _rows(out / "metrics.csv")
    assert len(_rows(out / "metrics.csv")) == 4


# ----------------------------------------------------------------------------- CLI user errors


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "nope/preset"], "unknown preset 'nope/preset'"),
        (["train", "demo/rld", "train.foo=1"], "unknown config key 'train.foo'"),
        (["train", "demo/rld", "--epochs", "0"], "train.epochs must be > 0"),
        (["train", "demo/rld", "method.temperature=0"], "temperature must be > 0"),
        (["train", "demo/kd"], "needs a trained resnet20 teacher: pass --teacher CKPT"),
        (["train", "cifar100/resnet8x4/vanilla"], "cifar100 needs a data path"),
        (["train", "cifar100/resnet8x4/vanilla", "--data", "/nonexistent/cifar"], "/nonexistent/cifar"),
        (["train", "missing.yaml"], "cannot read config file missing.yaml"),
        (["eval", "/nonexistent/best.pt"], "checkpoint /nonexistent/best.pt does not exist"),
    ],
)
def test_user_errors_exit_2_with_one_line(capsys, tmp_path, argv, message):
    code, err = _cli(capsys, *argv, *(["--out", str(tmp_path / "o")] if argv[0] == "train" else []))
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("rld: error: ") and "Traceback" not in err
    assert message in err


def test_teacher_of_another_architecture_is_refused(capsys, tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, wrong)
    code, err = _cli(capsys, "train", "demo/kd", "--teacher", str(wrong), "--out", str(tmp_path / "o"))
    assert code == 2 and len(err.splitlines()) == 1
    assert "resnet20" in err and str(wrong) in err


def test_existing_runs_are_never_overwritten_and_corrupt_checkpoints_are_reported(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "demo/vanilla", "--epochs", "1", "--out", str(out), *FAST]) == 0
    before = (out / "metrics.csv").read_text()
    code, err = _cli(capsys, "train", "demo/vanilla", "--epochs", "1", "--out", str(out), *FAST)
    assert code == 2 and "already holds a run; add --resume" in err
    assert (out / "metrics.csv").read_text() == before
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    code, err = _cli(capsys, "train", "demo/vanilla", "--epochs", "1", "--out", str(out), "--resume", *FAST)
    assert code == 2 and "is corrupt or truncated" in err and len(err.splitlines()) == 1


def test_unwritable_output_folder(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = _cli(capsys, "train", "demo/vanilla", "--out", str(blocker / "run"))
    assert code == 2 and "cannot write to the output folder" in err


def test_console_script_exit_status(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rld.cli", "train", "demo/rld", "method.beta=-1"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "rld: error: method 'rld': beta must be a number >= 0, got -1.0"


def test_two_process_torchrun_on_cpu(tmp_path):
    """torchrun with 2 gloo processes: the run completes, rank 0 writes it, and the test metrics
    reduced over both ranks equal a single-process evaluation of the saved model."""
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "rld.cli", "train", "demo/vanilla"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*cmd, "--epochs", "1", "--out", str(out), "train.batch_size=256"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("done: best test top-1") == 1  # only rank 0 reports
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    # 1347 images padded to 1348: 674 per rank in batches of 256 / 2 = 128 -> 6 steps
    assert len(rows) == 1 and int(rows[0]["steps"]) == 6
    from rld.engine import evaluate_checkpoint

    single = evaluate_checkpoint(out / "checkpoints" / "best.pt")
    assert float(rows[0]["test_top1"]) == pytest.approx(single["test_top1"], abs=1e-3)
    assert float(rows[0]["test_loss"]) == pytest.approx(single["test_loss"], rel=1e-4)
