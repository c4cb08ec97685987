"""Planning a reproduction: every run a table needs, with its preset, overrides and folder.

Runs live under the output folder as ``FAMILY/MODEL/vanilla/seedK`` (teachers and plain students)
and ``FAMILY/TEACHER-STUDENT/VARIANT/seedK`` (distilled students), so tables that share a setting
share its runs, and an interrupted reproduction picks up where it stopped. The paper trains one
teacher per architecture: teachers are trained with seed 0 only (or taken from a checkpoint the
user names, ``--teacher MODEL=CKPT``) and distil at their last epoch (``checkpoints/last.pt``); plain
and distilled students are trained with every seed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from rld.config import RunConfig, list_presets, precision_summary, resolve, schedule_overrides, text_override
from rld.errors import UserError
from rld.experiments.runs import checkpoint_epoch, config_differences, read_config, teacher_weights
from rld.experiments.tables import DISTILL, STUDENT, TEACHER, UNAVAILABLE, Cell, TableSpec, get_table
from rld.methods import LS_KEYS, get_spec, resolved_params

TEACHER_SEED = 0
DEFAULT_SEEDS = (0, 1, 2)
EXTERNAL = "external"
# Override keys a reproduction fixes itself; the message says what to use instead.
RESERVED_KEYS = {
    "seed": "use --seeds",
    "model.teacher_checkpoint": "use --teacher MODEL=CKPT",
    "model.teacher": "the table fixes the models; use --pairs",
    "model.student": "the table fixes the models; use --pairs",
    "method.name": "the table fixes the methods; use --methods",
}

ROLES = (TEACHER, STUDENT, DISTILL)
# Status of a planned run.
MISSING, PARTIAL, DONE, CONFLICT = "missing", "partial", "done", "conflict"


@dataclass
class PlannedRun:
    """One run of a reproduction (a training run, or the evaluation of a given teacher checkpoint)."""

    name: str  # folder relative to the output folder, e.g. "cifar100/resnet56-resnet20/kd/seed0"
    roles: list[str]  # teacher / student (plain) / distill
    teacher: str | None
    student: str
    method: str
    variant: str
    seed: int
    preset: str
    overrides: list[str]
    out: str
    depends_on: str | None = None  # name of the teacher run
    checkpoint: str | None = None  # a given teacher checkpoint (evaluated, not trained)
    status: str = MISSING
    epochs_done: int = 0
    detail: str = ""

    @property
    def external(self) -> bool:
        return self.checkpoint is not None

    def config(self) -> RunConfig:
        return copy.deepcopy(_resolve(self.preset, tuple(self.overrides)))

    def method_params(self) -> dict[str, Any]:
        """The method's resolved parameters (defaults filled in, logit standardization applied)."""
        return resolved_params(self.config().method)

    def to_dict(self) -> dict[str, Any]:
        """The run, its resolved method parameters (``method_params``) and precision."""
        cfg = self.config()
        return {
            **dataclasses.asdict(self),
            "method_params": resolved_params(cfg.method),
            "precision": precision_summary(cfg),
        }


@dataclass
class Plan:
    table: TableSpec
    root: Path
    seeds: tuple[int, ...]
    runs: list[PlannedRun]
    cell_runs: dict[tuple[str, str], list[str]]  # (row, column) → run names
    options: dict[str, Any] = field(default_factory=dict)

    def run(self, name: str) -> PlannedRun:
        for run in self.runs:
            if run.name == name:
                return run
        raise KeyError(name)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.runs:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def to_json(self) -> str:
        body = {
            "table": self.table.name,
            "title": self.table.title,
            "out": str(self.root),
            "seeds": list(self.seeds),
            "options": self.options,
            "runs": [r.to_dict() for r in self.runs],
            "cells": [{"row": row, "column": col, "runs": names} for (row, col), names in self.cell_runs.items()],
        }
        return json.dumps(body, indent=2) + "\n"


# ----------------------------------------------------------------------------- selection


def _normalise_pair(text: str) -> str:
    return text.strip().replace("->", "-").replace("→", "-").replace(" ", "")


def select(table: TableSpec, pairs: list[str] | None = None, methods: list[str] | None = None) -> TableSpec:
    """The table restricted to some pairs and methods (registry names; ``vanilla`` = the plain student).

    The teacher row stays (its run is needed anyway); rows of methods rld does not implement are
    dropped when methods are chosen.
    """
    if pairs:
        wanted = [_normalise_pair(p) for p in pairs]
        unknown = [p for p in wanted if p not in table.pairs]
        if unknown:
            raise UserError(f"{table.name} has no pair {unknown[0]!r}; its pairs: {', '.join(table.pairs)}")
    if methods:
        valid = table.methods  # registry names; "vanilla" where the table has a plain-student row
        unknown = [m for m in methods if m not in valid]
        later = {r.lower(): r for r in table.row_notes}
        if unknown and unknown[0].lower() in later:
            row = later[unknown[0].lower()]
            raise UserError(
                f"{row} is not available yet in {table.name}: {table.row_notes[row]}; "
                f"{table.name}'s methods: {', '.join(valid)}"
            )
        if unknown:
            raise UserError(f"{table.name} has no {unknown[0]!r} rows; its methods: {', '.join(valid)}")

    def keep(cell: Cell) -> bool:
        if pairs and cell.pair not in wanted:
            return False
        if not methods or cell.kind == TEACHER:
            return True
        return cell.kind != UNAVAILABLE and cell.method in methods

    cells = {key: cell for key, cell in table.cells.items() if keep(cell)}
    rows = tuple(r for r in table.rows if any(k[0] == r for k in cells))
    columns = tuple(c for c in table.columns if any(k[1] == c for k in cells))
    return dataclasses.replace(table, rows=rows, columns=columns, cells=cells)


