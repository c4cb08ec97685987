"""Running a plan: train what is missing, resume what is unfinished, then write the table.

Finished runs (``checkpoints/last.pt`` at ``train.epochs``) are skipped; unfinished ones are
resumed (``train(..., resume=True)``), which continues them exactly or starts them afresh.
A folder trained with another configuration stops the reproduction before anything runs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from rld.errors import UserError
from rld.experiments.aggregate import TableResult, collect, write_outputs
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

    train(run.config(), run.out, resume=True)


@dataclass
class ReproduceResult:
    plan: Plan
    table: TableResult
    files: dict[str, Path]
    trained: list[str]


def reproduce(plan: Plan, *, metric: str = "best") -> ReproduceResult:
    """Run every unfinished run of ``plan`` in order, then aggregate and write the table files."""
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
    trained = []
    for i, run in enumerate(todo, 1):
        what = "evaluating teacher checkpoint" if run.external else ("resuming" if run.epochs_done else "training")
        log.info("[%d/%d] %s %s", i, len(todo), what, run.name)
        execute_run(run)
        refresh_status(run)
        trained.append(run.name)
    table = collect(plan, metric=metric)
    files = write_outputs(table, plan)
    return ReproduceResult(plan, table, files, trained)
