"""Lockstep sweeps: several students trained in one process on one data stream.

``sweep("demo/rld", ["method.beta=2,8"], seeds=[0, 1], out="runs/sweep")`` plans one run per point of
the grid (every ``KEY=V1,V2,…`` override is an axis; single values apply to all runs) and per seed.
Each run is a :class:`~rld.engine.trainer.Run` with its own configuration, student, optimizer state,
method state, global-RNG stream and run folder — ``config.yaml``, ``metrics.csv``, ``checkpoints/`` —
exactly as if it were trained alone by ``rld train`` with the same configuration.

Groups. Runs that would see the same batches share one data stream: same seed (the data order and
augmentation are a function of seed and epoch), data set, batch size, device and teacher (with its
cache settings) — the stream signature (:func:`stream_signature`). The runs of one stream train in
one lockstep group: every batch is produced once and the teacher forward (or cache lookup) runs
once; then the students step on it (:func:`group_step`). With ``train.batch_students`` (``auto``:
on CUDA) the students of one architecture whose methods read only logits step as one batched
computation (:mod:`rld.engine.batched`: stacked parameters, ``vmap``), equal to their single runs up
to float rounding; the others (and every student with ``off``, the default on the CPU, where
batching saves nothing) step in turn, bit-identical to their single runs.

Seeds. With batched students, the runs of several seeds train in one group too when their data sets
are equal whatever the seed (the device-resident data sets: digits and cifar100 with
``data.pipeline`` device or auto; a folder's validation split depends on the seed) and the groups run in
this process (:func:`group_runs`): every seed keeps its own data stream — one loader per seed over
the one copy of the images on the device — the teacher runs once per step on the seeds' batches
together, and the students of all seeds stack into one batched computation, each on its own
seed's batch. Otherwise (``off``, other data, a ``ray`` executor) each seed is a group of its own and
the groups run one after another. With ``train.static_step`` (the default on CUDA) the group's whole
step — batches, teacher, every student's forward, backward and update — is one
:class:`~rld.engine.static.StaticSteps` step, replayed as one CUDA graph per batch size.

Folders: ``OUT/<key>=<value>,…,seed=<S>`` (e.g. ``runs/sweep/method.beta=8,seed=0``) and
``OUT/sweep.csv``, one summary row per run. The time columns of ``metrics.csv`` (``epoch_time``,
``train_time``) measure the group's wall time: the students of a group share each epoch.

Resume (``resume=True`` / ``--resume``): every run continues from its own ``last.pt`` (or starts
fresh). Runs of a group may stand at different epochs (a sweep killed while checkpointing, a run
added to the grid): epoch ``e`` is stepped for the runs that have not finished it yet, so the
laggards catch up on their own and the group continues in lockstep from the common point. Each run
ends with exactly the metrics of an uninterrupted run. A sweep stopped inside an epoch (SIGTERM,
SIGINT, ``train.checkpoint_every_steps``) continues from that step when all runs of a group stopped
there, else from the epoch's start (:mod:`rld.engine.guard`).

Faults. Before the first group trains, everything that can refuse a run is checked for every run:
its configuration, its folder, and what its group builds — device, data, teacher, students, methods
(:func:`check_runs`; a group that differs from an earlier one only in its seed is not built twice) —
so a mistake that only some runs make (a grid over ``data.path``, ``train.device``,
``model.teacher_checkpoint``, …) refuses the sweep before any run trains. Every run folder is locked
before the first group starts (:mod:`rld.engine.lock`): if another process trains one of them, the
sweep is refused and writes nothing. A run whose loss goes non-finite
stops (its summary row gets ``status`` ``diverged``); the others go on.

Executors. By default the groups run one after another in this process. With a ``ray`` executor
(:mod:`rld.executor`) every group is a task of a Ray cluster and the groups run side by side
(one GPU each by default); each task locks its own group's folders, so a group that another process
is training is reported (``status`` ``busy``) and the others go on; a group whose task failed gets
rows with its ``status`` and ``error``. ``sweep.csv`` is rewritten as each group ends.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rld import executor as ex
from rld.config import FOLDER_DATA, RunConfig, override_key, resolve, schedule_overrides
from rld.engine import checkpoint as ckpt
from rld.engine import guard, lock
from rld.engine.batched import batch_students_wanted
from rld.engine.distributed import World
from rld.engine.loop import Member, train_group
from rld.engine.teacher import build_teacher_fn
from rld.engine.trainer import Run, build_run_data, data_info, method_inputs, prepare_out_dir, setup
from rld.errors import UserError
from rld.methods import get_spec, method_params
from rld.trackers import Tracking
from rld.trackers import check as check_trackers

log = logging.getLogger("rld")


@dataclass
class SweepRun:
    """One point of the grid: its folder name, the swept values, the resolved config, the folder;
    ``tracking``: the preset and the group (the sweep) its trackers tag it with."""

    name: str
    values: dict[str, str]
    cfg: RunConfig
    out: Path
    tracking: Tracking | None = None


# ----------------------------------------------------------------------------- planning


def split_values(text: str) -> list[str]:
    """``"2,8"`` -> ``["2", "8"]``; commas inside brackets, braces or quotes do not split.

    ``"[3,5],[4,6]"`` -> ``["[3,5]", "[4,6]"]``.
    """
    parts, depth, quote, start = [], 0, "", 0
    for i, c in enumerate(text):
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "[{(":
            depth += 1
        elif c in "]})":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_grid(overrides: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Split overrides into fixed ``KEY=VALUE`` ones and axes ``(KEY, [V1, V2, …])``."""
    fixed: list[str] = []
    axes: list[tuple[str, list[str]]] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(
                f"sweep overrides must look like KEY=V1,V2 or KEY=VALUE (e.g. method.beta=2,8), got {item!r}"
            )
        values = split_values(value)
        if len(values) == 1:
            fixed.append(item)
            continue
        if any(not v for v in values):
            raise UserError(f"empty value in {item!r}: write KEY=V1,V2 without stray commas")
        if any(key.strip() == k for k, _ in axes):
            raise UserError(f"{key.strip()} is swept twice; give all its values in one KEY=V1,V2")
        axes.append((key.strip(), values))
    return fixed, axes


