"""``train.grad_clip_norm``: the one step clips each run's gradient to a total L2 norm before its
optimizer step — in the plain loop, the whole-step path and a stack of students alike."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import assert_same_run_state, assert_user_error, load_last, metric_rows, run_rld
from rld.config import resolve
from rld.engine import train
from rld.engine.step import Outcome, train_step
from rld.engine.sweep import sweep
from rld.errors import UserError

FAST = ["train.batch_size=128", "data.eval_batch_size=512", "train.epochs=2", "data.train_per_class=30"]


def _stand_in(max_norm, value=(3.0, 4.0)):
    """A run of one parameter w = 0 trained by plain SGD at lr 1 on the loss ⟨w, value⟩: its step
    moves w by minus the (clipped) gradient, value."""
    w = torch.zeros(2, requires_grad=True)
    run = SimpleNamespace(optimizer=torch.optim.SGD([w], lr=1.0), grad_clip_norm=max_norm, record=lambda *a: None, w=w)
    loss = (w * torch.tensor(value)).sum()
    return run, Outcome(run, torch.zeros(1), torch.zeros(1, 2), loss, {})


@pytest.mark.parametrize(
    ("max_norm", "expected"),
    [
        (None, [-3.0, -4.0]),  # no clipping: the gradient (3, 4), norm 5
        (10.0, [-3.0, -4.0]),  # under the limit: unchanged
        (1.0, [-0.6, -0.8]),  # scaled to norm 1 (clip_grad_norm_'s 1e-6 in the denominator aside)
        (2.5, [-1.5, -2.0]),
    ],
)
def test_the_step_clips_each_runs_gradient_to_its_norm(max_norm, expected):
    run, outcome = _stand_in(max_norm)
    train_step([outcome])
    assert run.w.detach().tolist() == pytest.approx(expected, rel=1e-5)


def test_runs_of_one_step_are_clipped_each_by_its_own_norm():
    a, oa = _stand_in(1.0)
    b, ob = _stand_in(None, value=(6.0, 8.0))
    train_step([oa, ob])
    assert a.w.detach().tolist() == pytest.approx([-0.6, -0.8], rel=1e-5)
    assert b.w.detach().tolist() == pytest.approx([-6.0, -8.0])


def _over(teacher, *extra):
    return [*FAST, f"model.teacher_checkpoint={teacher}", *extra]


def test_a_clipped_run_plain_and_whole_step_are_identical_and_a_loose_limit_changes_nothing(tmp_path, teacher_ckpt):
    """A limit no gradient reaches leaves a run bit-identical to an unclipped one (the scale is
    exactly 1); a tight one changes the run; the whole-step path clips as the plain loop does."""
    runs = {
        "none": [],
        "loose": ["train.grad_clip_norm=1e9"],
        "t": ["train.grad_clip_norm=0.05", "train.static_step=off"],
        "ts": ["train.grad_clip_norm=0.05", "train.static_step=on"],
    }
    for name, extra in runs.items():
        train(resolve("demo/rld", _over(teacher_ckpt, *extra)), tmp_path / name)
    none, loose = metric_rows(tmp_path / "none" / "metrics.csv"), metric_rows(tmp_path / "loose" / "metrics.csv")
    assert loose == none
    ignore = ("train.grad_clip_norm",)
    assert_same_run_state(load_last(tmp_path / "none"), load_last(tmp_path / "loose"), ignore_config=ignore)
    tight = metric_rows(tmp_path / "t" / "metrics.csv")
    assert [r["train_loss"] for r in tight] != [r["train_loss"] for r in none]
    assert metric_rows(tmp_path / "ts" / "metrics.csv") == tight
    assert_same_run_state(load_last(tmp_path / "t"), load_last(tmp_path / "ts"), ignore_config=("train.static_step",))


def test_stacked_students_are_clipped_each_as_their_single_runs(tmp_path, teacher_ckpt):
    """A stack steps the runs' own parameters, so each run's gradient is clipped by itself: the
    stacked sweep ends where the one-by-one sweep does, up to float rounding."""
    grid = ["train.grad_clip_norm=0.05,0.2"]
    over = _over(teacher_ckpt)
    sweep("demo/rld", grid, out=tmp_path / "off", extra=[*over, "train.batch_students=off"])
    rows = sweep("demo/rld", grid, out=tmp_path / "on", extra=[*over, "train.batch_students=on"])
    losses = {}
    for row in rows:
        a = metric_rows(tmp_path / "on" / row["run"] / "metrics.csv")
        b = metric_rows(tmp_path / "off" / row["run"] / "metrics.csv")
        for x, y in zip(a, b, strict=True):
            assert float(x["train_loss"]) == pytest.approx(float(y["train_loss"]), rel=1e-4)
        losses[row["run"]] = float(b[-1]["train_loss"])
    assert len(set(losses.values())) == 2  # the two limits train differently


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_limit_that_is_not_a_positive_number_is_refused(value, tmp_path):
    with pytest.raises(UserError, match="train.grad_clip_norm must be"):
        resolve("demo/rld", [f"train.grad_clip_norm={value}"])
    done = run_rld("train", "demo/rld", "--dry-run", f"train.grad_clip_norm={value}")
    assert_user_error(done.returncode, done.stderr.strip(), "train.grad_clip_norm must be")
