"""``rld demo``: a teacher and vanilla/KD/DKD/RLD students on the embedded handwritten digits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_RUNS = ("vanilla", "kd", "dkd", "rld")


def run_demo(
    out: str | Path, overrides: list[str] | tuple[str, ...] = (), runs: tuple[str, ...] = DEMO_RUNS
) -> dict[str, dict[str, Any]]:
    """Train (or resume) the demo's teacher, then the students ``runs`` (distilled from the
    teacher's last epoch), in ``out/teacher`` and ``out/NAME``; ``overrides`` go to every run.
    Returns the summaries of :func:`rld.engine.train` by run name."""
    from rld.config import resolve
    from rld.engine import train
    from rld.experiments.runs import teacher_weights

    out = Path(out)
    results = {"teacher": train(resolve("demo/teacher", list(overrides)), out / "teacher", resume=True)}
    teacher = teacher_weights(out / "teacher")
    for name in runs:
        cfg = resolve(f"demo/{name}", [*overrides, f"model.teacher_checkpoint={teacher}"])
        results[name] = train(cfg, out / name, resume=True)
    return results
