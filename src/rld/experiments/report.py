"""``rld report``: one self-contained HTML page about the runs under a folder.

The page holds a table of the runs (every folder with ``config.yaml`` and ``metrics.csv``), their
learning curves (test top-1 and train loss per epoch), the tables written by ``rld reproduce``
(``table*.md`` / ``table*.csv``) and every PNG figure found under the folder, embedded as base64
so the page can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path

from rld.errors import UserError
from rld.experiments.runs import RunRecord, find_runs

MAX_FIGURES = 100
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; } figure { margin: 1.5em 0; }
figcaption { color: #555; font-size: 0.9em; } code { background: #f5f5f5; padding: 0 0.2em; }
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
    return RunRow(
        name=str(record.path.relative_to(root)) if record.path != root else record.path.name,
        model=cfg.model.student,
        teacher=cfg.model.teacher or "",
        method=cfg.method.name + (" + LS" if cfg.method.logit_standardization else ""),
        epochs=done if record.finished else f"{done} (unfinished)",
        best=f"{best['test_top1']:.2f} (epoch {best['epoch']})" if best else "",
        last=f"{last['test_top1']:.2f}" if last else "",
        time=format_seconds(record.total_time) if record.metrics else "",
    )


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


def _figures_section(root: Path, exclude: Path | None) -> list[str]:
    paths = [p for p in sorted(root.rglob("*.png")) if exclude is None or p.resolve() != exclude]
    parts = []
    for path in paths[:MAX_FIGURES]:
        rel = str(path.relative_to(root))
        parts.append(f"<figure>{_img(path.read_bytes(), rel)}<figcaption>{html.escape(rel)}</figcaption></figure>")
    if len(paths) > MAX_FIGURES:
        parts.append(f"<p>{len(paths) - MAX_FIGURES} more PNG files under the folder are not embedded.</p>")
    return parts


def build_report(root: str | Path, *, title: str | None = None, exclude: Path | None = None) -> str:
    """The HTML page for the runs, tables and figures under ``root``."""
    from rld.viz.figures import learning_curves_figure, png_bytes

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder")
    records = [RunRecord.load(p) for p in find_runs(root)]
    tables = _tables_section(root)
    figures = _figures_section(root, exclude)
    if not records and not tables and not figures:
        raise UserError(f"found no runs (folders with config.yaml and metrics.csv), tables or figures under {root}")
    title = title or f"rld report: {root.resolve().name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(records)} run{'s' if len(records) != 1 else ''} under <code>{html.escape(str(root))}</code>.</p>",
    ]
    if records:
        rows = [run_row(r, root) for r in records]
        header = ["run", "model", "teacher", "method", "epochs", "best top-1 (%)", "last top-1 (%)", "time"]
        parts += ["<h2>Runs</h2>", _html_table(header, [list(vars(r).values()) for r in rows])]
        curves = [(row.name, r.metrics) for row, r in zip(rows, records) if r.metrics]
        if curves:
            fig = learning_curves_figure(curves)
            parts += ["<h2>Learning curves</h2>", f"<figure>{_img(png_bytes(fig), 'learning curves')}</figure>"]
    if tables:
        parts += ["<h2>Reproduced tables</h2>", *tables]
    if figures:
        parts += ["<h2>Figures</h2>", *figures]
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
