"""The one training step: a unit's forward and loss, then one backward, the optimizer steps and the
metric records.

A *unit* is what steps as one computation: a run (:meth:`Run.forward
<rld.engine.trainer.Run.forward>`: one student and its method) or a stack of runs
(:meth:`StudentStack.forward <rld.engine.batched.StudentStack.forward>`: students of one
architecture as one batched computation). Its forward returns one :class:`Outcome` per run it
trains; :func:`train_step` does the rest. Every path that trains — the plain loop, the captured
step (which replays this function's device work), lockstep sweeps, stacked students, several seeds'
streams, MLKD's two views, ``rld bench``'s project paths — steps through it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch


class Outcome(NamedTuple):
    """What a unit's forward gives for one of its runs."""

    run: Any  # the run (its optimizer steps its parameters; its metrics record the step)
    targets: torch.Tensor  # (B,) the labels
    logits: torch.Tensor  # (B, C) what the student predicted
    loss: torch.Tensor  # () the run's loss
    parts: dict[str, torch.Tensor]  # its named parts, scalars


def clip_gradient(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """Scale the gradients of ``optimizer``'s parameters so that their total L2 norm is at most
    ``max_norm`` (``torch.nn.utils.clip_grad_norm_``: device arithmetic only, no host sync, so a
    captured step replays it)."""
    grads = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(grads, max_norm)


def train_step(outcomes: list[Outcome]) -> None:
    """Finish a step from a unit's forward: zero the runs' gradients, differentiate the sum of their
    losses once (each run's parameters get their own loss's gradient: the runs share none), then
    for each run the clipping of its gradient (``train.grad_clip_norm``), its optimizer step and the
    record of its metrics."""
    for o in outcomes:
        o.run.optimizer.zero_grad(set_to_none=True)
    total = outcomes[0].loss
    for o in outcomes[1:]:
        total = total + o.loss
    total.backward()
    for o in outcomes:
        max_norm = getattr(o.run, "grad_clip_norm", None)
        if max_norm is not None:
            clip_gradient(o.run.optimizer, max_norm)
        o.run.optimizer.step()
        o.run.record(o.targets, o.logits, o.loss, o.parts)
