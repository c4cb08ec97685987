"""Reproducing the paper's tables: which runs, how to aggregate them, the paper's numbers beside.

* :mod:`rld.experiments.tables` — rows, columns and the runs behind every cell of Tables 1–6;
* :func:`plan_table` — every run a table needs (teachers first), with preset, overrides, folder;
* :func:`reproduce` — run what is missing, resume what is unfinished, write the table;
* :func:`collect`, :func:`to_markdown`, :func:`to_csv` — mean ± std over seeds beside the paper;
* :func:`paper_value` — the published numbers (package data, arXiv 2408.07703v2, Tables 1–6);
* :mod:`rld.experiments.report` — the HTML report of ``rld report``.
"""

from rld.experiments.aggregate import collect, to_csv, to_markdown
from rld.experiments.paper import paper_tables, paper_value
from rld.experiments.plan import Plan, PlannedRun, plan_table
from rld.experiments.reproduce import reproduce
from rld.experiments.runs import RunRecord, find_runs
from rld.experiments.tables import TABLES, get_table

__all__ = [
    "TABLES",
    "Plan",
    "PlannedRun",
    "RunRecord",
    "collect",
    "find_runs",
    "get_table",
    "paper_tables",
    "paper_value",
    "plan_table",
    "reproduce",
    "to_csv",
    "to_markdown",
]
