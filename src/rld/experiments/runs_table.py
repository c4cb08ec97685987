"""``rld runs``: every run below some folders in one table, read from the run folders alone.

One row per run: model (``TEACHER-STUDENT`` or ``STUDENT``), method, the configuration keys that
differ between the listed runs, seed, epochs done / planned, best and last test top-1, wall time
and status (:attr:`RunRecord.status <rld.experiments.runs.RunRecord.status>`). Only the small files
are read — ``config.yaml`` (plain YAML, no schema merge), ``metrics.csv``, whether checkpoints exist
and the folder's lock — so thousands of folders take seconds. ``--where`` keeps the runs whose
column or configuration key has a value, ``--group-by`` gives mean ± std over each group's finished
runs, ``--sort`` orders the rows.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rld.errors import UserError
from rld.experiments.runs import (
    DIVERGED,
    FAILED,
    FINISHED,
    INCIDENTAL_KEYS,
    INTERRUPTED,
    RUNNING,
    STATUSES,
    RunRecord,
    mean_std,
)

RUN_SUBFOLDERS = ("checkpoints", "tb")
# Settings shown in columns of their own, never among the differing keys.
SHOWN_KEYS = ("seed", "train.epochs", "method.name", "model.student", "model.teacher")
IGNORED_KEYS = SHOWN_KEYS + tuple(f"{section}.{key}" for section, key in INCIDENTAL_KEYS)
RUN_COLUMNS = (
    "run",
    "model",
    "method",
    "seed",
    "epochs_done",
    "epochs_planned",
    "best_top1",
    "best_epoch",
    "last_top1",
    "wall_time_s",
    "status",
    "diverged_epoch",
    "resume",
    "holder",
)
GROUP_COLUMNS = (
    "runs",
    "finished",
    "statuses",
    "seeds",
    "best_top1_mean",
    "best_top1_std",
    "last_top1_mean",
    "last_top1_std",
    "wall_time_s",
)


def find_run_folders(dirs: list[str | Path]) -> list[Path]:
    """Every run folder at or below ``dirs`` (a folder holding config.yaml, and metrics.csv or
    checkpoints/: a run stopped in its first epoch counts), each once, sorted; UserError for a
    ``dir`` that is not a folder."""
    for d in dirs:
        if not Path(d).is_dir():
            raise UserError(f"{d} is not a folder")
    found: dict[Path, Path] = {}
    for d in dirs:
        for root, subdirs, files in os.walk(d):
            if "config.yaml" in files and ("metrics.csv" in files or "checkpoints" in subdirs):
                found.setdefault(Path(root).resolve(), Path(root))
                subdirs[:] = [s for s in subdirs if s not in RUN_SUBFOLDERS]
    return sorted(found.values(), key=_natural)


def _natural(path: Path) -> list:
    """``seed2`` before ``seed10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def flat_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``{"train": {"lr": 0.1}, "seed": 0}`` → ``{"train.lr": 0.1, "seed": 0}``."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


@dataclass
class RunEntry:
    """One row of the table (see :data:`RUN_COLUMNS`; ``differs``: the differing keys' values)."""

    run: str
    model: str
    method: str
    seed: int | None
    epochs_done: int
    epochs_planned: int
    best_top1: float | None
    best_epoch: int | None
    last_top1: float | None
    wall_time_s: float
    status: str
    diverged_epoch: int | None
    resume: str | None
    holder: str | None
    settings: dict[str, Any] = field(repr=False)
    differs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> RunEntry:
        record = RunRecord.load(path, started=True)
        settings = flat_settings(record.settings)
        status = record.status
        student, teacher = settings.get("model.student") or "", settings.get("model.teacher")
        best, last = record.best, record.last
        times = [r.get("epoch_time") for r in record.rows]
        return cls(
            run=str(path),
            model=f"{teacher}-{student}" if teacher else str(student),
            method=str(settings.get("method.name") or "vanilla"),
            seed=settings.get("seed"),
            epochs_done=record.epochs_done,
            epochs_planned=record.epochs_planned,
            best_top1=None if best is None else float(best["test_top1"]),
            best_epoch=None if best is None else best["epoch"],
            last_top1=None if last is None else float(last["test_top1"]),
            wall_time_s=round(float(sum(t for t in times if isinstance(t, (int, float)))), 3),
            status=status,
            diverged_epoch=record.diverged_epoch if status == DIVERGED else None,
            resume=f"rld train --resume --out {shlex.quote(str(path))}" if status in (INTERRUPTED, FAILED) else None,
            holder=record.holder if status == RUNNING else None,
            settings=settings,
        )

    def value(self, key: str) -> Any:
        """A column's value, else the configuration key's (dotted, e.g. ``train.lr``)."""
        if key in RUN_COLUMNS:
            return getattr(self, key)
        return self.settings.get(key)

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in RUN_COLUMNS}
        out["student"], out["teacher"] = self.settings.get("model.student"), self.settings.get("model.teacher")
        out["differs"] = dict(self.differs)
        return out


