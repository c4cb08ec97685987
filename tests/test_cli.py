"""The command line: resume by folder and extension, one meaning per flag, the resolved setup,
progress without a terminal, errors that point at the fix, eval of a run folder, --version."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rld
from conftest import TINY_RUN, assert_user_error, write_class_folders
from rld.cli import main
from rld.config import KEY_HELP, key_help, key_types, list_presets, resolve
from rld.engine import train
from rld.errors import UserError
from rld.models import create_model

FAST = ["train.batch_size=256", "data.eval_batch_size=512", "train.channels_last=false"]


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _error(capsys, argv: list[str]) -> str:
    """Run the CLI, expect a user error (exit status 2, one line on stderr); return the line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert_user_error(code, err, "rld: error: ")
    return err


@pytest.fixture(scope="module")
def vanilla_run(tmp_path_factory) -> Path:
    """A 1-epoch demo/vanilla run (resnet8 on the digits)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    train(resolve("demo/vanilla", [*FAST, "train.epochs=1"]), out)
    return out


# ----------------------------------------------------------------------------- resume by folder


def test_resume_by_folder_extends_a_finished_run_exactly(tmp_path, vanilla_run, capsys):
    run = tmp_path / "run"
    import shutil

    shutil.copytree(vanilla_run, run)
    first = (run / "metrics.csv").read_text().splitlines()
    assert main(["train", "--resume", "--out", str(run), "train.epochs=2"]) == 0
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[:2] == first  # the trained epoch stays as it was
    assert resolve(str(run / "config.yaml")).train.epochs == 2
    straight = tmp_path / "straight"
    train(resolve("demo/vanilla", [*FAST, "train.epochs=2"]), straight)
    assert _same(_weights(run), _weights(straight))  # the same schedule from epoch 1: identical
    capsys.readouterr()
    # shortening a run and changing a result key are refused, the folder untouched
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert "has trained 2 epochs already; train.epochs=1" in _error(
        capsys, ["train", "--resume", "--out", str(run), "train.epochs=1"]
    )
    assert "differs in train.lr" in _error(capsys, ["train", "--resume", "--out", str(run), "train.lr=0.1"])
    assert {p: p.read_bytes() for p in before} == before


def test_resume_without_a_preset_needs_a_run_folder(tmp_path, capsys):
    assert "give a PRESET_OR_YAML" in _error(capsys, ["train", "--resume"])
    assert "holds no run to resume (no config.yaml)" in _error(capsys, ["train", "--resume", "--out", str(tmp_path)])


# ----------------------------------------------------------------------------- one meaning per flag


def _dry(capsys, argv: list[str]):
    assert main([*argv, "--dry-run"]) == 0
    import yaml

    text = capsys.readouterr().out
    return yaml.safe_load(text)


def test_epochs_flag_scales_the_schedule_in_train_and_sweep(capsys, tmp_path):
    cfg = _dry(capsys, ["train", "demo/rld", "--epochs", "20"])  # demo: 10 epochs, milestones 7 and 9, warm-up 3
    assert (cfg["train"]["epochs"], cfg["train"]["lr_milestones"], cfg["method"]["warmup_epochs"]) == (
        20,
        [14, 18],
        6.0,
    )
    literal = _dry(capsys, ["train", "demo/rld", "train.epochs=20"])
    assert (literal["train"]["lr_milestones"], literal["method"]["warmup_epochs"]) == ([7, 9], 3.0)
    kept = _dry(capsys, ["train", "demo/rld", "--epochs", "20", "train.lr_milestones=[5]"])
    assert kept["train"]["lr_milestones"] == [5]  # an explicit value is not scaled
    assert main(["sweep", "demo/rld", "method.beta=2,4", "--epochs", "20", "--dry-run", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "method.beta=4,seed=0  (epochs=20 lr_milestones=[14, 18])" in printed
    assert "sweep: 2 runs in 1 lockstep group(s) (seed 0: 2 runs)" in printed
    seeds = [
        "sweep",
        "demo/rld",
        "method.beta=2,4",
        "--seeds",
        "0,1",
        "--device",
        "cpu",
        "--dry-run",
        "--out",
        str(tmp_path),
    ]
    assert main([*seeds, "train.batch_students=on"]) == 0  # the seeds stack in one group
    assert "sweep: 4 runs in 1 lockstep group(s) (seeds 0, 1: 4 runs)" in capsys.readouterr().out
    assert main(seeds) == 0  # the CPU default (batch_students auto: off) trains a group per seed
    assert "sweep: 4 runs in 2 lockstep group(s) (seed 0: 2 runs; seed 1: 2 runs)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--epochs", "3", "train.epochs=abc"], "--epochs and train.epochs=… both set train.epochs"),
        (["--seed", "1", "seed=2"], "--seed and seed=… both set seed"),
        (["--device", "cpu", "train.device=cuda"], "--device and train.device=… both set train.device"),
        (["--data", "x"], "the digits data set is embedded and takes no path"),
        (["train.lr_milestones=5,7"], r"train.lr_milestones takes a list, e.g. train.lr_milestones=[5,7]"),
        (["method.bta=3"], "unknown config key 'method.bta' in the overrides (did you mean method.beta"),
        (["train.lr=fast"], "invalid value for train.lr in the overrides: it takes float"),
    ],
)
def test_flag_and_override_mistakes_are_one_line(capsys, argv, message):
    assert message in _error(capsys, ["train", "demo/rld", *argv, "--dry-run"])


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "train.lr_milestones=[150,180,210",
            "'train.lr_milestones=[150,180,210' is not a valid value: unclosed '['; "
            "e.g. train.lr_milestones=[150,180,210]",
        ),
        ("seed=[", "'seed=[' is not a valid value: unclosed '['; e.g. seed=0"),
        ("train.epochs=%s", "'train.epochs=%s' is not a valid value: '%' cannot start a value (quote the value)"),
        ('data.image_size="', "'data.image_size=\"' is not a valid value: unclosed quote; e.g. data.image_size=1"),
        ("method.name={a: 1}", "'method.name={a: 1}': method.name takes a name, not a map; e.g. method.name=vanilla"),
        ("method.beta=[1]", "'method.beta=[1]': method.beta takes a float, not a list"),
        ("train.lr_milestones={a: 1}", "train.lr_milestones takes a list, not a map"),
        ("train=3", "'train=3': train is a section, not a value; set its keys, e.g. train.epochs="),
        ("[x=1", "'[x=1': '[x' is not a configuration key"),
        ("method.beta=*a", "'*' marks a YAML alias (quote the value)"),
        (
            "method.beta=${oc.env:RLD_NO_SUCH_VARIABLE}",
            "cannot resolve the interpolation in method.beta: KeyError raised while resolving interpolation: "
            "\"Environment variable 'RLD_NO_SUCH_VARIABLE' not found\"",
        ),
        ("seed=${oc.env:HOME}", "cannot resolve the interpolation in seed"),
        ("method.alpha=inf", "method 'rld': alpha must be a finite number >= 0, got inf"),
        ("method.beta=1e999", "method 'rld': beta must be a finite number >= 0, got inf"),
        ("method.temperature=.inf", "method 'rld': temperature must be a finite number > 0, got inf"),
        ("method.alpha=nan", "method 'rld': alpha must be a number >= 0, got nan"),
        ("train.lr=inf", "train.lr must be > 0 and finite, got inf"),
        ("train.lr=nan", "train.lr must be > 0, got nan"),
        ("train.momentum=-inf", "train.momentum must be in [0, 1), got -inf"),
        ("data.holdout=nan", "data.holdout must be in (0, 1), got nan"),
        ("train.warmup_epochs=inf", "train.warmup_epochs must be >= 0 and < train.epochs, got inf"),
        ("data.path=\\${x}", "data.path=${x}: a value cannot hold '${' (a configuration reads '${…}' as an"),
        ("train.device={a: 1}", "'train.device={a: 1}': train.device takes a name, not a map"),
        ("train.device=meta", "train.device must be auto, cpu, cuda or cuda:N, got meta"),
        ("data.path=[x", "'data.path=[x' is not a valid value: unclosed '['"),
    ],
)
def test_malformed_and_non_finite_override_values_are_one_line(capsys, tmp_path, override, message):
    """Each ends in one line quoting what is wrong (and a valid example), exit status 2, nothing written."""
    assert message in _error(capsys, ["train", "demo/rld", override, "--out", str(tmp_path / "run"), "--dry-run"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "preset,override,message",
    [
        ("cifar100/resnet56-resnet20/crd", "method.nce_t=inf", "method 'crd': nce_t must be a finite number > 0"),
        ("cifar100/resnet56-resnet20/fitnet", "method.feat_weight=-inf", "method 'fitnet': feat_weight must be a"),
        ("cifar100/resnet56-resnet20/ctkd", "method.t_range=inf", "method 'ctkd': t_range must be a finite number"),
        ("cifar100/resnet56-resnet20/kd", "method.ls_temperature=inf", "must be a finite number > 0, got inf"),
    ],
)
def test_non_finite_method_weights_and_temperatures_are_refused(capsys, preset, override, message):
    extra = ["method.logit_standardization=true"] if "ls_" in override else []
    assert message in _error(capsys, ["train", preset, *extra, override, "--dry-run"])


NAMES = ["[x]", "{a}", "*t", "&a", "!x", "%s", "@x", "`x`", "|x", ">x", "#x", "a: b", "a #b", "'q'", '"q"', "-x"]


def _two_class_teacher(path: Path) -> Path:
    torch.manual_seed(0)
    torch.save({"model": create_model("resnet8", num_classes=2).state_dict()}, path)
    return path


IMAGES = ["data.val_fraction=0.5", "model.teacher=resnet8", *TINY_RUN]


@pytest.mark.parametrize("name", NAMES)
def test_a_flag_value_is_a_path_never_yaml(capsys, tmp_path, name):
    """--data and --teacher take paths as they are: a folder and a file whose names start with a
    YAML-special character (or hold ': ' or ' #') are the data set and the teacher of rld train, sweep
    and tune, while the same text in an override keeps its YAML meaning."""
    import yaml

    data, ckpt = write_class_folders(tmp_path / name), _two_class_teacher(tmp_path / f"{name}.pt")
    flags = ["--data", str(data), "--teacher", str(ckpt), "--device", "cpu"]
    assert main(["train", "custom/kd", *IMAGES, *flags, "--dry-run"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["path"] == str(data) and printed["model"]["teacher_checkpoint"] == str(ckpt)
    assert main(["sweep", "custom/kd", *IMAGES, *flags, "method.temperature=2,4", "--dry-run"]) == 0
    assert "sweep: 2 runs" in capsys.readouterr().out
    grid = ["--grid", "method.temperature=2,4", "--val-fraction", "0.5", "--out", str(tmp_path / "tune")]
    assert main(["tune", "custom/kd", *IMAGES, *flags, *grid, "--dry-run"]) == 0  # reads the folder's images
    assert "validation" in capsys.readouterr().out


def test_runs_on_a_folder_and_a_teacher_named_like_yaml(capsys, tmp_path):
    """A run trains on the folder [x] with the teacher *t.pt, and rld cache fills a cache in the folder
    {c}; an override data.path=[x keeps its YAML meaning (and is refused as such)."""
    data, ckpt = write_class_folders(tmp_path / "[x]"), _two_class_teacher(tmp_path / "*t.pt")
    out = tmp_path / "run"
    argv = ["train", "custom/kd", *IMAGES, "--data", str(data), "--teacher", str(ckpt), "--device", "cpu"]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    assert json.loads((out / "teacher.json").read_text())["checkpoint"] == str(ckpt)
    assert json.loads((out / "split.json").read_text())["root"] == str(data)
    digits = ["demo/kd", "data.train_per_class=2", "data.image_size=16", "model.teacher=resnet8", "--device", "cpu"]
    teacher = tmp_path / "&t.pt"
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, teacher)
    assert main(["cache", *digits, "--teacher", str(teacher), "--cache-dir", str(tmp_path / "{c}")]) == 0
    assert [p.name for p in (tmp_path / "{c}").iterdir()][0].startswith("resnet8-digits-")
    capsys.readouterr()
    assert "'data.path=[x' is not a valid value: unclosed '['" in _error(capsys, ["train", "custom/kd", "data.path=[x"])
    assert main(["train", "custom/kd", *IMAGES, f"data.path='{data}'", "--teacher", str(ckpt), "--dry-run"]) == 0


def test_an_internal_error_shows_its_traceback_and_what_to_report(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("rld.config.resolve_with_flags", broken)
    assert main(["train", "demo/rld", "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert err.splitlines()[-1] == (
        f"rld: this is a bug in rld, not a mistake in your input; please report it with the command "
        f"(rld train demo/rld --dry-run), the version (rld {rld.__version__}) and the traceback above"
    )


def test_ignored_inputs_are_refused(capsys, tmp_path):
    ckpt = tmp_path / "t.pt"
    assert "trains without a teacher: --teacher" in _error(capsys, ["train", "demo/vanilla", "--teacher", str(ckpt)])


def test_relative_paths_are_stored_absolute(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = _dry(capsys, ["train", "demo/rld", "--teacher", "teachers/t.pt"])
    assert cfg["model"]["teacher_checkpoint"] == str(tmp_path / "teachers" / "t.pt")


# ----------------------------------------------------------------------------- errors that point at the fix


def test_yaml_mistakes_point_at_the_fix(tmp_path, capsys):
    dotted = tmp_path / "dotted.yaml"
    dotted.write_text("preset: demo/rld\nmethod.beta: 4\n")
    assert "'method.beta' is a dotted key; write nested sections (method: {beta: …})" in _error(
        capsys, ["train", str(dotted), "--dry-run"]
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("preset: demo/rld\nmethod: {beta: 4\ntrain: {}\n")
    assert "is not valid YAML at line 3, column 6" in _error(capsys, ["train", str(broken), "--dry-run"])


@pytest.mark.parametrize("value", ["[1, 2]", "~", "3.5", "{a: 1}"])
def test_a_config_file_naming_a_preset_of_the_wrong_kind_is_refused(tmp_path, capsys, value):
    path = tmp_path / "c.yaml"
    path.write_text(f"preset: {value}\nseed: 1\n")
    message = _error(capsys, ["train", str(path), "--dry-run"])
    assert f"config file {path}: preset takes a preset name (e.g. preset: demo/rld), got" in message


def test_a_config_file_that_is_not_text_is_refused(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"seed: 1\n\x80")
    assert f"config file {path} is not UTF-8 text (byte 8: invalid start byte)" in _error(capsys, ["train", str(path)])


def test_a_path_or_value_with_a_newline_stays_on_one_line(tmp_path, capsys):
    assert "does not exist" in _error(capsys, ["eval", str(tmp_path / "a\nb.pt")])
    assert "a\\nb.pt" in _error(capsys, ["eval", str(tmp_path / "a\nb.pt")])
    with pytest.raises(SystemExit) as stop:
        main(["presets", "p", "x\ry"])
    assert_user_error(stop.value.code, capsys.readouterr().err, "unrecognized arguments: x\\ry")


def test_a_run_checkpoint_of_another_architecture_says_what_it_holds(vanilla_run, capsys):
    teacher = vanilla_run / "checkpoints" / "last.pt"  # a resnet8
    message = _error(capsys, ["train", "demo/kd", "--teacher", str(teacher), "train.epochs=1", *FAST])
    assert f"checkpoint {teacher} holds a 'resnet8' (its run's model.student), not a 'resnet20'" in message


def test_ctrl_c_prints_the_command_that_continues(monkeypatch, tmp_path, capsys):
    import rld.engine

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rld.engine, "train", interrupted)
    assert main(["train", "demo/vanilla", "--out", str(tmp_path / "my run")]) == 130
    err = capsys.readouterr().err
    assert err == f"rld: interrupted; continue with: rld train --resume --out '{tmp_path / 'my run'}'\n"


# ----------------------------------------------------------------------------- setup, progress, keys


def test_train_logs_the_resolved_setup_and_progress_lines(tmp_path, vanilla_run, monkeypatch, caplog):
    import rld.engine.loop as loop

    monkeypatch.setattr(loop, "PROGRESS_SECONDS", 0.0)
    teacher = vanilla_run / "checkpoints" / "last.pt"
    cfg = resolve("demo/kd", [*FAST, "train.epochs=1", "model.teacher=resnet8", f"model.teacher_checkpoint={teacher}"])
    with caplog.at_level(logging.INFO, logger="rld"):
        train(cfg, tmp_path / "kd")
    lines = [r.getMessage() for r in caplog.records]
    recorded = torch.load(teacher, weights_only=True)["history"][-1]["test_top1"]
    assert "data     digits: 1,347 training / 450 test images, 10 classes" in lines
    params = sum(p.numel() for p in create_model("resnet8", num_classes=10).parameters()) / 1e6
    assert f"student  resnet8 ({params:.2f} M parameters)" in lines
    assert f"teacher  resnet8 ({params:.2f} M parameters), test top-1 {recorded:.2f}% (recorded), {teacher}" in lines
    assert "method   kd: temperature=4.0 ce_weight=0.1 kd_weight=0.9 logit_standardization=False" in lines
    assert any(line.startswith("epoch 1/1: step 1/6  loss ") and "ETA 0:" in line for line in lines)
    record = json.loads((tmp_path / "kd" / "teacher.json").read_text())
    import hashlib

    assert record == {
        "checkpoint": str(teacher),
        "architecture": "resnet8",
        "sha256": hashlib.sha256(teacher.read_bytes()).hexdigest(),
    }


def test_every_config_key_is_documented_and_listed(capsys):
    assert set(key_help()) == set(key_types()) and all(key_help().values())
    assert main(["config-keys", "--json"]) == 0
    keys = {row["key"]: row for row in json.loads(capsys.readouterr().out)}
    assert keys["train.lr"] == {"key": "train.lr", "type": "float", "default": 0.05, "help": KEY_HELP["train.lr"]}
    assert main(["presets", "cifar100/resnet56-resnet20/dkd", "--json"]) == 0
    presets = json.loads(capsys.readouterr().out)
    assert presets == {"cifar100/resnet56-resnet20/dkd": list_presets()["cifar100/resnet56-resnet20/dkd"]}


def test_version_bare_usage_and_a_help_that_does_not_import_torch(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"rld {rld.__version__}\n"
    assert main([]) == 0 and capsys.readouterr().out.startswith("usage: rld [-h] [--version] COMMAND ...")
    code = (
        "import sys, rld.cli; rld.cli.build_parser(); print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "[]\n"


# ----------------------------------------------------------------------------- eval and plots of a run folder


def test_eval_of_a_run_folder_and_a_moved_teacher(tmp_path, vanilla_run, capsys):
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes((vanilla_run / "checkpoints" / "last.pt").read_bytes())
    cfg = resolve("demo/kd", [*FAST, "train.epochs=1", "model.teacher=resnet8", f"model.teacher_checkpoint={teacher}"])
    run = tmp_path / "kd"
    train(cfg, run)
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    results = {r["which"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(results) == {"last", "best", "teacher"}
    history = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["history"]
    assert results["last"]["test_top1"] == history[-1]["test_top1"]
    assert results["teacher"]["test_top1"] == torch.load(teacher, weights_only=True)["history"][-1]["test_top1"]
    moved = tmp_path / "moved.pt"
    teacher.rename(moved)
    assert "does not exist; pass --teacher CKPT" in _error(capsys, ["eval", str(run)])
    assert main(["eval", str(run), "--teacher", str(moved)]) == 0
    assert "teacher: resnet8" in capsys.readouterr().out
    other = tmp_path / "other.pt"
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, other)
    message = _error(
        capsys, ["plot", "logit-diff", str(run), "--out", str(tmp_path / "f.png"), "--teacher", str(other)]
    )
    assert f"{other} is not the teacher {run} was distilled from" in message


def test_user_error_in_the_library_is_a_user_error():
    with pytest.raises(UserError, match="method.ls_weight applies only"):
        resolve("demo/kd", ["method.ls_weight=2"])


def test_every_argument_has_help_text():
    import argparse

    from rld.cli import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{prefix} {name}")
            elif action.help is None:
                missing.append(f"{prefix} {action.option_strings or action.dest}")

    walk(build_parser(), "rld")
    assert missing == []


DIGITS = ["data.train_per_class=2", "data.holdout=0.5", "data.image_size=16", "train.batch_size=10", "train.epochs=1"]


@pytest.mark.parametrize(
    "grid,message",
    [
        ("train.device=cpu,cuda:99", "cuda"),
        ("data.train_per_class=2,1000", "data.train_per_class=1000 exceeds the smallest class"),
        ("model.teacher_checkpoint={teacher},{missing}", "checkpoint file not found"),
        ("model.teacher_weights=null,nope", "weights 'nope'"),
        ("data.image_size=16,4", "image size must be an integer >= 8"),
        ("data.pipeline=device,pil train.teacher_cache=full", "needs the device-resident loader"),
    ],
)
def test_a_sweep_refuses_a_run_before_training_any(capsys, tmp_path, teacher, grid, message):
    """A mistake only the second lockstep group makes (its device, data, teacher or cache) refuses the
    sweep before the first group trains: no folder is written (the first group's runs trained, and
    stayed, before)."""
    grid = grid.format(teacher=teacher, missing=tmp_path / "missing.pt").split()
    flags = [] if "device" in grid[0] else ["--device", "cpu"]
    argv = ["sweep", "demo/kd", *DIGITS, "model.teacher=resnet8", *grid, "train.loggers=[]", *flags]
    argv += [] if "teacher_checkpoint" in grid[0] else ["--teacher", str(teacher)]
    code = main([*argv, f"train.cache_dir={tmp_path / 'cache'}", "--out", str(tmp_path / "sweep")])
    assert_user_error(code, capsys.readouterr().err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_rld_demo_refuses_a_student_folder_before_training_its_teacher(capsys, tmp_path):
    """A student's folder holding a run of another configuration refuses rld demo before its teacher
    trains (it trained, and its folder stayed, before)."""
    argv = ["train", "demo/vanilla", *DIGITS, "train.loggers=[]", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "demo" / "kd" / "seed0")]) == 0
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    code = main(["demo", "--out", str(tmp_path / "demo"), "--seeds", "0", "--device", "cpu", "train.epochs=1"])
    assert_user_error(code, capsys.readouterr().err, "kd/seed0 was trained with another configuration")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no teacher folder


def test_teacher_cache_off_is_a_value_not_a_boolean(capsys):
    """YAML reads off as false: train.teacher_cache=off (its documented value) was refused."""
    assert main(["train", "demo/kd", "train.teacher_cache=off", "--dry-run"]) == 0
    assert "teacher_cache: 'off'" in capsys.readouterr().out


def test_a_sweep_over_seeds_that_are_not_integers_is_one_line(capsys, tmp_path):
    """seed=V1,V2 with values that are not seeds (a traceback from int() before)."""
    for values in ("sgd,simkd", "0,1.5", "0,-1"):
        code = main(["sweep", "demo/vanilla", f"seed={values}", "--dry-run", "--out", str(tmp_path)])
        assert_user_error(code, capsys.readouterr().err, "seed=V1,V2 takes seeds, integers >= 0 (e.g. seed=0,1,2), got")


def test_a_sweep_refused_by_its_first_group_leaves_its_folder_untouched(capsys, tmp_path, teacher):
    """The first lockstep group is built before the run folders are locked: refused there (weights that
    are not a file), no lock or run folder is created and removed again in --out (its mtime stays)."""
    out = tmp_path / "sweep"
    (out / "notes").mkdir(parents=True)
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in [out, *out.rglob("*")]}
    argv = ["sweep", "demo/kd", *DIGITS, "model.teacher=resnet8", "--teacher", str(teacher), "--device", "cpu"]
    code = main([*argv, "method.temperature=2,4", "model.student_weights=nope", "train.loggers=[]", "--out", str(out)])
    assert_user_error(code, capsys.readouterr().err, "weights 'nope'")
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in [out, *out.rglob("*")]} == before