def _folder_part(value: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=+[]" else "_" for c in value)


def plan_sweep(
    source: str,
    overrides: list[str],
    *,
    seeds: list[int] | None,
    out: str | Path,
    extra: list[str] | tuple[str, ...] = (),
    epochs: int | None = None,
) -> list[SweepRun]:
    """The runs of a sweep, seed-major, each with its resolved (and validated) configuration.

    ``extra`` overrides (the command's flags) apply to every run after the grid's. ``epochs``
    (``--epochs N``) scales each run's own schedule as ``rld train --epochs`` does
    (:func:`rld.config.schedule_overrides`), keeping the values the overrides set.
    """
    fixed, axes = parse_grid(list(overrides))
    explicit = {override_key(o) for o in [*overrides, *extra]} if epochs is not None else set()
    if "train.epochs" in explicit:
        raise UserError("--epochs and train.epochs=… both set train.epochs; give one of them")
    seed_axis = [k for k, _ in axes if k == "seed"]
    if seed_axis and seeds:
        raise UserError("give the seeds either as --seeds or as seed=V1,V2, not both")
    if seed_axis:
        values = [v for k, vs in axes if k == "seed" for v in vs]
        if not all(re.fullmatch(r"[0-9]+", v) for v in values):
            raise UserError(f"seed=V1,V2 takes seeds, integers >= 0 (e.g. seed=0,1,2), got seed={','.join(values)}")
        seeds = [int(v) for v in values]
        axes = [(k, vs) for k, vs in axes if k != "seed"]
    keys = [k for k, _ in axes]
    runs: list[SweepRun] = []
    tracking = Tracking(preset=source, group=str(out))  # a sweep's runs are one group in the trackers
    for seed in seeds or [None]:
        for combo in itertools.product(*(vs for _, vs in axes)):
            chosen = [f"{k}={v}" for k, v in zip(keys, combo)]
            over = [*fixed, *chosen, *extra, *([f"seed={seed}"] if seed is not None else [])]
            cfg = resolve(source, over)
            if epochs is not None:  # the run's own schedule: its method's warm-up, its learning-rate steps
                cfg = resolve(source, [*over, *schedule_overrides(cfg, epochs, keep=explicit)])
            name = ",".join([*(f"{k}={_folder_part(v)}" for k, v in zip(keys, combo)), f"seed={cfg.seed}"])
            runs.append(SweepRun(name, dict(zip(keys, combo)), cfg, Path(out) / name, tracking))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise UserError("two runs of the sweep would share a folder: the grid repeats a value")
    return runs


def stream_signature(cfg: RunConfig) -> tuple:
    """Runs with equal signatures see identical batches and teacher logits: they can share a stream.
    The views a method trains on are part of it (a strong view makes other batches), and so is the
    mode its teacher runs in (OFD's ``teacher_train_mode``: the teacher's outputs differ)."""
    d, m, t = cfg.data, cfg.model, cfg.train
    return (
        cfg.seed,
        get_spec(cfg.method.name).views,
        (d.name, d.path, d.pipeline, d.decoder, d.num_workers, d.eval_batch_size, d.train_per_class, d.image_size),
        (d.val_fraction, d.holdout, d.holdout_seed, d.skip_bad_images, d.image_column, d.label_column),
        (t.batch_size, t.device, t.deterministic, t.channels_last, t.amp, t.batch_students),
        (m.teacher, m.teacher_checkpoint, m.teacher_weights, m.dataset),
        (t.teacher_cache, t.cache_dir, t.cache_precision),
        bool(method_params(cfg.method).get("teacher_train_mode", False)),  # the teacher's BatchNorm mode
    )


SEED_FREE_DATA = ("digits", "cifar100")
"""Data sets whose images and splits do not depend on the seed (on the device-resident loader:
``data.pipeline`` device or auto)."""


def seeds_share_a_group(cfg: RunConfig) -> bool:
    """Whether runs of ``cfg``'s settings and other seeds may train in one group: their students step
    batched (``train.batch_students`` on, or ``auto`` on CUDA) on device-resident data that is the same
    for every seed, each seed on its own stream."""
    d, t = cfg.data, cfg.train
    if d.pipeline == "pil" or d.name not in SEED_FREE_DATA:
        return False
    name = ("cuda" if torch.cuda.is_available() else "cpu") if t.device == "auto" else t.device
    try:
        device = torch.device(name)
    except RuntimeError:
        return False  # the run refuses it (rld.engine.trainer.resolve_device)
    return batch_students_wanted(t.batch_students, device)


def group_runs(runs: list[SweepRun], share_seeds: bool = True) -> list[list[SweepRun]]:
    """Runs grouped by :func:`stream_signature`, in order of first appearance; with ``share_seeds``,
    the streams of several seeds form one group where :func:`seeds_share_a_group` (its runs seed-major)."""
    groups: dict[tuple, list[SweepRun]] = {}
    for run in runs:
        signature = stream_signature(run.cfg)
        key = signature[1:] if share_seeds and seeds_share_a_group(run.cfg) else signature
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def group_seeds(group: list[SweepRun]) -> list[int]:
    """The seeds of a group's data streams, in order of first appearance."""
    return list(dict.fromkeys(r.cfg.seed for r in group))


def describe_group(group: list[SweepRun]) -> str:
    """``"seed 0: 4 runs"`` or ``"seeds 0, 1: 8 runs"``."""
    seeds = group_seeds(group)
    which = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    return f"{which}: {len(group)} run{'s' if len(group) != 1 else ''}"


# ----------------------------------------------------------------------------- execution


def _build_group(
    group: list[SweepRun],
    resume_from: dict[Path, Path | None],
    resume: bool,
    *,
    check: bool = False,
    teacher: bool = True,
):
    """What a lockstep group trains with: ``(world, data, loaders, teacher_fn, members)``. ``check``:
    only to see that it can be built (:func:`check_runs`): the teacher-logit cache is not opened (that
    would fill it), only its need of the device-resident loader is checked (an image folder's store of
    teacher outputs is opened: that only reads it); ``teacher=False``: nor is
    the teacher loaded."""
    cfg0 = group[0].cfg
    world = World()
    device = setup(cfg0, world)
    # a train/validation split saved in the first run's folder (split.json) is used again, as rld train does
    data = build_run_data(cfg0, device, world, group[0].out)
    seeds = group_seeds(group)  # one data stream per seed, over the one copy of the data set
    loaders = [data.train, *(data.train.with_seed(seed) for seed in seeds[1:])]
    needs_teacher = teacher and any(get_spec(r.cfg.method.name).needs_teacher for r in group)
    folder = cfg0.data.name.lower() in FOLDER_DATA  # the store of per-epoch outputs: opening it only reads
    if check and needs_teacher and cfg0.train.teacher_cache != "off" and not folder:
        from rld.fast.cache import require_device_loader

        require_device_loader(cfg0.train.teacher_cache, data.train)
        cfg0 = dataclasses.replace(cfg0, train=dataclasses.replace(cfg0.train, teacher_cache="off"))
    teacher_fn = build_teacher_fn(cfg0, data.num_classes, device, data.train) if needs_teacher else None
    members: list[Member] = []
    for r in group:
        run = Run(
            r.cfg,
            r.out,
            world=world,
            device=device,
            num_classes=data.num_classes,
            resume_from=resume_from[r.out],
            resume=resume,
            **method_inputs(r.cfg, data, teacher_fn),
            data_info=data_info(data),
            split=data.split,
            tracking=r.tracking,
        )
        members.append(Member.own_rng(run, tag=r, stream=seeds.index(r.cfg.seed)))
    return world, data, loaders, teacher_fn, members


def _run_group(
    group: list[SweepRun], resume_from: dict[Path, Path | None], resume: bool, built: tuple | None = None
) -> list[dict[str, Any]]:
    """Train one lockstep group (``built``: what :func:`_build_group` built for it, else built now)."""
    world, data, loaders, teacher_fn, members = built or _build_group(group, resume_from, resume)
    try:
        failed = train_group(members, data, teacher_fn, world, loaders)
    except BaseException as err:
        for m in members:
            m.run.abort()  # their trackers end their runs (a stop signal closed them already)
            if isinstance(err, UserError):
                m.run.folder.discard()  # new runs refused before their first checkpoint leave no folder
        raise
    if hasattr(teacher_fn, "close"):
        teacher_fn.close()
    rows = []
    for m in members:
        row = {"run": m.tag.name, "seed": m.run.cfg.seed, **m.tag.values, **m.run.close()}
        if id(m) in failed:
            row.update(status="diverged", diverged_epoch=failed[id(m)].epoch)
        rows.append(row)
    return rows


def _write_summary(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns and k not in ("out", "epochs")]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*columns, "out"], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    ckpt.write_text_atomic(path, buf.getvalue())


