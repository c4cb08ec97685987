"""Experiment trackers: where a run's configuration, epoch metrics and summary go besides its folder.

``train.loggers`` names them (default ``[tensorboard]``; ``metrics.csv`` is always written):

    tensorboard   TensorBoard events in ``out/tb/`` (when tensorboard is installed)
    mlflow        an MLflow run (``rld[mlflow]``): ``MLFLOW_TRACKING_URI``, else the file store ``./mlruns``
    wandb         a Weights & Biases run (``rld[wandb]``): ``WANDB_PROJECT`` / ``WANDB_ENTITY``, ``WANDB_MODE``

Each tracker is one small class with ``open`` / ``log_epoch`` / ``finish`` / ``close``, used through
its own library. :func:`check` refuses, before anything is written, a tracker whose library is missing;
:class:`Trackers` holds a run's open trackers (rank 0 only), keeps their run ids in the run folder's
``trackers.json`` (a resumed run continues the same tracked run) and turns a tracker that fails during
training into one warning: training goes on and the run folder stays the record.
"""

from __future__ import annotations

import importlib
import json
import logging
import netrc
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any

from rld.config import LOGGERS
from rld.errors import UserError
from rld.trackers.base import TRACKERS_FILE, RunInfo, Tracker, Tracking, flatten, summary_metrics

__all__ = ["LOGGERS", "TRACKERS_FILE", "RunInfo", "Tracker", "Trackers", "Tracking", "check", "create", "flatten"]
__all__ += ["read_ids", "summary_metrics"]

log = logging.getLogger("rld")

# a requested tracker → (the module it imports, what it is called, the extra that installs it)
_LIBRARIES = {"mlflow": ("mlflow", "MLflow", "mlflow"), "wandb": ("wandb", "W&B (wandb)", "wandb")}


def check(loggers: list[str]) -> None:
    """Refuse (UserError, before anything is written) a tracker of ``loggers`` that cannot work: its
    library is not installed, an MLflow server that does not answer, W&B online without an API key."""
    for name in loggers:
        if name not in _LIBRARIES:
            continue
        module, what, extra = _LIBRARIES[name]
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise UserError(f"train.loggers=[{name}] needs {what}: pip install 'rld[{extra}]'") from err
        if name == "mlflow":
            _check_mlflow_server()
        if name == "wandb":
            _check_wandb_login()


def _check_mlflow_server() -> None:
    """An ``http(s)`` MLFLOW_TRACKING_URI must accept a connection (MLflow itself retries for minutes)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    parts = urllib.parse.urlparse(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=5).close()
    except OSError as err:
        raise UserError(
            f"train.loggers=[mlflow]: the MLflow server at MLFLOW_TRACKING_URI={uri} does not answer "
            f"({err.strerror or err}); start it, or set MLFLOW_TRACKING_URI to one that runs (unset: ./mlruns)"
        ) from err


def _check_wandb_login() -> None:
    """W&B online needs an API key: WANDB_API_KEY, or ``wandb login`` (the key in ~/.netrc)."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled") or os.environ.get("WANDB_API_KEY"):
        return
    host = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        if netrc.netrc().authenticators(host or ""):
            return
    except (OSError, netrc.NetrcParseError):
        pass
    raise UserError(
        "train.loggers=[wandb] has no W&B API key: set WANDB_API_KEY (or run `wandb login`), "
        "or WANDB_MODE=offline to log without a network"
    )


def create(name: str) -> Tracker:
    if name == "tensorboard":
        from rld.trackers.tensorboard import TensorBoardTracker

        return TensorBoardTracker()
    if name == "mlflow":
        from rld.trackers.mlflow import MlflowTracker

        return MlflowTracker()
    if name == "wandb":
        from rld.trackers.wandb import WandbTracker

        return WandbTracker()
    raise UserError(f"unknown logger {name!r} in train.loggers: choose from {', '.join(LOGGERS)}")


def read_ids(out: Path) -> dict[str, dict[str, Any]]:
    """``trackers.json`` of the run folder ``out`` ({} when there is none)."""
    path = Path(out) / TRACKERS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class Trackers:
    """A run's open trackers. A tracker that raises is closed with one warning and left out; the
    others, and training, go on."""

    def __init__(self, info: RunInfo, history: list[dict[str, Any]]):
        from rld.engine import checkpoint as ckpt

        self.info, self.active, self._failed = info, [], []
        ids = read_ids(info.out)
        for name in info.cfg.train.loggers:
            tracker = self._call(None, name, lambda name=name: create(name))
            if tracker is None:
                continue
            record = self._call(tracker, "open", tracker.open, info, ids.get(name) or {}, history)
            if tracker in self._failed:
                continue
            self.active.append(tracker)
            if record:
                ids[name] = record
        if ids:
            try:
                ckpt.write_text_atomic(info.out / TRACKERS_FILE, json.dumps(ids, indent=2) + "\n")
            except OSError as err:  # the next write of the run folder stops the run, saying why
                log.warning("cannot write %s: %s; a resumed run would start new tracked runs", TRACKERS_FILE, err)

    def _call(self, tracker: Tracker | None, what: str, fn, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as err:  # a tracker never stops training
            name = getattr(tracker, "name", what)
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.warning(
                "train.loggers: %s failed (%s: %s); it logs nothing more for %s, training goes on "
                "(metrics.csv keeps the record)",
                name,
                type(err).__name__,
                reason,
                self.info.out,
            )
            if tracker is not None:
                self._failed.append(tracker)
                if tracker in self.active:
                    self.active.remove(tracker)
                try:
                    tracker.close()
                except Exception:  # already failing: the warning above said so
                    pass
            return None

    def log_epoch(self, row: dict[str, Any], epoch: int) -> None:
        for tracker in list(self.active):
            self._call(tracker, "log_epoch", tracker.log_epoch, row, epoch)

    def close(self, summary: dict[str, Any] | None = None, finished: bool = False) -> None:
        for tracker in list(self.active):
            if summary is not None:
                self._call(tracker, "finish", tracker.finish, summary, finished)
            if tracker in self.active:
                self._call(tracker, "close", tracker.close)
        self.active = []
