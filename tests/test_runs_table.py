"""``rld runs``: the status of real runs (finished, interrupted by SIGTERM, diverged, failed, held by
another process), the differing keys, --where, --group-by (mean ± std), --sort, --json and --csv."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import assert_user_error, folder_snapshot, write_tiny_cifar
from rld.cli import main
from rld.engine import faults, lock

SEEDS = (0, 1, 2)


def _train(out: Path, over: list[str], fault: str | None) -> int:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(faults, "_spec", faults._parse(fault))
        mp.setattr(faults, "_counts", dict.fromkeys(faults.POINTS, 0))
        return main(["train", "demo/vanilla", *over, "--out", str(out)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Below ``root/runs``: ``ok/seed{0,1,2}`` finished (2 epochs of 3 steps); ``stopped`` (train.lr=0.1)
    stopped by SIGTERM after step 4 (epoch 2, step 1); ``nan`` diverged in epoch 2; ``crash`` failed in
    its first step; ``held``: a copy of ``ok/seed0``, locked by the tests that need it."""
    root = tmp_path_factory.mktemp("runs")
    data = write_tiny_cifar(root / "tiny.npz")
    over = ["data.name=cifar100", f"data.path={data}", "train.batch_size=48", "train.epochs=2"]
    top = root / "runs"
    for seed in SEEDS:
        assert _train(top / "ok" / f"seed{seed}", [*over, f"seed={seed}"], None) == 0
    assert _train(top / "stopped", [*over, "train.lr=0.1"], "sigterm_after_step:4") == 143
    assert _train(top / "nan", over, "nan_after_step:4") == 3
    assert _train(top / "crash", over, "error_after_step:1") == 1  # a bug's status: traceback and report line
    shutil.copytree(top / "ok" / "seed0", top / "held")
    (top / "held" / "rld.lock").unlink()
    return top


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["runs", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


def _json(capsys, *argv: str) -> list[dict]:
    code, out, err = _cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


class _Holder:
    """Another process holding a run folder's lock (``rld train`` does so while it trains)."""

    def __init__(self, out: Path):
        self.out = out

    def __enter__(self) -> int:
        ready, self.release = os.pipe()
        wait, self.taken = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            status = 1
            try:
                os.close(self.release)
                lock.hold(self.out)
                os.write(self.taken, b"x")
                os.read(ready, 1)  # until the test closes the pipe
                status = 0
            finally:
                os._exit(status)
        os.close(ready)
        assert os.read(wait, 1) == b"x"
        os.close(wait)
        return self.pid

    def __exit__(self, *exc) -> None:
        os.close(self.release)
        assert os.waitpid(self.pid, 0)[1] == 0


def test_each_run_gets_its_status_from_its_folder(runs, capsys):
    """finished: 2/2 epochs; interrupted by SIGTERM: epoch 1 saved and a step.pt, with the resume
    command; diverged in epoch 2; failed: no checkpoint at all; running: its lock held by another
    process, named in the table. The top-1 values are metrics.csv's."""
    with _Holder(runs / "held") as pid:
        rows = {Path(r["run"]).relative_to(runs).as_posix(): r for r in _json(capsys, str(runs))}
        code, text, _ = _cli(capsys, str(runs))
    assert code == 0
    status = {name: (r["status"], r["epochs_done"], r["epochs_planned"]) for name, r in rows.items()}
    assert status == {
        "crash": ("failed", 0, 2),
        "held": ("running", 2, 2),
        "nan": ("diverged", 1, 2),
        "ok/seed0": ("finished", 2, 2),
        "ok/seed1": ("finished", 2, 2),
        "ok/seed2": ("finished", 2, 2),
        "stopped": ("interrupted", 1, 2),
    }
    assert (runs / "stopped" / "checkpoints" / "step.pt").is_file()
    assert rows["stopped"]["resume"] == f"rld train --resume --out {runs / 'stopped'}"
    assert rows["crash"]["resume"] == f"rld train --resume --out {runs / 'crash'}"
    assert rows["nan"]["diverged_epoch"] == 2 and rows["nan"]["resume"] is None
    holder = rows["held"]["holder"]
    assert holder.startswith(f"pid {pid} on host {socket.gethostname()}, since ")
    assert [r["holder"] for n, r in rows.items() if n != "held"] == [None] * 6
    assert [rows[n]["resume"] for n in ("ok/seed0", "held")] == [None, None]

    for name in ("ok/seed1", "stopped", "nan"):
        finished = [m for m in _metrics(runs / name) if m.get("status") != "diverged"]
        tops = [float(m["test_top1"]) for m in finished]
        assert rows[name]["last_top1"] == tops[-1] and rows[name]["best_top1"] == max(tops)
        assert rows[name]["best_epoch"] == int(finished[tops.index(max(tops))]["epoch"])
        times = sum(float(m["epoch_time"]) for m in _metrics(runs / name))
        assert rows[name]["wall_time_s"] == pytest.approx(times, abs=1e-3)
    assert rows["crash"]["best_top1"] is None and rows["crash"]["wall_time_s"] == 0

    line = {ln.split()[0]: ln for ln in text.splitlines()}
    assert line[str(runs / "stopped")].endswith(f"interrupted  rld train --resume --out {runs / 'stopped'}")
    assert line[str(runs / "held")].endswith(f"running      by {holder}")
    assert line[str(runs / "nan")].endswith("diverged     in epoch 2")
    # the lock is free again once its holder is gone; the probe created no lock file
    assert _json(capsys, str(runs / "held"))[0]["status"] == "finished"


def test_the_columns_name_the_keys_that_differ(runs, capsys):
    """Only train.lr differs between the listed runs (seed, paths and epochs have their own columns);
    within the lr=0.05 runs nothing does."""
    code, text, _ = _cli(capsys, str(runs))
    header = text.splitlines()[0].split()
    assert header == ["run", "model", "method", "train.lr", "seed", "epochs", "best", "last", "time", "status"]
    rows = {Path(r["run"]).name: r for r in _json(capsys, str(runs))}
    assert rows["stopped"]["differs"] == {"train.lr": 0.1} and rows["seed1"]["differs"] == {"train.lr": 0.05}
    assert (rows["seed1"]["model"], rows["seed1"]["method"], rows["seed1"]["seed"]) == ("resnet8", "vanilla", 1)
    same = _json(capsys, str(runs / "ok"), str(runs / "nan"))
    assert [r["differs"] for r in same] == [{}] * 4
    lines = _cli(capsys, str(runs / "ok"))[1].splitlines()
    assert lines[0].split() == ["run", "model", "method", "seed", "epochs", "best", "last", "time", "status"]
    assert len(lines) == 4


def test_group_by_gives_mean_and_std_over_the_finished_runs(runs, capsys):
    """--group-by train.lr: the finished lr=0.05 runs give mean ± sample std of their best and last
    top-1 (the diverged and failed runs of that group are counted, not averaged)."""
    groups = {g["group"]["train.lr"]: g for g in _json(capsys, str(runs), "--group-by", "train.lr")}
    assert set(groups) == {0.05, 0.1}
    best, last = [], []
    for seed in SEEDS:
        tops = [float(m["test_top1"]) for m in _metrics(runs / "ok" / f"seed{seed}")]
        best.append(max(tops))
        last.append(tops[-1])
    g = groups[0.05]  # held, a copy of seed0 not held now, counts as a finished run
    assert (g["runs"], g["finished"], g["seeds"]) == (6, 4, [0, 1, 2])
    assert g["statuses"] == {"finished": 4, "diverged": 1, "failed": 1}
    assert g["best_top1_mean"] == pytest.approx(statistics.mean(best + [best[0]]))
    assert g["best_top1_std"] == pytest.approx(statistics.stdev(best + [best[0]]))
    assert g["last_top1_mean"] == pytest.approx(statistics.mean(last + [last[0]]))
    assert g["last_top1_std"] == pytest.approx(statistics.stdev(last + [last[0]]))
    assert groups[0.1]["best_top1_mean"] is None and groups[0.1]["statuses"] == {"interrupted": 1}

    g = _json(capsys, str(runs / "ok"), "--group-by", "method")[0]
    assert (g["group"], g["runs"], g["finished"]) == ({"method": "vanilla"}, 3, 3)
    assert (g["best_top1_mean"], g["best_top1_std"]) == (
        pytest.approx(statistics.mean(best)),
        pytest.approx(statistics.stdev(best)),
    )
    code, text, _ = _cli(capsys, str(runs / "ok"), "--group-by", "method")
    assert text.splitlines()[1].split()[:3] == ["vanilla", "3", "3"]
    assert f"{statistics.mean(best):.2f} ± {statistics.stdev(best):.2f} (n=3)" in text


def test_where_sort_and_csv(runs, capsys):
    """--where on a column or a configuration key (repeated: all hold); --sort, descending with
    ``=-KEY``; --csv with a column per differing key. The differing keys are those of the runs listed."""
    assert [Path(r["run"]).name for r in _json(capsys, str(runs), "--where", "status=interrupted")] == ["stopped"]
    assert [Path(r["run"]).name for r in _json(capsys, str(runs), "--where", "train.lr=0.1")] == ["stopped"]
    picked = _json(capsys, str(runs), "--where", "seed=1", "--where", "status=finished")
    assert [Path(r["run"]).name for r in picked] == ["seed1"]
    ordered = _json(capsys, str(runs / "ok"), "--sort=-last_top1")
    assert [r["last_top1"] for r in ordered] == sorted((r["last_top1"] for r in ordered), reverse=True)
    assert [r["seed"] for r in _json(capsys, str(runs / "ok"), "--sort", "seed")] == [0, 1, 2]

    code, text, _ = _cli(capsys, str(runs), "--csv")
    rows = {Path(r["run"]).name: r for r in csv.DictReader(io.StringIO(text))}
    row = rows["stopped"]
    assert (row["run"], row["train.lr"], row["status"], row["epochs_done"], row["holder"]) == (
        str(runs / "stopped"),
        "0.1",
        "interrupted",
        "1",
        "",
    )
    assert rows["seed2"]["train.lr"] == "0.05" and rows["nan"]["diverged_epoch"] == "2"
    assert "train.lr" not in _cli(capsys, str(runs), "--csv", "--where", "status=interrupted")[1].splitlines()[0]


def test_missing_folders_unknown_keys_and_empty_results_are_one_line(runs, tmp_path, capsys):
    code, _, err = _cli(capsys, str(tmp_path / "nowhere"))
    assert_user_error(code, err, f"{tmp_path / 'nowhere'} is not a folder")
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    code, _, err = _cli(capsys, str(tmp_path / "empty"))
    assert_user_error(code, err, f"found no runs (folders with config.yaml) under {tmp_path / 'empty'}")
    code, _, err = _cli(capsys, str(runs), "--where", "train.nosuch=1")
    assert_user_error(code, err, "--where train.nosuch: no such column or configuration key")
    code, _, err = _cli(capsys, str(runs), "--where", "status=bogus")
    assert_user_error(code, err, "no run matches --where status=bogus (7 runs found)")
    code, _, err = _cli(capsys, str(runs), "--where", "status")
    assert_user_error(code, err, "--where takes KEY=VALUE")


def test_the_probe_reads_only_and_never_refuses_a_run(tmp_path):
    """lock.holder creates no file, sees a lock of this process too, and a RunLock taken while a probe
    holds its instant of shared lock waits that instant out instead of refusing the run."""
    out = tmp_path / "run"
    out.mkdir()
    before = folder_snapshot(out)
    assert lock.holder(out) is None and folder_snapshot(out) == before and list(before) == ["."]
    held = lock.RunLock(out)
    held.acquire()
    try:
        assert lock.holder(out).startswith(f"pid {os.getpid()} on host ")
    finally:
        held.release()
    (out / "config.yaml").write_text("seed: 0\n")  # a folder in use: its lock file stays
    held.acquire()
    held.release()
    assert lock.holder(out) is None

    import fcntl

    fd = os.open(out / lock.LOCK_FILE, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a probe, caught in its instant
    timer = threading.Timer(0.01, os.close, [fd])
    timer.start()
    taken = lock.RunLock(out)
    taken.acquire()
    assert taken.fd is not None and lock.holder(out).startswith(f"pid {os.getpid()} on host ")
    taken.release()
    timer.join()


def test_the_report_says_each_unfinished_runs_status(runs):
    from rld.experiments.report import run_row
    from rld.experiments.runs import RunRecord

    epochs = {name: run_row(RunRecord.load(runs / name), runs).epochs for name in ("stopped", "nan", "ok/seed0")}
    assert epochs == {"stopped": "1/2 (interrupted)", "nan": "1/2 (diverged)", "ok/seed0": "2/2"}
    with _Holder(runs / "held"):
        assert run_row(RunRecord.load(runs / "held"), runs).epochs == "2/2 (running)"


def test_run_folders_are_found_once_in_natural_order(tmp_path):
    """A folder with config.yaml and metrics.csv or checkpoints/ is a run (its checkpoints/ and tb/
    are not searched); seed2 comes before seed10; a folder given twice yields its runs once."""
    from rld.experiments.runs_table import find_run_folders

    for name in ("v/seed10", "v/seed2", "v/seed2/checkpoints/x"):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        (tmp_path / name / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.yaml").write_text("seed: 0\n")  # neither metrics.csv nor checkpoints/
    found = find_run_folders([tmp_path, tmp_path / "v"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["v/seed2", "v/seed10"]


def test_the_table_is_read_without_torch(runs):
    """Only small files are read: neither torch nor numpy is imported (thousands of folders take seconds)."""
    code = (
        f"import sys, rld.cli; rld.cli.main(['runs', {str(runs)!r}, '--json']); "
        "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.splitlines()[-1] == "[]" and len(json.loads(done.stdout)) == 7
