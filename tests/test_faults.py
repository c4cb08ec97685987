"""Faults a run meets on a shared cluster: divergence, preemption, a second writer, a full disk, a
corrupt teacher-logit cache. Each fault is injected at an exact point (rld.engine.faults), never
after a wall-clock delay."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import (
    assert_same_run_state,
    assert_same_tensors,
    assert_user_error,
    folder_snapshot,
    load_last,
    metric_rows,
    rld_processes,
    write_class_folders,
    write_tiny_cifar,
    write_two_image_cifar,
)
from rld.cli import main
from rld.config import resolve
from rld.engine import faults, train
from rld.engine.trainer import Run

EPOCH_KEYS = ("model", "optimizer", "method")


def _tiny(tiny_cifar: Path) -> list[str]:
    """128 CIFAR-format images at batch 48: 3 steps per epoch, the last one a partial batch of 32."""
    return ["data.name=cifar100", f"data.path={tiny_cifar}", "train.batch_size=48"]


@pytest.fixture
def fault(monkeypatch):
    """``fault("KIND:N")``: RLD_FAULT for code run in this process (the counts start at 0); ``fault(None)``: none."""

    def set_fault(text: str | None) -> None:
        monkeypatch.setattr(faults, "_spec", faults._parse(text))
        monkeypatch.setattr(faults, "_counts", dict.fromkeys(faults.POINTS, 0))

    return set_fault


@pytest.fixture
def steps_taken(monkeypatch) -> list[int]:
    """Counts the optimisation steps run in this process (plain loop and static step alike)."""
    taken = [0]
    step = Run.step

    def counting(self, *args, **kwargs):
        taken[0] += 1
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Run, "step", counting)
    return taken


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


def _one_line(err: str) -> None:
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- divergence


def test_divergence_stops_with_status_3_and_keeps_the_last_finite_checkpoint(tmp_path, tiny_cifar, fault, capsys):
    """A weight set to NaN after the first step of epoch 2: its next steps' losses are NaN. The run
    stops at epoch 2 with one line and status 3; last.pt is epoch 1's, tensor for tensor; metrics.csv
    shows epoch 2 as a diverged row."""
    over = [*_tiny(tiny_cifar), "train.epochs=3"]
    out = tmp_path / "run"
    fault("nan_after_step:4")
    code, err = _cli(capsys, "train", "demo/vanilla", *over, "--out", str(out))
    assert code == 3, err
    _one_line(err)
    assert err == (
        f"rld: error: {out}: training diverged in epoch 2: non-finite train_loss, loss_ce, weights; last.pt keeps "
        "epoch 1. Lower train.lr or check the data (train.stop_on_nonfinite=false trains on regardless)"
    )
    train(resolve("demo/vanilla", [*_tiny(tiny_cifar), "train.epochs=1"]), tmp_path / "epoch1")
    kept, epoch1 = load_last(out), load_last(tmp_path / "epoch1")
    assert kept["epoch"] == 1
    for key in EPOCH_KEYS:
        assert_same_tensors(kept[key], epoch1[key], key)
    assert_same_tensors(kept["rng"]["torch"], epoch1["rng"]["torch"], "rng")
    rows = _rows(out)
    assert [(r["epoch"], r["status"]) for r in rows] == [("1", ""), ("2", "diverged")]
    assert rows[1]["train_loss"] == "nan" and rows[1]["test_top1"] == "" and rows[1]["steps"] == "3"
    assert not (out / "checkpoints" / "step.pt").exists()
    from rld.experiments.runs import RunRecord

    assert RunRecord.load(out).epochs_done == 1  # the tables read the finished epochs only


def test_a_signal_after_a_divergence_saves_no_position_and_says_so(tmp_path, tiny_cifar, fault, monkeypatch, capsys):
    """A weight set to NaN in step 1 of epoch 2, and SIGTERM at the same step: the position is not
    saved (a non-finite state), the stop line says so, and last.pt keeps epoch 1."""
    act = faults._act

    def nan_then_sigterm(action, run):
        act(action, run)
        act("sigterm", run)

    monkeypatch.setattr(faults, "_act", nan_then_sigterm)
    out = tmp_path / "run"
    fault("nan_after_step:4")
    code, err = _cli(capsys, "train", "demo/vanilla", *_tiny(tiny_cifar), "train.epochs=3", "--out", str(out))
    assert code == 143, err
    assert err == (
        "rld: stopped by SIGTERM in epoch 2 after step 1 of 3; a non-finite state was not saved (resumed, such a "
        f"run starts again from its last checkpoint); continue with: rld train --resume --out {out}"
    )
    assert not (out / "checkpoints" / "step.pt").exists()
    assert load_last(out)["epoch"] == 1


def test_a_diverging_setting_stops_the_run_unless_told_to_train_on(tmp_path, tiny_cifar, capsys):
    """train.lr=1000: the weights overflow in epoch 2 (the loss stays finite but huge)."""
    over = ["train", "demo/vanilla", *_tiny(tiny_cifar), "train.epochs=2", "train.lr=1000"]
    code, err = _cli(capsys, *over, "--out", str(tmp_path / "stop"))
    assert code == 3 and "training diverged in epoch 2: non-finite weights; last.pt keeps epoch 1" in err, err
    assert load_last(tmp_path / "stop")["epoch"] == 1
    assert main([*over, "train.stop_on_nonfinite=false", "--out", str(tmp_path / "on")]) == 0
    assert [r.get("status") for r in _rows(tmp_path / "on")] == [None, None]  # no status column
    assert load_last(tmp_path / "on")["epoch"] == 2


def test_a_diverged_run_of_a_sweep_stops_and_the_others_finish(tmp_path, tiny_cifar, capsys):
    out = tmp_path / "sweep"
    code, err = _cli(
        capsys, "sweep", "demo/vanilla", "train.lr=0.05,1000", *_tiny(tiny_cifar), "train.epochs=3", "--out", str(out)
    )
    assert code == 3
    assert err == "rld: error: 1 of 2 runs diverged (train.lr=1000,seed=0); the others finished"
    good, bad = out / "train.lr=0.05,seed=0", out / "train.lr=1000,seed=0"
    assert load_last(good)["epoch"] == 3 and load_last(bad)["epoch"] == 1
    assert [r["status"] for r in _rows(bad)] == ["", "diverged"]
    summary = {r["run"]: r for r in csv.DictReader(open(out / "sweep.csv"))}
    assert (summary[good.name]["status"], summary[bad.name]["status"]) == ("", "diverged")
    assert summary[bad.name]["diverged_epoch"] == "2"


# ----------------------------------------------------------------------------- preemption


@pytest.fixture(scope="module")
def rld_reference(tmp_path_factory, teacher_ckpt) -> tuple[list[str], Path]:
    """demo/rld on 128 CIFAR-format images (3 steps per epoch), 2 epochs, never stopped: its overrides and folder."""
    root = tmp_path_factory.mktemp("reference")
    data = write_tiny_cifar(root / "tiny.npz")
    over = [*_tiny(data), "train.epochs=2", f"model.teacher_checkpoint={teacher_ckpt}"]
    train(resolve("demo/rld", over), root / "ref")
    return over, root / "ref"


@pytest.mark.parametrize("static_step", ["off", "on"])
@pytest.mark.parametrize("sig", ["sigterm", "sigint"])
def test_a_signal_mid_epoch_saves_the_position_and_resume_ends_bit_identical(
    tmp_path, rld_reference, fault, steps_taken, capsys, sig, static_step
):
    """RLD (a teacher, a warm-up that reads the epoch), 3 steps per epoch: the signal comes after step
    5 (epoch 2, step 2). The run saves step.pt there and exits 143 / 130; --resume trains the one
    step left and ends with the uninterrupted run's metrics and every tensor of its last.pt (plain
    loop and static step: the reference is the plain loop, which the static step equals exactly)."""
    over, ref = rld_reference
    out = tmp_path / "run"
    args = ["train", "demo/rld", *over, f"train.static_step={static_step}", "--out", str(out), "--resume"]
    handlers = {n: signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGINT)}  # SIGINT: SIG_IGN in a background job
    fault(f"{sig}_after_step:5")
    code, err = _cli(capsys, *args)
    assert code == {"sigterm": 143, "sigint": 130}[sig], err
    name = {"sigterm": "SIGTERM", "sigint": "SIGINT"}[sig]
    assert err == (
        f"rld: stopped by {name} in epoch 2 after step 2 of 3; its position is saved in "
        f"{out}/checkpoints/step.pt; continue with: rld train --resume --out {out}"
    )
    assert {n: signal.getsignal(n) for n in handlers} == handlers  # the handlers found are given back
    saved = torch.load(out / "checkpoints" / "step.pt", weights_only=True)
    assert (saved["epoch"], saved["position"]["epoch"], saved["position"]["step"]) == (1, 2, 2)
    assert load_last(out)["epoch"] == 1 and [r["epoch"] for r in metric_rows(out / "metrics.csv")] == ["1"]

    fault(None)
    steps_taken[0] = 0
    assert main(args) == 0
    assert steps_taken[0] == 1  # only the step left
    assert not (out / "checkpoints" / "step.pt").exists()
    assert metric_rows(out / "metrics.csv") == metric_rows(ref / "metrics.csv")
    assert_same_run_state(load_last(ref), load_last(out), ignore_config=("train.static_step",))
    best = [torch.load(r / "checkpoints" / "best.pt", weights_only=True) for r in (ref, out)]
    assert_same_tensors(best[0]["model"], best[1]["model"], "best.model")


def test_periodic_mid_epoch_checkpoints_resume_exactly_after_a_crash(
    tmp_path, tiny_cifar, fault, steps_taken, monkeypatch
):
    """train.checkpoint_every_steps=2: step.pt after step 2 of each epoch (3 steps). A crash inside
    step 6 (the last of epoch 2, before its end) leaves step.pt at epoch 2 step 2; the resume trains
    step 3 of epoch 2 and epoch 3, and ends exactly as a run never stopped."""
    over = [*_tiny(tiny_cifar), "train.epochs=3", "train.checkpoint_every_steps=2"]
    train(resolve("demo/vanilla", over), tmp_path / "ref")
    assert not (tmp_path / "ref" / "checkpoints" / "step.pt").exists()  # removed at each epoch's end

    class Crash(BaseException):
        pass

    def crash(status):
        raise Crash(status)

    monkeypatch.setattr(faults.os, "_exit", crash)  # the process "ends" at the fault point, writing nothing
    out = tmp_path / "run"
    fault("after_step:6")
    with pytest.raises(Crash):
        train(resolve("demo/vanilla", over), out)
    saved = torch.load(out / "checkpoints" / "step.pt", weights_only=True)
    assert (saved["position"]["epoch"], saved["position"]["step"], load_last(out)["epoch"]) == (2, 2, 1)
    fault(None)
    steps_taken[0] = 0
    train(resolve("demo/vanilla", over), out, resume=True)
    assert steps_taken[0] == 1 + 3
    assert metric_rows(out / "metrics.csv") == metric_rows(tmp_path / "ref" / "metrics.csv")
    assert_same_run_state(load_last(tmp_path / "ref"), load_last(out))


def test_a_resume_inside_an_epoch_restores_the_generator_crds_negatives_draw_from(
    tmp_path, teacher_ckpt, fault, monkeypatch
):
    """CRD draws its negatives from torch's global generator in every step. A crash inside epoch 2
    (step.pt after its step 2) and a resume end bit for bit as the run never stopped; the same resume
    without the saved generator state does not: the exactness rests on the restored state, which a
    method that draws nothing could not show."""
    import shutil

    from rld.engine import checkpoint

    over = [
        "data.image_size=16",
        "data.train_per_class=10",  # 100 images at batch 32: 4 steps per epoch
        "train.batch_size=32",
        "train.epochs=2",
        "train.checkpoint_every_steps=2",
        f"model.teacher_checkpoint={teacher_ckpt}",
    ]
    train(resolve("demo/crd", over), tmp_path / "ref")

    class Crash(BaseException):
        pass

    def crash(status):
        raise Crash(status)

    monkeypatch.setattr(faults.os, "_exit", crash)
    out = tmp_path / "run"
    fault("after_step:7")  # epoch 2, step 3: step.pt holds epoch 2 after step 2
    with pytest.raises(Crash):
        train(resolve("demo/crd", over), out)
    saved = torch.load(out / "checkpoints" / "step.pt", weights_only=True)
    assert (saved["position"]["epoch"], saved["position"]["step"]) == (2, 2)
    fault(None)
    shutil.copytree(out, tmp_path / "forgot")
    train(resolve("demo/crd", over), out, resume=True)
    assert metric_rows(out / "metrics.csv") == metric_rows(tmp_path / "ref" / "metrics.csv")
    assert_same_run_state(load_last(tmp_path / "ref"), load_last(out))

    monkeypatch.setattr(checkpoint, "set_rng_state", lambda state: None)  # a resume that forgets it
    torch.manual_seed(12345)
    train(resolve("demo/crd", over), tmp_path / "forgot", resume=True)
    ref, forgot = load_last(tmp_path / "ref"), load_last(tmp_path / "forgot")
    with pytest.raises(AssertionError):
        assert_same_run_state(ref, forgot)
    # other negatives, other gradients: the weights differ, not only the saved generator state
    assert any(not torch.equal(ref["model"][k], forgot["model"][k]) for k in ref["model"])


def test_a_sweep_stopped_mid_epoch_resumes_every_run_exactly(tmp_path, tiny_cifar, fault, steps_taken, capsys):
    """Two runs in lockstep (3 steps per epoch each): SIGTERM during the group's 4th step (epoch 2,
    step 1) saves both runs' positions; the resumed sweep trains the 2 steps left of each and ends
    with the metrics and last.pt of a sweep never stopped."""
    grid = ["train.lr=0.05,0.1", *_tiny(tiny_cifar), "train.epochs=2"]
    assert main(["sweep", "demo/vanilla", *grid, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "sweep"
    fault("sigterm_after_step:7")  # the first run's 4th step
    code, err = _cli(capsys, "sweep", "demo/vanilla", *grid, "--out", str(out))
    assert code == 143, err
    assert "rld: stopped by SIGTERM in epoch 2 after step 1 of 3; the positions of its 2 runs are saved" in err
    names = ["train.lr=0.05,seed=0", "train.lr=0.1,seed=0"]
    for name in names:
        saved = torch.load(out / name / "checkpoints" / "step.pt", weights_only=True)
        assert (saved["position"]["epoch"], saved["position"]["step"]) == (2, 1)
    fault(None)
    steps_taken[0] = 0
    assert main(["sweep", "demo/vanilla", *grid, "--out", str(out), "--resume"]) == 0
    assert steps_taken[0] == 2 * 2
    for name in names:
        assert metric_rows(out / name / "metrics.csv") == metric_rows(tmp_path / "ref" / name / "metrics.csv")
        assert_same_run_state(load_last(tmp_path / "ref" / name), load_last(out / name))


def test_a_sweep_of_two_seeds_stacked_in_one_group_resumes_exactly(tmp_path, tiny_cifar, fault, monkeypatch, capsys):
    """Two seeds x two learning rates with batched students: one group, every step one stacked
    computation of the four students, each on its own seed's batch. SIGTERM in its 4th step (epoch 2,
    step 1) saves the four positions; the resumed sweep trains the 2 steps left of each and ends with
    the metrics and last.pt of the same sweep never stopped."""
    grid = ["train.lr=0.05,0.1", *_tiny(tiny_cifar), "train.epochs=2", "train.batch_students=on"]
    assert main(["sweep", "demo/vanilla", *grid, "--seeds", "0,1", "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "sweep"
    fault("sigterm_after_step:13")  # the first student's 4th step (the signal is read after the whole step)
    code, err = _cli(capsys, "sweep", "demo/vanilla", *grid, "--seeds", "0,1", "--out", str(out))
    assert code == 143, err
    assert "rld: stopped by SIGTERM in epoch 2 after step 1 of 3; the positions of its 4 runs are saved" in err
    names = [f"train.lr={lr},seed={s}" for s in (0, 1) for lr in (0.05, 0.1)]
    for name in names:
        saved = torch.load(out / name / "checkpoints" / "step.pt", weights_only=True)
        assert (saved["position"]["epoch"], saved["position"]["step"]) == (2, 1)
    fault(None)
    recorded = [0]  # student steps, stacked or not
    record = Run.record

    def counting(self, *args):
        recorded[0] += 1
        return record(self, *args)

    monkeypatch.setattr(Run, "record", counting)
    assert main(["sweep", "demo/vanilla", *grid, "--seeds", "0,1", "--out", str(out), "--resume"]) == 0
    assert recorded[0] == 4 * 2
    for name in names:
        assert metric_rows(out / name / "metrics.csv") == metric_rows(tmp_path / "ref" / name / "metrics.csv")
        assert_same_run_state(load_last(tmp_path / "ref" / name), load_last(out / name))


def test_skipping_batches_gives_the_rest_of_the_epoch_in_both_loaders(tiny_cifar):
    """The resumed position inside an epoch: the device loader and the DataLoader path (whose
    skipped images are never loaded) yield exactly the epoch's remaining batches."""
    from rld.data import build_data

    for pipeline in ("device", "pil"):
        data = build_data(
            "cifar100", str(tiny_cifar), batch_size=48, device="cpu", seed=0, num_workers=0, pipeline=pipeline
        )
        loader = data.train
        loader.set_epoch(4)
        torch.manual_seed(0)
        batches = iter(loader)
        next(batches)
        rng = torch.get_rng_state()  # what a checkpoint after the first step holds
        whole = list(batches)
        loader.set_epoch(4, start_batch=1)
        torch.set_rng_state(rng)
        rest = list(loader)
        assert [len(b.targets) for b in rest] == [48, 32], pipeline
        for a, b in zip(whole, rest):  # the same images, augmentation (views, PIL transforms) included
            assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images), pipeline
        loader.set_epoch(4)
        assert len(list(loader)) == 3  # the skip applies to one iteration only


