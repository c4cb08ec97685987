"""Configuration, methods, the training engine (exact resume after a crash at any point, torchrun)
and the CLI's user errors."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import (
    assert_same_run_state,
    assert_same_tensors,
    assert_user_error,
    folder_snapshot,
    fresh_compile,
    load_last,
    metric_lines,
    metric_rows,
    run_rld,
)
from rld.cli import main
from rld.config import list_presets, resolve
from rld.engine import lr_at, train
from rld.engine.faults import FAULT_EXIT_STATUS
from rld.errors import UserError
from rld.methods import build_method
from rld.models import create_model

FAST = ["train.batch_size=256", "data.eval_batch_size=512"]


def _tiny(tiny_cifar: Path) -> list[str]:
    """128 CIFAR-format images at batch 48: 3 steps per epoch, the last one a partial batch of 32."""
    return ["data.name=cifar100", f"data.path={tiny_cifar}", "train.batch_size=48"]


# CTKD (learnable temperature) on the demo data: the vanilla demo preset with a resnet20 teacher
CTKD = ["method.name=ctkd", "model.teacher=resnet20"]
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
        ("demo/rld", ["method.name=fitnett"], r"unknown method 'fitnett'; available: vanilla, kd, dkd, rld"),
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


def test_training_writes_the_run_folder_and_eval_reproduces_best(tmp_path):
    # A run that learns (digits at batch 32: test top-1 from ~18 % to ~37 %), so that "best" is a real choice.
    cfg = resolve("demo/vanilla", ["train.batch_size=32", "data.eval_batch_size=512", "train.epochs=2"])
    summary = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and resolve(str(run / "config.yaml")) == cfg
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["steps"] for r in rows] == ["43", "43"]
    assert list(rows[0]) == [
        "epoch", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "lr", "epoch_time",
        "train_time", "steps", "loss_ce",
    ]  # fmt: skip
    assert float(rows[0]["lr"]) == 0.05 and float(rows[0]["loss_ce"]) == float(rows[0]["train_loss"])
    top1 = [float(r["test_top1"]) for r in rows]
    assert top1[1] > top1[0] + 5  # it learns
    best = max(range(2), key=lambda i: top1[i])
    assert summary["best_epoch"] == best + 1
    assert (f"{summary['best_top1']:.6g}", f"{summary['last_top1']:.6g}") == (
        rows[best]["test_top1"],
        rows[1]["test_top1"],
    )
    from rld.engine import evaluate_checkpoint

    for name, row in (("best.pt", rows[best]), ("last.pt", rows[1])):
        again = evaluate_checkpoint(run / "checkpoints" / name)
        assert again["epoch"] == int(row["epoch"])
        assert f"{again['test_top1']:.6g}" == row["test_top1"] and f"{again['test_top5']:.6g}" == row["test_top5"]
        assert f"{again['test_loss']:.6g}" == row["test_loss"]


def test_same_seed_same_metrics_and_resume_continues_exactly(tmp_path, teacher_ckpt, tiny_cifar, compiled_losses):
    """With the compiled loss kernel (the default users run): a run stopped after epoch 1 and
    resumed in a new process (the kernel compiled afresh) ends with the uninterrupted run's state."""
    fused, _ = compiled_losses
    over = [*_tiny(tiny_cifar), "train.epochs=3", f"model.teacher_checkpoint={teacher_ckpt}"]
    train(resolve("demo/dkd", over), tmp_path / "a")
    fresh_compile(fused)
    train(resolve("demo/dkd", [*over[:-2], "train.epochs=1", over[-1]]), tmp_path / "b")
    # The run extended to 3 epochs (a changed schedule: the trained epoch stays, the same schedule
    # applies from epoch 2), in a new process: the uninterrupted run's state.
    fresh_compile(fused)
    train(resolve("demo/dkd", over), tmp_path / "b", resume=True)
    assert metric_rows(tmp_path / "a/metrics.csv") == metric_rows(tmp_path / "b/metrics.csv")
    assert_same_run_state(load_last(tmp_path / "a"), load_last(tmp_path / "b"))


def _temporary_files(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob(".last.pt.tmp-*"))


