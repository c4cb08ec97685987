"""Deterministic fault points for the crash-recovery tests (test-only; unset, nothing happens).

``RLD_FAULT=KIND:N`` acts at the N-th time this process reaches the fault's point, instead of after
a wall-clock delay. Points: ``after_step`` (right after an optimisation step, counted over every run
the process trains) and ``before_rename`` (inside a write of a run's ``last.pt``, after the
temporary file is written and fsynced and before it is renamed over ``last.pt``).

``after_step:K`` / ``before_rename:N``
    end the process abruptly — ``os._exit(FAULT_EXIT_STATUS)``: no cleanup, no flush, as after SIGKILL;
``sigterm_after_step:K`` / ``sigint_after_step:K``
    send SIGTERM / SIGINT to the process itself (a preemption, a Ctrl-C);
``wait_after_step:K``
    say so on stderr and block until a signal arrives (a run caught in the middle, for a test to look
    at or to kill; ended by SIGALRM after ``WAIT_LIMIT_S`` should the test never send one);
``nan_after_step:K``
    set one weight of the run that just stepped to NaN (a divergence: the next step's loss is NaN);
``error_after_step:K``
    raise ``RuntimeError`` from that step (a kernel that fails, an out-of-memory error);
``enospc_before_rename:N``
    fail that write with ``OSError(ENOSPC)`` (a full disk).

``RLD_FAULT_RUN=TEXT`` counts only the points reached by the run whose folder path ends with TEXT
(e.g. ``kd/seed0``): among runs spread over several processes (``--executor ray``), the fault
strikes the process that trains that run, whichever it is.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path
from typing import Any

from rld.errors import UserError

FAULT_EXIT_STATUS = 86
WAIT_LIMIT_S = 120
# kind -> (point, action)
FAULTS = {
    "after_step": ("after_step", "exit"),
    "before_rename": ("before_rename", "exit"),
    "sigterm_after_step": ("after_step", "sigterm"),
    "sigint_after_step": ("after_step", "sigint"),
    "wait_after_step": ("after_step", "wait"),
    "nan_after_step": ("after_step", "nan"),
    "error_after_step": ("after_step", "error"),
    "enospc_before_rename": ("before_rename", "enospc"),
}
KINDS = tuple(FAULTS)
POINTS = ("after_step", "before_rename")
_counts = dict.fromkeys(POINTS, 0)
_spec: tuple[str, int] | None | bool = False  # False: not read yet
_run_filter: str | None = None  # RLD_FAULT_RUN, read with _spec


def _parse(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    kind, _, count = text.partition(":")
    if kind not in FAULTS or not count.isdigit() or int(count) < 1:
        raise UserError(f"RLD_FAULT={text!r}: expected KIND:N with N >= 1 and KIND one of {', '.join(KINDS)}")
    return kind, int(count)


def reached(point: str, run: Any = None) -> None:
    """Count one ``point``; act if ``RLD_FAULT`` names this occurrence (``run``: the run that stepped
    or whose checkpoint is written)."""
    global _spec, _run_filter
    if _spec is False:
        _spec = _parse(os.environ.get("RLD_FAULT"))
        _run_filter = os.environ.get("RLD_FAULT_RUN", "").strip().rstrip("/") or None
    if _spec is None or FAULTS[_spec[0]][0] != point:
        return
    if _run_filter is not None and (run is None or not Path(run.out).as_posix().endswith(_run_filter)):
        return
    _counts[point] += 1
    if _counts[point] == _spec[1]:
        _act(FAULTS[_spec[0]][1], run)


def _act(action: str, run: Any) -> None:
    if action == "exit":
        os._exit(FAULT_EXIT_STATUS)
    elif action in ("sigterm", "sigint"):
        os.kill(os.getpid(), signal.SIGTERM if action == "sigterm" else signal.SIGINT)
    elif action == "wait":
        print("RLD_FAULT: waiting for a signal", file=sys.stderr, flush=True)  # what a test waits for
        signal.alarm(WAIT_LIMIT_S)
        signal.pause()
        signal.alarm(0)
    elif action == "nan":
        import torch

        with torch.no_grad():
            weight = run.optimizer.param_groups[0]["params"][0]
            weight[(0,) * weight.dim()] = float("nan")
    elif action == "error":
        raise RuntimeError(f"RLD_FAULT: a step that fails (error_after_step:{_spec[1]})")
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
