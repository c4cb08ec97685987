"""The published numbers of the RLD paper, shipped as package data.

``paper_tables.json`` holds every number of Tables 1–6 of Sun et al., *Knowledge Distillation with
Refined Logits*, arXiv 2408.07703v2 (top-1 accuracy in %, mean of three trials; Table 4 also
top-5). Tables 2–4 and 6 are ``rows[row][column]`` with columns named ``TEACHER->STUDENT`` (Table 4:
``TEACHER->STUDENT top1`` / ``top5``); Tables 1 and 5 are ``rows[row]`` for their single pair.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from rld.errors import UserError


@cache
def paper_tables() -> dict:
    """The whole file as a dict (``source``, ``table1`` … ``table6``)."""
    return json.loads(resources.files("rld.experiments").joinpath("paper_tables.json").read_text())


def paper_source() -> str:
    return paper_tables()["source"]


def paper_value(table: str, row: str, column: str | None = None) -> float | None:
    """The paper's number for ``row`` (and ``column``) of ``table``; None where the paper has none."""
    tables = paper_tables()
    if table not in tables or table == "source":
        raise UserError(f"the paper has no {table!r}; tables: {', '.join(k for k in tables if k != 'source')}")
    value = tables[table]["rows"].get(row)
    if isinstance(value, dict):  # tables with columns; Tables 1 and 5 have one number per row
        value = value.get(column) if column is not None else None
    return float(value) if isinstance(value, (int, float)) else None
