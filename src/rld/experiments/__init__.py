"""Reproducing the paper's tables: which runs, how to aggregate them, the paper's numbers beside.

* :mod:`rld.experiments.tables` — rows, columns and the runs behind every cell of Tables 1–6;
* :func:`plan_table` — every run a table needs (teachers first), with preset, overrides, folder;
* :func:`reproduce` — run what is missing, resume what is unfinished, write the table;
* :func:`collect`, :func:`to_markdown`, :func:`to_csv` — mean ± std over seeds beside the paper;
* :func:`paper_value` — the published numbers (package data, arXiv 2408.07703v2, Tables 1–6);
* :mod:`rld.experiments.report` — the HTML report of ``rld report``;
* :func:`runs_table` — every run below some folders with its status (``rld runs``).
"""

from rld._lazy import lazy_exports

_EXPORTS = {
    "collect": "rld.experiments.aggregate",
    "to_csv": "rld.experiments.aggregate",
    "to_markdown": "rld.experiments.aggregate",
    "paper_tables": "rld.experiments.paper",
    "paper_value": "rld.experiments.paper",
    "Plan": "rld.experiments.plan",
    "PlannedRun": "rld.experiments.plan",
    "plan_table": "rld.experiments.plan",
    "reproduce": "rld.experiments.reproduce",
    "RunRecord": "rld.experiments.runs",
    "find_runs": "rld.experiments.runs",
    "runs_table": "rld.experiments.runs_table",
    "TABLES": "rld.experiments.tables",
    "get_table": "rld.experiments.tables",
}


__getattr__ = lazy_exports(__name__, globals(), _EXPORTS)

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
    "runs_table",
    "to_csv",
    "to_markdown",
]
