"""The options of ``rld cache``, ``rld sweep`` and ``rld bench``, pinned as published.

What each command accepts, its defaults (``rld bench --steps`` 40, ``--sweep-seeds`` 1, ...), value
types and choices, and the help text, which is also the generated command-line reference
(docs/reference/cli.md). A change here changes the documented interface, so it has to be made on
purpose: edit this table with it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from rld.cli import build_parser
from rld.fast import cli as fast_cli
from rld.fast.cli import SWEEP_EPILOG

SUPPRESS = argparse.SUPPRESS

# (option strings, dest, default, type, choices, nargs, metavar, help) of each argument after -h
OPTIONS = {
    "cache": [
        ([], "preset", None, None, None, None, "PRESET_OR_YAML", "the distillation preset the cache is for"),
        ([], "overrides", None, None, None, "*", "KEY=VALUE", "as for rld train"),
        (["--teacher"], "teacher", None, None, None, None, "CKPT", "teacher checkpoint"),
        (["--data"], "data", None, None, None, None, "PATH", "data set location"),
        (["--device"], "device", None, None, None, None, None, "auto, cpu, cuda or cuda:N (default: auto)"),
        (
            ["--cache-dir"],
            "cache_dir",
            None,
            None,
            None,
            None,
            "DIR",
            "where caches live (default ~/.cache/rld/teacher-logits)",
        ),
        (
            ["--cache-precision", "--precision"],
            "precision",
            None,
            None,
            ("float16", "float32", "int8", "topk"),
            None,
            None,
            "storage form (= train.cache_precision; default float16; int8 and topk for image folders)",
        ),
        (
            ["--epochs"],
            "epochs",
            None,
            int,
            None,
            None,
            "E",
            "image folders: store the views of epochs 1..E (default: train.epochs of the preset)",
        ),
        (
            ["--verify"],
            "verify",
            False,
            None,
            None,
            0,
            None,
            "image folders: also check the checksums of the epochs already stored",
        ),
    ],
    "sweep": [
        ([], "preset", None, None, None, None, "PRESET_OR_YAML", "a preset name (`rld presets`) or a YAML file"),
        ([], "overrides", None, None, None, "*", "KEY=V1,V2", "e.g. method.beta=2,8 train.lr=0.05"),
        (["--json"], "json", False, None, None, 0, None, "print the runs' results as JSON"),
        (["--dry-run"], "dry_run", False, None, None, 0, None, "list the planned runs and exit (trains nothing)"),
        (["--seeds"], "seeds", None, None, None, None, "S1,S2", "comma-separated seeds (default: the config's seed)"),
        (["--teacher"], "teacher", None, None, None, None, "CKPT", "teacher checkpoint"),
        (
            ["--epochs"],
            "epochs",
            None,
            int,
            None,
            None,
            None,
            "N epochs, lr schedule, warm-up and CTKD ramp scaled to match (as in rld train)",
        ),
        (["--out"], "out", None, Path, None, None, None, "sweep folder (default: runs/sweeps/PRESET)"),
        (["--resume"], "resume", False, None, None, 0, None, "continue the runs in --out"),
        (["--data"], "data", None, None, None, None, "PATH", "data set location"),
        (["--device"], "device", None, None, None, None, None, "auto, cpu, cuda or cuda:N (default: auto)"),
        (
            ["--executor"],
            "executor",
            "local",
            None,
            ("local", "ray"),
            None,
            None,
            "local: one run after another in this process (default); ray: every run (or lockstep group) is a task of a "
            "Ray cluster, as many at once as its GPUs allow (RAY_ADDRESS, else this machine; needs pip install "
            "'rld[ray]')",
        ),
        (
            ["--gpus-per-run"],
            "gpus_per_run",
            None,
            float,
            None,
            None,
            "G",
            "with --executor ray: GPUs each run takes, 0 to 1 (default: 1 when the cluster has GPUs, else 0)",
        ),
        (
            ["--cpus-per-run"],
            "cpus_per_run",
            1.0,
            float,
            None,
            None,
            "C",
            "with --executor ray: CPUs each run takes (default: 1)",
        ),
        (
            ["--retries"],
            "retries",
            3,
            int,
            None,
            None,
            "N",
            "with --executor ray: times a run whose worker died is started again (default: 3)",
        ),
    ],
    "bench": [
        (["--device"], "device", "cpu", None, None, None, None, "cpu or cuda (default: cpu)"),
        (
            ["--pair"],
            "pair",
            "resnet32x4-resnet8x4",
            None,
            None,
            None,
            "TEACHER-STUDENT",
            "as in preset names (default: resnet32x4-resnet8x4)",
        ),
        (["--method"], "method", "rld", None, None, None, None, "registry name of the method (default: rld)"),
        (["--batch-size"], "batch_size", 64, int, None, None, None, "batch size (default: 64)"),
        (["--steps"], "steps", 40, int, None, None, None, "timed steps per path and round (default 40)"),
        (["--warmup"], "warmup", 5, int, None, None, None, "untimed steps per path and round (default 5)"),
        (["--rounds"], "rounds", 3, int, None, None, None, "rounds; the paths take turns (default 3)"),
        (
            ["--workers"],
            "workers",
            None,
            int,
            None,
            None,
            None,
            "DataLoader workers of the conventional path (default: min(8, CPU cores))",
        ),
        (["--data"], "data", None, None, None, None, "PATH", "CIFAR-100 folder/archive/.npz (default: synthetic data)"),
        (["--synthetic-size"], "synthetic_size", 50000, int, None, None, None, SUPPRESS),
        (
            ["--sweep"],
            "sweep",
            None,
            None,
            None,
            None,
            "M1,M2",
            "students per lockstep sweep (default: 4,16 on CUDA only)",
        ),
        (
            ["--sweep-seeds"],
            "sweep_seeds",
            1,
            int,
            None,
            None,
            "S",
            "also each sweep with its students over S seeds, one data stream each (default: 1, none)",
        ),
        (["--json"], "json", None, None, None, None, "PATH", "write the report as JSON"),
    ],
}

COMMANDS = {
    "cache": (
        "compute and store the teacher's logits for every augmentation view (image folders: of epochs 1..E)",
        fast_cli._cmd_cache,
        None,
    ),
    "sweep": ("train several students in lockstep on one data stream", fast_cli._cmd_sweep, SWEEP_EPILOG),
    "bench": ("ms per training step: conventional vs default vs cached teacher logits", fast_cli._cmd_bench, None),
}


def _commands() -> tuple[argparse._SubParsersAction, dict[str, str]]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub, {c.dest: c.help for c in sub._choices_actions}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_option_of_the_command_is_as_published(name):
    sub, _ = _commands()
    parser = sub.choices[name]
    seen = [
        (a.option_strings, a.dest, a.default, a.type, a.choices, a.nargs, a.metavar, a.help)
        for a in parser._actions[1:]
    ]
    assert seen == OPTIONS[name]
    assert parser._actions[0].option_strings == ["-h", "--help"]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_the_command_is_listed_with_its_summary_and_runs_its_handler(name):
    sub, helps = _commands()
    summary, handler, epilog = COMMANDS[name]
    assert helps[name] == summary
    parser = sub.choices[name]
    assert parser.get_default("func") is handler
    assert parser.epilog is epilog
