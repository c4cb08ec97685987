"""Reading finished (or unfinished) run folders: configuration, metrics, a summary.

A run folder is what :func:`rld.engine.train` writes: ``config.yaml``, ``metrics.csv`` (one row
per finished epoch) and ``checkpoints/``. Everything here reads files only; nothing is trained.

The status of a run (:attr:`RunRecord.status`) comes from its small files alone: ``metrics.csv``,
which checkpoints exist (never their content) and whether a process holds the folder's lock.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from rld.config import RunConfig, TrainConfig, from_dict, load_yaml
from rld.errors import UserError

RUN_FILES = ("config.yaml", "metrics.csv")
FINISHED, RUNNING, INTERRUPTED, DIVERGED, FAILED = "finished", "running", "interrupted", "diverged", "failed"
STATUSES = (FINISHED, RUNNING, INTERRUPTED, DIVERGED, FAILED)
# Settings that may differ between two runs without making them different experiments.
INCIDENTAL_KEYS = (
    ("train", "device"),
    ("model", "teacher_checkpoint"),
    ("data", "path"),
    ("data", "num_workers"),
    ("train", "stop_on_nonfinite"),
    ("train", "checkpoint_every_steps"),
)


def is_run_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in RUN_FILES)


def find_runs(root: str | Path) -> list[Path]:
    """Every run folder at or below ``root`` (folders holding config.yaml and metrics.csv), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder")
    found = {p.parent for p in root.rglob("metrics.csv") if is_run_dir(p.parent)}
    return sorted(found)


def read_config(run_dir: Path) -> RunConfig:
    return from_dict(load_yaml(Path(run_dir) / "config.yaml"))


def _number(text: str | None) -> float | int | str | None:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def read_metrics(run_dir: Path, *, diverged: bool = False) -> list[dict[str, Any]]:
    """The rows of ``metrics.csv`` with numbers converted (``epoch``, ``steps`` as int): the finished
    epochs, and with ``diverged`` the row of an epoch that went non-finite (``status`` ``diverged``,
    no test metrics), which the run ended with."""
    path = Path(run_dir) / "metrics.csv"
    try:
        with open(path, newline="") as f:
            rows = [{k: _number(v) for k, v in row.items() if k is not None} for row in csv.DictReader(f)]
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from err
    return rows if diverged else [r for r in rows if r.get("status") != "diverged"]


def teacher_weights(run_dir: str | Path) -> Path:
    """The checkpoint a teacher trained by rld is distilled from: its last epoch (as the widely
    shared ``ckpt_epoch_240.pth`` teachers are; picking the best epoch would select on the test set)."""
    return Path(run_dir) / "checkpoints" / "last.pt"


def checkpoint_epoch(path: Path) -> int | None:
    """The ``epoch`` stored in a run checkpoint, or None when it is missing or unreadable."""
    from rld.models.checkpoint import read_torch_file

    if not path.is_file():
        return None

    try:
        state = read_torch_file(path, mmap=True)
    except Exception:  # unreadable: the trainer reports it properly when the run is resumed
        return None
    epoch = state.get("epoch") if isinstance(state, dict) else None
    return int(epoch) if isinstance(epoch, int) else None


def config_differences(a: RunConfig, b: RunConfig) -> list[str]:
    """Dotted keys whose values differ between two configurations, ignoring incidental settings."""
    da, db = asdict(a), asdict(b)
    for section, key in INCIDENTAL_KEYS:
        da[section].pop(key, None), db[section].pop(key, None)
    out = []
    for section in da:
        if isinstance(da[section], dict):
            out += [f"{section}.{k}" for k in da[section] if da[section][k] != db[section].get(k)]
        elif da[section] != db[section]:
            out.append(section)
    return out


