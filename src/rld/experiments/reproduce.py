"""Running a plan: train what is missing, resume what is unfinished, then write the table.

Finished runs (``checkpoints/last.pt`` at ``train.epochs``) are skipped; unfinished ones are
resumed (``train(..., resume=True)``), which continues them exactly or starts them afresh.
A folder trained with another configuration stops the reproduction before anything runs.

Each run is a unit of :mod:`rld.executor` that waits for its teacher's run: with the
``local`` executor the runs train one after another in this process (the first failure stops the
reproduction); with ``ray`` they are spread over a Ray cluster, and the table is written from
whatever finished (:attr:`ReproduceResult.outcomes` says what did not).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from rld import executor as ex
from rld.errors import RunFolderLocked, UserError
from rld.experiments.aggregate import TableResult, collect, run_result, write_outputs
from rld.experiments.plan import CONFLICT, DONE, Plan, PlannedRun, refresh_status

log = logging.getLogger("rld")


def _check_no_conflicts(plan: Plan) -> None:
    conflicts = [r for r in plan.runs if refresh_status(r) == CONFLICT]
    if conflicts:
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise UserError(
            f"{conflicts[0].detail}{more}; reproduce with the same settings (--epochs, overrides) "
            "or choose another --out"
        )


def _check_data(plan: Plan) -> None:
    todo = [r for r in plan.runs if r.status != DONE]
    if todo:
        cfg = todo[0].config()
        if cfg.data.name != "digits" and not cfg.data.path:
            raise UserError(f"{plan.table.name} trains on {cfg.data.name}: give the data set with --data PATH")


def evaluate_teacher_checkpoint(run: PlannedRun) -> dict:
    """Test accuracy of a given teacher checkpoint on the table's data; written to ``result.json``."""
    from rld.engine import evaluate_weights

    cfg = run.config()
    metrics = evaluate_weights(cfg, run.student, run.checkpoint, device=cfg.train.device)
    result = {"checkpoint": run.checkpoint, "model": run.student, "data": cfg.data.name, **metrics}
    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def execute_run(run: PlannedRun) -> None:
    if run.external:
        evaluate_teacher_checkpoint(run)
        return
    from rld.engine import train
    from rld.trackers import Tracking

    root = Path(run.out)
    for _ in Path(run.name).parts:  # the reproduction's folder: its runs are one group in the trackers
        root = root.parent
    train(run.config(), run.out, resume=True, tracking=Tracking(run.preset, str(root)))


def run_unit(run: PlannedRun) -> list[ex.Outcome]:
    """One run of a reproduction as a unit of :mod:`rld.executor`: trained (or resumed, or its
    given teacher checkpoint evaluated) unless it is finished; its outcome with its test top-1."""
    if refresh_status(run) == DONE:
        return [_outcome(run, ex.SKIPPED)]
    if run.status == CONFLICT:
        raise UserError(run.detail)
    try:
        execute_run(run)
    except UserError as err:  # another process may have finished it between the check and the lock
        if not isinstance(err, RunFolderLocked) and refresh_status(run) == DONE:
            return [_outcome(run, ex.SKIPPED)]
        raise
    refresh_status(run)
    return [_outcome(run, ex.DONE)]


def _outcome(run: PlannedRun, status: str) -> ex.Outcome:
    result = run_result(run)
    return ex.Outcome(run.name, status, best_top1=result.best_top1, last_top1=result.last_top1)


def _label(run: PlannedRun) -> str:
    what = "evaluating teacher checkpoint" if run.external else ("resuming" if run.epochs_done else "training")
    return f"{what} {run.name}"


@dataclass
class ReproduceResult:
    plan: Plan
    table: TableResult
    files: dict[str, Path]
    trained: list[str]
    outcomes: list[ex.Outcome] = field(default_factory=list)  # one per run that was to run

    @property
    def exit_status(self) -> int:
        """0 when every run finished, 3 when the runs that did not all diverged, else 2."""
        return ex.exit_status(self.outcomes)


def reproduce(plan: Plan, *, metric: str = "best", executor: ex.ExecutorOptions | None = None) -> ReproduceResult:
    """Run every unfinished run of ``plan`` (teachers before their students), then aggregate and
    write the table files. ``executor``: where the runs train (default: in this process, in order)."""
    _check_no_conflicts(plan)
    _check_data(plan)
    todo = [r for r in plan.runs if r.status != DONE]
    log.info(
        "%s: %d runs planned, %d finished, %d to run",
        plan.table.name,
        len(plan.runs),
        len(plan.runs) - len(todo),
        len(todo),
    )
    names = {r.name for r in todo}
    units = [
        ex.Unit(
            run.name,
            run_unit,
            (run,),
            (run.name,),
            label=_label(run),
            after=(run.depends_on,) if run.depends_on in names else (),
        )
        for run in todo
    ]
    outcomes = ex.execute(units, executor)
    for run in todo:
        refresh_status(run)
    trained = [o.run for o in outcomes if o.status == ex.DONE]
    table = collect(plan, metric=metric)
    files = write_outputs(table, plan)
    return ReproduceResult(plan, table, files, trained, outcomes)