# ----------------------------------------------------------------------------- overrides


def _key(override: str) -> str:
    if "=" not in override or not override.split("=", 1)[0].strip():
        raise UserError(f"overrides must look like KEY=VALUE (e.g. train.batch_size=256), got {override!r}")
    return override.split("=", 1)[0].strip()


def _check_user_overrides(overrides: list[str]) -> None:
    for override in overrides:
        key = _key(override)
        if key in RESERVED_KEYS:
            raise UserError(f"{key} is set by the reproduction for each run: {RESERVED_KEYS[key]}")


def _applies(override: str, method: str) -> bool:
    """``method.*`` overrides go to the runs whose method takes the parameter; others to every run."""
    key = _key(override)
    if not key.startswith("method."):
        return True
    param = key.split(".", 1)[1]
    if param in LS_KEYS:  # every distillation method; one without a rule (LR) then refuses it
        return method != "vanilla"
    return param in get_spec(method).params


def _schedule_overrides(preset: str, epochs: int | None) -> list[str]:
    """``--epochs N``: the epoch count, and the lr schedule, warm-up and ramp scaled by N / the preset's epochs."""
    return [] if epochs is None else schedule_overrides(_base_config(preset), epochs)


@cache
def _base_config(preset: str) -> RunConfig:
    """The preset's own configuration (read-only)."""
    return resolve(preset)


@lru_cache(maxsize=4096)
def _resolve(preset: str, overrides: tuple[str, ...]) -> RunConfig:
    return resolve(preset, list(overrides))


# ----------------------------------------------------------------------------- planning


def parse_teacher_checkpoints(items: list[str] | None) -> dict[str, str]:
    """``["MODEL=CKPT", …]`` → {model: absolute checkpoint path, or the URL / named teacher as given}."""
    from rld.models.sources import is_remote

    out = {}
    for item in items or []:
        model, sep, path = item.partition("=")
        if not sep or not model or not path:
            raise UserError(
                f"--teacher takes MODEL=CKPT (e.g. resnet32x4=resnet32x4_vanilla/ckpt_epoch_240.pth), got {item!r}"
            )
        if is_remote(path):  # a URL or a named teacher, downloaded when first used
            out[model] = path
            continue
        if not Path(path).expanduser().is_file():
            raise UserError(f"teacher checkpoint {path} (for {model}) does not exist")
        out[model] = str(Path(path).expanduser().resolve())
    return out


class _Planner:
    def __init__(self, table: TableSpec, root: Path, seeds, epochs, data, overrides, teachers):
        self.table, self.root, self.seeds = table, root, seeds
        self.epochs, self.overrides, self.teachers = epochs, overrides, teachers
        self.common = [text_override("data.path", data)] if data else []
        self.runs: dict[str, PlannedRun] = {}

    def _add(self, run: PlannedRun, role: str) -> str:
        existing = self.runs.get(run.name)
        if existing is None:
            self.runs[run.name] = run
            existing = run
        if role not in existing.roles:
            existing.roles = sorted([*existing.roles, role], key=ROLES.index)
        return existing.name

    def _overrides(self, preset: str, method: str, seed: int, extra: tuple[str, ...] = ()) -> list[str]:
        user = [o for o in self.overrides if _applies(o, method)]
        return [f"seed={seed}", *extra, *_schedule_overrides(preset, self.epochs), *self.common, *user]

    def vanilla(self, model: str, seed: int, role: str) -> str:
        """The run of ``model`` trained alone (teacher or plain student); a given checkpoint for a teacher."""
        family = self.table.family
        preset = f"{family}/{model}/vanilla"
        if preset not in list_presets():
            raise UserError(f"no preset {preset} to train the {role} {model}")
        external = role == TEACHER and model in self.teachers
        if external:
            seed, name = TEACHER_SEED, f"{family}/{model}/{EXTERNAL}"
        else:
            name = f"{family}/{model}/vanilla/seed{seed}"
        run = PlannedRun(
            name=name,
            roles=[],
            teacher=None,
            student=model,
            method="vanilla",
            variant=EXTERNAL if external else "vanilla",
            seed=seed,
            preset=preset,
            overrides=self._overrides(preset, "vanilla", seed),
            out=str(self.root / name),
            checkpoint=self.teachers[model] if external else None,
        )
        return self._add(run, role)

    def distilled(self, cell: Cell, seed: int) -> str:
        """The run of a distilled student; its teacher is planned first."""
        family, variant = self.table.family, cell.variant
        assert variant is not None
        teacher_run = self.runs[self.vanilla(cell.teacher, TEACHER_SEED, TEACHER)]
        teacher_ckpt = teacher_run.checkpoint or str(teacher_weights(teacher_run.out))
        preset = f"{family}/{cell.pair}/{variant.method}"
        name = f"{family}/{cell.pair}/{variant.key}/seed{seed}"
        extra = (*variant.overrides, text_override("model.teacher_checkpoint", teacher_ckpt))
        run = PlannedRun(
            name=name,
            roles=[],
            teacher=cell.teacher,
            student=cell.student,
            method=variant.method,
            variant=variant.key,
            seed=seed,
            preset=preset,
            overrides=self._overrides(preset, variant.method, seed, extra),
            out=str(self.root / name),
            depends_on=teacher_run.name,
        )
        return self._add(run, DISTILL)

    def cell(self, cell: Cell) -> list[str]:
        if cell.kind == UNAVAILABLE:
            return []
        if cell.kind == TEACHER:
            return [self.vanilla(cell.teacher, TEACHER_SEED, TEACHER)]
        if cell.kind == STUDENT:
            return [self.vanilla(cell.student, seed, STUDENT) for seed in self.seeds]
        return [self.distilled(cell, seed) for seed in self.seeds]


