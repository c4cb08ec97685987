"""Where the independent units of a command train: in this process (``local``) or on a Ray cluster (``ray``).

A *unit* is what can train on its own: one run (``rld reproduce``), or a lockstep group of runs that
share a data stream (``rld sweep``). A unit may wait for others: a distilled student waits for its
teacher. :func:`execute` runs units and returns one :class:`Outcome` per run.

``local``
    In this process, one unit after another in the given order. The first failure stops the
    command with its own message and exit status, as ``rld train`` does.
``ray``
    Each unit is a Ray task that asks for ``num_gpus`` (default 1 where the cluster has GPUs;
    ``--gpus-per-run``, a fraction shares a GPU) and ``num_cpus`` (``--cpus-per-run``, default 1).
    Ray runs as many at once as the resources allow: on one machine with 8 GPUs, 8 runs; on a
    cluster (``ray start --head`` / ``ray start --address``, Ray on SLURM or Kubernetes, and
    ``RAY_ADDRESS`` set to its head) as many as all its machines hold. Without ``RAY_ADDRESS`` (or a
    cluster started with ``ray start`` on this machine), a Ray instance is started on this machine
    for the command and stopped after it. Units start once those they wait for have finished; one
    that fails does not stop the others: its dependents are not started and reported, and the
    command ends with a summary and a non-zero status (:func:`exit_status`).

Several launches on one set of run folders (on a shared file system) never train a run twice: a
unit holds its runs' folder locks (:mod:`rld.engine.lock`) while it trains; a unit that finds one
held by another process reports its runs as being trained elsewhere (:data:`BUSY`); a finished run
is skipped. A worker that dies (a lost machine, a killed process) leaves its runs resumable (their
last checkpoints are intact); Ray starts the unit again up to ``--retries`` times, and any later
launch of the same command resumes them too.

Each task sees the launching process's ``RLD_*`` environment variables (``RLD_COMPILE_LOSSES``, …)
and runs in its working folder where the worker's machine has it (a shared file system), so that
relative paths mean the same there. A worker's training lines go to its Ray log
(``/tmp/ray/session_latest/logs/worker-*.err`` on its machine); the launching process logs one line
per finished run.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rld.errors import DivergedError, Interrupted, RunFolderLocked, UserError

log = logging.getLogger("rld")

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install 'rld[ray]'"
DEFAULT_RETRIES = 3  # as Ray's own default for tasks whose worker died
CANCEL_WAIT_S = 120.0  # on Ctrl-C, how long running tasks get to save their positions

# Outcome statuses. Finished: DONE (trained to its last epoch now), SKIPPED (it was finished before).
DONE, SKIPPED = "done", "skipped"
# Not finished: the others.
BUSY = "busy"  # another process holds the run folder's lock
DIVERGED = "diverged"  # a non-finite loss stopped it (exit status 3)
STOPPED = "stopped"  # a signal stopped it after saving its position
FAILED = "failed"  # an error, or the worker died
BLOCKED = "blocked"  # not started: a unit it waits for did not finish
OK = (DONE, SKIPPED)


@dataclass
class ExecutorOptions:
    """How units run: ``kind`` (``local`` or ``ray``); for ``ray`` the resources of each unit
    (``gpus_per_run``: None = 1 where the cluster has GPUs, else 0; ``cpus_per_run``) and how often
    a unit whose worker died is started again (``retries``)."""

    kind: str = "local"
    gpus_per_run: float | None = None
    cpus_per_run: float = 1.0
    retries: int = DEFAULT_RETRIES

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise UserError(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.kind!r}")
        if self.gpus_per_run is not None and not 0 <= self.gpus_per_run <= 1:
            raise UserError(
                f"--gpus-per-run must be between 0 and 1 (a run trains on one device; 0.5 puts two runs on a "
                f"GPU), got {self.gpus_per_run:g}"
            )
        if self.cpus_per_run <= 0:
            raise UserError(f"--cpus-per-run must be > 0, got {self.cpus_per_run:g}")
        if self.retries < 0:
            raise UserError(f"--retries must be >= 0, got {self.retries}")


@dataclass
class Unit:
    """Something that trains on its own: ``fn(*args)`` returns one :class:`Outcome` per run of ``runs``.

    ``fn`` must be a module-level function (a Ray worker imports it by name) and ``args`` picklable.
    ``label``: what the local executor logs before it starts (``training NAME``); ``after``: the
    names of units that must finish first."""

    name: str
    fn: Callable[..., list[Outcome]]
    args: tuple
    runs: tuple[str, ...]
    label: str = ""
    after: tuple[str, ...] = ()


@dataclass
class Outcome:
    """What became of one run: ``status`` (one of DONE, SKIPPED, BUSY, DIVERGED, STOPPED, FAILED,
    BLOCKED), a ``message`` when it did not finish, the wall time of its unit, its test top-1 at the
    best and last epoch, and ``row``: what the unit reports of it (a sweep's summary row)."""

    run: str
    status: str
    message: str = ""
    seconds: float | None = None
    best_top1: float | None = None
    last_top1: float | None = None
    row: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status in OK


def exit_status(outcomes: Sequence[Outcome]) -> int:
    """0 when every run finished; 3 when the only runs that did not are diverged ones; 2 otherwise."""
    bad = [o for o in outcomes if not o.ok]
    if not bad:
        return 0
    return DivergedError.exit_status if all(o.status == DIVERGED for o in bad) else 2


def failure_summary(outcomes: Sequence[Outcome], again: str = "the same command again resumes them") -> str:
    """``N of M runs did not finish:``, one indented line per such run, and ``again`` (how to continue
    them) unless they all diverged; empty when every run finished."""
    bad = [o for o in outcomes if not o.ok]
    if not bad:
        return ""
    lines = [f"{len(bad)} of {len(outcomes)} runs did not finish:"]
    lines += [f"  {o.run}: {o.status}: {o.message}" for o in bad]
    if any(o.status != DIVERGED for o in bad):
        busy = any(o.status == BUSY for o in bad)
        lines.append(f"  {again}" + (" (runs being trained elsewhere are left to that process)" if busy else ""))
    return "\n".join(lines)


def progress_line(i: int, total: int, o: Outcome) -> str:
    """``[i/total] done     NAME  best 71.23%  last 70.98%  3m07s``; for a run that did not finish,
    its status and why."""
    head = f"[{i:{len(str(total))}d}/{total}] {o.status:8s} {o.run}"
    if not o.ok:
        return f"{head}  {o.message}"
    tail = [f"best {o.best_top1:.2f}%"] if o.best_top1 is not None else []
    tail += [f"last {o.last_top1:.2f}%"] if o.last_top1 is not None else []
    tail.append(_duration(o.seconds) if o.status == DONE and o.seconds is not None else "(finished before)")
    return "  ".join([head, *tail])


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def execute(
    units: Sequence[Unit],
    options: ExecutorOptions | None = None,
    *,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run ``units`` (see the module docstring); one Outcome per run, in the order they ended.

    ``on_outcome`` is called with each as it comes (e.g. to rewrite a summary file)."""
    options = options or ExecutorOptions()
    _check_units(units)
    if not units:
        return []
    if options.kind == "local":
        return _execute_local(units, on_outcome)
    return _execute_ray(units, options, on_outcome)


def _check_units(units: Sequence[Unit]) -> None:
    seen: set[str] = set()
    for unit in units:
        if unit.name in seen:
            raise ValueError(f"two units are named {unit.name!r}")
        missing = [a for a in unit.after if a not in seen]
        if missing:
            raise ValueError(f"unit {unit.name!r} waits for {missing[0]!r}, which is not an earlier unit")
        seen.add(unit.name)


class _Progress:
    def __init__(self, total: int, on_outcome):
        self.total, self.done, self.on_outcome = total, 0, on_outcome
        self.outcomes: list[Outcome] = []

    def add(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            self.done += 1
            self.outcomes.append(o)
            line = progress_line(self.done, self.total, o)
            (log.info if o.ok else log.error)("%s", line)
            if self.on_outcome is not None:
                self.on_outcome(o)


def _execute_local(units: Sequence[Unit], on_outcome) -> list[Outcome]:
    progress = _Progress(sum(len(u.runs) for u in units), on_outcome)
    for i, unit in enumerate(units, 1):
        if unit.label:
            log.info("[%d/%d] %s", i, len(units), unit.label)
        start = time.monotonic()
        outcomes = unit.fn(*unit.args)
        for o in outcomes:
            o.seconds = time.monotonic() - start if o.seconds is None else o.seconds
        progress.add(outcomes)
    return progress.outcomes


# ----------------------------------------------------------------------------- ray


def import_ray():
    """The ``ray`` module, or a UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


def run_unit(
    fn: Callable[..., list[Outcome]], args: tuple, runs: tuple[str, ...], name: str, cwd: str | None = None
) -> list[Outcome]:
    """A unit as a Ray task runs it: ``fn(*args)``, with its failures turned into outcomes.

    ``cwd``: the launching process's folder; where the worker sees it too (a shared file system), the
    unit runs in it, so that relative paths (``--out runs/x``, ``data.path``) mean what they meant there."""
    _log_to_stderr(name)
    _threads_for_assigned_cpus()
    previous = os.getcwd()
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    try:
        return _run(fn, args, runs)
    finally:
        os.chdir(previous)


def _run(fn: Callable[..., list[Outcome]], args: tuple, runs: tuple[str, ...]) -> list[Outcome]:
    start = time.monotonic()

    def each(status: str, message: str) -> list[Outcome]:
        return [Outcome(r, status, message, time.monotonic() - start) for r in runs]

    try:
        outcomes = fn(*args)
    except RunFolderLocked as err:
        return each(BUSY, f"being trained elsewhere ({err.holder})")
    except DivergedError as err:
        return each(DIVERGED, str(err))
    except Interrupted as err:
        return each(STOPPED, str(err))
    except UserError as err:
        return each(FAILED, str(err))
    except Exception as err:  # a bug, a CUDA error, …: reported, the other units go on
        traceback.print_exc()  # into the worker's log
        return each(FAILED, f"{type(err).__name__}: {err}".strip())
    for o in outcomes:
        o.seconds = time.monotonic() - start if o.seconds is None else o.seconds
    return outcomes


def _threads_for_assigned_cpus() -> None:
    """torch's intra-op threads = the CPUs Ray gave this task (a worker serves many tasks, and torch
    keeps the thread count it started with)."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))


def _log_to_stderr(name: str) -> None:
    """rld's log lines, prefixed with the unit's name, to this worker's stderr (its Ray log)."""
    logger = logging.getLogger("rld")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        if getattr(handler, "rld_unit", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[{name}] %(message)s"))
    handler.rld_unit = True
    logger.addHandler(handler)
    logger.propagate = False


def _forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("RLD_")}


def _connect(ray) -> bool:
    """Connect to the cluster (RAY_ADDRESS, a `ray start` cluster of this machine) or start a local
    instance; False when this process was connected already (the caller's connection)."""
    if ray.is_initialized():
        return False
    try:
        ray.init(log_to_driver=False)
    except ConnectionError as err:
        address = os.environ.get("RAY_ADDRESS", "")
        raise UserError(
            f"cannot connect to the Ray cluster{f' at RAY_ADDRESS={address}' if address else ''}: {err}; "
            "start it with `ray start --head` (and `ray start --address HEAD:6379` on the other machines), or unset "
            "RAY_ADDRESS to run on this machine alone"
        ) from err
    return True


def _resources(ray, options: ExecutorOptions) -> tuple[float, float, str]:
    """``(num_gpus, num_cpus, description)`` of each unit's task, from the options and the cluster."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    total_gpus = sum(n.get("GPU", 0) for n in nodes)
    total_cpus = sum(n.get("CPU", 0) for n in nodes)
    gpus = options.gpus_per_run if options.gpus_per_run is not None else (1.0 if total_gpus else 0.0)
    cpus = options.cpus_per_run
    if gpus and not any(n.get("GPU", 0) >= gpus and n.get("CPU", 0) >= cpus for n in nodes):
        log.warning(
            "no machine of the Ray cluster has %g GPU and %g CPU for a run: the runs wait for one "
            "(an autoscaling cluster adds it; otherwise stop with Ctrl-C and use --gpus-per-run 0)",
            gpus,
            cpus,
        )
    elif not any(n.get("CPU", 0) >= cpus for n in nodes):
        log.warning("no machine of the Ray cluster has %g CPUs: the runs wait for one (lower --cpus-per-run)", cpus)
    what = f"{gpus:g} GPU and {cpus:g} CPU" if gpus else f"{cpus:g} CPU (no GPU)"
    cluster = f"{len(nodes)} machine(s), {total_gpus:g} GPUs, {total_cpus:g} CPUs"
    return gpus, cpus, f"each run takes {what}; cluster: {cluster}"


def _execute_ray(units: Sequence[Unit], options: ExecutorOptions, on_outcome) -> list[Outcome]:
    ray = import_ray()
    started = _connect(ray)
    try:
        gpus, cpus, described = _resources(ray, options)
        log.info("ray: %d unit(s), %d run(s); %s", len(units), sum(len(u.runs) for u in units), described)
        task_options: dict[str, Any] = {"num_gpus": gpus, "num_cpus": cpus, "max_retries": options.retries}
        env = _forwarded_env()
        if env:
            task_options["runtime_env"] = {"env_vars": env}
        task = ray.remote(run_unit).options(**task_options)
        return _schedule(ray, task, units, _Progress(sum(len(u.runs) for u in units), on_outcome))
    finally:
        if started:
            ray.shutdown()


def _schedule(ray, task, units: Sequence[Unit], progress: _Progress) -> list[Outcome]:
    """Submit every unit whose predecessors finished; collect results as they come (``ray.wait``)."""
    waiting = list(units)
    finished: set[str] = set()  # units whose runs all finished
    ended: dict[str, str] = {}  # units that did not: why (for their dependents)
    pending: dict[Any, Unit] = {}

    def release() -> None:
        for unit in list(waiting):
            blocked = [a for a in unit.after if a in ended]
            if blocked:
                waiting.remove(unit)
                ended[unit.name] = BLOCKED
                reason = f"not started: {blocked[0]} did not finish ({ended[blocked[0]]})"
                progress.add([Outcome(r, BLOCKED, reason) for r in unit.runs])
            elif all(a in finished for a in unit.after):
                waiting.remove(unit)
                pending[task.remote(unit.fn, unit.args, unit.runs, unit.name, os.getcwd())] = unit

    release()
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(ready[0])
            try:
                outcomes = ray.get(ready[0])
            except Exception as err:  # the worker (or its machine) died, Ray could not run the task, …
                outcomes = [Outcome(r, FAILED, _task_error(err)) for r in unit.runs]
            progress.add(outcomes)
            if all(o.ok for o in outcomes):
                finished.add(unit.name)
            else:
                ended[unit.name] = ", ".join(dict.fromkeys(o.status for o in outcomes if not o.ok))
            release()
    except KeyboardInterrupt:
        _cancel(ray, list(pending))
        raise
    return progress.outcomes


def _task_error(err: Exception) -> str:
    name = type(err).__name__
    if name in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "ActorDiedError"):
        return f"the process training it died ({name}); its last checkpoint is intact"
    first = next((line for line in str(err).splitlines() if line.strip()), "")
    return f"{name}: {first}" if first else name


def _cancel(ray, refs: list) -> None:
    """Ask running tasks to stop (a KeyboardInterrupt in each: a run saves its position and stops at the
    next step boundary), and give them a while to do it."""
    for ref in refs:
        try:
            ray.cancel(ref)
        except Exception:
            pass
    if refs:
        log.info("stopping %d running unit(s): each saves its position (Ctrl-C again to stop at once)", len(refs))
        ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S)


# ----------------------------------------------------------------------------- command-line flags


def add_arguments(parser) -> None:
    """``--executor``, ``--gpus-per-run``, ``--cpus-per-run`` and ``--retries`` on an argparse parser."""
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: one run after another in this process (default); ray: every run (or lockstep group) is a "
        "task of a Ray cluster, as many at once as its GPUs allow (RAY_ADDRESS, else this machine; needs "
        f"{RAY_INSTALL})",
    )
    parser.add_argument(
        "--gpus-per-run",
        type=float,
        metavar="G",
        help="with --executor ray: GPUs each run takes, 0 to 1 (default: 1 when the cluster has GPUs, else 0)",
    )
    parser.add_argument(
        "--cpus-per-run",
        type=float,
        default=1.0,
        metavar="C",
        help="with --executor ray: CPUs each run takes (default: 1)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        metavar="N",
        help=f"with --executor ray: times a run whose worker died is started again (default: {DEFAULT_RETRIES})",
    )


def options_from_args(args, device: str | None = None) -> ExecutorOptions:
    """The :class:`ExecutorOptions` of parsed :func:`add_arguments` flags; ``device``: the command's
    ``--device`` (``cpu``: the runs take no GPU unless ``--gpus-per-run`` says so; ``cuda:N`` is
    refused with ``ray``, whose tasks see only the GPU they were given, as ``cuda``)."""
    if args.executor == "local":
        given = [
            flag
            for flag, value, default in (
                ("--gpus-per-run", args.gpus_per_run, None),
                ("--cpus-per-run", args.cpus_per_run, 1.0),
                ("--retries", args.retries, DEFAULT_RETRIES),
            )
            if value != default
        ]
        if given:
            raise UserError(f"{given[0]} applies to --executor ray")
    options = ExecutorOptions(args.executor, args.gpus_per_run, args.cpus_per_run, args.retries)
    if options.kind == "ray" and device:
        if device.startswith("cuda:"):
            raise UserError(
                f"--device {device} does not apply to --executor ray: each run sees only the GPU Ray gives it; "
                "use --device cuda (or leave it out)"
            )
        if device == "cpu" and options.gpus_per_run is None:
            options.gpus_per_run = 0.0
    return options
