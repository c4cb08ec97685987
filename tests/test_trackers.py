"""Experiment trackers (rld.trackers): MLflow through its file store and W&B offline, read back through
MLflow's client API and W&B's offline run files and compared with metrics.csv; resume continues the
same tracked run; a sweep's runs share a group; a missing library is refused before anything is
written; a tracker that fails during training is one warning and training goes on."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import struct
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_user_error
from rld.config import resolve
from rld.engine import train
from rld.engine.sweep import sweep
from rld.errors import UserError
from rld.trackers import TRACKERS_FILE, Tracking

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")

FAST = [
    "train.batch_size=256",
    "data.eval_batch_size=512",
    "train.channels_last=false",
    "data.image_size=16",
    "train.static_step=off",
]
COLUMNS = ("train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "lr", "epoch_time", "train_time")


def _cfg(epochs: int, loggers: str, *extra: str):
    return resolve("demo/vanilla", [*FAST, f"train.epochs={epochs}", f"train.loggers={loggers}", *extra])


def _csv(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _ids(run: Path) -> dict:
    return json.loads((run / TRACKERS_FILE).read_text())


@pytest.fixture()
def mlruns(tmp_path, monkeypatch) -> str:
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture()
def wandb_offline(monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)


def _mlflow_history(client, run_id: str) -> dict[str, dict[int, float]]:
    return {k: {m.step: m.value for m in client.get_metric_history(run_id, k)} for k in COLUMNS}


def test_mlflow_file_store_logs_params_epochs_summary_and_resume_continues_the_run(tmp_path, mlruns):
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    train(_cfg(2, "[mlflow]"), run, tracking=Tracking(preset="demo/vanilla"))
    run_id = _ids(run)["mlflow"]["run_id"]
    client = MlflowClient(tracking_uri=mlruns)
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED"
    assert client.get_experiment(logged.info.experiment_id).name == "demo"  # the preset's family
    params = logged.data.params
    assert params["train.epochs"] == "2" and params["method.name"] == "vanilla" and params["seed"] == "0"
    assert params["data.image_size"] == "16" and params["model.teacher"] == "null"
    assert params["train.loggers"] == "['mlflow']"
    tags = logged.data.tags
    assert [tags[k] for k in ("preset", "method", "student", "seed")] == ["demo/vanilla", "vanilla", "resnet8", "0"]
    assert tags["run_folder"] == str(run.resolve()) and tags["device"] == "cpu" and "teacher" not in tags
    rows = _csv(run)
    history = _mlflow_history(client, run_id)
    for key in COLUMNS:  # metrics.csv keeps 6 significant digits
        assert list(history[key]) == [1, 2]
        assert [history[key][int(r["epoch"])] for r in rows] == pytest.approx([float(r[key]) for r in rows], rel=1e-5)
    best = max(rows, key=lambda r: float(r["test_top1"]))
    assert logged.data.metrics["best_top1"] == pytest.approx(float(best["test_top1"]), rel=1e-5)
    assert logged.data.metrics["best_epoch"] == float(best["epoch"])
    assert logged.data.metrics["last_top1"] == pytest.approx(float(rows[-1]["test_top1"]), rel=1e-5)

    # resumed with one more epoch: the same MLflow run gets epoch 3, no second run appears
    train(_cfg(3, "[mlflow]"), run, resume=True, tracking=Tracking(preset="demo/vanilla"))
    assert _ids(run)["mlflow"]["run_id"] == run_id
    assert len(client.search_runs([logged.info.experiment_id])) == 1
    resumed = client.get_run(run_id)
    assert resumed.info.status == "FINISHED"
    assert resumed.data.params["train.epochs"] == "2" and resumed.data.tags["resumed.train.epochs"] == "3"
    rows = _csv(run)
    history = _mlflow_history(client, run_id)
    for key in COLUMNS:
        assert list(history[key]) == [1, 2, 3]
        assert [history[key][e] for e in (1, 2, 3)] == pytest.approx([float(r[key]) for r in rows], rel=1e-5)
    assert resumed.data.metrics["last_top1"] == pytest.approx(float(rows[-1]["test_top1"]), rel=1e-5)


def test_a_run_tracked_from_its_resume_on_gets_the_epochs_trained_before(tmp_path, mlruns):
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    train(_cfg(1, "[]"), run)
    assert not (run / TRACKERS_FILE).exists()
    train(_cfg(2, "[mlflow]"), run, resume=True)
    history = _mlflow_history(MlflowClient(tracking_uri=mlruns), _ids(run)["mlflow"]["run_id"])
    rows = _csv(run)
    assert list(history["test_top1"]) == [1, 2]
    assert list(history["test_top1"].values()) == pytest.approx([float(r["test_top1"]) for r in rows], rel=1e-5)


def _wandb_records(run: Path) -> list[list]:
    """The records of each offline W&B run file under ``run/wandb`` (oldest first), once W&B's service
    has written them to the end (its ``exit`` record: ``run.finish()`` returns before)."""
    wandb.teardown()  # stop the service process, which flushes the files
    deadline = time.monotonic() + 30
    while True:
        files = [_read_wandb_file(path) for path in sorted(run.glob("wandb/offline-run-*/run-*.wandb"))]
        if all(_of(records, "exit") for records in files) or time.monotonic() > deadline:
            return files
        time.sleep(0.2)


def _read_wandb_file(path: Path) -> list:
    """W&B's record log: a 7-byte header, then 32 KiB blocks of chunks (crc32, length, type: 1 full,
    2 first, 3 middle, 4 last), each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if data[:4] != b":W&B":  # not written yet
        return []
    pos, block, records, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the rest of a block is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):  # still being written
            break
        if kind == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def _items(items) -> dict:
    """Key → value of a record's items (a key is ``key``, or the path ``nested_key``)."""
    return {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in items}


