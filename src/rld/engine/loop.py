"""The one epoch loop: a group of runs — one for ``rld train``, many for a sweep, ``rld tune`` or
``rld demo`` — trained epoch by epoch on the same batches.

:func:`train_group` is the loop: every epoch it begins each active run's epoch (continuing a
position saved inside it), steps the group — the whole step of :class:`~rld.engine.static.StaticSteps`
(CUDA graphs on CUDA) or the plain loop's :func:`group_step` over the data streams' batches — with
the step boundaries (periodic positions, stop signals) after each step, ends each run's epoch
(evaluation, checkpoints; a run that diverged stops, the others go on), and agrees on a stop signal
under torchrun. :func:`train` is ``rld train``: one run, the group of one.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rld.config import RunConfig
from rld.data.types import Batch
from rld.engine import guard, lock
from rld.engine.batched import GroupStep, batch_students_wanted
from rld.engine.distributed import World, barrier, init_world, main_decides, shutdown
from rld.engine.static import StaticSteps, static_step_wanted
from rld.engine.teacher import build_teacher_fn, teacher_outputs
from rld.engine.trainer import Run, build_run_data, data_info, method_inputs, prepare_out_dir, setup, setup_lines
from rld.errors import DivergedError, UserError
from rld.methods import get_spec
from rld.trackers import Tracking
from rld.trackers import check as check_trackers

log = logging.getLogger("rld")


@dataclass
class Member:
    """A run of a group. ``rng`` / ``cuda_rng``: its own global-RNG state, swapped in around its work
    (``enter``/``leave``) when the group holds several runs (None: the process's own, as for a group
    of one); ``stream``: which data stream of the group (which seed's loader) it trains on;
    ``tag``: what the group's owner keeps with it (a sweep's planned run)."""

    run: Run
    rng: torch.Tensor | None = None
    cuda_rng: torch.Tensor | None = None
    tag: Any = field(default=None, repr=False)
    stream: int = 0

    def enter(self) -> None:
        if self.rng is not None:
            torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.run.device)

    def leave(self) -> None:
        if self.rng is not None:
            self.rng = torch.get_rng_state()
        if self.cuda_rng is not None:
            self.cuda_rng = torch.cuda.get_rng_state(self.run.device)

    @contextmanager
    def current(self):
        """This run's RNG state as the global one inside the block."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    @classmethod
    def own_rng(cls, run: Run, **kwargs: Any) -> Member:
        """A member with its own RNG streams, starting from the process's current state."""
        cuda_rng = torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None
        return cls(run, torch.get_rng_state(), cuda_rng, **kwargs)


def group_step(
    members: list[Member],
    batches: Batch | list[Batch],
    teacher_fn: Any,
    epoch: int,
    stepper: GroupStep | None = None,
) -> None:
    """One training step of every member, each on the batch of its stream (``batches``: one per
    stream, or the one batch of a single stream): one teacher forward (or cache lookup), then the
    students' steps (``stepper``, default: each in turn). The teacher's outputs are shared, read-only,
    by the students."""
    batches = [batches] if isinstance(batches, Batch) else list(batches)
    methods = [[m.run.method for m in members if m.stream == s] for s in range(len(batches))]
    teachers = teacher_outputs(teacher_fn, batches, methods)
    (stepper or GroupStep(members))(batches, teachers, epoch)