# ----------------------------------------------------------------------------- one writer per run folder


def _waiting_holder(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "RLD_FAULT": "wait_after_step:4"}  # holds the folder mid-epoch 2, waiting
    return subprocess.Popen(
        [sys.executable, "-m", "rld.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _wait_for_holder(proc: subprocess.Popen) -> None:
    """Until the process says it waits at its fault point (it holds the run folder then)."""
    lines = []
    for line in proc.stderr:
        if line.startswith("RLD_FAULT: waiting"):
            return
        lines.append(line)
    raise AssertionError(f"the first process ended before its fault point: {proc.wait()} {''.join(lines)[-2000:]}")


def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path, tiny_cifar, capsys):
    """Process A trains the run and holds its lock (waiting after step 4). A second `rld train` on the
    folder is refused — one line naming A, the folder untouched. A is killed with SIGKILL: the kernel
    releases its lock, the lock file still names it; the next `rld train --resume` takes the folder
    over and finishes the run exactly."""
    over = [*_tiny(tiny_cifar), "train.epochs=2"]
    train(resolve("demo/vanilla", over), tmp_path / "ref")
    out = tmp_path / "run"
    args = ["train", "demo/vanilla", *over, "--out", str(out), "--resume"]
    holder = _waiting_holder(args)
    try:
        _wait_for_holder(holder)
        assert f'"pid": {holder.pid}' in (out / "rld.lock").read_text()
        before = folder_snapshot(out)
        code, err = _cli(capsys, *args)
        assert_user_error(code, err, f"{out} is being trained by another process (pid {holder.pid} on host ")
        assert f"on host {socket.gethostname()}, since 20" in err and "(its run continues with --resume)" in err
        assert folder_snapshot(out) == before
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=60) == -signal.SIGKILL
    finally:
        holder.kill()
        holder.wait()
    assert f'"pid": {holder.pid}' in (out / "rld.lock").read_text()  # stale: its holder is gone
    assert main(args) == 0
    assert f'"pid": {os.getpid()}' in (out / "rld.lock").read_text()
    assert metric_rows(out / "metrics.csv") == metric_rows(tmp_path / "ref" / "metrics.csv")
    assert_same_run_state(load_last(tmp_path / "ref"), load_last(out))