def _order(run: PlannedRun) -> tuple:
    """Teachers first; then every student of seed 0, then of seed 1, … (a first full table early)."""
    return (0 if TEACHER in run.roles else 1, run.seed, 0 if STUDENT in run.roles else 1)


def _validate(runs: list[PlannedRun], overrides: list[str]) -> None:
    """Resolve one run per preset and variant so that a bad override fails before anything runs."""
    seen = set()
    for run in runs:
        key = (run.preset, run.variant)
        if key not in seen:
            seen.add(key)
            run.config()
    unused = [o for o in overrides if not any(o in r.overrides for r in runs)]
    if unused:
        raise UserError(f"override {unused[0]} applies to no run of this table (no planned method takes it)")


def plan_table(
    table: str | TableSpec,
    out: str | Path = "runs/reproduce",
    *,
    seeds: list[int] | tuple[int, ...] = DEFAULT_SEEDS,
    data: str | None = None,
    epochs: int | None = None,
    pairs: list[str] | None = None,
    methods: list[str] | None = None,
    overrides: list[str] | None = None,
    teachers: dict[str, str] | None = None,
) -> Plan:
    """Every run of ``table`` (teachers first), each with its preset, overrides, folder and status."""
    spec = get_table(table) if isinstance(table, str) else table
    spec = select(spec, pairs, methods)
    seeds = tuple(dict.fromkeys(int(s) for s in seeds))
    if not seeds or any(s < 0 for s in seeds):
        raise UserError(f"--seeds must list non-negative integers, got {list(seeds)}")
    overrides = list(overrides or [])
    _check_user_overrides(overrides)
    teachers = dict(teachers or {})
    table_teachers = {c.teacher for c in spec.cells.values()}
    foreign = sorted(set(teachers) - table_teachers)
    if foreign:
        raise UserError(
            f"--teacher {foreign[0]}: not a teacher of {spec.name} (its teachers: {', '.join(sorted(table_teachers))})"
        )
    root = Path(out).expanduser().resolve()
    planner = _Planner(
        spec, root, seeds, epochs, str(Path(data).expanduser().resolve()) if data else None, overrides, teachers
    )
    cell_runs = {key: planner.cell(cell) for key, cell in spec.cells.items()}
    runs = sorted(planner.runs.values(), key=_order)
    _validate(runs, overrides)
    for run in runs:
        refresh_status(run)
    options = {"epochs": epochs, "pairs": pairs, "methods": methods, "overrides": overrides, "data": data}
    return Plan(spec, root, seeds, runs, cell_runs, {k: v for k, v in options.items() if v})


def refresh_status(run: PlannedRun) -> str:
    """Look at the run's folder: missing, partial (resumable), done, or conflict (another configuration)."""
    out = Path(run.out)
    run.detail = ""
    if run.external:
        result = out / "result.json"
        done = False
        if result.is_file():
            try:
                done = json.loads(result.read_text()).get("checkpoint") == run.checkpoint
            except (OSError, ValueError):
                done = False
        run.status = DONE if done else MISSING
        return run.status
    if not (out / "config.yaml").is_file():
        run.status, run.epochs_done = MISSING, 0
        return run.status
    cfg = run.config()
    differences = config_differences(read_config(out), cfg)
    if differences:
        run.status = CONFLICT
        run.detail = f"{out} was trained with another configuration (differs in {', '.join(differences)})"
        return run.status
    epoch = checkpoint_epoch(out / "checkpoints" / "last.pt") or 0
    run.epochs_done = epoch
    run.status = DONE if epoch >= cfg.train.epochs else PARTIAL if epoch else MISSING
    return run.status