def read_settings(run_dir: Path) -> dict[str, Any]:
    """``config.yaml`` as saved, a plain mapping (fast: no schema is merged; :func:`read_config` validates)."""
    path = Path(run_dir) / "config.yaml"
    try:
        data = yaml.load(path.read_bytes(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from err
    except yaml.YAMLError:
        data = load_yaml(path)  # raises the UserError that says where
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a configuration (a mapping of settings)")
    return data


@dataclass
class RunRecord:
    """A run folder read from disk.

    ``settings``: ``config.yaml`` as saved (:attr:`config` is the validated configuration); ``rows``:
    every row of ``metrics.csv``, a diverged epoch's included; :attr:`metrics`: the finished epochs.
    ``best`` is the row with the highest test top-1 (the first one on ties, as the engine keeps
    ``best.pt``); ``last`` the last finished epoch.
    """

    path: Path
    settings: dict[str, Any]
    rows: list[dict[str, Any]]

    @classmethod
    def load(cls, run_dir: str | Path, *, started: bool = False) -> RunRecord:
        """The run in ``run_dir``; UserError unless it holds config.yaml and metrics.csv. With
        ``started``, config.yaml suffices (a run stopped in its first epoch has no metrics.csv yet),
        and the configuration is validated only when :attr:`config` is read."""
        path = Path(run_dir)
        if not path.is_dir():
            raise UserError(f"run folder {path} does not exist")
        missing = [name for name in RUN_FILES[: 1 if started else 2] if not (path / name).is_file()]
        if missing:
            raise UserError(
                f"{path} is not a run folder: it lacks {' and '.join(missing)} (a run folder is made by `rld train`)"
            )
        rows = read_metrics(path, diverged=True) if (path / "metrics.csv").is_file() else []
        record = cls(path, read_settings(path), rows)
        if not started:
            record.config  # noqa: B018 (validated now: a broken configuration is said at once)
        return record

    @cached_property
    def config(self) -> RunConfig:
        return from_dict(self.settings)

    @cached_property
    def metrics(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("status") != DIVERGED]

    @property
    def diverged_epoch(self) -> int | None:
        """The epoch the run diverged in, when metrics.csv ends with a diverged row."""
        if self.rows and self.rows[-1].get("status") == DIVERGED:
            return self.rows[-1].get("epoch")
        return None

    @property
    def epochs_planned(self) -> int:
        train = self.settings.get("train") or {}
        return int(train.get("epochs", TrainConfig.epochs))

    @property
    def holder(self) -> str | None:
        """The process training the run now (``pid N on host H, since T``), or None: see
        :func:`rld.engine.lock.holder`."""
        from rld.engine.lock import holder

        return holder(self.path)

    @property
    def status(self) -> str:
        """``running``: a process holds the folder's lock; else ``finished``: every planned epoch is in
        metrics.csv; ``diverged``: metrics.csv ends with a diverged epoch; ``interrupted``: a position
        to resume from is saved (``checkpoints/step.pt`` or ``last.pt``); ``failed``: none is (the
        run stopped before its first checkpoint)."""
        if self.holder is not None:
            return RUNNING
        if self.epochs_done >= self.epochs_planned:
            return FINISHED
        if self.diverged_epoch is not None:
            return DIVERGED
        checkpoints = self.path / "checkpoints"
        if (checkpoints / "step.pt").is_file() or (checkpoints / "last.pt").is_file():
            return INTERRUPTED
        return FAILED

    @property
    def name(self) -> str:
        """The folder name; ``VARIANT/seedK`` for the per-seed folders of ``rld reproduce``."""
        if re.fullmatch(r"seed\d+", self.path.name) and self.path.parent.name:
            return f"{self.path.parent.name}/{self.path.name}"
        return self.path.name

    @property
    def epochs_done(self) -> int:
        return len(self.metrics)

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.epochs_planned

    @cached_property
    def best(self) -> dict[str, Any] | None:
        best = None
        for row in self.metrics:
            if best is None or row["test_top1"] > best["test_top1"]:
                best = row
        return best

    @property
    def last(self) -> dict[str, Any] | None:
        return self.metrics[-1] if self.metrics else None

    def top(self, metric: str = "best", k: int = 1) -> float | None:
        """Test top-k (k = 1 or 5) at the best epoch (``metric="best"``) or the last one."""
        if metric not in ("best", "last"):
            raise UserError(f"metric must be 'best' or 'last', got {metric!r}")
        row = self.best if metric == "best" else self.last
        return None if row is None else float(row[f"test_top{k}"])

    @property
    def total_time(self) -> float:
        """Wall-clock seconds of all finished epochs (training and evaluation)."""
        return float(sum(row.get("epoch_time", 0.0) for row in self.metrics))

    @property
    def ms_per_batch(self) -> float:
        """Training time per batch in ms: ``train_time / steps`` of each epoch, averaged over epochs."""
        per_epoch = [
            1000.0 * row["train_time"] / row["steps"]
            for row in self.metrics
            if isinstance(row.get("train_time"), (int, float)) and isinstance(row.get("steps"), int) and row["steps"]
        ]
        if not per_epoch:
            raise UserError(f"{self.path}/metrics.csv has no train_time and steps columns to time the run by")
        return float(sum(per_epoch) / len(per_epoch))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std