def test_crash_after_a_step_and_between_write_and_rename_then_resume_is_exact(
    tmp_path, teacher_ckpt, tiny_cifar, capsys
):
    """Faults at exact points (rld.engine.faults), each followed by a resume: the final last.pt
    equals the uninterrupted run's bit for bit (model, optimizer, method state, RNG, history).

    demo/rld, 3 steps per epoch. Crash 1 after step 5 (inside epoch 2, last.pt at epoch 1);
    crash 2 in the 2nd last.pt write after resuming (epoch 3's: renamed never, last.pt stays at
    epoch 2). The last resume changes an execution setting (static step on), which is
    accepted; a changed result setting (the learning rate) is refused and leaves the folder as it was.
    """
    over = [*_tiny(tiny_cifar), "train.epochs=3", f"model.teacher_checkpoint={teacher_ckpt}"]
    train(resolve("demo/rld", over), tmp_path / "ref")
    out = tmp_path / "crashed"
    args = ["train", "demo/rld", *over, "--out", str(out), "--resume"]

    first = run_rld(*args, fault="after_step:5")
    assert first.returncode == FAULT_EXIT_STATUS, first.stderr[-2000:]
    assert load_last(out)["epoch"] == 1 and [r["epoch"] for r in metric_rows(out / "metrics.csv")] == ["1"]
    assert _temporary_files(out) == []
    kept = metric_lines(out)  # header and epoch 1, which the resumes must keep (not train again)

    before = folder_snapshot(out)
    assert_user_error(*_cli(capsys, *args, "train.lr=0.1"), "trained with another configuration (differs in train.lr)")
    assert folder_snapshot(out) == before

    second = run_rld(*args, fault="before_rename:2")
    assert second.returncode == FAULT_EXIT_STATUS, second.stderr[-2000:]
    assert load_last(out)["epoch"] == 2 and [r["epoch"] for r in metric_rows(out / "metrics.csv")] == ["1", "2"]
    (pending,) = _temporary_files(out)  # epoch 3's checkpoint, written and never renamed
    assert torch.load(pending, weights_only=True)["epoch"] == 3

    assert main([*args, "train.static_step=on"]) == 0
    assert metric_lines(out)[:2] == kept
    assert_same_run_state(load_last(tmp_path / "ref"), load_last(out), ignore_config=("train.static_step",))
    assert metric_rows(tmp_path / "ref" / "metrics.csv") == metric_rows(out / "metrics.csv")
    best = [torch.load(r / "checkpoints" / "best.pt", weights_only=True) for r in (tmp_path / "ref", out)]
    assert_same_tensors(best[0]["model"], best[1]["model"], "best.model")


def test_ctkd_temperature_resumes_exactly_after_a_crash(tmp_path, teacher_ckpt, tiny_cifar):
    """CTKD's learnable temperature θ is method state: saved in last.pt and restored on resume."""
    over = [*_tiny(tiny_cifar), *CTKD, "train.epochs=2", f"model.teacher_checkpoint={teacher_ckpt}"]
    train(resolve("demo/vanilla", over), tmp_path / "ref")
    out = tmp_path / "crashed"
    args = ["train", "demo/vanilla", *over, "--out", str(out), "--resume"]
    crashed = run_rld(*args, fault="after_step:4")
    assert crashed.returncode == FAULT_EXIT_STATUS, crashed.stderr[-2000:]
    assert load_last(out)["epoch"] == 1
    kept = metric_lines(out)
    assert main(args) == 0
    assert metric_lines(out)[:2] == kept  # resumed after epoch 1, not started over
    ref, got = load_last(tmp_path / "ref"), load_last(out)
    (theta,) = ref["method"].values()
    assert theta.item() != 1.0  # θ is trained (initialised to 1)
    assert_same_run_state(ref, got)


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
        (["train", "demo/rld", "--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["train", "demo/rld", "method.temperature=0"], "temperature must be > 0"),
        (["train", "demo/kd"], "needs a trained resnet20 teacher: pass --teacher CKPT"),
        (["train", "cifar100/resnet8x4/vanilla"], "cifar100 needs a data path"),
        (["train", "cifar100/resnet8x4/vanilla", "--data", "/nonexistent/cifar"], "/nonexistent/cifar"),
        (["train", "missing.yaml"], "cannot read config file missing.yaml"),
        (["eval", "/nonexistent/best.pt"], "checkpoint /nonexistent/best.pt does not exist"),
    ],
)
def test_user_errors_exit_2_with_one_line(capsys, tmp_path, argv, message):
    out = tmp_path / "new" / "o"
    code, err = _cli(capsys, *argv, *(["--out", str(out)] if argv[0] == "train" else []))
    assert_user_error(code, err, message)
    assert not (tmp_path / "new").exists()  # a run that fails to start leaves no folder behind


def test_teacher_of_another_architecture_is_refused(capsys, tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, wrong)
    code, err = _cli(capsys, "train", "demo/kd", "--teacher", str(wrong), "--out", str(tmp_path / "o"))
    assert_user_error(code, err, str(wrong))
    assert "resnet20" in err and not (tmp_path / "o").exists()