def sweep(
    source: str,
    overrides: list[str],
    *,
    out: str | Path,
    seeds: list[int] | None = None,
    resume: bool = False,
    extra: list[str] | tuple[str, ...] = (),
    executor: ex.ExecutorOptions | None = None,
    epochs: int | None = None,
) -> list[dict[str, Any]]:
    """Plan and train a lockstep sweep (see the module docstring); returns one summary per run.
    ``executor``: where the groups train (default: in this process, one after another); ``epochs``:
    see :func:`plan_sweep`."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("rld sweep runs in one process: start it without torchrun")
    out = Path(out)
    runs = plan_sweep(source, overrides, seeds=seeds, out=out, extra=extra, epochs=epochs)
    return train_runs(runs, summary=out / "sweep.csv", resume=resume, executor=executor)


def train_runs(
    runs: list[SweepRun],
    *,
    summary: Path | None = None,
    resume: bool = False,
    executor: ex.ExecutorOptions | None = None,
) -> list[dict[str, Any]]:
    """Train planned runs (each with its own configuration and folder) in lockstep groups of one data
    stream (:func:`group_runs`); ``summary``: a CSV rewritten after each group. One summary per run.

    With a ``ray`` ``executor`` each group is a task (see the module docstring)."""
    local = executor is None or executor.kind == "local"
    groups, resume_from = check_runs(runs, resume=resume, share_seeds=local, build=local)
    if not local:
        return _train_groups_elsewhere(groups, runs, summary, executor)
    # then every run folder is locked (one writer per run) until the sweep ends; if another process
    # holds one, none is taken and the sweep is refused
    expected = {r.out: lock.folder_state(r.out) for r in runs}
    first = _build_group(groups[0], resume_from, resume)  # before the locks: refused here, nothing is touched
    locks = lock.hold_all([r.out for r in runs], expected)
    try:
        return _train_groups(groups, runs, resume_from, resume, summary, first)
    finally:
        for held in reversed(locks):  # the last taken first: a folder the first lock created empties last
            lock.release(held.out)


def check_runs(
    runs: list[SweepRun],
    *,
    resume: bool,
    share_seeds: bool = True,
    build: bool = True,
    first: bool = False,
    teachers: bool = True,
) -> tuple[list[list[SweepRun]], dict[Path, Path | None]]:
    """Check everything that can refuse ``runs`` before any trains, writing nothing; returns their
    lockstep groups and the checkpoint each resumes from.

    Trackers, every run's folder (an existing run without ``resume``, a run of another configuration)
    and, with ``build``, what each group builds before it trains (:func:`_build_group`: device, data,
    teacher, students and methods, built and dropped) for every group but the first — which is built
    first anyway, so its mistakes refuse the command before any run trains — unless ``first`` (a
    command that trains something else before these runs: rld demo's teacher). A group that differs
    from an earlier one only in its seed is not built again. ``teachers=False``: the teacher is not
    loaded (its checkpoint is not there yet: rld demo's teacher trains first)."""
    for run in runs:
        check_trackers(run.cfg.train.loggers)  # before anything is written
    groups = group_runs(runs, share_seeds=share_seeds)
    # every run's folder is checked up front (existing runs, another configuration): nothing starts
    # unless all can, and nothing is written before
    resume_from = {r.out: prepare_out_dir(r.out, resume, r.cfg) for r in runs}
    for group in groups:
        _lockstep_positions(group, resume_from)
    if build:
        built = set() if first else {stream_signature(groups[0][0].cfg)[1:]}
        state = ckpt.rng_state()  # building seeds the generators: training then starts as without the check
        try:
            for group in groups if first else groups[1:]:
                key = stream_signature(group[0].cfg)[1:]
                if key not in built:
                    built.add(key)
                    _build_group(group, resume_from, resume, check=True, teacher=teachers)
        finally:
            ckpt.set_rng_state(state)
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.empty_cache()  # what the check built
    return groups, resume_from


def _lockstep_positions(group: list[SweepRun], resume_from: dict[Path, Path | None]) -> None:
    """A group continues inside an epoch (from step.pt) only if all its unfinished runs stopped at the
    same step; otherwise those that did resume from their last.pt (the start of that epoch) and the
    group catches up in lockstep."""
    where = {r.out: guard.resume_point(resume_from[r.out]) for r in group}
    where = {r.out: where[r.out] for r in group if where[r.out][0] <= r.cfg.train.epochs}  # unfinished runs
    if len(set(where.values())) > 1:
        for out, (_, step) in where.items():
            if step:
                last = out / "checkpoints" / "last.pt"
                resume_from[out] = last if last.exists() else None


def _train_groups(groups, runs, resume_from, resume, summary, first=None) -> list[dict[str, Any]]:
    """Train the groups in turn; ``first``: the first group as :func:`_build_group` built it."""
    log.info(
        "sweep: %d runs in %d lockstep group(s) (%s)", len(runs), len(groups), "; ".join(map(describe_group, groups))
    )
    rows: list[dict[str, Any]] = []
    for i, group in enumerate(groups):
        rows += _run_group(group, resume_from, resume, first if i == 0 else None)
        if summary is not None:
            _write_summary(summary, rows)
    return rows


def group_unit(group: list[SweepRun]) -> list[ex.Outcome]:
    """A lockstep group as a unit of :mod:`rld.executor`, trained in the process that runs it.

    Its runs are resumed (``resume=True``): the command checked their folders before it started
    them, so what a folder holds now was trained by this command (an earlier attempt whose worker
    died) or by another launch of it, and is continued, never trained again."""
    outcomes = []
    for row in train_runs(group, resume=True):
        diverged = row.get("status") == "diverged"
        message = f"training diverged in epoch {row.get('diverged_epoch')}" if diverged else ""
        status = ex.DIVERGED if diverged else ex.DONE
        outcomes.append(ex.Outcome(row["run"], status, message, None, row["best_top1"], row["last_top1"], row))
    return outcomes


def _train_groups_elsewhere(groups, runs, summary, executor: ex.ExecutorOptions) -> list[dict[str, Any]]:
    names = [r.name for r in runs]
    units = [
        ex.Unit(f"group {i} ({describe_group(g)})", group_unit, (g,), tuple(r.name for r in g))
        for i, g in enumerate(groups, 1)
    ]
    by_name = {r.name: r for r in runs}
    rows: dict[str, dict[str, Any]] = {}

    def add(outcome: ex.Outcome) -> None:
        r = by_name[outcome.run]
        row = outcome.row or {"run": r.name, "seed": r.cfg.seed, **r.values, "status": outcome.status}
        if outcome.row is None and outcome.message:
            row["error"] = outcome.message
        rows[r.name] = {**row, "out": str(r.out)}
        if summary is not None:
            summary.parent.mkdir(parents=True, exist_ok=True)  # no group may have started
            _write_summary(summary, [rows[n] for n in names if n in rows])

    ex.execute(units, executor, on_outcome=add)
    return [rows[n] for n in names if n in rows]