def test_a_sweep_locks_every_run_folder_before_it_starts(tmp_path, tiny_cifar, capsys):
    """A run folder of the grid held by another process: the sweep is refused and writes nothing."""
    from rld.engine import lock

    out = tmp_path / "sweep"
    taken, free = out / "train.lr=0.1,seed=0", out / "train.lr=0.05,seed=0"
    taken.mkdir(parents=True)
    free.mkdir()
    (free / "rld.lock").write_text('{"host": "h", "pid": 1, "since": "2025-01-01 00:00:00 UTC"}\n')  # its last holder
    held = lock.RunLock(taken)
    held.acquire()  # another holder (a lock of its own: flock locks belong to the open file)
    try:
        before = folder_snapshot(out)
        code, err = _cli(capsys, "sweep", "demo/vanilla", "train.lr=0.05,0.1", *_tiny(tiny_cifar), "--out", str(out))
        assert_user_error(code, err, f"{taken} is being trained by another process (pid {os.getpid()} on host ")
        assert folder_snapshot(out) == before  # the first run's folder, locked first, is as it was
        from rld.errors import RunFolderLocked

        with pytest.raises(RunFolderLocked) as refused:  # what a launcher of many runs can catch
            lock.RunLock(taken).acquire()
        assert refused.value.holder.startswith(f"pid {os.getpid()} on host {socket.gethostname()}, since ")
    finally:
        held.release()