@dataclass
class GroupEntry:
    """The runs sharing the values of the ``--group-by`` keys: mean ± std over the finished ones."""

    keys: dict[str, Any]
    runs: int
    finished: int
    statuses: dict[str, int]
    seeds: list[Any]
    best_top1_mean: float | None
    best_top1_std: float | None
    last_top1_mean: float | None
    last_top1_std: float | None
    wall_time_s: float

    @classmethod
    def of(cls, keys: dict[str, Any], entries: list[RunEntry]) -> GroupEntry:
        done = [e for e in entries if e.status == FINISHED and e.best_top1 is not None]
        best = mean_std([e.best_top1 for e in done]) if done else (None, None)
        last = mean_std([e.last_top1 for e in done]) if done else (None, None)
        statuses = {s: n for s in STATUSES if (n := sum(e.status == s for e in entries))}
        return cls(
            keys=keys,
            runs=len(entries),
            finished=len(done),
            statuses=statuses,
            seeds=sorted({e.seed for e in entries if e.seed is not None}),
            best_top1_mean=best[0],
            best_top1_std=best[1],
            last_top1_mean=last[0],
            last_top1_std=last[1],
            wall_time_s=round(sum(e.wall_time_s for e in entries), 3),
        )

    def value(self, key: str) -> Any:
        return getattr(self, key) if key in GROUP_COLUMNS else self.keys.get(key)

    def to_json(self) -> dict[str, Any]:
        return {"group": dict(self.keys), **{k: getattr(self, k) for k in GROUP_COLUMNS}}


def text(value: Any) -> str:
    """A value as the table and ``--where`` write it: YAML-like (``true``, ``null`` as ``-``), lists compact."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _matches(value: Any, wanted: str) -> bool:
    if value is None:
        return wanted.lower() in ("", "-", "none", "null")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(wanted) == float(value)
        except ValueError:
            return False
    return text(value).lower() == wanted.lower() if isinstance(value, bool) else text(value) == wanted


def _known(entries: list[RunEntry], key: str, option: str) -> None:
    if key not in RUN_COLUMNS and not any(key in e.settings for e in entries):
        raise UserError(
            f"{option} {key}: no such column or configuration key (columns: {', '.join(RUN_COLUMNS)}; "
            "configuration keys as in config.yaml, e.g. train.lr)"
        )


def parse_where(items: list[str]) -> list[tuple[str, str]]:
    """``KEY=VALUE`` texts → pairs; UserError for one without ``=``."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--where takes KEY=VALUE (e.g. status=finished or train.lr=0.1), got {item!r}")
        pairs.append((key.strip(), value.strip()))
    return pairs


def _sorted(rows: list, key: str) -> list:
    descending = key.startswith("-")
    key = key.lstrip("-")

    def order(row) -> tuple:
        v = row.value(key)
        return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, text(v))

    present = sorted((r for r in rows if r.value(key) is not None), key=order, reverse=descending)
    return present + [r for r in rows if r.value(key) is None]


