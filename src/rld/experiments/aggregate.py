"""From run folders to the paper's table: mean ± std over seeds, the paper's number, the difference.

Only finished runs count. ``metric="best"`` takes each run's best-epoch test accuracy (what the
published code reports), ``"last"`` the last epoch's; top-5 cells (Table 4) take the top-5 of the
same epoch. Teacher cells always show the teacher's last epoch, the weights its students distil
from. Outputs, in ``OUT/tables/``: ``TABLE.md`` (the table in the paper's layout, then the
same table at the other metric), ``TABLE.csv`` (the paper's layout, one mean/std/n/paper/diff
column group per column) and ``TABLE-runs.csv`` (every run, both metrics).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from rld.experiments.paper import paper_value
from rld.experiments.plan import DONE, EXTERNAL, Plan, PlannedRun
from rld.experiments.runs import RunRecord, is_run_dir, mean_std
from rld.experiments.tables import TEACHER, UNAVAILABLE, TableSpec

METRICS = ("best", "last")
METRIC_WORDS = {
    "best": "at the best epoch (`--metric best`, what the published code reports)",
    "last": "at the last epoch (`--metric last`)",
}


@dataclass
class RunResult:
    """One run's numbers (None until it has finished epochs)."""

    name: str
    run: PlannedRun
    finished: bool
    epochs_done: int = 0
    epochs: int = 0
    best_top1: float | None = None
    best_epoch: int | None = None
    best_top5: float | None = None
    last_top1: float | None = None
    last_top5: float | None = None
    time_s: float | None = None

    def value(self, metric: str, top: int = 1) -> float | None:
        return getattr(self, f"{metric}_top{top}")


def run_result(run: PlannedRun) -> RunResult:
    out = Path(run.out)
    if run.external:
        result = RunResult(run.name, run, finished=run.status == DONE)
        if result.finished:
            data = json.loads((out / "result.json").read_text())
            result.best_top1 = result.last_top1 = float(data["test_top1"])
            result.best_top5 = result.last_top5 = float(data["test_top5"])
        return result
    if not is_run_dir(out):
        return RunResult(run.name, run, finished=False)
    record = RunRecord.load(out)
    best, last = record.best, record.last
    result = RunResult(
        run.name,
        run,
        finished=run.status == DONE,
        epochs_done=record.epochs_done,
        epochs=record.config.train.epochs,
        time_s=record.total_time,
    )
    if best is not None and last is not None:
        result.best_top1, result.best_top5, result.best_epoch = best["test_top1"], best["test_top5"], best["epoch"]
        result.last_top1, result.last_top5 = last["test_top1"], last["test_top5"]
    return result


@dataclass
class CellResult:
    row: str
    column: str
    kind: str
    top: int
    paper: float | None
    planned: int
    values: dict[str, list[float]] = field(default_factory=dict)  # metric → values of finished runs
    unavailable_text: str = "not available"  # what an unavailable cell reads

    @property
    def available(self) -> bool:
        return self.kind != UNAVAILABLE

    def n(self, metric: str) -> int:
        return len(self.values.get(metric, []))

    def mean_std(self, metric: str) -> tuple[float, float] | None:
        values = self.values.get(metric, [])
        return mean_std(values) if values else None

    def diff(self, metric: str) -> float | None:
        stats = self.mean_std(metric)
        return None if stats is None or self.paper is None else stats[0] - self.paper

    def measured_text(self, metric: str) -> str:
        stats = self.mean_std(metric)
        if stats is None:
            return "—"
        n = self.n(metric)
        text = f"{stats[0]:.2f} ± {stats[1]:.2f}" if n > 1 else f"{stats[0]:.2f}"
        return text + (f" [{n}/{self.planned}]" if n < self.planned else "")

    def text(self, metric: str, with_paper: bool = True) -> str:
        if not self.available:
            return self.unavailable_text
        text = self.measured_text(metric)
        if with_paper and self.paper is not None:
            diff = self.diff(metric)
            text += f" (paper {self.paper:.2f}" + (f", Δ {diff:+.2f})" if diff is not None else ")")
        return text


@dataclass
class TableResult:
    spec: TableSpec
    metric: str
    seeds: tuple[int, ...]
    cells: dict[tuple[str, str], CellResult]
    runs: list[RunResult]

    def cell(self, row: str, column: str) -> CellResult:
        return self.cells[(row, column)]


# A teacher row shows the weights the students distil from: the teacher's last epoch.
TEACHER_METRIC = "last"


def _values(results: list[RunResult], metric: str, top: int) -> list[float]:
    return [r.value(metric, top) for r in results if r.value(metric, top) is not None]


def collect(plan: Plan, metric: str = "best") -> TableResult:
    """The table of ``plan`` from its run folders (call after the runs' statuses are fresh)."""
    if metric not in METRICS:
        from rld.errors import UserError

        raise UserError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    results = {run.name: run_result(run) for run in plan.runs}
    cells = {}
    for key, cell in plan.table.cells.items():
        names = plan.cell_runs.get(key, [])
        done = [results[n] for n in names if results[n].finished]
        cells[key] = CellResult(
            row=key[0],
            column=key[1],
            kind=cell.kind,
            top=cell.top,
            paper=paper_value(plan.table.name, cell.paper_row, cell.paper_column) if plan.table.paper else None,
            planned=len(names),
            values={m: _values(done, TEACHER_METRIC if cell.kind == TEACHER else m, cell.top) for m in METRICS},
            unavailable_text="not available yet" if key[0] in plan.table.row_notes else "not available",
        )
    return TableResult(plan.table, metric, plan.seeds, cells, list(results.values()))