def test_a_lock_given_back_unused_leaves_the_folder_exactly_as_it_was(tmp_path):
    """undo() after acquire: the lock file's bytes and times, and the times of the folder that held
    it (or of the first folder that existed), are as before; nothing created stays."""
    from rld.engine import lock

    old = tmp_path / "old"  # a run folder whose lock file names its last holder
    old.mkdir()
    (old / "rld.lock").write_text('{"host": "h", "pid": 1, "since": "2025-01-01 00:00:00 UTC"}\n')
    (old / "metrics.csv").write_text("epoch\n1\n")
    plain = tmp_path / "plain"  # a folder without a lock file
    plain.mkdir()
    (plain / "notes.txt").write_text("x")
    os.utime(old / "rld.lock", ns=(10**18, 10**18))  # times a rewrite could not keep by chance
    for folder in (old, plain, tmp_path):
        os.utime(folder, ns=(10**18, 10**18))
    for out in (old, plain, tmp_path / "new" / "run"):
        before = folder_snapshot(tmp_path)
        held = lock.RunLock(out)
        held.acquire()
        assert f'"pid": {os.getpid()}' in (out / "rld.lock").read_text()  # held: it names this process
        held.undo()
        assert folder_snapshot(tmp_path) == before, out


def test_a_refused_sweep_trains_no_run_of_its_grid(tmp_path, tiny_cifar, capsys, steps_taken):
    """The last run of the grid cannot start (a run there already, or one of another configuration
    with --resume): the sweep is refused before any run trains, the folder of the grid untouched."""
    out = tmp_path / "sweep"
    over = [*_tiny(tiny_cifar), "train.epochs=1"]
    last = out / "train.lr=0.1,seed=0"
    train(resolve("demo/vanilla", [*over, "train.lr=0.1", "train.weight_decay=0.001"]), last)
    steps_taken[0] = 0
    argv = ["sweep", "demo/vanilla", "train.lr=0.05,0.1", *over, "--out", str(out)]
    for extra, message in (
        ([], f"{last} already holds a run; add --resume"),
        (["--resume"], "trained with another configuration (differs in train.weight_decay)"),
    ):
        before = folder_snapshot(out)
        assert_user_error(*_cli(capsys, *argv, *extra), message)
        assert folder_snapshot(out) == before and steps_taken[0] == 0, extra
    assert sorted(p.name for p in out.iterdir()) == [last.name]  # the first run's folder was never made


