"""A run's folder: everything written there, and when (rank 0 only).

    out/config.yaml            the resolved configuration
    out/split.json             the train/validation split of a single folder or manifest
    out/teacher.json           which teacher checkpoint the run was distilled from
    out/metrics.csv            one row per finished epoch
    out/checkpoints/last.pt    everything an exact resume needs, rewritten atomically each epoch
    out/checkpoints/step.pt    the same inside an epoch (a preemption, train.checkpoint_every_steps)
    out/checkpoints/best.pt    the student at its best test top-1 so far
    out/rld.lock               held by the process that trains the run (rld.engine.lock)
    out/tb/                    TensorBoard events (train.loggers has tensorboard, and it is installed)
    out/trackers.json          the ids of the MLflow / W&B runs it logs to (train.loggers; rld.trackers)
    out/wandb/                 W&B's own files (train.loggers has wandb)

Nothing is written before :meth:`RunFolder.open`, which the run calls once everything that can
refuse it has been checked, so a refused command leaves no folder behind. A new run that stops with a
user error before its first checkpoint (an image that cannot be read, a damaged teacher-logit cache,
found while it trains) takes back what it wrote (:meth:`RunFolder.discard`).
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

from rld.config import RunConfig, to_yaml
from rld.data.sources import SPLIT_FILE
from rld.engine import checkpoint as ckpt
from rld.engine import faults, lock
from rld.engine.distributed import World
from rld.engine.guard import STEP_CHECKPOINT
from rld.errors import UserError
from rld.models.sources import is_remote, resolve_checkpoint
from rld.trackers import RunInfo, Trackers, Tracking

METRIC_COLUMNS = [
    "epoch",
    "train_loss",
    "train_top1",
    "test_loss",
    "test_top1",
    "test_top5",
    "lr",
    "epoch_time",
    "train_time",
    "steps",
]


class RunFolder:
    """The folder ``out`` of a run; ``expected_state``: the folder as the command checked it
    (:func:`rld.engine.lock.folder_state`), re-checked once the folder is locked."""

    def __init__(self, out: Path, world: World, expected_state: tuple | None = None):
        self.out, self.world, self.expected_state = Path(out), world, expected_state
        self.checkpoints = self.out / "checkpoints"
        self.trackers: Trackers | None = None
        self.fresh = False  # the folder held nothing of a run when it was opened (see discard)

    def open(
        self,
        cfg: RunConfig,
        history: list[dict[str, Any]],
        split: Any = None,
        teacher_record: bool = False,
        tracking: Tracking | None = None,
    ):
        """Lock the folder and write what a run starts with: ``config.yaml``, ``split.json`` (``split``),
        the teacher record (``teacher_record``: the method reads a teacher checkpoint), ``metrics.csv``
        of a resumed run's ``history``; open the trackers of ``train.loggers`` (TensorBoard by default;
        ``tracking``: the run's preset and group). Rank 0 only; the others write nothing."""
        if not self.world.is_main:
            return
        self.fresh = not self.out.is_dir() or {p.name for p in self.out.iterdir()} <= {lock.LOCK_FILE}
        lock.hold(self.out, self.expected_state)  # one writer per run folder, from its first write on
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            ckpt.write_text_atomic(self.out / "config.yaml", to_yaml(cfg))
            if split is not None:
                ckpt.write_text_atomic(self.out / SPLIT_FILE, split.to_json())
            teacher_ckpt = cfg.model.teacher_checkpoint
            if teacher_record and teacher_ckpt:
                path = resolve_checkpoint(teacher_ckpt)  # (a download is made once, for the teacher itself)
                if path.is_file():
                    source = teacher_ckpt if is_remote(teacher_ckpt) else None
                    ckpt.write_teacher_record(self.out, str(path), cfg.model.teacher or "", source)
        except OSError as err:
            reason = err.strerror
            raise UserError(f"cannot write to the output folder {self.out}: {reason}; choose another --out") from err
        if history:
            write_metrics(self.out / "metrics.csv", history)
        self.trackers = Trackers(RunInfo(cfg, self.out, tracking or Tracking()), history)

    def write(self, files: dict[str, dict[str, Any]], rows: list[dict[str, Any]] | None = None) -> None:
        """Write checkpoint ``files`` (name in ``checkpoints/`` → state, each atomically), then ``rows`` as
        metrics.csv.

        A write that fails (a full disk, a folder made read-only) leaves the file it was replacing
        intact and raises UserError naming the file and the reason."""
        path = None
        try:
            for name, state in files.items():
                path = self.checkpoints / name
                ckpt.save_atomic(state, path, before_rename=self._before_rename if name == "last.pt" else None)
            if rows is not None:
                path = self.out / "metrics.csv"
                write_metrics(path, rows)
        except OSError as err:
            reason = err.strerror or str(err)
            kept = f"the previous {path.name} is intact" if path.exists() else f"{path.name} was not written"
            raise UserError(
                f"cannot write {path}: {reason}; {kept}. Free space on that disk (or make the folder writable), "
                "then continue with --resume"
            ) from err

    def _before_rename(self) -> None:
        faults.reached("before_rename", self)

    def forget_position(self) -> None:
        """Remove ``step.pt`` (older than ``last.pt`` once an epoch has ended)."""
        (self.checkpoints / STEP_CHECKPOINT).unlink(missing_ok=True)

    def log_epoch(self, row: dict[str, Any], epoch: int) -> None:
        """An epoch's row of metrics.csv to the open trackers."""
        if self.trackers is not None:
            self.trackers.log_epoch(row, epoch)

    def discard(self) -> None:
        """Remove what this run wrote, when the folder held nothing of a run before it and the run
        stopped before its first checkpoint or metrics row (a user error found while it trained): the
        folder is left as the command found it (its lock, and the folder itself if the lock created
        it, go when the lock is released). Call it after :meth:`close` (the trackers' files closed)."""
        if not (self.world.is_main and self.fresh) or (self.out / "metrics.csv").exists():
            return
        if self.checkpoints.is_dir() and any(self.checkpoints.iterdir()):
            return
        for path in self.out.iterdir():
            if path.name == lock.LOCK_FILE:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def close(self, summary: dict[str, Any] | None = None, finished: bool = False) -> None:
        """Close the trackers, giving them the run's ``summary`` (``finished``: every epoch trained)."""
        if self.trackers is not None:
            self.trackers.close(summary, finished)
            self.trackers = None


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.csv``: one row per epoch, the known columns first, floats with 6 significant digits."""
    columns = list(METRIC_COLUMNS)
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    ckpt.write_text_atomic(path, buf.getvalue())
