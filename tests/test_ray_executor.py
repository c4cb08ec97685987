"""``--executor ray``: runs spread over a local Ray instance (CPU, 2 workers) finish exactly once, survive
a worker that dies, and give what ``--executor local`` gives."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_same_run_state, load_last, metric_lines, metric_rows
from rld import executor as ex
from rld.cli import main
from rld.engine import lock
from rld.errors import DivergedError, RunFolderLocked

PAIR = "cifar100/resnet56-resnet20"
TEACHER, KD, RLD = "cifar100/resnet56/vanilla/seed0", f"{PAIR}/kd/seed0", f"{PAIR}/rld/seed0"
# Table 3, one pair, KD and RLD, one seed, 2 epochs of 2 steps on 8x8 digits: seconds per run.
TINY = ["data.name=digits", "data.image_size=8", "data.train_per_class=10"]
REPRODUCE = ["reproduce", "table3", "--seeds", "0", "--epochs", "2", "--pairs", "resnet56-resnet20", "--methods",
             "kd,rld", *TINY]  # fmt: skip


@pytest.fixture(scope="module")
def cluster():
    """One local Ray instance for the module: 2 CPUs, so 2 runs at a time; yields its address."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # a new one, always
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _epochs(run: Path) -> list[int]:
    return [int(row["epoch"]) for row in metric_rows(run / "metrics.csv")]


def _without(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in columns} for row in csv.DictReader(open(path))]


def test_reproduce_on_ray_finishes_a_dead_workers_run_once_and_matches_local(cluster, tmp_path, capsys, monkeypatch):
    """The process training KD dies hard (os._exit) in its second epoch; the others finish, the command
    says which did not (exit 2). Launched again, only KD trains, from its epoch-1 checkpoint; every
    run then holds each epoch once, KD's weights are an uninterrupted run's, and the table is the one
    ``--executor local`` writes."""
    out = tmp_path / "ray"
    monkeypatch.setenv("RLD_FAULT", "after_step:3")  # KD's step 1 of epoch 2, after epoch 1's last.pt
    monkeypatch.setenv("RLD_FAULT_RUN", "kd/seed0")  # only in the process that trains KD
    code = main([*REPRODUCE, "--out", str(out), "--executor", "ray", "--retries", "0"])
    printed = capsys.readouterr()
    assert code == 2, printed.err
    assert f"done     {TEACHER}" in printed.out and f"done     {RLD}" in printed.out
    assert f"failed   {KD}  the process training it died (WorkerCrashedError)" in printed.out
    assert f"1 of 3 runs did not finish:\n  {KD}: failed:" in printed.err
    assert "| Logit | KD | — (paper 70.66) |" in printed.out  # the table of what finished
    assert (_epochs(out / TEACHER), _epochs(out / KD), _epochs(out / RLD)) == ([1, 2], [1], [1, 2])
    kd_epoch1 = metric_lines(out / KD)
    stamps = {name: (out / name / "checkpoints" / "last.pt").stat().st_mtime_ns for name in (TEACHER, RLD)}

    # The same launch again (the fault still set: resumed, KD steps twice in this process, never 3 times).
    assert main([*REPRODUCE, "--out", str(out), "--executor", "ray"]) == 0
    printed = capsys.readouterr()
    assert "3 runs planned, 2 finished, 1 to run" in printed.out
    assert f"[1/1] done     {KD}  best " in printed.out
    assert metric_lines(out / KD)[:2] == kd_epoch1  # epoch 1 kept as written, not trained again
    for name in (TEACHER, KD, RLD):
        assert _epochs(out / name) == [1, 2], name
    assert stamps == {name: (out / name / "checkpoints" / "last.pt").stat().st_mtime_ns for name in (TEACHER, RLD)}

    monkeypatch.delenv("RLD_FAULT")  # this process trains the same runs now
    monkeypatch.delenv("RLD_FAULT_RUN")
    local = tmp_path / "local"
    assert main([*REPRODUCE, "--out", str(local)]) == 0
    capsys.readouterr()
    for name in (TEACHER, KD, RLD):  # the teacher's path is the only difference
        assert metric_rows(out / name / "metrics.csv") == metric_rows(local / name / "metrics.csv"), name
        assert_same_run_state(
            load_last(out / name), load_last(local / name), ignore_config=("model.teacher_checkpoint",)
        )
    tables = out / "tables", local / "tables"
    assert (tables[0] / "table3.md").read_text() == (tables[1] / "table3.md").read_text()
    assert (tables[0] / "table3.csv").read_text() == (tables[1] / "table3.csv").read_text()
    runs = [_without(t / "table3-runs.csv", ("time_s", "out")) for t in tables]
    assert runs[0] == runs[1] and [r["status"] for r in runs[0]] == ["done"] * 3