def _of(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def test_wandb_offline_logs_config_epochs_summary_and_resume_continues_the_run(tmp_path, wandb_offline):
    run = tmp_path / "run"
    train(_cfg(2, "[wandb]"), run, tracking=Tracking(preset="demo/vanilla", group="g"))
    run_id = _ids(run)["wandb"]["run_id"]
    train(_cfg(3, "[wandb]"), run, resume=True, tracking=Tracking(preset="demo/vanilla", group="g"))
    assert (_ids(run)["wandb"]["run_id"], _ids(run)["wandb"]["project"]) == (run_id, "demo")
    files = _wandb_records(run)
    assert len(files) == 2  # offline, each launch writes its own file of the one run
    rows = _csv(run)
    logged = {}
    for records in files:
        info = _of(records, "run")[0]
        assert (info.run_id, info.project, info.run_group) == (run_id, "demo", "g")
        config = {u.key: json.loads(u.value_json) for u in info.config.update}
        assert config["train"]["lr"] == 0.05 and config["method"]["name"] == "vanilla"
        assert config["run_folder"] == str(run.resolve())
        for history in _of(records, "history"):
            logged.setdefault(history.step.num, {}).update(_items(history.item))
    assert config["train"]["epochs"] == 3  # the resumed run's configuration
    tags = [set(_of(records, "run")[0].tags) for records in files]
    assert tags == [{"preset=demo/vanilla", "method=vanilla", "student=resnet8", "seed=0"}, set()]  # kept
    assert sorted(logged) == [1, 2, 3]
    for row in rows:
        for key in COLUMNS:
            assert logged[int(row["epoch"])][key] == pytest.approx(float(row[key]), rel=1e-5)
    summary = {k: v for s in _of(files[-1], "summary") for k, v in _items(s.update).items()}
    assert summary["last_top1"] == pytest.approx(float(rows[-1]["test_top1"]), rel=1e-5)
    best = max(rows, key=lambda r: float(r["test_top1"]))
    assert summary["best_epoch"] == float(best["epoch"])
    assert summary["device"] == "cpu"


def test_a_sweeps_runs_share_a_group(tmp_path, mlruns, wandb_offline):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "sweep"
    extra = [*FAST, "train.epochs=1", "train.loggers=[mlflow,wandb]", "train.batch_students=off"]
    rows = sweep("demo/vanilla", ["train.lr=0.05,0.1"], out=out, extra=extra)
    assert len(rows) == 2
    client = MlflowClient(tracking_uri=mlruns)
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert len(runs) == 2
    assert {r.data.tags["group"] for r in runs} == {str(out)}
    assert {r.data.params["train.lr"] for r in runs} == {"0.05", "0.1"}
    assert {r.info.run_name for r in runs} == {"train.lr=0.05,seed=0", "train.lr=0.1,seed=0"}
    for row in rows:
        (records,) = _wandb_records(Path(row["out"]))
        assert {info.run_group for info in _of(records, "run")} == {str(out)}


def test_a_missing_library_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    from rld.cli import main

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(UserError, match=r"train.loggers=\[mlflow\] needs MLflow: pip install 'rld\[mlflow\]'"):
        train(_cfg(1, "[mlflow]"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    monkeypatch.setitem(sys.modules, "wandb", None)
    code = main(["train", "demo/vanilla", "--out", str(tmp_path / "cli"), "train.loggers=[tensorboard,wandb]"])
    message = "train.loggers=[wandb] needs W&B (wandb): pip install 'rld[wandb]'"
    assert_user_error(code, capsys.readouterr().err, message)
    assert not (tmp_path / "cli").exists()


def test_start_up_refusals_name_the_variable_to_set(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(UserError, match="MLflow server at MLFLOW_TRACKING_URI=http://127.0.0.1:9 does not answer"):
        train(_cfg(1, "[mlflow]"), tmp_path / "run")
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    with pytest.raises(UserError, match="set WANDB_API_KEY .*or WANDB_MODE=offline"):
        train(_cfg(1, "[wandb]"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="train.loggers: unknown logger 'neptune'"):
        _cfg(1, "[neptune]")


def test_a_tracker_that_fails_during_training_is_one_warning(tmp_path, mlruns, monkeypatch, caplog):
    from rld.trackers.mlflow import MlflowTracker

    def unreachable(self, row, epoch):
        raise ConnectionError("the server went away")

    monkeypatch.setattr(MlflowTracker, "log_epoch", unreachable)
    with caplog.at_level(logging.WARNING, logger="rld"):
        summary = train(_cfg(2, "[tensorboard,mlflow]"), tmp_path / "run")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "mlflow failed (ConnectionError: the server went away)" in warnings[0]
    assert [r["epoch"] for r in _csv(tmp_path / "run")] == ["1", "2"] and summary["epochs"] == 2
    if importlib.util.find_spec("tensorboard") is not None:
        assert any((tmp_path / "run" / "tb").iterdir())  # the other trackers go on


def test_only_rank_0_opens_trackers(tmp_path, mlruns):
    from rld.engine.distributed import World
    from rld.engine.folder import RunFolder

    folder = RunFolder(tmp_path / "run", World(rank=1, size=2))
    folder.open(_cfg(1, "[mlflow,wandb]"), [])
    assert folder.trackers is None and not (tmp_path / "run").exists()