def train_group(
    members: list[Member], data: Any, teacher_fn: Any, world: World, loaders: list | None = None, *, alone: bool = False
) -> dict[int, DivergedError]:
    """Train every member's remaining epochs on ``data`` (its ``train`` loader, or ``loaders``: one per
    data stream) with ``teacher_fn`` (None: no method needs the teacher). Returns the runs that
    diverged, ``{id(member): DivergedError}``. ``alone``: the one run of ``rld train``, which stops
    (raises the DivergedError) when it diverges, and whose progress lines show its running loss."""
    runs = [m.run for m in members]
    cfg0, device, single = runs[0].cfg, runs[0].device, alone
    loaders = loaders or [data.train]
    static = static_step_wanted(cfg0.train.static_step, data.train, teacher_fn, world.distributed)
    strict = cfg0.train.static_step == "require"  # no eager fallback of a capture
    batched = batch_students_wanted(cfg0.train.batch_students, device)
    first, last = min(r.start_epoch for r in runs), max(r.cfg.train.epochs for r in runs)
    steppers: dict[tuple[int, ...], StaticSteps | GroupStep] = {}  # per set of active runs (catch-up epochs)
    failed: dict[int, DivergedError] = {}
    with guard.StopSignals() as stop:
        for epoch in range(first, last + 1):
            active = [m for m in members if m.run.start_epoch <= epoch <= m.run.cfg.train.epochs]
            active = [m for m in active if id(m) not in failed]
            if not active:
                continue
            start = 0
            for m in active:
                with m.current():
                    m.run.begin_epoch(epoch)
                    position = m.run.resume_position  # equal for every run of a group (rld.engine.sweep)
                    if position is not None and position["epoch"] == epoch:
                        start = guard.restore_position(m.run, position, world)
            if start and world.is_main:
                log.info("continuing epoch %d after step %d of %d", epoch, start, len(data.train))
            key = tuple(id(m) for m in active)
            if key not in steppers:
                steppers.clear()  # a new set of active runs: free the graphs (and pools) of the last one
                steppers[key] = (
                    StaticSteps(active, loaders, teacher_fn, batched=batched, strict=strict)
                    if static
                    else GroupStep(active, batched)
                )
            desc = f"epoch {epoch}/{last}" + ("" if single else f" ({len(active)} runs)")
            loss = active[0].run.running_loss if single else None
            after_step = _step_boundary([m.run for m in active], epoch, len(data.train), stop, world, active)
            if static:
                steppers[key].run_epoch(
                    epoch,
                    lambda sizes, desc=desc, loss=loss: _progress(sizes, len(sizes), world, desc, loss),
                    start=start,
                    after_step=after_step,
                )
            else:
                for loader in loaders:
                    loader.set_epoch(epoch, start_batch=start)
                batches = _progress(zip(*loaders), len(data.train) - start, world, desc, loss)
                for k, step_batches in enumerate(batches, start + 1):  # step k: batch k of every stream
                    group_step(active, step_batches, teacher_fn, epoch, steppers[key])
                    after_step(k)
            for m in active:
                with m.current():
                    try:
                        m.run.end_epoch(epoch, data.test)
                    except DivergedError as err:
                        if single:
                            raise  # rld train stops (exit status 3)
                        failed[id(m)] = err  # this run stops; the others go on
                        log.error("%s", err)
            barrier(world)
            signum = stop.agreed(world, device)
            if signum and epoch < last:
                for run in runs:
                    run.close()
                where = f"{runs[0].out}/checkpoints/last.pt holds it" if single else "each run's last.pt holds it"
                raise guard.interrupted(signum, f"after epoch {epoch}; {where}")
    steppers.clear()  # free the group's CUDA graphs and their memory pools
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return failed