@dataclass
class RunsTable:
    """What ``rld runs`` shows: the runs (or the groups), and the keys that differ between the runs."""

    entries: list[RunEntry]
    differing: list[str]
    group_by: list[str] | None = None
    groups: list[GroupEntry] | None = None

    def to_json(self) -> str:
        rows = self.groups if self.groups is not None else self.entries
        return json.dumps([r.to_json() for r in rows], indent=2)

    def columns(self) -> list[str]:
        if self.groups is not None:
            return [*(self.group_by or []), *GROUP_COLUMNS]
        return [*RUN_COLUMNS[:3], *self.differing, *RUN_COLUMNS[3:]]

    def to_csv(self) -> str:
        """One line per run (or group): raw values, empty for none; ``statuses`` as ``finished:2;running:1``
        and ``seeds`` as ``0;1;2``."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        columns = self.columns()
        writer.writerow(columns)
        for row in self.groups if self.groups is not None else self.entries:
            values = []
            for key in columns:
                v = row.differs[key] if isinstance(row, RunEntry) and key in row.differs else row.value(key)
                if isinstance(v, dict):
                    v = ";".join(f"{k}:{n}" for k, n in v.items())
                elif isinstance(v, list) and key == "seeds":
                    v = ";".join(str(s) for s in v)
                values.append("" if v is None else (text(v) if isinstance(v, (bool, list)) else v))
            writer.writerow(values)
        return buf.getvalue()

    def to_text(self) -> str:
        """An aligned table: one line per run (the last column says how to resume, who trains it, or
        when it diverged), or per group (top-1 as mean ± std over its finished runs)."""
        if self.groups is not None:
            header = [*(self.group_by or []), "runs", "statuses", "seeds", "best top-1", "last top-1", "time"]
            lines = [
                [
                    *(text(g.keys[k]) for k in self.group_by or []),
                    str(g.runs),
                    ", ".join(f"{n} {s}" for s, n in g.statuses.items()),
                    ",".join(str(s) for s in g.seeds) or "-",
                    _pm(g.best_top1_mean, g.best_top1_std, g.finished),
                    _pm(g.last_top1_mean, g.last_top1_std, g.finished),
                    _seconds(g.wall_time_s),
                ]
                for g in self.groups
            ]
        else:
            header = ["run", "model", "method", *self.differing, "seed", "epochs", "best", "last", "time", "status"]
            lines = [
                [
                    e.run,
                    e.model,
                    e.method,
                    *(text(e.differs.get(k)) for k in self.differing),
                    text(e.seed),
                    f"{e.epochs_done}/{e.epochs_planned}",
                    _pct(e.best_top1),
                    _pct(e.last_top1),
                    _seconds(e.wall_time_s),
                    e.status,
                    _detail(e),
                ]
                for e in self.entries
            ]
            header.append("")
        widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
        out = []
        for row in [header, *lines]:
            out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        return "\n".join(out) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pm(mean: float | None, std: float | None, n: int) -> str:
    return "-" if mean is None else f"{mean:.2f} ± {std:.2f} (n={n})"


def _seconds(seconds: float) -> str:
    from rld.experiments.report import format_seconds

    return format_seconds(seconds) if seconds else "-"


def _detail(e: RunEntry) -> str:
    if e.holder is not None:
        return f"by {e.holder}"
    if e.resume is not None:
        return e.resume
    if e.diverged_epoch is not None:
        return f"in epoch {e.diverged_epoch}"
    return ""


def runs_table(
    dirs: list[str | Path],
    *,
    where: list[str] | None = None,
    group_by: list[str] | None = None,
    sort: str | None = None,
) -> RunsTable:
    """The runs below ``dirs`` (see the module docstring); UserError when none is found or matches."""
    if not dirs:
        raise UserError("give at least one folder")
    folders = find_run_folders(dirs)
    if not folders:
        raise UserError(f"found no runs (folders with config.yaml) under {', '.join(str(d) for d in dirs)}")
    entries = [RunEntry.read(p) for p in folders]
    for key, wanted in parse_where(where or []):
        _known(entries, key, "--where")
        entries = [e for e in entries if _matches(e.value(key), wanted)]
    if not entries:
        raise UserError(f"no run matches {' '.join('--where ' + w for w in where or [])} ({len(folders)} runs found)")
    keys = sorted({k for e in entries for k in e.settings} - set(IGNORED_KEYS))
    differing = [k for k in keys if len({text(e.settings.get(k)) for e in entries}) > 1]
    for e in entries:
        e.differs = {k: e.settings.get(k) for k in differing}
    table = RunsTable(entries, differing)
    if group_by:
        for key in group_by:
            _known(entries, key, "--group-by")
        buckets: dict[tuple, list[RunEntry]] = {}
        for e in entries:
            buckets.setdefault(tuple(text(e.value(k)) for k in group_by), []).append(e)
        table.group_by = list(group_by)
        table.groups = [GroupEntry.of({k: rows[0].value(k) for k in group_by}, rows) for rows in buckets.values()]
    if sort:
        key = sort.lstrip("-")
        if table.groups is not None:
            if key not in GROUP_COLUMNS and key not in group_by:
                raise UserError(f"--sort {key}: with --group-by, sort by {', '.join([*group_by, *GROUP_COLUMNS])}")
            table.groups = _sorted(table.groups, sort)
        else:
            _known(entries, key, "--sort")
            table.entries = _sorted(table.entries, sort)
    return table
