"""What every tracker shares (:mod:`rld.trackers`): the run it opens, its tags, the summary it keeps."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from rld.config import FAMILIES, RunConfig

TRACKERS_FILE = "trackers.json"
"""In a run folder: the id of every tracked run it logs to (``{"mlflow": {"run_id": …}, …}``)."""


@dataclass(frozen=True)
class Tracking:
    """What a tracked run is tagged with beyond its configuration: the preset it was resolved from
    and the group of runs it belongs to (a sweep's, a tune's grid, a reproduction's)."""

    preset: str | None = None
    group: str | None = None


@dataclass
class RunInfo:
    """What a tracker opens a run with."""

    cfg: RunConfig
    out: Path
    tracking: Tracking

    @property
    def name(self) -> str:
        return self.out.name or str(self.out)

    @property
    def experiment(self) -> str:
        """``train.experiment``, else the preset's family (``demo`` of ``demo/vanilla``), else ``rld``."""
        if self.cfg.train.experiment:
            return self.cfg.train.experiment
        family = (self.tracking.preset or "").split("/")[0]
        return family if family in FAMILIES else "rld"

    def tags(self) -> dict[str, str]:
        """preset, method, teacher, student, seed (those known), the group and the run folder."""
        cfg = self.cfg
        tags = {
            "preset": self.tracking.preset,
            "method": cfg.method.name,
            "teacher": cfg.model.teacher,
            "student": cfg.model.student,
            "seed": str(cfg.seed),
            "group": self.tracking.group,
            "run_folder": str(self.out.resolve()),
        }
        return {k: v for k, v in tags.items() if v}

    def params(self) -> dict[str, str]:
        """The resolved configuration, flattened: ``{"train.lr": "0.05", …}``."""
        return flatten(asdict(self.cfg))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts as dotted keys, values as text (None as ``null``)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = "null" if value is None else str(value)
    return out


class Tracker(Protocol):
    """One tracker of a run (rank 0 only)."""

    name: str

    def open(self, info: RunInfo, stored: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Start (``stored`` empty) or continue the tracked run that ``trackers.json`` keeps (``stored``:
        its ``run_id`` and where it is); log the ``history`` it lacks (a run tracked from its resume on).
        Returns what ``trackers.json`` is to keep to continue it."""

    def log_epoch(self, row: dict[str, Any], epoch: int) -> None:
        """One row of ``metrics.csv`` (its columns but ``epoch`` as metrics, at step ``epoch``)."""

    def finish(self, summary: dict[str, Any], finished: bool) -> None:
        """The run's summary; ``finished``: it trained all its epochs (else it stopped early)."""

    def close(self) -> None: ...


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The numbers of a run's summary a tracker keeps: best/last top-1, the epoch of the best, and
    ``wall_time``, the seconds of all its epochs (the summary's ``train_time``; the metric of that name
    is each epoch's training time)."""
    names = {"best_top1": "best_top1", "best_epoch": "best_epoch", "last_top1": "last_top1"}
    names.update(last_top5="last_top5", train_time="wall_time")
    return {new: float(summary[k]) for k, new in names.items() if isinstance(summary.get(k), (int, float))}