def test_sweep_on_ray_trains_each_group_as_a_task_and_leaves_a_locked_group(cluster, tmp_path):
    """Two seeds, two learning rates: two lockstep groups, each a Ray task of an `rld sweep` process that
    finds the cluster by RAY_ADDRESS. The seed-1 group is being trained by another process (the test
    holds a folder's lock): it is left alone. In the seed-0 group lr=1e30 diverges and lr=0.05 finishes
    as ``rld train`` trains it. Exit status 2 (not only divergences); the summary names the runs."""
    out = tmp_path / "sweep"
    argv = ["sweep", "demo/vanilla", "train.lr=0.05,1e30", "--seeds", "0,1", "--epochs", "1", *TINY, "--out",
            str(out), "--executor", "ray"]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": cluster}
    held = lock.hold(out / "train.lr=0.05,seed=1")
    try:
        done = subprocess.run([sys.executable, "-m", "rld.cli", *argv], env=env, capture_output=True, text=True)
    finally:
        lock.release(held.out)
    assert done.returncode == 2, done.stderr[-3000:]
    rows = {r["run"]: r for r in csv.DictReader(open(out / "sweep.csv"))}
    assert set(rows) == {f"train.lr={lr},seed={s}" for lr in ("0.05", "1e30") for s in (0, 1)}
    assert rows["train.lr=1e30,seed=0"]["status"] == "diverged"
    assert rows["train.lr=0.05,seed=0"]["status"] == ""
    for name in ("train.lr=0.05,seed=1", "train.lr=1e30,seed=1"):
        assert rows[name]["status"] == "busy" and "being trained elsewhere (pid" in rows[name]["error"], rows[name]
        assert not (out / name / "metrics.csv").exists()
    assert "3 of 4 runs did not finish:" in done.stderr and "train.lr=1e30,seed=0: diverged:" in done.stderr
    assert "the same command with --resume continues them (runs being trained elsewhere" in done.stderr

    alone = tmp_path / "alone"
    assert main(["train", "demo/vanilla", "--epochs", "1", *TINY, "train.lr=0.05", "--out", str(alone)]) == 0
    finished = out / "train.lr=0.05,seed=0"
    assert metric_rows(finished / "metrics.csv") == metric_rows(alone / "metrics.csv")
    assert_same_run_state(load_last(finished), load_last(alone))


def test_ray_missing_is_one_line_naming_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    assert main([*REPRODUCE, "--out", str(tmp_path), "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rld: error: --executor ray needs Ray, which is not installed: pip install 'rld[ray]'"
    assert not any(tmp_path.iterdir())


class WorkerCrashedError(Exception):
    """Named as Ray's exception for a task whose worker died."""


def test_units_wait_for_their_predecessors_and_a_failure_blocks_only_its_dependents():
    """The scheduling of ``--executor ray`` with a stand-in for Ray that runs each task when it is
    submitted and returns results in submission order: a student starts after its teacher finished;
    the students of a teacher being trained elsewhere (and theirs) are not started; a dead worker
    fails its unit only; the exit status is 2, or 3 when only divergences remain."""
    submitted: list[str] = []

    class Ref:
        def __init__(self, value):
            self.value = value

    class FakeRay:
        @staticmethod
        def wait(refs, num_returns=1):
            return refs[:1], refs[1:]

        @staticmethod
        def get(ref):
            if isinstance(ref.value, Exception):
                raise ref.value
            return ref.value

    class Task:
        @staticmethod
        def remote(fn, args, runs, name, cwd):
            submitted.append(name)
            return Ref(WorkerCrashedError("died") if name == "t3" else ex._run(fn, args, runs))

    def trains(name):
        return [ex.Outcome(name, ex.DONE, best_top1=1.0, last_top1=1.0)]

    def locked(name):
        raise RunFolderLocked(f"{name} is locked", holder="pid 1 on host h, since now")

    def diverges(name):
        raise DivergedError(f"{name} diverged", epoch=1, parts=["train_loss"])

    units = [
        ex.Unit("t1", trains, ("t1",), ("t1",)),
        ex.Unit("t2", locked, ("t2",), ("t2",)),
        ex.Unit("t3", trains, ("t3",), ("t3",)),
        ex.Unit("s1", trains, ("s1",), ("s1",), after=("t1",)),
        ex.Unit("s2", trains, ("s2",), ("s2",), after=("t2",)),
        ex.Unit("s2b", trains, ("s2b",), ("s2b",), after=("s2",)),
        ex.Unit("d1", diverges, ("d1",), ("d1",), after=("t1",)),
    ]
    progress = ex._Progress(len(units), None)
    outcomes = {o.run: o for o in ex._schedule(FakeRay, Task, units, progress)}
    assert submitted == ["t1", "t2", "t3", "s1", "d1"]  # s1 and d1 once t1 had finished; s2, s2b never
    assert {name: o.status for name, o in outcomes.items()} == {
        "t1": "done", "t2": "busy", "t3": "failed", "s1": "done", "s2": "blocked", "s2b": "blocked", "d1": "diverged",
    }  # fmt: skip
    assert outcomes["t2"].message == "being trained elsewhere (pid 1 on host h, since now)"
    assert outcomes["t3"].message.startswith("the process training it died (WorkerCrashedError)")
    assert outcomes["s2"].message == "not started: t2 did not finish (busy)"
    assert outcomes["s2b"].message == "not started: s2 did not finish (blocked)"
    assert ex.exit_status(list(outcomes.values())) == 2
    assert ex.exit_status([outcomes["t1"], outcomes["d1"]]) == 3
    assert ex.exit_status([outcomes["t1"], outcomes["s1"]]) == 0
