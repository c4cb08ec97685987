"""Deterministic crash points for the crash-recovery tests (test-only; unset, nothing happens).

``RLD_FAULT`` makes the process end abruptly — ``os._exit(FAULT_EXIT_STATUS)``: no cleanup, no
flush, as after SIGKILL — at an exact point instead of after a wall-clock delay:

``RLD_FAULT=after_step:K``
    right after the process's K-th optimisation step (counted over every run it trains);
``RLD_FAULT=before_rename:N``
    inside the N-th write of a run's ``last.pt`` by this process, after the temporary file is
    written and fsynced and before it is renamed over ``last.pt``.
"""

from __future__ import annotations

import os

from rld.errors import UserError

FAULT_EXIT_STATUS = 86
KINDS = ("after_step", "before_rename")
_counts = dict.fromkeys(KINDS, 0)
_spec: tuple[str, int] | None | bool = False  # False: not read yet


def _parse(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    kind, _, count = text.partition(":")
    if kind not in KINDS or not count.isdigit() or int(count) < 1:
        raise UserError(f"RLD_FAULT={text!r}: expected after_step:K or before_rename:N with K, N >= 1")
    return kind, int(count)


def reached(kind: str) -> None:
    """Count one ``kind`` point; end the process if ``RLD_FAULT`` names this one."""
    global _spec
    if _spec is False:
        _spec = _parse(os.environ.get("RLD_FAULT"))
    if _spec is None or _spec[0] != kind:
        return
    _counts[kind] += 1
    if _counts[kind] == _spec[1]:
        os._exit(FAULT_EXIT_STATUS)
