"""``rld report``: one self-contained HTML page about the runs under a folder.

The page holds, in order: the tables written by ``rld reproduce`` and ``rld demo`` (``table*.md`` /
``table*.csv``: the reproduced numbers beside the paper's), each ``rld tune`` folder (``tune.json``:
the grid's validation top-1 per seed, the selection rule, the chosen point, its final test top-1 and
the heat map), a table of the runs (every folder with ``config.yaml`` and ``metrics.csv``) with the
time each took and the machine it ran on (from the run's ``environment.json`` where one was
written; a run that evaluates held-out training images, ``data.holdout``, says "validation"), the
learning curves (test top-1 and train loss per epoch) of each group of runs (the runs in one
folder, e.g. the seeds of one method), every PNG figure found under the folder, and each run's
configuration in a collapsible block.

The page is one file: figures are embedded as base64 PNG, the style sheet is inline, nothing is
loaded from the network and there is no script, so it can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rld.errors import UserError
from rld.experiments.runs import FINISHED, RunRecord, find_runs

MAX_FIGURES = 100
MAX_CURVE_GROUPS = 40
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222;
       line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ccc; }
h3 { margin-top: 1.4em; }
nav { font-size: 0.95em; } nav a { margin-right: 1em; } .meta { color: #555; font-size: 0.9em; margin-top: 0; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; }
img { max-width: 100%; height: auto; border: 1px solid #eee; } figure { margin: 1.5em 0; }
figcaption { color: #555; font-size: 0.9em; } code { background: #f5f5f5; padding: 0 0.2em; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
details { margin: 0.3em 0; } summary { cursor: pointer; }
.scroll { overflow-x: auto; } .source { color: #777; font-size: 0.85em; }
"""


@dataclass
class RunRow:
    name: str
    model: str
    teacher: str
    method: str
    epochs: str
    best: str
    last: str
    time: str
    hardware: str


def format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    if minutes < 120:
        return f"{minutes:.1f} min"
    return f"{int(minutes // 60)} h {int(minutes % 60):02d} min"


def run_row(record: RunRecord, root: Path) -> RunRow:
    cfg = record.config
    best, last = record.best, record.last
    done = f"{record.epochs_done}/{cfg.train.epochs}"
    held_out = ", validation" if cfg.data.holdout is not None else ""  # data.holdout: held-out training images
    return RunRow(
        name=str(record.path.relative_to(root)) if record.path != root else record.path.name,
        model=cfg.model.student,
        teacher=cfg.model.teacher or "",
        method=cfg.method.name + (" + LS" if cfg.method.logit_standardization else ""),
        epochs=done if record.status == FINISHED else f"{done} ({record.status})",
        best=f"{best['test_top1']:.2f} (epoch {best['epoch']}{held_out})" if best else "",
        last=f"{last['test_top1']:.2f}" + (" (validation)" if held_out else "") if last else "",
        time=format_seconds(record.total_time) if record.metrics else "",
        hardware=hardware_text(record.path),
    )