def test_a_refused_command_leaves_the_run_folder_exactly_as_it_was(capsys, tmp_path, teacher_ckpt):
    """Every refusal on an existing run: exit 2, one line, and the folder byte for byte unchanged
    (config.yaml included: it must keep matching the checkpoint)."""
    out = tmp_path / "run"
    common = ["train", "demo/kd", *FAST, "--out", str(out)]
    assert main([*common, "--epochs", "2", "--teacher", str(teacher_ckpt)]) == 0
    wrong = tmp_path / "wrong.pth"
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, wrong)
    before = folder_snapshot(out)
    assert "epochs: 2" in (out / "config.yaml").read_text()
    refusals = [
        (["--epochs", "2", "--teacher", str(teacher_ckpt)], "already holds a run; add --resume"),
        (["--epochs", "1", "--resume", "--teacher", str(teacher_ckpt)], "has trained 2 epochs already"),
        (["--epochs", "2", "--resume", "--teacher", str(teacher_ckpt), "method.temperature=2"], "method.temperature"),
        # another teacher checkpoint is an execution setting (accepted), but this one is a resnet8
        (["--epochs", "2", "--resume", "--teacher", str(wrong)], "resnet20"),
    ]
    for extra, message in refusals:
        assert_user_error(*_cli(capsys, *common, *extra), message)
        assert folder_snapshot(out) == before, extra
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    before = folder_snapshot(out)
    code, err = _cli(capsys, *common, "--epochs", "2", "--resume", "--teacher", str(teacher_ckpt))
    assert_user_error(code, err, "is corrupt or truncated")
    assert folder_snapshot(out) == before


def test_existing_runs_are_never_overwritten_and_corrupt_checkpoints_are_reported(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "demo/vanilla", "--epochs", "1", "--out", str(out), *FAST]) == 0
    before = (out / "metrics.csv").read_text()
    code, err = _cli(capsys, "train", "demo/vanilla", "--epochs", "1", "--out", str(out), *FAST)
    assert_user_error(code, err, f"{out} already holds a run; add --resume to continue it or choose another --out")
    assert (out / "metrics.csv").read_text() == before
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    code, err = _cli(capsys, "train", "demo/vanilla", "--epochs", "1", "--out", str(out), "--resume", *FAST)
    assert_user_error(code, err, f"checkpoint {last} is corrupt or truncated")


def test_unwritable_output_folder(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = _cli(capsys, "train", "demo/vanilla", "--out", str(blocker / "run"))
    assert_user_error(code, err, f"cannot write to the output folder {blocker / 'run'}")
    assert blocker.read_text() == "not a folder"


def test_console_script_exit_status(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rld.cli", "train", "demo/rld", "method.beta=-1"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "rld: error: method 'rld': beta must be a number >= 0, got -1.0"


# Started by torchrun in each process: the CLI, plus a dump of the process's trainable parameters
# (student and method) when the run ends, so the test can compare the ranks.
RANK_DUMP = """
import os, sys, torch
from rld.cli import main
from rld.engine import trainer

close = trainer.Run.close

def close_and_dump(self):
    params = {f"student.{k}": v for k, v in self.student.named_parameters()}
    params.update({f"method.{k}": v for k, v in self.method.named_parameters()})
    torch.save({k: v.detach().clone() for k, v in params.items()}, f"{sys.argv[1]}/rank{os.environ['RANK']}.pt")
    return close(self)

trainer.Run.close = close_and_dump
sys.exit(main(sys.argv[2:]))
"""


def test_two_process_torchrun_on_cpu(tmp_path, teacher_ckpt):
    """torchrun with 2 gloo processes, CTKD (a method with its own trainable temperature) and
    --resume on a new folder (starts fresh): the run completes, rank 0 alone reports, both ranks
    end with identical student and method parameters, and the test metrics reduced over the ranks
    equal a single-process evaluation of the saved model."""
    out = tmp_path / "ddp"
    script = tmp_path / "worker.py"
    script.write_text(RANK_DUMP)
    # torchrun's module: the torchrun script sits beside only the Python of the environment torch is installed in
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(tmp_path),
    ]
    args = ["train", "demo/vanilla", *CTKD, "--teacher", str(teacher_ckpt), "--epochs", "1", "--resume"]
    proc = subprocess.run([*cmd, *args, "--out", str(out), "train.batch_size=256"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("done: best test top-1") == 1  # only rank 0 reports
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    # 1347 images padded to 1348: 674 per rank in batches of 256 / 2 = 128 -> 6 steps
    assert len(rows) == 1 and int(rows[0]["steps"]) == 6
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert "method.loss.temperature.theta" in rank0 and rank0["method.loss.temperature.theta"].item() != 1.0
    assert_same_tensors(rank0, rank1, "rank 1 vs rank 0")
    saved = load_last(out)
    assert_same_tensors(saved["method"], {k[len("method.") :]: v for k, v in rank0.items() if k.startswith("method.")})
    assert_same_tensors(
        {k: saved["model"][k] for k in dict(create_model("resnet8", num_classes=10).named_parameters())},
        {k[len("student.") :]: v for k, v in rank0.items() if k.startswith("student.")},
    )
    from rld.engine import evaluate_checkpoint

    single = evaluate_checkpoint(out / "checkpoints" / "best.pt")
    assert f"{single['test_top1']:.6g}" == rows[0]["test_top1"]
    assert float(rows[0]["test_loss"]) == pytest.approx(single["test_loss"], rel=1e-5)
