"""Students side by side: the runs of a lockstep group whose students share an architecture, stepped
as one batched computation.

A sweep's group (:mod:`rld.engine.sweep`) shares each batch and the teacher's outputs; stepping its
students one after another still costs M student forwards and backwards of one batch each, which
leave a GPU mostly idle for small CIFAR students. :class:`StudentStack` stacks the parameters and
buffers of M students of one architecture along a new leading dimension (``torch.stack``, so
autograd hands every run's own parameters their gradients) and runs the M forwards as one
``torch.func.vmap`` over ``torch.func.functional_call``: convolutions become one grouped
convolution, linear layers one batched matrix product, BatchNorm one normalisation over M·C
channels. The M logits go to each run's own method (its own β, T, warm-up, CTKD temperature), the
sum of the M losses is differentiated once, each run's BatchNorm statistics are copied back, and each
run's own optimizer steps its own parameters (its learning rate, weight decay, momentum). Runs,
checkpoints, resume and metrics are exactly those of the runs stepped one after another.

Equality. The arithmetic is that of each single run, but a grouped convolution or a batched matrix
product may sum in another order than the single one: a stacked student equals its single run up to
float32 rounding (a few ulp per step, which training then amplifies like any change of kernel).
``train.batch_students=off`` steps the students one after another, bit-identical to single runs.

Streams. A group may train runs of several seeds, each on its own data stream (its data order and
augmentation): the step then gets one batch per stream, every run reads its own stream's batch and
teacher outputs, and a stack takes the runs of several streams at once (each student's forward gets
its own stream's images: the input is batched along the students too).

What stacks (:func:`stack_key`): students of one architecture, layout and precision whose method reads
only the logits of the protocol's view (not the student's features, no prediction of its own, no
strongly augmented view) and draws no random numbers,
and without active dropout (vmap cannot give each student the random stream of its single run). The
other runs of the group step one after another, as before.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from rld.engine.step import Outcome, train_step
from rld.methods import logits_only

log = logging.getLogger("rld")


def batch_students_wanted(setting: str, device: torch.device) -> bool:
    """``train.batch_students``: ``on`` stacks, ``off`` never, ``auto`` on CUDA (on the CPU a batched
    step does the same arithmetic as M single ones and gains nothing)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def why_not_stacked(run: Any) -> str | None:
    """Why ``run``'s student cannot join a stack, or None when it can."""
    spec = run.method.spec
    if spec.student_features or spec.own_prediction:
        return f"method {spec.name} reads the student's features"
    if spec.strong_view:
        return f"method {spec.name} trains on a strongly augmented view too"
    if spec.uses_rng:
        return f"method {spec.name} draws random numbers in its step"
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in run.student.modules()):
        return f"student {run.cfg.model.student} has dropout"
    if run.world.distributed:
        return "it runs under torchrun"
    return None


def stack_key(run: Any) -> tuple | None:
    """Runs with equal keys can be stacked; None for a run that cannot (:func:`why_not_stacked`)."""
    if why_not_stacked(run) is not None:
        return None
    state = tuple(
        (name, tuple(t.shape), t.dtype, t.requires_grad) for name, t in run.student.state_dict(keep_vars=True).items()
    )
    c = run.cfg
    return (
        c.model.student,
        c.model.dataset,
        c.model.freeze_backbone,
        run.amp,
        c.train.channels_last,
        str(run.device),
        state,
    )