def test_the_lock_dies_with_its_holder_not_with_the_children_it_forked(tmp_path):
    """A forked child shares its parent's open lock file (and so its flock): it closes its copy at
    once, without unlocking. The parent keeps its lock while such a child lives and after it ends; a
    holder that dies abruptly leaves its folder free at once, although a child it forked lives on."""
    from rld.engine import lock
    from rld.errors import RunFolderLocked

    kept = lock.RunLock(tmp_path / "kept")
    kept.acquire()
    try:
        child = os.fork()
        if child == 0:
            os._exit(0 if kept.fd is None else 1)  # its copy is closed
        assert os.waitpid(child, 0)[1] == 0
        with pytest.raises(RunFolderLocked):
            lock.RunLock(tmp_path / "kept").acquire()
    finally:
        kept.release()

    out = tmp_path / "run"
    read_end, write_end = os.pipe()
    holder = os.fork()
    if holder == 0:  # takes the lock, forks a child that outlives it, dies as after SIGKILL
        status = 1
        try:
            lock.hold(out)
            if os.fork() == 0:
                os.close(write_end)
                os.read(read_end, 1)  # lives until the test closes the pipe
                os._exit(0)
            status = 0
        finally:
            os._exit(status)
    os.close(read_end)
    try:
        assert os.waitpid(holder, 0)[1] == 0
        assert f'"pid": {holder}' in (out / "rld.lock").read_text()
        taken = lock.RunLock(out)
        taken.acquire()  # its child still lives (blocked on the pipe)
        taken.release()
    finally:
        os.close(write_end)  # the child ends