# ----------------------------------------------------------------------------- Markdown


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _md_table(result: TableResult, metric: str, with_paper: bool) -> list[str]:
    spec = result.spec
    typed = bool(spec.groups)
    header = (["Type"] if typed else []) + [spec.row_header, *spec.columns]
    lines = [_md_row(header), _md_row(["---"] * len(header))]
    for row in spec.rows:
        cells = []
        for column in spec.columns:
            cell = result.cells.get((row, column))
            cells.append("" if cell is None else cell.text(metric, with_paper))
        lines.append(_md_row(([spec.groups.get(row, "")] if typed else []) + [spec.row_tag(row), *cells]))
    return lines


def _seed_words(seeds: tuple[int, ...]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def _options_text(options: dict) -> str:
    parts = []
    for key in ("epochs", "pairs", "methods", "overrides"):
        value = options.get(key)
        if value:
            shown = ", ".join(f"`{v}`" for v in value) if isinstance(value, (list, tuple)) else f"`{value}`"
            parts.append(f"{key} {shown}")
    return "; ".join(parts)


def to_markdown(result: TableResult, options: dict | None = None) -> str:
    spec, metric = result.spec, result.metric
    other = "last" if metric == "best" else "best"
    tops = sorted({c.top for c in result.cells.values()})
    acc = " and ".join(f"top-{t}" for t in tops)
    given = any(r.run.external for r in result.runs)
    teachers = "one run, seed 0, or the given checkpoint" if given else "one run, seed 0"
    teachers += ", at the last epoch, whose weights the students distil from"
    legend = (
        f"Test {acc} accuracy (%) {METRIC_WORDS[metric]}: mean ± sample standard deviation over "
        f"{_seed_words(result.seeds)} (teachers: {teachers}). "
        + (
            f"In brackets the paper's number (arXiv 2408.07703v2, {spec.name.replace('table', 'Table ')}) and the "
            "difference measured − paper. "
            if spec.paper
            else "rld's own runs: the paper has no numbers for this table. "
        )
        + "`[k/n]`: only k of the n planned runs have finished; `—`: none has."
    )
    unavailable = [r for r in spec.rows if any(c.row == r and not c.available for c in result.cells.values())]
    if any(r not in spec.row_notes for r in unavailable):
        legend += " `not available`: a feature-distillation method rld does not implement."
    for row in (r for r in unavailable if r in spec.row_notes):
        legend += f" {row}: not available yet, {spec.row_notes[row]}."
    for row in (r for r in spec.rows if r in spec.row_notes and r not in unavailable):
        legend += f" {row}: {spec.row_notes[row]}."
    lines = [f"# {spec.title}", "", legend, ""]
    if spec.note:
        lines += [spec.note, ""]
    shown = _options_text(options or {})
    if shown:
        lines += [f"Reduced or modified reproduction: {shown}.", ""]
    lines += _md_table(result, metric, with_paper=True)
    lines += ["", f"## The same runs {METRIC_WORDS[other].split(' (')[0]}", ""]
    lines += _md_table(result, other, with_paper=False)
    lines += ["", f"Every run with both metrics: `{spec.name}-runs.csv`.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CSV


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def to_csv(result: TableResult) -> str:
    """The paper's layout: one line per row; mean, std, n, paper, diff for each column."""
    spec, metric = result.spec, result.metric
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = [spec.row_header]
    for column in spec.columns:
        header += [f"{column} {what}" for what in ("mean", "std", "n", "paper", "diff")]
    writer.writerow(header)
    for row in spec.rows:
        line = [spec.row_tag(row)]
        for column in spec.columns:
            cell = result.cells.get((row, column))
            if cell is None:
                line += [""] * 5
                continue
            stats = cell.mean_std(metric)
            mean = _fmt(stats[0]) if stats else (cell.unavailable_text if not cell.available else "")
            std = _fmt(stats[1]) if stats else ""
            line += [
                mean,
                std,
                str(cell.n(metric)) if cell.available else "",
                _fmt(cell.paper),
                _fmt(cell.diff(metric)),
            ]
        writer.writerow(line)
    return buf.getvalue()


RUN_COLUMNS = (
    "run",
    "roles",
    "teacher",
    "student",
    "method",
    "variant",
    "seed",
    "status",
    "epochs_done",
    "epochs",
    "best_top1",
    "best_epoch",
    "best_top5",
    "last_top1",
    "last_top5",
    "time_s",
    "out",
)


def runs_csv(result: TableResult) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RUN_COLUMNS)
    for r in result.runs:
        run = r.run
        writer.writerow(
            [
                r.name,
                "+".join(run.roles),
                run.teacher or "",
                run.student,
                run.method,
                run.variant,
                run.seed if run.variant != EXTERNAL else "",
                run.status,
                r.epochs_done,
                r.epochs,
                _fmt(r.best_top1),
                r.best_epoch if r.best_epoch is not None else "",
                _fmt(r.best_top5),
                _fmt(r.last_top1),
                _fmt(r.last_top5),
                "" if r.time_s is None else f"{r.time_s:.1f}",
                run.out,
            ]
        )
    return buf.getvalue()


def write_outputs(result: TableResult, plan: Plan) -> dict[str, Path]:
    """Write ``OUT/tables/TABLE.md``, ``TABLE.csv`` and ``TABLE-runs.csv``; returns their paths."""
    folder = plan.root / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    name = result.spec.name
    files = {
        "markdown": folder / f"{name}.md",
        "csv": folder / f"{name}.csv",
        "runs": folder / f"{name}-runs.csv",
    }
    files["markdown"].write_text(to_markdown(result, plan.options))
    files["csv"].write_text(to_csv(result))
    files["runs"].write_text(runs_csv(result))
    return files