class StudentStack:
    """M ≥ 2 runs whose students step as one batched computation (see the module docstring)."""

    def __init__(self, runs: list[Any], streams: list[int] | None = None):
        """``streams[i]``: the data stream run ``i`` trains on (default: one stream for all)."""
        if len(runs) < 2 or len({stack_key(r) for r in runs}) != 1 or stack_key(runs[0]) is None:
            raise ValueError("a StudentStack takes two or more runs of one stack_key")
        self.runs = runs
        self.streams = [0] * len(runs) if streams is None else list(streams)
        if len(self.streams) != len(runs):
            raise ValueError("a StudentStack takes one stream per run")
        first = runs[0].student
        # the architecture without storage: functional_call supplies the stacked tensors
        self.frame = copy.deepcopy(first).to("meta")
        self._pairs = list(zip(self.frame.modules(), first.modules()))
        self.param_names = [name for name, _ in first.named_parameters()]
        self.buffer_names = [name for name, _ in first.named_buffers()]
        self._params = [[dict(r.student.named_parameters())[n] for n in self.param_names] for r in runs]
        self._buffers = [[dict(r.student.named_buffers())[n] for n in self.buffer_names] for r in runs]
        self._forward = vmap(self._one, in_dims=(0, 0, None))  # one input for all students
        self._forward_own = vmap(self._one, in_dims=(0, 0, 0))  # an input per student

    def _one(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor):
        return functional_call(self.frame, (params, buffers), (x,))

    def logits(self, x: torch.Tensor, own: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(M, B, C)`` float32 logits of every student on ``x`` (B, …), in training mode, and the stacked
        buffers after the forward (BatchNorm statistics updated as M single forwards would). ``own``:
        ``x`` is (M, B, …), student ``i`` runs on ``x[i]``."""
        for frame_module, module in self._pairs:  # train/eval as the runs are (a frozen backbone's BatchNorm)
            frame_module.training = module.training
        # in the default layout: vmap has no batching rule for the restriding a channels-last
        # activation needs (it would loop over the students there)
        params = {n: torch.stack([ps[k].contiguous() for ps in self._params]) for k, n in enumerate(self.param_names)}
        buffers = {n: torch.stack([bs[k] for bs in self._buffers]) for k, n in enumerate(self.buffer_names)}
        amp = self.runs[0].amp
        # no autocast weight cache: it cannot live across CUDA-graph replays (rld.engine.static)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
            out = (self._forward_own if own else self._forward)(params, buffers, x.contiguous())
        return out.float(), [buffers[n] for n in self.buffer_names]

    def forward(self, batches: list[Any], teachers: list[Any], epoch: Any) -> list[Outcome]:
        """The forward and losses of one training step of every run of the stack (a unit of
        :func:`rld.engine.step.train_step`): run ``i`` on ``batches[streams[i]]`` with the teacher's
        outputs ``teachers[streams[i]]`` (shared, read-only). The BatchNorm statistics the stacked
        forward updated are copied back to each run's own buffers."""
        if len(set(self.streams)) == 1:
            logits, buffers = self.logits(batches[self.streams[0]].images)
        else:
            logits, buffers = self.logits(torch.stack([batches[s].images for s in self.streams]), own=True)
        with torch.no_grad():
            for i, own in enumerate(self._buffers):
                for buffer, stacked in zip(own, buffers):
                    buffer.copy_(stacked[i])
        teachers = [logits_only(t) if isinstance(t, torch.Tensor) else t for t in teachers]
        outcomes = []
        for i, run in enumerate(self.runs):
            batch, teacher = batches[self.streams[i]], teachers[self.streams[i]]
            run_epoch = run.device_scalars[1] if run.device_scalars is not None else epoch
            loss, parts = run.method(
                logits_only(logits[i]), teacher if run.needs_teacher else None, batch.targets, run_epoch, batch.indices
            )
            outcomes.append(Outcome(run, batch.targets, logits[i], loss, parts))
        return outcomes


class GroupStep:
    """Steps the members of a lockstep group (objects with ``run``, ``stream``, ``enter``, ``leave``), each
    on the batch of its data stream: with ``batched``, the runs of each :func:`stack_key` (two or more,
    of any streams) as a :class:`StudentStack`, every other run by its own :meth:`Run.step
    <rld.engine.trainer.Run.step>` inside its RNG state."""

    def __init__(self, members: list[Any], batched: bool = False):
        self.members = members
        self.units: list[Any] = []
        stacks: dict[tuple, list[Any]] = {}
        singles: list[Any] = []
        for m in members:
            key = stack_key(m.run) if batched else None
            (stacks.setdefault(key, []) if key is not None else singles).append(m)
        for group in stacks.values():
            if len(group) > 1:
                self.units.append(StudentStack([m.run for m in group], [m.stream for m in group]))
            else:
                singles += group
        for unit in self.units:
            seeds = len(set(unit.streams))
            log.info(
                "%d students (%s%s) step as one batched computation",
                len(unit.runs),
                unit.runs[0].cfg.model.student,
                f", {seeds} seeds" if seeds > 1 else "",
            )
        if batched and stacks and singles:
            reasons = sorted({why_not_stacked(m.run) or "no other run has its student" for m in singles})
            log.info("%d of %d runs step one after another (%s)", len(singles), len(members), "; ".join(reasons))
        self.units += sorted(singles, key=members.index)
        self.stacked = sum(len(u.runs) for u in self.units if isinstance(u, StudentStack))

    def __call__(self, batches: list[Any], teachers: list[Any], epoch: Any, swap_rng: bool = True) -> None:
        """One step of every member; per data stream, ``batches`` its batch and ``teachers`` the
        teacher's outputs on it (of :func:`teacher_outputs <rld.engine.teacher.teacher_outputs>`;
        shared, read-only). ``swap_rng``: each single run's global RNG state is swapped in around its
        step (a stack draws no random numbers)."""
        for unit in self.units:
            if isinstance(unit, StudentStack):
                train_step(unit.forward(batches, teachers, epoch))
                continue
            if swap_rng:
                unit.enter()
            teacher = teachers[unit.stream] if unit.run.needs_teacher else None
            unit.run.step(batches[unit.stream], teacher, epoch)
            if swap_rng:
                unit.leave()
