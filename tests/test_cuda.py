"""The checks a session with a GPU runs first: ``pytest -m cuda`` (skipped without CUDA).

The CPU suite runs the whole-step path without capture; only a GPU shows that the step is
captured as CUDA graphs, that replaying them trains exactly like running the same step eagerly
(over epochs that end with a partial batch), and that bf16 autocast training stays finite.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import TIME_COLUMNS, load_last
from rld.config import resolve
from rld.engine import train
from rld.engine.distributed import World
from rld.engine.loop import Member
from rld.engine.static import StaticSteps
from rld.engine.teacher import build_teacher_fn
from rld.engine.trainer import Run, build_run_data, setup

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# digits at batch 256: five full batches and a partial one of 67 per epoch. A batch size is captured
# after two eager warm-up steps of that size: 256 in the first epoch, 67 (one an epoch) in the third.
# Strict capture: a step that cannot be captured is an error naming its cause, never a silent eager fallback
EPOCHS = 3
OVERRIDES = [
    "train.batch_size=256",
    "data.eval_batch_size=512",
    f"train.epochs={EPOCHS}",
    "train.device=cuda",
    "train.static_step=require",
]


def _static_run(out: Path, teacher_ckpt: Path, capture: bool) -> tuple[Run, StaticSteps, list[dict]]:
    """demo/rld for three epochs through StaticSteps, captured as CUDA graphs (strictly) or run eagerly."""
    cfg = resolve("demo/rld", [*OVERRIDES, "train.amp=true", f"model.teacher_checkpoint={teacher_ckpt}"])
    world = World()
    device = setup(cfg, world)
    data = build_run_data(cfg, device, world)
    run = Run(cfg, out, world=world, device=device, num_classes=data.num_classes, resume_from=None, resume=False)
    teacher_fn = build_teacher_fn(cfg, data.num_classes, device, data.train)
    static = StaticSteps([Member(run)], data.train, teacher_fn, capture=capture, strict=capture)
    rows = []
    for epoch in range(1, EPOCHS + 1):
        run.begin_epoch(epoch)
        static.run_epoch(epoch)
        row = run.end_epoch(epoch, data.test)
        rows.append({k: v for k, v in row.items() if k not in TIME_COLUMNS})
    return run, static, rows


def test_the_step_is_captured_and_replays_exactly_like_the_eager_step(tmp_path, teacher_ckpt):
    captured, static, rows = _static_run(tmp_path / "captured", teacher_ckpt, capture=True)
    assert static.capture and static.captured_sizes == [67, 256]  # one graph per batch size
    assert static.attempts == [{"size": 256, "captured": True}, {"size": 67, "captured": True}]
    assert [r["steps"] for r in rows] == [6] * EPOCHS
    eager, _, eager_rows = _static_run(tmp_path / "eager", teacher_ckpt, capture=False)
    assert rows == eager_rows
    a, b = captured.student.state_dict(), eager.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_training_stays_finite(tmp_path, teacher_ckpt):
    cfg = resolve("demo/rld", [*OVERRIDES, "train.amp=true", f"model.teacher_checkpoint={teacher_ckpt}"])
    summary = train(cfg, tmp_path / "run")
    state = load_last(tmp_path / "run")
    assert state["epoch"] == EPOCHS and math.isfinite(summary["best_top1"])
    for row in state["history"]:
        assert all(math.isfinite(v) for k, v in row.items() if isinstance(v, float)), row
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
