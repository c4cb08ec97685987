"""Students side by side (rld.engine.batched): a stacked step equals the runs' own steps up to float
rounding, in a unit step and in whole sweeps, and only runs that can be stacked are."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from conftest import assert_same_run_state, assert_user_error, load_last, metric_rows, run_rld
from rld.config import resolve
from rld.data.types import Batch
from rld.engine import batched
from rld.engine.batched import GroupStep, StudentStack, batch_students_wanted, why_not_stacked
from rld.engine.distributed import World
from rld.engine.loop import Member
from rld.engine.step import train_step
from rld.engine.sweep import sweep
from rld.engine.trainer import Run

FAST = ["train.batch_size=128", "data.eval_batch_size=512", "train.epochs=2", "data.train_per_class=30"]


def _runs(tmp_path: Path, tag: str, specs: list[tuple[str, list[str]]], teacher=None) -> list[Run]:
    made = []
    for k, (preset, over) in enumerate(specs):
        cfg = resolve(preset, [*over, "train.device=cpu"])
        out = tmp_path / f"{tag}{k}"
        (out / "checkpoints").mkdir(parents=True)
        run = Run(
            cfg,
            out,
            world=World(),
            device=torch.device("cpu"),
            num_classes=10,
            resume_from=None,
            resume=False,
            teacher=teacher,
            input_shape=(3, 32, 32),
            labels=torch.arange(10).repeat(4),
        )
        run.begin_epoch(4)  # past the warm-up of RLD's and DKD's terms: every term counts
        made.append(run)
    return made


def _batches(steps: int, seed: int = 3) -> list[tuple[Batch, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            Batch(torch.randn(24, 3, 32, 32, generator=g), torch.randint(0, 10, (24,), generator=g), None, None),
            3 * torch.randn(24, 10, generator=g),  # the teacher's logits
        )
        for _ in range(steps)
    ]


# three runs of one student architecture with their own method, β, T and learning rate
SPECS = [
    ("demo/rld", ["method.beta=2", "train.lr=0.05"]),
    ("demo/rld", ["method.beta=8", "method.temperature=2", "train.lr=0.02"]),
    ("demo/kd", ["train.lr=0.1", "train.weight_decay=0.001"]),
]


@pytest.mark.parametrize("streams", [[0, 0, 0], [1, 0, 1]], ids=["one-stream", "two-streams"])
def test_a_stacked_step_equals_each_runs_own_step(tmp_path, monkeypatch, streams):
    """Three steps of three stacked runs give each run the parameters, BatchNorm statistics,
    momentum buffers and metrics of its own steps, on one data stream or each on its own stream's
    batches (two seeds of a group). In float64 (students, data and teacher, with the casts to float32
    made no-ops) rounding is ~1e-16, so any real difference shows; the runs differ from one another
    by far more (a run given another's gradient, statistics or batch would fail)."""
    monkeypatch.setattr(torch.Tensor, "float", lambda self: self)
    torch.manual_seed(0)
    stacked, alone = _runs(tmp_path, "s", SPECS), _runs(tmp_path, "a", SPECS)
    for run in (*stacked, *alone):
        run.student.double()
    start = {k: v.clone() for k, v in alone[0].student.state_dict().items()}
    stack = StudentStack(stacked, streams)
    for step in zip(_batches(3, seed=3), _batches(3, seed=4)):  # the step's batch of streams 0 and 1
        batches = [b._replace(images=b.images.double()) for b, _ in step]
        teachers = [t.double() for _, t in step]
        train_step(stack.forward(batches, teachers, 4))
        for run, s in zip(alone, streams):
            run.step(batches[s], teachers[s] if run.needs_teacher else None, 4)
    for a, b in zip(stacked, alone):
        sa, sb = a.student.state_dict(), b.student.state_dict()
        for name in sb:
            if sb[name].is_floating_point():
                torch.testing.assert_close(sa[name], sb[name], rtol=0, atol=1e-12, msg=name)
            else:
                assert torch.equal(sa[name], sb[name]), name  # num_batches_tracked
        for pa, pb in zip(a.optimizer.param_groups[0]["params"], b.optimizer.param_groups[0]["params"]):
            ma, mb = a.optimizer.state[pa]["momentum_buffer"], b.optimizer.state[pb]["momentum_buffer"]
            torch.testing.assert_close(ma, mb, rtol=0, atol=1e-12)
        assert a.steps == b.steps == 3
        assert a.metrics.sums.keys() == b.metrics.sums.keys() and float(a.metrics.correct) == float(b.metrics.correct)
        for key in b.metrics.sums:
            torch.testing.assert_close(a.metrics.sums[key], b.metrics.sums[key], rtol=1e-12, atol=0)
    moved = max((alone[0].student.state_dict()[k] - v).abs().max() for k, v in start.items() if v.is_floating_point())
    apart = (alone[0].student.conv1.weight - alone[1].student.conv1.weight).abs().max()
    assert moved > 1e-3 and apart > 1e-3  # training moved the weights, and the runs apart


def test_only_runs_that_can_be_stacked_are(tmp_path, caplog, teacher_ckpt):
    """A feature method's student and a lone architecture step on their own; the log says why."""
    from rld.models import create_model

    torch.manual_seed(1)
    teacher = create_model("resnet20", num_classes=10).eval().requires_grad_(False)
    specs = [
        SPECS[0],
        ("demo/fitnet", []),
        SPECS[2],
        ("demo/rld", ["model.student=resnet14"]),
        ("demo/vanilla", []),  # no teacher: its student stacks with the distilled ones
    ]
    runs = _runs(tmp_path, "m", specs, teacher=teacher)
    members = [Member(r, torch.get_rng_state()) for r in runs]
    with caplog.at_level(logging.INFO, logger="rld"):
        step = GroupStep(members, batched=True)
    stacks = [u for u in step.units if isinstance(u, StudentStack)]
    assert [[runs.index(r) for r in s.runs] for s in stacks] == [[0, 2, 4]] and step.stacked == 3
    assert [members.index(u) for u in step.units if not isinstance(u, StudentStack)] == [1, 3]
    assert "3 students (resnet8) step as one batched computation" in caplog.text
    assert "2 of 5 runs step one after another" in caplog.text
    assert "method fitnet reads the student's features" in caplog.text
    assert "no other run has its student" in caplog.text
    assert why_not_stacked(runs[1]) == "method fitnet reads the student's features"
    mlkd = _runs(tmp_path, "k", [("demo/mlkd", [])], teacher=teacher)[0]
    assert why_not_stacked(mlkd) == "method mlkd trains on a strongly augmented view too"
    unbatched = GroupStep(members, batched=False)
    assert unbatched.units == members and unbatched.stacked == 0
    batch, logits = _batches(1)[0]
    from rld.engine.teacher import TeacherForward

    outputs = TeacherForward(teacher, amp=False)(batch, features=True)
    step([batch], [outputs], 4)  # every kind of unit steps once
    assert [r.steps for r in runs] == [1] * 5
    assert batch_students_wanted("auto", torch.device("cuda")) and batch_students_wanted("on", torch.device("cpu"))
    assert not batch_students_wanted("auto", torch.device("cpu")) and not batch_students_wanted(
        "off", torch.device("cuda")
    )


def _flat(state: dict) -> torch.Tensor:
    return torch.cat([v.flatten() for k, v in state.items() if v.is_floating_point() and "running" not in k])


def _count_stacked_steps(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = batched.StudentStack.forward

    def counted(self, batch, teacher, epoch):
        calls.append(len(self.runs))
        return original(self, batch, teacher, epoch)

    monkeypatch.setattr(batched.StudentStack, "forward", counted)
    return calls


@pytest.mark.parametrize("static", ["off", "on"])
def test_a_batched_sweep_trains_each_run_as_the_one_by_one_sweep(tmp_path, teacher_ckpt, monkeypatch, static):
    """Two epochs of a β sweep with the students stacked end with each run's metrics and weights of
    the one-by-one sweep (itself bit-identical to the single runs) up to float rounding; with the
    static step too, which steps the stacked students as the plain loop does."""
    over = [*FAST, f"model.teacher_checkpoint={teacher_ckpt}", f"train.static_step={static}"]
    grid = ["method.beta=2,8", "train.lr=0.05,0.02"]
    sweep("demo/rld", grid, out=tmp_path / "off", extra=[*over, "train.batch_students=off"])
    calls = _count_stacked_steps(monkeypatch)
    rows = sweep("demo/rld", grid, out=tmp_path / "on", extra=[*over, "train.batch_students=on"])
    assert calls == [4] * 6  # 300 images at batch 128: 3 steps per epoch, every one stacked
    states = {}
    for row in rows:
        a, b = tmp_path / "on" / row["run"], tmp_path / "off" / row["run"]
        ra, rb = metric_rows(a / "metrics.csv"), metric_rows(b / "metrics.csv")
        assert [(r["epoch"], r["steps"], r["lr"]) for r in ra] == [(r["epoch"], r["steps"], r["lr"]) for r in rb]
        for x, y in zip(ra, rb):
            assert float(x["train_loss"]) == pytest.approx(float(y["train_loss"]), rel=1e-3)
        sa, sb = load_last(a), load_last(b)
        assert sa["config"]["train"]["batch_students"] == "on"
        states[row["run"]] = (_flat(sa["model"]), _flat(sb["model"]))
    # rounding, amplified by training on these small-variance images, moves a stacked run a little away
    # from its one-by-one twin: far less than the runs of the grid are apart from one another
    apart = (states["method.beta=2,train.lr=0.05,seed=0"][1] - states["method.beta=8,train.lr=0.05,seed=0"][1]).norm()
    for on, off in states.values():
        assert (on - off).norm() < 0.1 * apart  # measured: 0.02-0.08 of it


def test_batch_students_setting_is_checked_and_may_change_on_resume(tmp_path, teacher_ckpt):
    done = run_rld("train", "demo/rld", "--out", str(tmp_path / "x"), "train.batch_students=maybe")
    assert_user_error(done.returncode, done.stderr.strip(), "train.batch_students must be auto, on or off")
    assert not (tmp_path / "x").exists()
    assert resolve("demo/rld", ["train.batch_students=true"]).train.batch_students == "on"
    over = [
        "train.epochs=1",
        "train.batch_size=256",
        "data.train_per_class=30",
        f"model.teacher_checkpoint={teacher_ckpt}",
    ]
    out = tmp_path / "sweep"
    sweep("demo/rld", ["method.beta=2,8"], out=out, extra=[*over, "train.batch_students=on"])
    resumed = [
        "train.epochs=2",
        "train.batch_size=256",
        "data.train_per_class=30",
        f"model.teacher_checkpoint={teacher_ckpt}",
    ]
    rows = sweep("demo/rld", ["method.beta=2,8"], out=out, resume=True, extra=[*resumed, "train.batch_students=off"])
    assert [len(metric_rows(out / r["run"] / "metrics.csv")) for r in rows] == [2, 2]


def test_seeds_share_one_batched_step_each_on_its_own_stream(tmp_path, teacher_ckpt, monkeypatch, caplog):
    """With batched students the runs of two seeds form one group: each step stacks the four students,
    each on its own seed's batch. The static step trains them exactly as the plain loop does, and each
    run ends where its one-by-one twin (two groups, bit-identical to the single runs) does, up to
    rounding: far closer than the runs of the grid are to one another."""
    over = [*FAST, f"model.teacher_checkpoint={teacher_ckpt}"]
    grid = ["method.beta=2,8"]
    with caplog.at_level(logging.INFO, logger="rld"):
        sweep("demo/rld", grid, seeds=[0, 1], out=tmp_path / "alone", extra=[*over, "train.batch_students=off"])
    assert "sweep: 4 runs in 2 lockstep group(s) (seed 0: 2 runs; seed 1: 2 runs)" in caplog.text
    caplog.clear()
    calls = _count_stacked_steps(monkeypatch)
    for static in ("off", "on"):
        with caplog.at_level(logging.INFO, logger="rld"):
            extra = [*over, "train.batch_students=on", f"train.static_step={static}"]
            rows = sweep("demo/rld", grid, seeds=[0, 1], out=tmp_path / f"static={static}", extra=extra)
        assert calls == [4] * 6  # 300 images at batch 128: 3 steps per epoch, every one of all four students
        calls.clear()
        assert "sweep: 4 runs in 1 lockstep group(s) (seeds 0, 1: 4 runs)" in caplog.text
        assert "4 students (resnet8, 2 seeds) step as one batched computation" in caplog.text
        caplog.clear()
    names = [r["run"] for r in rows]
    assert names == [f"method.beta={b},seed={s}" for s in (0, 1) for b in (2, 8)]
    states = {}
    for name in names:
        # the static step and the plain loop do the same arithmetic on the same batches
        plain, static, alone = (tmp_path / folder / name for folder in ("static=off", "static=on", "alone"))
        assert metric_rows(plain / "metrics.csv") == metric_rows(static / "metrics.csv")
        assert_same_run_state(load_last(plain), load_last(static), ignore_config=("train.static_step",))
        states[name] = _flat(load_last(static)["model"]), _flat(load_last(alone)["model"])
    apart = (states["method.beta=2,seed=1"][1] - states["method.beta=8,seed=1"][1]).norm()
    for stacked, alone in states.values():
        assert (stacked - alone).norm() < 0.1 * apart


def test_a_group_of_two_seeds_stepped_one_by_one_is_bit_identical_to_the_single_runs(
    tmp_path, teacher_ckpt, monkeypatch, caplog
):
    """The plumbing of a group of several seeds, without the rounding of a stacked step: with no
    student allowed to stack, the two seeds still train in one group (one loader per seed over one
    copy of the data, the teacher run once on both seeds' batches and split back), and every run
    ends bit for bit as in the one-by-one sweep, a group per seed, itself equal to the single runs."""
    over = [*FAST, f"model.teacher_checkpoint={teacher_ckpt}"]
    sweep(
        "demo/rld",
        ["train.lr=0.05,0.02"],
        seeds=[0, 1],
        out=tmp_path / "alone",
        extra=[*over, "train.batch_students=off"],
    )
    monkeypatch.setattr(batched, "stack_key", lambda run: None)
    with caplog.at_level(logging.INFO, logger="rld"):
        rows = sweep(
            "demo/rld",
            ["train.lr=0.05,0.02"],
            seeds=[0, 1],
            out=tmp_path / "group",
            extra=[*over, "train.batch_students=on"],
        )
    assert "sweep: 4 runs in 1 lockstep group(s) (seeds 0, 1: 4 runs)" in caplog.text
    for row in rows:
        group, alone = tmp_path / "group" / row["run"], tmp_path / "alone" / row["run"]
        assert metric_rows(group / "metrics.csv") == metric_rows(alone / "metrics.csv")
        assert_same_run_state(load_last(alone), load_last(group), ignore_config=("train.batch_students",))