def _image_folder(root: Path) -> Path:
    """Two classes of six 16x16 PNG images (random pixels)."""
    return write_class_folders(root, ("cat", "dog"), 16)


def _processes_with(text: str) -> list[int]:
    """The pids of the live processes (other than this one) whose command line holds ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads the processes from /proc")
def test_a_run_killed_while_its_data_loader_workers_live_resumes_at_once(tmp_path, capsys):
    """A run that reads an image folder through 2 DataLoader worker processes (forked, not exec'd)
    dies abruptly in epoch 2 (os._exit, as after SIGKILL). Its workers live on for a few seconds,
    until they notice that their parent is gone; they must not hold the run folder's lock (a child
    shares its parent's flock), so `--resume` started at once is accepted and finishes the run."""
    data = _image_folder(tmp_path / "pets")
    out = tmp_path / "run"
    over = [
        "data.name=imagefolder",
        f"data.path={data}",
        "data.val_fraction=0.34",  # 7 training images: 2 steps per epoch at batch 4
        "data.image_size=16",
        "data.num_workers=2",
        "data.eval_batch_size=8",
        "train.batch_size=4",
        "train.epochs=2",
    ]
    args = ["train", "demo/vanilla", *over, "--out", str(out), "--resume"]
    with rld_processes(tmp_path, {"killed": (args, "after_step:3")}) as procs:
        proc, _ = procs["killed"]
        assert proc.wait(timeout=300) == faults.FAULT_EXIT_STATUS, (tmp_path / "killed.log").read_text()[-2000:]
        workers = _processes_with(str(out))
        code, err = _cli(capsys, *args)  # at once, while the workers may still live
    assert workers, "the killed run's DataLoader workers were gone before the resume (nothing was tested)"
    assert code == 0, err
    assert f'"pid": {os.getpid()}' in (out / "rld.lock").read_text()
    assert load_last(out)["epoch"] == 2
    assert [r["epoch"] for r in metric_rows(out / "metrics.csv")] == ["1", "2"]


# ----------------------------------------------------------------------------- a full disk


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, tiny_cifar, fault, capsys):
    """The second write of last.pt (epoch 2's) fails with ENOSPC: status 2, one line saying what
    failed and where; last.pt still loads and holds epoch 1; no temporary file is left behind."""
    over = [*_tiny(tiny_cifar), "train.epochs=3"]
    out = tmp_path / "run"
    fault("enospc_before_rename:2")
    code, err = _cli(capsys, "train", "demo/vanilla", *over, "--out", str(out))
    last = out / "checkpoints" / "last.pt"
    assert_user_error(code, err, f"cannot write {last}: No space left on device; the previous last.pt is intact")
    assert "continue with --resume" in err
    from rld.engine.checkpoint import load_run

    assert load_run(last)["epoch"] == 1
    assert [r["epoch"] for r in metric_rows(out / "metrics.csv")] == ["1"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    train(resolve("demo/vanilla", [*_tiny(tiny_cifar), "train.epochs=1"]), tmp_path / "epoch1")
    assert_same_tensors(load_last(out)["model"], load_last(tmp_path / "epoch1")["model"])


# ----------------------------------------------------------------------------- a corrupt teacher-logit cache


def _cache(tmp_path: Path):
    from rld.data import ArraySplit, DeviceLoader
    from rld.engine.teacher import TeacherForward
    from rld.models import create_model

    rng = np.random.default_rng(0)
    split = ArraySplit(rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8), np.arange(3, dtype=np.int64))
    loader = DeviceLoader(split, 4, device="cpu", mean=(0.5,) * 3, std=(0.25,) * 3, train=True, flip=True)
    torch.manual_seed(7)
    forward = TeacherForward(create_model("resnet8", num_classes=10).eval().requires_grad_(False), amp=False)
    cache = ["train.teacher_cache=full", f"train.cache_dir={tmp_path}", "train.cache_precision=float32"]
    cfg = resolve("demo/rld", cache)
    return cfg, forward, loader


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_corrupt_teacher_logit_cache_is_never_used(tmp_path, monkeypatch):
    """A complete float32 cache of 3 images, one image per checksummed chunk. A flipped byte in image
    2's logits: full mode (which checks every chunk when it opens) refuses it; lazy mode opens it and
    serves images 0 and 1, but refuses image 2 before returning anything. A truncated logits.npy and a
    damaged index are refused when the cache opens. Each message says how to rebuild."""
    from rld.data import Batch
    from rld.errors import UserError
    from rld.fast import cache

    monkeypatch.setattr(cache, "CHUNK_BYTES", 162 * 10 * 4)  # one image per chunk
    cfg, forward, loader = _cache(tmp_path)
    folder = cache.open_teacher_cache(cfg, forward, loader, 10).store.folder
    logits, index = folder / "logits.npy", folder / "index.npz"
    good = logits.read_bytes()
    _flip(logits, len(good) - 4 * 10 * 3)  # image 2, view 159

    def refused(match: str, mode: str = "full"):
        run_cfg = resolve(
            "demo/rld", [f"train.teacher_cache={mode}", f"train.cache_dir={tmp_path}", "train.cache_precision=float32"]
        )
        with pytest.raises(UserError, match=match) as err:
            cache.open_teacher_cache(run_cfg, forward, loader, 10)
        assert f"it is not used. Delete the folder (rm -r '{folder}') and rebuild it with `rld cache" in str(err.value)

    refused(r"is corrupt \(the logits of images 2-2 do not match their checksum\)")
    lazy_cfg = resolve(
        "demo/rld", ["train.teacher_cache=lazy", f"train.cache_dir={tmp_path}", "train.cache_precision=float32"]
    )
    lazy = cache.open_teacher_cache(lazy_cfg, forward, loader, 10)

    def lookup(image: int) -> torch.Tensor:
        idx, views = torch.tensor([image, image]), torch.tensor([3, 159])
        return lazy(Batch(loader.render_views(idx, views), None, idx, views))

    for image in (0, 1):
        idx, views = torch.tensor([image, image]), torch.tensor([3, 159])
        assert torch.equal(lookup(image), forward(Batch(loader.render_views(idx, views), None, idx, views)))
    with pytest.raises(UserError, match=r"the logits of images 2-2 do not match their checksum"):
        lookup(2)
    assert lazy.computed == 0  # nothing was recomputed over the damage either
    logits.write_bytes(good[:-100])
    refused(r"logits.npy is truncated: [\d,]+ of [\d,]+ bytes", "lazy")
    logits.write_bytes(good)
    intact = index.read_bytes()
    _flip(index, len(intact) // 2)
    refused(r"index.npz is unreadable", "lazy")
    index.write_bytes(intact)
    assert cache.open_teacher_cache(cfg, forward, loader, 10).store.folder == folder  # repaired: used again


def test_a_cache_whose_small_files_were_damaged_is_refused(tmp_path):
    """meta.json holding a list, index.npz with checksums of another kind, a logits.npy header that
    numpy's parser chokes on: each refused as corrupt (tracebacks before), the folder untouched."""
    import warnings

    from rld.errors import UserError
    from rld.fast import cache

    cfg, forward, loader = _cache(tmp_path)
    folder = cache.open_teacher_cache(cfg, forward, loader, 10).store.folder
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    meta, index, logits = folder / "meta.json", folder / "index.npz", folder / "logits.npy"
    with np.load(index) as saved:
        filled, crcs = saved["filled"], saved["crc32"]
    header_end = files["logits.npy"].index(b"}")
    damages = [
        (meta, b"[" + files["meta.json"] + b"]", "meta.json does not describe a cache"),
        (index, None, "index.npz holds no CRC-32 checksums"),
        (logits, files["logits.npy"][:header_end] + b"(" + files["logits.npy"][header_end + 1 :], "has no readable"),
    ]
    for path, data, match in damages:
        if data is None:
            with open(path, "wb") as f:
                np.savez(f, filled=filled, crc32=np.full(crcs.shape, np.nan))
        else:
            path.write_bytes(data)
        damaged = {p.name: p.read_bytes() for p in folder.iterdir()}
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # (a NaN cast to uint32 warned before)
            with pytest.raises(UserError, match=match):
                cache.open_teacher_cache(cfg, forward, loader, 10)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == damaged
        path.write_bytes(files[path.name])


def test_training_refuses_a_corrupt_cache_with_one_line(capsys, tmp_path, teacher_ckpt):
    """`rld cache`, then a flipped byte: `rld train … train.teacher_cache=full` (and `rld cache`
    itself) stop with status 2 and the rebuild hint, writing no run folder."""
    data = write_two_image_cifar(tmp_path / "two.npz")
    common = ["data.name=cifar100", f"data.path={data}", "--teacher", str(teacher_ckpt)]
    assert main(["cache", "demo/rld", *common, "--cache-dir", str(tmp_path / "cache")]) == 0
    (folder,) = (tmp_path / "cache").iterdir()
    _flip(folder / "logits.npy", (folder / "logits.npy").stat().st_size - 7)
    capsys.readouterr()
    out = tmp_path / "run"
    args = ["train", "demo/rld", *common, "train.teacher_cache=full", f"train.cache_dir={tmp_path / 'cache'}"]
    code, err = _cli(capsys, *args, "--epochs", "1", "train.batch_size=2", "--out", str(out))
    assert_user_error(code, err, f"the teacher-logit cache {folder} is corrupt (the logits of images 0-1 do not match")
    assert "rebuild it with `rld cache" in err and not out.exists()
    code, err = _cli(capsys, "cache", "demo/rld", *common, "--cache-dir", str(tmp_path / "cache"))
    assert_user_error(code, err, "do not match their checksum")
