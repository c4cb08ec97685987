"""``rld tune``: choose hyper-parameters on a validation split of the *training* set, then train the
chosen point once more on the whole training set and report its test accuracy.

``tune(plan_tune("demo/rld", ["method.beta=2,8", "method.temperature=2,4"], out="runs/tune"))``:

1. **Validation split.** A stratified, seeded fraction (``--val-fraction``, default 0.1; seed
   ``--split-seed``, default 0) of the training split is held out (:mod:`rld.data.holdout`) and
   recorded in ``OUT/val_split.json`` (fraction, seed, sizes, the held-out positions). Every grid
   run is an ordinary run whose configuration says ``data.holdout=F data.holdout_seed=K``: it trains
   on the rest and evaluates on the held-out images (evaluation transform, no augmentation); its
   data set's test split is never built. For a single image folder or a manifest split by
   ``data.val_fraction`` (whose train/test split follows the run's seed) the split of the first seed
   is computed once, saved as ``OUT/split.json`` and used by every run of the tune, grid and final,
   so no run trains on another seed's test images.
2. **Grid.** Every point × seed is trained in lockstep (:func:`rld.engine.sweep.train_runs`: one
   data stream per seed, the teacher run once per step or read from its cache; with batched students
   the seeds of a device-resident data set share one stacked step) in
   ``OUT/grid/KEY=V,…,seed=S``; ``--resume`` continues every run from its ``last.pt``.
3. **Selection** (:func:`choose`). The point with the highest validation top-1 *at the last epoch*,
   averaged over the seeds. The last epoch, not each run's best: the final run is reported at its
   last epoch (it has no validation images to pick an epoch by), and a run's best epoch is a
   maximum over noisy evaluations, an optimistic number chosen with the validation labels. Ties go
   to the smaller value of the first grid key (numbers compared as numbers, other values in the
   order given), then of the next key. The rule is logged with the chosen point and saved in
   ``OUT/tune.json``.
4. **Final run.** The chosen point, without ``data.holdout``, one ordinary run per seed in
   ``OUT/final/seed=S`` — exactly what ``rld train PRESET OVERRIDES POINT --seed S`` (with the same
   ``--epochs``, ``--teacher``, ``--data``) trains. It is the only phase that builds the test split.
   Like every run it logs its test accuracy each epoch; the tune reports the last epoch's, fixed in
   advance, so nothing is chosen on the test set.
5. **Outputs.** ``OUT/tune.csv`` (every point's validation top-1 per seed, their mean, the chosen
   row), ``OUT/tune.png`` (two-key grids: a heat map of the means), ``OUT/tune.json`` (the plan, the
   rule, the chosen point, the final test accuracy), read by ``rld report``.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rld.config import RunConfig, resolve_with_flags
from rld.data.sources import SPLIT_FILE
from rld.engine import checkpoint as ckpt
from rld.engine import train
from rld.engine.distributed import World
from rld.engine.sweep import SweepRun, _folder_part, group_runs, parse_grid, split_values, train_runs
from rld.engine.trainer import build_run_data, prepare_out_dir
from rld.errors import UserError
from rld.experiments.runs import config_differences, read_config, read_metrics
from rld.trackers import Tracking
from rld.trackers import check as check_trackers

log = logging.getLogger("rld")

FORMAT = "rld-tune-1"
TUNE_FILE = "tune.json"
VAL_SPLIT_FILE = "val_split.json"
CSV_FILE = "tune.csv"
HEATMAP_FILE = "tune.png"
GRID_DIR = "grid"
FINAL_DIR = "final"
DEFAULT_VAL_FRACTION = 0.1
# Keys rld tune sets itself: the seeds come from --seeds, the hold-out from --val-fraction / --split-seed.
RESERVED = {
    "seed": "give the seeds with --seeds",
    "data.holdout": "rld tune sets it from --val-fraction",
    "data.holdout_seed": "rld tune sets it from --split-seed",
}
# The shorthand flags of the final run's equivalent `rld train` command.
FLAGS = (("model.teacher_checkpoint", "--teacher"), ("data.path", "--data"), ("train.device", "--device"))


# ----------------------------------------------------------------------------- planning


@dataclass
class TunePlan:
    """Everything a tune trains, before anything is trained.

    ``axes``: the grid (key, values), in the order given; ``points``: their product, one dict per
    point; ``grid``: the grid runs, seed-major (one :class:`SweepRun` per point and seed, each with
    ``data.holdout``); ``overrides``: applied to every run (grid and final); ``flags``: the shorthand
    flags (``--teacher``, ``--data``, ``--device``) as configuration keys.
    """

    source: str
    out: Path
    axes: list[tuple[str, list[str]]]
    points: list[dict[str, str]]
    seeds: list[int]
    overrides: list[str]
    flags: dict[str, Any]
    epochs: int | None
    val_fraction: float
    split_seed: int
    grid: list[SweepRun]

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.axes]

    @property
    def train_epochs(self) -> int:
        """The epochs every run trains (``--epochs`` or the preset's)."""
        return self.grid[0].cfg.train.epochs

    def grid_run(self, point: dict[str, str], seed: int) -> SweepRun:
        return next(r for r in self.grid if r.values == point and r.cfg.seed == seed)

    def final_config(self, point: dict[str, str], seed: int) -> RunConfig:
        """The final run of ``point``: resolved as ``rld train`` resolves :meth:`train_command`."""
        return resolve_with_flags(
            self.source, [*self.overrides, *_assign(point)], {**self.flags, "seed": seed}, self.epochs
        )

    def final_out(self, seed: int) -> Path:
        return self.out / FINAL_DIR / f"seed={seed}"

    def train_command(self, point: dict[str, str], seed: int) -> str:
        """The ``rld train`` command that trains what the final run of ``point`` and ``seed`` trains."""
        parts = ["rld", "train", self.source, *self.overrides, *_assign(point), "--seed", str(seed)]
        parts += ["--epochs", str(self.epochs)] if self.epochs is not None else []
        for key, flag in FLAGS:
            if self.flags.get(key) is not None:
                parts += [flag, str(self.flags[key])]
        return shlex.join(parts)


def _assign(point: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in point.items()]


def _check_keys(items: list[str], where: str) -> None:
    for item in items:
        key = item.partition("=")[0].strip()
        if key in RESERVED:
            raise UserError(f"{key} cannot be set in {where}: {RESERVED[key]}")


def plan_tune(
    source: str,
    grid: list[str],
    *,
    out: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    seeds: list[int] | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    split_seed: int = 0,
    epochs: int | None = None,
    flags: dict[str, Any] | None = None,
) -> TunePlan:
    """Plan a tune: ``grid`` items ``KEY=V1,V2,…`` are its axes (a single value applies to every run,
    like an override); ``overrides`` apply to every run; ``seeds`` default to the configuration's
    seed; ``epochs`` scales the schedule as ``rld train --epochs`` does; ``flags``: configuration keys
    set by the shorthand flags (``model.teacher_checkpoint``, ``data.path``, ``train.device``)."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    for item in grid:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UserError(f"--grid takes KEY=V1,V2 items (e.g. method.beta=2,4,8,16), got {item!r}")
    _check_keys(list(grid), "--grid")
    _check_keys(list(overrides), "the overrides")
    fixed, axes = parse_grid(list(grid))
    if not axes:
        raise UserError("--grid needs at least one KEY=V1,V2 with two or more values, e.g. method.beta=2,4,8,16")
    overrides = [*overrides, *fixed]
    swept = {k for k, _ in axes}
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in swept:
            raise UserError(f"{key} is both a grid key and an override; give its values in --grid only")
        if len(split_values(item.partition("=")[2])) > 1:
            raise UserError(f"{item!r}: several values are a grid axis; give it with --grid")
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if split_seed < 0:
        raise UserError(f"--split-seed must be >= 0, got {split_seed}")
    if seeds is None:
        seeds = [resolve_with_flags(source, overrides, flags, epochs).seed]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds must list distinct seeds, got {seeds}")
    keys = [k for k, _ in axes]
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(vs for _, vs in axes))]
    holdout = [f"data.holdout={val_fraction}", f"data.holdout_seed={split_seed}"]
    out = Path(out)
    runs = []
    for seed in seeds:
        for point in points:
            cfg = resolve_with_flags(source, [*overrides, *_assign(point), *holdout], {**flags, "seed": seed}, epochs)
            name = ",".join([*(f"{k}={_folder_part(v)}" for k, v in point.items()), f"seed={seed}"])
            runs.append(SweepRun(name, dict(point), cfg, out / GRID_DIR / name, Tracking(source, str(out / GRID_DIR))))
    if len({r.name for r in runs}) != len(runs):
        raise UserError("two runs of the grid would share a folder: the grid repeats a value")
    first = runs[0].cfg
    if first.data.name == "hf" and first.data.val_fraction is not None and len(seeds) > 1:
        raise UserError(
            "a Hugging Face data set split by data.val_fraction is split anew for each seed, so the seeds' test "
            "images would differ: tune it with one seed, or without data.val_fraction if it has a validation split"
        )
    return TunePlan(source, out, axes, points, list(seeds), overrides, flags, epochs, val_fraction, split_seed, runs)


# ----------------------------------------------------------------------------- the validation split


def probe_data(plan: TunePlan):
    """The data of the first grid run, built on the CPU (no image is read, the test split is not
    built): its :class:`~rld.data.holdout.Holdout` and, for a single folder or a manifest, its
    train/test split (the one saved in the tune folder when resuming)."""
    saved = plan.out if (plan.out / SPLIT_FILE).is_file() else None
    return build_run_data(plan.grid[0].cfg, torch.device("cpu"), World(), saved)


def val_split_record(plan: TunePlan, holdout) -> dict[str, Any]:
    """What ``val_split.json`` holds: the data set, the fraction, the seed, the sizes, the held-out positions."""
    d = plan.grid[0].cfg.data
    return {"format": FORMAT, "data": d.name, "path": d.path, "train_per_class": d.train_per_class, **holdout.to_dict()}


def _check_saved_split(path: Path, record: dict[str, Any]) -> None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} ({err}); remove the tune folder to start again") from err
    keys = ("fraction", "seed", "train_size", "val_indices")
    differ = [k for k in keys if saved.get(k) != record[k]]
    if differ:
        raise UserError(
            f"{path} holds another validation split (differs in {', '.join(differ)}): the training set, "
            "--val-fraction or --split-seed changed since the tune started; resume with the same ones or "
            "choose another --out"
        )


def _pin(folder: Path, split_text: str) -> None:
    """Save the tune's train/test split in a run folder (``split.json``), where the run reads it."""
    path = folder / SPLIT_FILE
    if path.is_file():
        if path.read_text() != split_text:
            raise UserError(f"{path} holds another train/test split than the tune's; choose another --out")
        return
    folder.mkdir(parents=True, exist_ok=True)
    ckpt.write_text_atomic(path, split_text)


# ----------------------------------------------------------------------------- selection


def validation_top1(run_dir: Path, epochs: int) -> float:
    """The validation top-1 of a finished grid run at its last epoch (its metrics.csv's last row:
    a grid run evaluates the held-out part of the training split)."""
    rows = read_metrics(run_dir)
    if not rows or rows[-1].get("epoch") != epochs:
        raise UserError(f"{run_dir} has not finished its {epochs} epochs; continue the tune with --resume")
    return float(rows[-1]["test_top1"])


def _order(values: list[str], value: str) -> tuple:
    """Sort key of a grid value: numbers by value, anything else in the order given (after them)."""
    try:
        number = float(value)
    except ValueError:
        return (1, 0.0, values.index(value))
    return (0, number, 0)


def mean(values: list[float]) -> float:
    """The mean of ``values``, exactly rounded (``math.fsum``): the same for the same values in any order."""
    return math.fsum(values) / len(values)


def choose(axes: list[tuple[str, list[str]]], points: list[dict[str, str]], means: list[float]) -> int:
    """Index of the chosen point: the highest mean; ties to the smaller value of the first key, then the next."""
    best = max(means)
    tied = [i for i, m in enumerate(means) if m == best]
    return min(tied, key=lambda i: tuple(_order(values, points[i][key]) for key, values in axes))


def rule_text(plan: TunePlan) -> str:
    seeds = ", ".join(str(s) for s in plan.seeds)
    ties = ", then ".join(f"the smaller {k}" for k in plan.keys)
    return (
        f"highest validation top-1 at the last epoch (epoch {plan.train_epochs}), mean over seed"
        f"{'s' if len(plan.seeds) > 1 else ''} {seeds}; the last epoch because the final run is reported at its "
        f"last epoch and a run's best epoch would be picked with the validation labels; ties: {ties}"
    )


def point_text(point: dict[str, str]) -> str:
    return " ".join(_assign(point))


# ----------------------------------------------------------------------------- outputs


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def write_csv(path: Path, plan: TunePlan, scores: list[list[float]], chosen: int) -> None:
    """``tune.csv``: one row per point: its values, the validation top-1 of each seed, their mean, chosen (1/0)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*plan.keys, *(f"val_top1_seed{s}" for s in plan.seeds), "val_top1_mean", "chosen"])
    for i, (point, values) in enumerate(zip(plan.points, scores)):
        writer.writerow([*point.values(), *map(_fmt, values), _fmt(mean(values)), int(i == chosen)])
    ckpt.write_text_atomic(path, buf.getvalue())


def write_heatmap(path: Path, plan: TunePlan, means: list[float], chosen: int) -> Path | None:
    """The heat map of a two-key grid (None for other grids)."""
    if len(plan.axes) != 2:
        return None
    from rld.viz.figures import save, tune_heatmap_figure

    (row_key, rows), (col_key, cols) = plan.axes
    grid = np.asarray(means, dtype=np.float64).reshape(len(rows), len(cols))
    r, c = divmod(chosen, len(cols))
    seeds = ("seeds " if len(plan.seeds) > 1 else "seed ") + ", ".join(str(s) for s in plan.seeds)
    title = (
        f"{plan.source}: validation top-1 at the last epoch ({plan.train_epochs}), mean over {seeds}\n"
        f"{plan.grid[0].cfg.data.holdout} of the training images held out; chosen point framed in red"
    )
    return save(tune_heatmap_figure(row_key, rows, col_key, cols, grid, (r, c), title), path)


def _write_json(plan: TunePlan, record: dict[str, Any]) -> None:
    ckpt.write_text_atomic(plan.out / TUNE_FILE, json.dumps(record, indent=2) + "\n")


def plan_record(plan: TunePlan, holdout) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "status": "grid",
        "preset": plan.source,
        "overrides": plan.overrides,
        "grid": {k: v for k, v in plan.axes},
        "seeds": plan.seeds,
        "epochs": plan.train_epochs,
        "validation": {
            "fraction": plan.val_fraction,
            "split_seed": plan.split_seed,
            "train_size": holdout.train_size,
            "val_size": holdout.val_size,
            "file": VAL_SPLIT_FILE,
        },
        "rule": rule_text(plan),
    }


# ----------------------------------------------------------------------------- running


def describe(plan: TunePlan, holdout) -> list[str]:
    """The plan in words (``--dry-run``)."""
    n = holdout.train_size
    t = plan.grid[0].cfg.train
    schedule = f"lr_step={t.lr_step}" if t.lr_step else f"lr_milestones={t.lr_milestones}"
    groups = group_runs(plan.grid)
    lines = [
        f"tune {plan.source} -> {plan.out}",
        "grid: " + "; ".join(f"{k} = {', '.join(vs)}" for k, vs in plan.axes) + f" ({len(plan.points)} points)"
        f" x seeds {', '.join(map(str, plan.seeds))} = {len(plan.grid)} runs in {len(groups)} lockstep group(s), "
        f"{plan.train_epochs} epochs each ({schedule})",
        f"validation: {holdout.val_size} of the {n} training images held out (fraction {plan.val_fraction}, "
        f"stratified, split seed {plan.split_seed}; {VAL_SPLIT_FILE}), evaluated without augmentation; each grid "
        f"run trains on the other {n - holdout.val_size}; the test split is not built",
    ]
    lines += [f"  {run.out}" for run in plan.grid]
    lines.append(f"rule: {rule_text(plan)}")
    lines.append(
        f"final: the chosen point retrained on all {n} training images, one run per seed "
        f"({plan.out / FINAL_DIR}/seed=S, as `rld train PRESET … --seed S`), then evaluated on the test split; "
        "the last epoch's test top-1 is reported"
    )
    return lines


def _check_final_folder(out: Path, cfg: RunConfig, point: dict[str, str]) -> None:
    """A resumed tune whose grid now picks another point than its finished final run: say so."""
    if not (out / "checkpoints" / "last.pt").is_file() or not (out / "config.yaml").is_file():
        return
    differ = config_differences(read_config(out), cfg)
    if differ:
        raise UserError(
            f"{out} holds a final run of another point (differs in {', '.join(differ)}); the grid now picks "
            f"{point_text(point)}: remove {out.parent} to train the new final run, or choose another --out"
        )


def tune(plan: TunePlan, *, resume: bool = False) -> dict[str, Any]:
    """Run a planned tune (see the module docstring); returns what ``tune.json`` holds."""
    out = plan.out
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("rld tune runs in one process: start it without torchrun")
    if not resume and (out / TUNE_FILE).exists():
        raise UserError(f"{out} already holds a tune; add --resume to continue it or choose another --out")
    for run in plan.grid:  # every grid run may start (or resume) before anything is written
        check_trackers(run.cfg.train.loggers)
        prepare_out_dir(run.out, resume, run.cfg)
    data = probe_data(plan)
    holdout = data.holdout
    record = val_split_record(plan, holdout)
    if (out / VAL_SPLIT_FILE).is_file():
        _check_saved_split(out / VAL_SPLIT_FILE, record)
    split_text = data.split.to_json() if data.split is not None else None
    del data
    out.mkdir(parents=True, exist_ok=True)
    ckpt.write_text_atomic(out / VAL_SPLIT_FILE, json.dumps(record) + "\n")
    if split_text is not None:
        _pin(out, split_text)
        for run in plan.grid:
            _pin(run.out, split_text)
    summary = plan_record(plan, holdout)
    _write_json(plan, summary)
    log.info(
        "tune: %d points x %d seed(s) on %d of the %d training images; validation: %d held out (fraction %g, "
        "split seed %d); the test split is not read before the final run",
        len(plan.points),
        len(plan.seeds),
        holdout.train_size - holdout.val_size,
        holdout.train_size,
        holdout.val_size,
        plan.val_fraction,
        plan.split_seed,
    )

    train_runs(plan.grid, summary=out / GRID_DIR / "sweep.csv", resume=resume)

    scores = [[validation_top1(plan.grid_run(p, s).out, plan.train_epochs) for s in plan.seeds] for p in plan.points]
    means = [mean(v) for v in scores]
    chosen = choose(plan.axes, plan.points, means)
    point = plan.points[chosen]
    write_csv(out / CSV_FILE, plan, scores, chosen)
    figure = write_heatmap(out / HEATMAP_FILE, plan, means, chosen)
    summary.update(
        status="selected",
        points=[
            {"values": p, "val_top1": dict(zip(map(str, plan.seeds), v)), "val_top1_mean": m}
            for p, v, m in zip(plan.points, scores, means)
        ],
        chosen=point,
        chosen_val_top1=means[chosen],
        csv=CSV_FILE,
        figure=figure.name if figure is not None else None,
    )
    _write_json(plan, summary)
    log.info("rule: %s", rule_text(plan))
    log.info("chosen: %s (mean validation top-1 %.2f%%)", point_text(point), means[chosen])

    finals = []
    for seed in plan.seeds:
        cfg, run_out = plan.final_config(point, seed), plan.final_out(seed)
        if resume:
            _check_final_folder(run_out, cfg, point)
        prepare_out_dir(run_out, resume, cfg)
        if split_text is not None:
            _pin(run_out, split_text)
        log.info("final run (seed %d), the chosen point on the whole training set: %s", seed, run_out)
        result = train(cfg, run_out, resume=resume, tracking=Tracking(plan.source, str(out / FINAL_DIR)))
        finals.append({"seed": seed, "out": str(run_out.relative_to(out)), "test_top1": result["last_top1"]})
    top1 = [f["test_top1"] for f in finals]
    test_mean = mean(top1)
    test_std = math.sqrt(sum((v - test_mean) ** 2 for v in top1) / (len(top1) - 1)) if len(top1) > 1 else 0.0
    summary.update(
        status="done",
        final={
            "runs": finals,
            "epoch": plan.train_epochs,
            "test_top1_mean": test_mean,
            "test_top1_std": test_std,
            "commands": [plan.train_command(point, s) for s in plan.seeds],
        },
    )
    _write_json(plan, summary)
    log.info(
        "final test top-1 at the last epoch: %.2f ± %.2f %% (%s)",
        test_mean,
        test_std,
        ", ".join(f"seed {f['seed']}: {f['test_top1']:.2f}" for f in finals),
    )
    return summary


def read_tune(folder: str | Path) -> dict[str, Any]:
    """The ``tune.json`` of a tune folder."""
    path = Path(folder) / TUNE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not a tune record of this rld version")
    return data