def hardware_text(run_dir: Path) -> str:
    """The machine a run trained on, from its ``environment.json`` (written by ``rld demo``), in words."""
    path = Path(run_dir) / "environment.json"
    try:
        env = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "not recorded"
    if not isinstance(env, dict):
        return "not recorded"
    parts = [str(env["gpu"])] if env.get("gpu") else []
    if env.get("processor"):
        cores = f", {env['cores']} cores" if env.get("cores") else ""
        parts.append(f"{env['processor']}{cores}")
    if env.get("torch"):
        parts.append(f"torch {env['torch']}")
    return "; ".join(parts) or "not recorded"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str, tag: str) -> str:
        numeric = tag == "td" and re.fullmatch(r"[-+]?\d[\d.,]*( ± [\d.]+)?( \(.*\))?", text or "") is not None
        return f"<{tag}{' class=num' if numeric else ''}>{html.escape(text)}</{tag}>"

    head = "".join(cell(h, "th") for h in header)
    body = "".join("<tr>" + "".join(cell(c, "td") for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _inline(text: str) -> str:
    escaped = html.escape(text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def markdown_to_html(text: str) -> str:
    """The Markdown of ``rld reproduce`` (headings, paragraphs, pipe tables) as HTML."""
    out, table = [], []

    def flush() -> None:
        if table:
            rows = [
                [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]] for line in table
            ]
            rows = [r for r in rows if not all(re.fullmatch(r":?-+:?", c) for c in r if c)]
            out.append(_html_table(rows[0], rows[1:]) if rows else "")
            table.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            table.append(line)
            continue
        flush()
        heading = re.match(r"(#{1,6})\s+(.*)", line)
        if heading:
            level = min(len(heading.group(1)) + 2, 6)  # below the page's own h1/h2
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline(line.strip())}</p>")
    flush()
    return "\n".join(out)


def csv_to_html(text: str) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    return _html_table(rows[0], rows[1:]) if rows else ""


def _tables_section(root: Path) -> list[str]:
    parts = []
    markdown = sorted(p for p in root.rglob("table*.md"))
    for path in markdown:
        parts.append(markdown_to_html(path.read_text()))
        parts.append(f'<p class="source">from <code>{html.escape(str(path.relative_to(root)))}</code></p>')
    md_stems = {(p.parent, p.stem) for p in markdown}
    for path in sorted(root.rglob("table*.csv")):
        if (path.parent, path.stem) in md_stems:
            continue  # the same table as its Markdown
        body = csv_to_html(path.read_text())
        if path.stem.endswith("-runs"):
            summary = f"every run of {path.stem.removesuffix('-runs')} ({html.escape(str(path.relative_to(root)))})"
            parts.append(f"<details><summary>{summary}</summary>{body}</details>")
        else:
            parts += [f"<h3>{html.escape(str(path.relative_to(root)))}</h3>", body]
    return parts


def _figures_section(root: Path, exclude: Path | None, shown: set[Path] = frozenset()) -> list[str]:
    """Every PNG under ``root`` but ``exclude`` and those already ``shown`` (resolved paths) elsewhere."""
    paths = [
        p
        for p in sorted(root.rglob("*.png"))
        if (exclude is None or p.resolve() != exclude) and p.resolve() not in shown
    ]
    parts = []
    for path in paths[:MAX_FIGURES]:
        rel = str(path.relative_to(root))
        parts.append(f"<figure>{_img(path.read_bytes(), rel)}<figcaption>{html.escape(rel)}</figcaption></figure>")
    if len(paths) > MAX_FIGURES:
        parts.append(f"<p>{len(paths) - MAX_FIGURES} more PNG files under the folder are not embedded.</p>")
    return parts


def _tune_section(root: Path, folders: list[Path]) -> tuple[list[str], set[Path]]:
    """One block per ``rld tune`` folder: the plan, the rule, the grid's validation top-1 (tune.csv),
    the chosen point, the final test top-1 and the heat map; and the figures it embedded."""
    from rld.experiments.tune import CSV_FILE, read_tune

    parts: list[str] = []
    shown: set[Path] = set()
    for folder in folders:
        rel = html.escape(str(folder.relative_to(root)) if folder != root else folder.name)
        try:
            t = read_tune(folder)
        except UserError as err:
            parts.append(f"<h3>{rel}</h3><p>{html.escape(str(err))}</p>")
            continue
        grid = "; ".join(f"{k} ∈ {{{', '.join(map(str, v))}}}" for k, v in t.get("grid", {}).items())
        v = t.get("validation", {})
        seeds = ", ".join(str(s) for s in t.get("seeds", []))
        parts += [
            f"<h3>{html.escape(str(t.get('preset', '')))} <code>{rel}</code></h3>",
            f"<p>Grid {html.escape(grid)}; seeds {html.escape(seeds)}; {t.get('epochs')} epochs per run. "
            f"Validation: {v.get('val_size')} of the {v.get('train_size')} training images held out (fraction "
            f"{v.get('fraction')}, stratified, split seed {v.get('split_seed')}; <code>{rel}/{v.get('file')}</code>), "
            "never the test split.</p>",
            f"<p>Rule: {html.escape(str(t.get('rule', '')))}.</p>",
        ]
        table = folder / CSV_FILE
        if table.is_file():
            parts.append(csv_to_html(table.read_text()))
        chosen = t.get("chosen")
        if chosen is None:
            parts.append("<p>No point chosen yet: the grid has not finished (continue with <code>--resume</code>).</p>")
            continue
        point = " ".join(f"{k}={val}" for k, val in chosen.items())
        parts.append(
            f"<p><b>Chosen:</b> <code>{html.escape(point)}</code> (mean validation top-1 "
            f"{float(t['chosen_val_top1']):.2f}%).</p>"
        )
        final = t.get("final")
        if final:
            per_seed = ", ".join(f"seed {r['seed']}: {float(r['test_top1']):.2f}" for r in final["runs"])
            parts.append(
                f"<p><b>Final test top-1</b> (the chosen point retrained on the whole training set, last epoch "
                f"{final['epoch']}): {float(final['test_top1_mean']):.2f} ± {float(final['test_top1_std']):.2f}% "
                f"({html.escape(per_seed)}).</p>"
            )
        else:
            parts.append("<p>The final run has not finished (continue with <code>--resume</code>).</p>")
        figure = folder / str(t.get("figure") or "")
        if t.get("figure") and figure.is_file():
            shown.add(figure.resolve())
            caption = html.escape(f"{rel}/{figure.name}")
            parts.append(f"<figure>{_img(figure.read_bytes(), caption)}<figcaption>{caption}</figcaption></figure>")
    return parts, shown


def curve_groups(records: list[RunRecord], root: Path) -> dict[str, list[tuple[str, RunRecord]]]:
    """Runs grouped by the folder that holds them (e.g. the seeds of one method): group name ->
    [(run label, record)], in the order of first appearance; runs directly under ``root`` form one group
    ("top level", or the run's own name when it is alone)."""
    groups: dict[str, list[tuple[str, RunRecord]]] = {}
    for record in records:
        rel = record.path.relative_to(root) if record.path != root else Path(record.path.name)
        key = str(rel.parent) if str(rel.parent) != "." else "top level"
        groups.setdefault(key, []).append((rel.name, record))
    top = groups.get("top level")
    if top is not None and len(top) == 1 and top[0][0] not in groups:  # a lone run is named by itself
        groups = {(top[0][0] if k == "top level" else k): v for k, v in groups.items()}
    return groups


def _curves_section(records: list[RunRecord], root: Path) -> list[str]:
    from rld.viz.figures import learning_curves_figure, png_bytes

    groups = [(k, v) for k, v in curve_groups(records, root).items() if any(r.metrics for _, r in v)]
    parts = []
    for name, members in groups[:MAX_CURVE_GROUPS]:
        fig = learning_curves_figure([(label, r.metrics) for label, r in members if r.metrics], title=name)
        alt = f"learning curves of {name}"
        parts.append(f"<figure>{_img(png_bytes(fig), alt)}<figcaption>{html.escape(name)}</figcaption></figure>")
    if len(groups) > MAX_CURVE_GROUPS:
        parts.append(f"<p>{len(groups) - MAX_CURVE_GROUPS} more groups of runs are not drawn.</p>")
    return parts


def _configs_section(records: list[RunRecord], rows: list[RunRow]) -> list[str]:
    parts = []
    for row, record in zip(rows, records):
        text = (record.path / "config.yaml").read_text(encoding="utf-8")
        summary = f"<code>{html.escape(row.name)}</code> — {html.escape(row.method)}, {html.escape(row.model)}"
        parts.append(f"<details><summary>{summary}</summary><pre>{html.escape(text)}</pre></details>")
    return parts


def build_report(root: str | Path, *, title: str | None = None, exclude: Path | None = None) -> str:
    """The HTML page for the runs, tables and figures under ``root`` (see the module docstring)."""
    from rld import __version__

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder")
    records = [RunRecord.load(p) for p in find_runs(root)]
    tables = _tables_section(root)
    from rld.experiments.tune import TUNE_FILE

    tunes, shown = _tune_section(root, sorted(p.parent for p in root.rglob(TUNE_FILE)))
    figures = _figures_section(root, exclude, shown)
    if not records and not tables and not figures and not tunes:
        raise UserError(f"found no runs (folders with config.yaml and metrics.csv), tables or figures under {root}")
    title = title or f"rld report: {root.resolve().name}"
    rows = [run_row(r, root) for r in records]
    sections: list[tuple[str, str, list[str]]] = []
    if tables:
        sections.append(("tables", "Results", tables))
    if tunes:
        sections.append(("tune", "Hyper-parameter tuning", tunes))
    if records:
        header = [
            "run", "model", "teacher", "method", "epochs", "best top-1 (%)", "last top-1 (%)", "time", "hardware",
        ]  # fmt: skip
        total = format_seconds(sum(r.total_time for r in records))
        runs = [
            _html_table(header, [list(vars(r).values()) for r in rows]),
            f"<p>Sum of the runs' times: {total} (runs trained in lockstep, by <code>rld sweep</code> or "
            "<code>rld demo</code>, each count their group's shared time).</p>",
        ]
        sections.append(("runs", "Runs", runs))
        curves = _curves_section(records, root)
        if curves:
            sections.append(("curves", "Learning curves", curves))
    if figures:
        sections.append(("figures", "Figures", figures))
    if records:
        sections.append(("configs", "Configuration of each run", _configs_section(records, rows)))
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    count = f"{len(records)} run{'s' if len(records) != 1 else ''}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{count} under <code>{html.escape(str(root))}</code>; generated {generated} by rld '
        f"{html.escape(__version__)}.</p>",
        "<nav>" + "".join(f'<a href="#{key}">{html.escape(name)}</a>' for key, name, _ in sections) + "</nav>",
    ]
    for key, name, body in sections:
        parts += [f'<h2 id="{key}">{html.escape(name)}</h2>', *body]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(root: str | Path, out: str | Path, *, title: str | None = None) -> Path:
    out = Path(out)
    page = build_report(root, title=title, exclude=out.resolve())
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot write the report {out}: {err.strerror}") from err
    return out