def train(
    cfg: RunConfig, out_dir: str | Path, *, resume: bool = False, tracking: Tracking | None = None
) -> dict[str, Any]:
    """Train (or resume) the run described by ``cfg`` in ``out_dir``; returns the final summary.
    ``tracking``: the preset and group the trackers of ``train.loggers`` tag the run with."""
    out = Path(out_dir)
    check_trackers(cfg.train.loggers)  # before anything is written
    device_kind = (
        "cuda"
        if cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    world = init_world(device_kind)
    try:
        return _train(cfg, out, resume, world, tracking)
    finally:
        lock.release(out)
        shutdown(world)


def _train(cfg: RunConfig, out: Path, resume: bool, world: World, tracking: Tracking | None) -> dict[str, Any]:
    device = setup(cfg, world)
    # rank 0 looks at the folder; every rank gets its answer (the checkpoint to resume, or the refusal)
    resume_from = main_decides(world, lambda: prepare_out_dir(out, resume, cfg))
    expected = lock.folder_state(out) if world.is_main else None  # re-checked once the folder is locked
    data = build_run_data(cfg, device, world, out)
    needs_teacher = get_spec(cfg.method.name).needs_teacher
    teacher_fn = build_teacher_fn(cfg, data.num_classes, device, data.train) if needs_teacher else None
    run = Run(
        cfg,
        out,
        world=world,
        device=device,
        num_classes=data.num_classes,
        resume_from=resume_from,
        resume=resume,
        **method_inputs(cfg, data, teacher_fn),
        data_info=data_info(data),
        split=data.split,
        expected_state=expected,
        tracking=tracking,
    )
    setup_text = setup_lines(cfg, out, data, run, teacher_fn, device, world)
    if world.is_main:
        for line in setup_text:
            log.info("%s", line)
    try:
        train_group([Member(run)], data, teacher_fn, world, alone=True)
    except BaseException as err:
        run.abort()  # its trackers end their run (a stop signal closed it already)
        if isinstance(err, UserError):
            run.folder.discard()  # a new run refused before its first checkpoint leaves no folder
        raise
    return run.close()


def _step_boundary(runs: list[Run], epoch: int, steps: int, stop: guard.StopSignals, world: World, members):
    """What the loop does after step k of ``steps`` of ``epoch``: save the runs' positions
    (``train.checkpoint_every_steps``, a stop signal) and stop if a signal asked to; each run's position
    is saved with its own RNG state as the global one (``members[i].current()``)."""
    every = runs[0].cfg.train.checkpoint_every_steps or 0

    def after_step(k: int) -> None:
        if k >= steps:
            return  # the epoch's end saves last.pt
        periodic = bool(every) and k % every == 0
        if world.distributed:  # the processes meet only at periodic checkpoints (and epoch ends)
            if not periodic:
                return
            signum = stop.agreed(world, runs[0].device)
        else:
            signum = stop.signum
            if not (periodic or signum):
                return
        saved = []
        for run, member in zip(runs, members):
            with member.current():
                saved.append(guard.save_position(run, epoch, k, world))
        if signum:
            if not all(saved):
                note = "a non-finite state was not saved (resumed, such a run starts again from its last checkpoint)"
            elif len(runs) == 1:
                note = f"its position is saved in {runs[0].out / 'checkpoints' / guard.STEP_CHECKPOINT}"
            else:
                note = f"the positions of its {len(runs)} runs are saved in their checkpoints/{guard.STEP_CHECKPOINT}"
            raise guard.interrupted(signum, f"in epoch {epoch} after step {k} of {steps}; {note}")

    return after_step


PROGRESS_SECONDS = 60.0
"""Without a terminal, a progress line at most this often (running loss and ETA)."""


def _progress(iterable, total: int, world: World, desc: str, loss: Any = None):
    """tqdm on a terminal; otherwise a log line every :data:`PROGRESS_SECONDS` with the step, the
    running mean loss (``loss()``, one host read per line) and the epoch's ETA."""
    if not world.is_main:
        return iterable
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
    return _progress_lines(iterable, total, desc, loss)


def _progress_lines(iterable, total: int, desc: str, loss: Any):
    start = last = time.perf_counter()
    for i, item in enumerate(iterable, 1):
        yield item
        now = time.perf_counter()
        if now - last >= PROGRESS_SECONDS and i < total:
            last = now
            eta = (now - start) / i * (total - i)
            running = f"  loss {loss():.4f}" if loss is not None else ""
            log.info("%s: step %d/%d%s  ETA %s", desc, i, total, running, _duration(eta))


def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes}:{sec:02d}"
