"""A run: one student trained with one method (:class:`Run`: the student, the method, the optimizer,
the schedule and the state an exact resume needs), evaluation, and the set-up of a process and its
data.

The run's folder and what is written there are :class:`~rld.engine.folder.RunFolder`'s; its epoch
metrics :class:`~rld.engine.metrics.EpochMetrics`; what it reads from the teacher
:mod:`rld.engine.teacher`'s; the loop that drives it :mod:`rld.engine.loop`. The engine only asks
the method what it needs (``needs_teacher``, its trainable parameters) and never branches on a
method's name.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rld.config import DEVICE_SYNTAX, RunConfig, from_dict
from rld.data import build_data
from rld.data.build import eval_preprocess
from rld.engine import checkpoint as ckpt
from rld.engine import faults, guard
from rld.engine.distributed import World, all_sum
from rld.engine.folder import RunFolder
from rld.engine.metrics import EpochMetrics
from rld.engine.step import Outcome, train_step
from rld.engine.teacher import TeacherViews
from rld.errors import UserError, first_line
from rld.methods import MethodContext, StrongView, build_method, get_spec, logits_only
from rld.models.checkpoint import load_state
from rld.models.features import Features
from rld.models.weights import create_pretrained, freeze_backbone
from rld.trackers import Tracking

log = logging.getLogger("rld")


def lr_at(cfg: RunConfig, epoch: int) -> float:
    """Learning rate of ``epoch`` (counted from 1).

    ``train.warmup_epochs`` W: ``lr·epoch/W`` while ``epoch <= W``. Then ``step``: decayed by
    ``lr_decay`` after each milestone (or every ``lr_step``); ``cosine``: ``lr·(1 + cos(π·k/K))/2``
    with k the epochs after the warm-up (0 first) and K = epochs − W (so 0 would follow the last epoch).
    """
    t = cfg.train
    if t.warmup_epochs and epoch <= t.warmup_epochs:
        return t.lr * epoch / t.warmup_epochs
    if t.schedule == "cosine":
        warm = math.floor(t.warmup_epochs)
        return t.lr * (1 + math.cos(math.pi * (epoch - 1 - warm) / (t.epochs - warm))) / 2
    if t.lr_step:
        decays = (epoch - 1) // t.lr_step
    else:
        decays = sum(epoch > m for m in t.lr_milestones)
    return t.lr * t.lr_decay**decays


def resolve_device(name: str, world: World) -> torch.device:
    """The device ``name`` (auto, cpu, cuda, cuda:N) stands for in this process, made current.

    A CUDA device always comes back with its index (``cuda`` is the current device, under torchrun
    the process's ``LOCAL_RANK``): ``torch.cuda.set_device`` and the CUDA-graph capture need one, and
    tensors compared by device then agree."""
    if not isinstance(name, str) or DEVICE_SYNTAX.fullmatch(name) is None:  # not meta, mps, xla, …
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("train.device is cuda but no CUDA device is available; use --device cpu")
        if world.distributed:
            device = torch.device("cuda", world.local_rank)
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        count = torch.cuda.device_count()
        if device.index >= count:
            raise UserError(f"device {device} does not exist: this machine has CUDA devices cuda:0 to cuda:{count - 1}")
        torch.cuda.set_device(device)
    return device


def prepare_out_dir(out: Path, resume: bool, cfg: RunConfig | None = None) -> Path | None:
    """Check that ``out`` may hold the run; return the checkpoint to resume from, if any.

    Writes nothing: a command that refuses leaves the folder exactly as it was, and the folder is
    created only when the run starts (:meth:`Run.start`), so a run that fails to start leaves none
    behind. Refused: an existing run without ``resume``, a folder that cannot be written, and (with
    ``cfg``) a checkpoint to resume that was trained with another configuration. The checkpoint to
    resume is ``last.pt``, or ``step.pt`` when the run stopped inside the next epoch.
    """
    last = out / "checkpoints" / "last.pt"
    step = out / "checkpoints" / guard.STEP_CHECKPOINT
    if not resume and (last.exists() or step.exists() or (out / "metrics.csv").exists()):
        raise UserError(f"{out} already holds a run; add --resume to continue it or choose another --out")
    _check_writable(out)
    if not (resume and (last.exists() or step.exists())):
        return None
    path = guard.newest_checkpoint(out, last)
    if cfg is not None:
        state = ckpt.load_run(path)
        _check_same_config(from_dict(state["config"]), cfg, out, state["epoch"])
    return path


def _check_writable(out: Path) -> None:
    """UserError unless ``out`` (and its checkpoints/ folder) exist as writable folders or can be created."""
    for folder in (out, out / "checkpoints"):
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            reason = f"{existing} is not a folder"
        elif not os.access(existing, os.W_OK | os.X_OK):
            reason = f"{existing} is not writable"
        else:
            continue
        raise UserError(f"cannot write to the output folder {out}: {reason}; choose another --out")


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, world: World) -> dict[str, float]:
    """Test loss, top-1 and top-5 (%), summed over every process; always in float32 (never autocast)."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    for batch in loader:
        with torch.autocast(device.type, enabled=False):
            logits = model(batch.images).float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == batch.targets[:, None]
        sums += torch.stack(
            [
                nn.functional.cross_entropy(logits, batch.targets, reduction="sum").double(),
                hit[:, 0].sum().double(),
                hit.any(dim=1).sum().double(),
                torch.tensor(float(len(batch.targets)), dtype=torch.float64, device=device),
            ]
        )
    loss, top1, top5, n = all_sum(sums, world).tolist()
    return {"test_loss": loss / n, "test_top1": 100 * top1 / n, "test_top5": 100 * top5 / n}


# How a run executes, not what it trains: these may change when a run is resumed. (``train.amp``
# is not one of them: bf16 autocast changes the student's numbers.)
EXECUTION_KEYS = {
    "model": ("teacher_checkpoint",),
    "train": (
        "device",
        "cache_dir",
        "cache_inexact",
        "static_step",
        "batch_students",
        "channels_last",
        "stop_on_nonfinite",
        "checkpoint_every_steps",
        "loggers",
        "experiment",
    ),
}


# The schedule: a resumed run may change it (extend a finished run); the epochs already trained
# stay as they were and the new schedule applies from the next epoch.
SCHEDULE_KEYS = {"train": ("epochs", "lr_milestones", "lr_step", "schedule", "warmup_epochs")}


def _check_same_config(saved: RunConfig, cfg: RunConfig, where: Path, epochs_done: int = 0) -> list[str]:
    """Refuse a resumed configuration that changes results; return the schedule keys it changes."""
    a, b = asdict(saved), asdict(cfg)
    for section, keys in EXECUTION_KEYS.items():
        for key in keys:
            a[section].pop(key, None), b[section].pop(key, None)
    schedule = [f"{s}.{k}" for s, keys in SCHEDULE_KEYS.items() for k in keys if a[s].pop(k) != b[s].pop(k)]
    if a != b:
        diff = [
            f"{s}.{k}" if isinstance(a[s], dict) else s
            for s in a
            for k in (a[s] if isinstance(a[s], dict) else [None])
            if (a[s][k] if k else a[s]) != (b[s][k] if k else b[s])
        ]
        raise UserError(
            f"--resume: {where} was trained with another configuration (differs in {', '.join(diff)}); "
            "resume with the same settings or choose another --out"
        )
    if cfg.train.epochs < epochs_done:
        raise UserError(
            f"--resume: {where} has trained {epochs_done} epochs already; train.epochs={cfg.train.epochs} would "
            "undo them (choose a larger train.epochs or another --out)"
        )
    return schedule


class StudentAndMethod(nn.Module):
    """What a run trains, as one module: the student and the method with the trainable modules it
    owns (CTKD's temperature; a feature method's connectors). Under torchrun this is the module
    that DistributedDataParallel wraps (as timm's distillation task wraps student and task), so
    the gradients of all their parameters are averaged over the processes.

    ``forward(x)``: the logits the student predicts with (:meth:`Method.predict
    <rld.methods.base.Method.predict>`), for evaluation, always float32. ``forward(x, teacher,
    target, epoch, index)``: ``(logits, total, parts)`` of a training step; the student runs under
    bf16 autocast when ``amp`` (``forward_features`` when the method reads its features), and the
    method gets float32 logits. ``teacher``: the teacher's logits, its Features, or None.
    A method that trains on the strong view (``spec.views``) also gets ``strong`` (the images) and
    ``teacher_strong`` (the teacher's outputs on them): the student runs on each view as a batch of
    its own, and the method is called with a :class:`~rld.methods.base.StrongView`.
    """

    def __init__(self, student: nn.Module, method: nn.Module, amp: bool):
        super().__init__()
        self.student, self.method, self.amp = student, method, amp
        self.own_prediction = method.spec.own_prediction

    def forward(self, x: torch.Tensor, teacher=None, target=None, epoch=None, index=None, strong=None,
                teacher_strong=None):  # fmt: skip
        training_step = target is not None
        student = self._student(x, training_step)
        if not training_step:
            return self.method.predict(student).logits.float() if self.own_prediction else student.logits
        if isinstance(teacher, torch.Tensor):
            teacher = logits_only(teacher)
        extra = {}
        if self.method.spec.strong_view:
            if strong is None:
                raise UserError(
                    f"method {self.method.name!r} trains on a strongly augmented view too: its batches need "
                    "Batch.strong (rld.data.build_data(..., strong_view=True))"
                )
            if isinstance(teacher_strong, torch.Tensor):
                teacher_strong = logits_only(teacher_strong)
            extra["strong"] = StrongView(self._student(strong, True), teacher_strong)
        loss, parts = self.method(student, teacher, target, epoch, index, **extra)
        if self.own_prediction:
            with torch.no_grad():
                return self.method.predict(student).logits, loss, parts
        return student.logits, loss, parts

    def _student(self, x: torch.Tensor, training_step: bool) -> Features:
        """The student's outputs on ``x`` (bf16 autocast in a training step with ``amp``), logits float32."""
        # no autocast weight cache: it cannot live across CUDA-graph replays (rld.engine.static)
        features = self.method.spec.student_features or self.own_prediction
        with torch.autocast(
            x.device.type, dtype=torch.bfloat16, enabled=self.amp and training_step, cache_enabled=False
        ):
            student = self.student.forward_features(x) if features else logits_only(self.student(x))
        return dataclasses.replace(student, logits=student.logits.float())

    def forward_features(self, x: torch.Tensor) -> Features:
        """Features of what the student predicts with (evaluation; the figures read ``logits`` and ``pooled``)."""
        with torch.autocast(x.device.type, enabled=False):
            return self.method.predict(self.student.forward_features(x))


class Run:
    """One student trained with one method in one run folder.

    The loop that drives it (:func:`train`, or a sweep driving several runs on the same batches)
    calls :meth:`begin_epoch`, :meth:`step` for every batch, and :meth:`end_epoch`.
    """

    resume_position: dict | None = None  # the position inside an epoch of a resumed step.pt (rld.engine.guard)

    def __init__(
        self,
        cfg: RunConfig,
        out: Path,
        *,
        world: World,
        device: torch.device,
        num_classes: int,
        resume_from: Path | None,
        resume: bool,
        teacher: nn.Module | None = None,
        input_shape: tuple[int, ...] | None = None,
        labels: torch.Tensor | None = None,
        data_info: dict[str, Any] | None = None,
        split: Any = None,
        expected_state: tuple | None = None,
        tracking: Tracking | None = None,
    ):
        """``teacher``, ``input_shape`` and ``labels`` (of the training split) are what a method that
        reads features is built from (:class:`~rld.methods.base.MethodContext`). ``data_info``: what a
        prediction needs from the data set (:func:`data_info`, saved in the checkpoints); ``split``: a
        single folder's / manifest's train-validation split (saved as ``split.json``);
        ``expected_state``: the folder as the command checked it (:class:`~rld.engine.folder.RunFolder`);
        ``tracking``: the preset and group its trackers tag it with (:mod:`rld.trackers`)."""
        t = cfg.train
        self.cfg, self.out, self.world, self.device = cfg, out, world, device
        self.folder = RunFolder(out, world, expected_state)
        self.data_info, self.split, self.tracking = data_info, split, tracking
        self.num_classes = num_classes
        self.amp = t.amp
        torch.manual_seed(cfg.seed)
        student = create_pretrained(cfg.model.student, cfg.model.student_weights, num_classes, cfg.model.dataset)
        if cfg.model.freeze_backbone:
            freeze_backbone(student)
        if world.distributed and t.sync_bn and device.type == "cuda":  # SyncBatchNorm is CUDA-only
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        self.student = student.to(device)
        if t.channels_last:
            self.student = self.student.to(memory_format=torch.channels_last)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        context = MethodContext(
            student=self.student,
            teacher=teacher,
            num_classes=num_classes,
            input_shape=self.input_shape or (3, 32, 32),
            num_samples=0 if labels is None else len(labels),
            train_targets=labels,
            seed=cfg.seed,
        )
        self.method = build_method(cfg.method, context).to(device)
        params = [p for p in [*self.student.parameters(), *self.method.parameters()] if p.requires_grad]
        if t.optimizer == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(
                params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=t.nesterov
            )
        self.grad_clip_norm = t.grad_clip_norm  # clipped in rld.engine.step.train_step
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"test_top1": -math.inf, "epoch": 0}
        self.metrics = EpochMetrics(device)  # the epoch's training metrics, on the device
        self.device_scalars: tuple[torch.Tensor, torch.Tensor] | None = None  # see use_device_scalars
        self.epoch: int | None = None  # the epoch begun last
        self.start_epoch = 1
        self.started = False  # see start()
        self._resume_rng: dict | None = None
        if resume_from is not None:
            self._load(resume_from)
        # Student and method as one module: under torchrun DistributedDataParallel averages the
        # gradients of every trainable parameter, the method's (CTKD's temperature) included.
        trainable = StudentAndMethod(self.student, self.method, self.amp)
        self.model = (
            DistributedDataParallel(trainable, device_ids=[device] if device.type == "cuda" else None)
            if world.distributed
            else trainable
        )

    def _load(self, path: Path) -> None:
        state = ckpt.load_run(path)
        changed = _check_same_config(from_dict(state["config"]), self.cfg, self.out, state["epoch"])
        if changed and self.world.is_main:
            log.info("resuming with a new schedule (%s) from epoch %d", ", ".join(changed), state["epoch"] + 1)
        load_state(self.student, state["model"], path, "student weights")
        load_state(self.method, state["method"], path, "method state")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
            reason = first_line(err)
            raise UserError(f"checkpoint {path}: its optimizer state does not fit ({reason}); it is damaged") from err
        _match_buffer_layouts(self.optimizer)
        self.history, self.best, self.start_epoch = state["history"], state["best"], state["epoch"] + 1
        self.resume_position = state.get("position")
        self._resume_rng = state["rng"]  # restored by start(), after the set-up has drawn its random numbers
        if self.world.is_main:
            log.info("resuming %s from epoch %d", self.out, state["epoch"])

    def start(self) -> None:
        """Write the run folder (rank 0): ``config.yaml``, ``metrics.csv`` of a resumed run, TensorBoard;
        and restore the RNG state of a resumed run.

        The first write to the folder; called by the first :meth:`begin_epoch`, once everything that
        can refuse the run (configuration, checkpoint, data, teacher) has been checked. The RNG state
        is restored here, not when the checkpoint is read: building the teacher draws random numbers
        (its initial weights), which an uninterrupted run drew before its first epoch, not after.
        """
        if self.started:
            return
        self.started = True
        if self._resume_rng is not None:
            ckpt.set_rng_state(self._resume_rng)
            self._resume_rng = None
        self.folder.open(
            self.cfg, self.history, self.split, teacher_record=self.method.needs_teacher, tracking=self.tracking
        )

    @property
    def needs_teacher(self) -> bool:
        return self.method.needs_teacher

    def running_loss(self) -> float:
        """The mean training loss of the epoch so far (reads the device: for progress lines only)."""
        return self.metrics.running_loss()

    def use_device_scalars(self) -> None:
        """Hold the learning rate and the epoch in device scalars, filled at each epoch start.

        For :mod:`rld.engine.static`: a step then reads no Python value that changes during
        training, so it can be replayed as a CUDA graph. The optimizer reads its learning rate from
        the tensor (on CUDA: float32 for the fused kernel; on the CPU float64, which rounds as the
        plain float does); the method gets the epoch as a tensor (for its warm-up). On CUDA every
        path uses them (:func:`optimizer_kernel`). Calling it again does nothing; calling it inside
        an epoch fills the scalars with that epoch's values.
        """
        if self.device_scalars is not None:
            return
        self.device_scalars = _device_scalars(self.device)
        if self.epoch is not None:  # switched inside an epoch: its values go to the scalars now
            self._apply_schedule()

    def _apply_schedule(self) -> None:
        """The current epoch's learning rate into the optimizer (and the device scalars, if used),
        and the optimizer's implementation on this device (:func:`optimizer_kernel`; a loaded state
        dict brings the flags it was saved with)."""
        if self.device_scalars is None and self.device.type == "cuda":
            self.device_scalars = _device_scalars(self.device)  # the plain loop too: one optimizer
        if self.device_scalars is None:
            lr = self.lr
        else:
            lr, epoch_t = self.device_scalars
            lr.fill_(self.lr)
            epoch_t.fill_(self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            group.update(optimizer_kernel(self.device))

    def begin_epoch(self, epoch: int) -> None:
        self.start()
        self.epoch, self.lr = epoch, lr_at(self.cfg, epoch)
        self._apply_schedule()
        self.model.train()
        self.method.train()
        if self.cfg.model.freeze_backbone:  # linear probing: BatchNorm keeps the loaded statistics
            for module in self.student.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        self.metrics.begin()

    def step(self, batch, teacher: torch.Tensor | Features | None, epoch: int) -> None:
        """One optimisation step on ``batch`` with what the method reads from the teacher (its logits
        or Features, or both views' as :class:`TeacherViews`; :func:`teacher_outputs`); metrics
        accumulate in place on the device (no host sync). With :meth:`use_device_scalars` the method
        gets the epoch from its device scalar."""
        train_step(self.forward(batch, teacher, epoch))

    def forward(self, batch, teacher: torch.Tensor | Features | TeacherViews | None, epoch: Any) -> list[Outcome]:
        """The forward and loss of one step on ``batch`` (as a unit of :func:`rld.engine.step.train_step`)."""
        if self.device_scalars is not None:
            epoch = self.device_scalars[1]
        extra = {}
        if isinstance(teacher, TeacherViews):
            teacher, extra["teacher_strong"] = teacher
        if self.method.spec.strong_view:
            extra["strong"] = batch.strong
        logits, loss, parts = self.model(batch.images, teacher, batch.targets, epoch, batch.indices, **extra)
        return [Outcome(self, batch.targets, logits, loss, parts)]

    def record(self, y: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        """Add a finished step to the epoch's metrics, in place on the device: ``y`` (B,) targets,
        ``logits`` (B, C) what the student predicted, the step's loss and its named parts."""
        self.metrics.record(y, logits, loss, parts)
        faults.reached("after_step", self)

    @property
    def steps(self) -> int:
        """The steps taken in the current epoch (reads the device)."""
        return int(self.metrics.steps)

    def end_epoch(self, epoch: int, test_loader) -> dict[str, Any]:
        """Reduce the epoch's metrics, evaluate, checkpoint, write metrics.csv; returns the row.

        With ``train.stop_on_nonfinite``: a non-finite loss sum or weight raises DivergedError before
        anything is evaluated or saved (``metrics.csv`` gets the epoch as a ``diverged`` row)."""
        check = self.cfg.train.stop_on_nonfinite
        flags = [guard.nonfinite_count([self.student, self.method]).to(self.device)] if check else []
        means, steps, extra = self.metrics.reduce(self.world, flags)  # the one host sync of the epoch's training
        bad_weights = extra[0] if check else 0.0
        train_time = time.perf_counter() - self.metrics.tic
        row: dict[str, Any] = {"epoch": epoch, "train_loss": means["loss"], "train_top1": means["top1"]}
        keys = [k for k in means if k != "top1"]
        parts = guard.nonfinite_parts(keys, [means[k] for k in keys], bad_weights) if check else []
        if not parts:
            row.update(evaluate(self.model, test_loader, self.device, self.world))
            if check and not math.isfinite(row["test_loss"]):  # finite weights, overflowing logits
                parts = ["test_loss"]
        row["lr"] = self.lr
        row["epoch_time"] = time.perf_counter() - self.metrics.tic
        row["train_time"] = train_time
        row["steps"] = steps
        row.update({f"loss_{k}": means[k] for k in keys if k != "loss"})
        if parts:  # the last finite checkpoint stays; metrics.csv shows the epoch that diverged
            if self.world.is_main:
                self.folder.write({}, [*self.history, {**row, "status": "diverged"}])
            raise guard.diverged(self, epoch, parts)
        self.history.append(row)
        improved = row["test_top1"] > self.best["test_top1"]
        if improved:
            self.best = {"test_top1": row["test_top1"], "epoch": epoch}
        if self.world.is_main:
            self._save(epoch, improved)
            self.folder.log_epoch(row, epoch)
            log.info(
                "%sepoch %d/%d  loss %.4f  %s top-1 %.2f  top-5 %.2f  (best %.2f @ %d)  lr %.4g  %.1fs",
                f"[{self.out.name}] " if self.out.name else "",
                epoch,
                self.cfg.train.epochs,
                row["train_loss"],
                "val" if self.cfg.data.holdout is not None else "test",  # data.holdout: held-out training images
                row["test_top1"],
                row["test_top5"],
                self.best["test_top1"],
                self.best["epoch"],
                self.lr,
                row["epoch_time"],
            )
        return row

    def _save(self, epoch: int, improved: bool) -> None:
        state = self.checkpoint_state(epoch)
        files = {"last.pt": state}
        if improved:
            files = {"best.pt": {**state, "optimizer": None}, **files}
        self.folder.write(files, self.history)
        self.folder.forget_position()  # step.pt is older than last.pt now

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        """What ``last.pt`` holds after ``epoch`` finished epochs: everything an exact resume needs."""
        return {
            "format": ckpt.FORMAT,
            "config": asdict(self.cfg),
            "epoch": epoch,
            "model": self.student.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
            "best": self.best,
            "rng": ckpt.rng_state(),
            "num_classes": self.num_classes,
            "input_shape": self.input_shape,  # what a feature method's modules were built for
            "method_parameters": self.method.extra_parameters(),
            "data_info": self.data_info,  # class names and evaluation preprocessing (rld export / predict)
        }

    def close(self) -> dict[str, Any]:
        """The run's summary; closes its trackers (giving them the summary)."""
        summary = self.summary()
        done = len(self.history) >= self.cfg.train.epochs
        self.folder.close(self._tracked_summary(summary), finished=done)
        return summary

    def abort(self) -> None:
        """Close the trackers of a run that stopped with an error (a divergence, a failed write)."""
        self.folder.close(self._tracked_summary(self.summary()), finished=False)

    def _tracked_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {**summary, "device": str(self.device), "epochs_done": len(self.history)}

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {
            "out": str(self.out),
            "epochs": self.cfg.train.epochs,
            "best_top1": self.best["test_top1"],
            "best_epoch": self.best["epoch"],
            "last_top1": last.get("test_top1"),
            "last_top5": last.get("test_top5"),
            "train_time": sum(r["epoch_time"] for r in self.history),
        }


def optimizer_kernel(device: torch.device) -> dict[str, bool | None]:
    """The optimizer implementation of every training path on ``device`` (param-group flags).

    On CUDA the fused kernel, with the learning rate read from a float32 device scalar: one launch
    for all parameters, capturable in a CUDA graph, and the same kernel in the plain loop and the
    captured step, so that both update bit for bit alike (foreach and fused round differently).
    Elsewhere PyTorch's default (the single-tensor loop on the CPU)."""
    return {"fused": True, "foreach": False} if device.type == "cuda" else {"fused": None, "foreach": None}


def _device_scalars(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A run's (learning rate, epoch) device scalars: the rate float32 on CUDA (what the fused
    kernel reads), float64 elsewhere (it rounds as the Python float does); the epoch float32."""
    lr_dtype = torch.float32 if device.type == "cuda" else torch.float64
    return torch.zeros((), dtype=lr_dtype, device=device), torch.zeros((), dtype=torch.float32, device=device)


def _match_buffer_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every loaded optimizer buffer its parameter's memory format (a run resumed with another
    ``train.channels_last``): the fused SGD kernel requires equal strides."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, buf in optimizer.state.get(p, {}).items():
                if isinstance(buf, torch.Tensor) and buf.shape == p.shape and buf.stride() != p.stride():
                    optimizer.state[p][key] = torch.empty_like(p).copy_(buf)


def setup(cfg: RunConfig, world: World) -> torch.device:
    """Device and determinism settings of a process."""
    device = resolve_device(cfg.train.device, world)
    if cfg.train.batch_size % world.size:
        raise UserError(f"train.batch_size {cfg.train.batch_size} must be divisible by the {world.size} processes")
    if cfg.train.deterministic:
        # Exact resume needs deterministic kernels, not the NaN fill of every new tensor that
        # deterministic mode adds by default (it costs a kernel per allocation on CUDA).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
    return device


def saved_split(run_dir: Path | None):
    """The train/validation split a run saved (``split.json``), or None."""
    from rld.data.sources import SPLIT_FILE, Split

    path = Path(run_dir) / SPLIT_FILE if run_dir is not None else None
    return Split.read(path) if path is not None and path.is_file() else None


def data_options(cfg: RunConfig, run_dir: Path | None = None) -> dict[str, Any]:
    """The keywords of :func:`rld.data.build_data` that ``cfg.data`` sets (and a split saved in ``run_dir``)."""
    d = cfg.data
    return dict(
        seed=cfg.seed,
        num_workers=d.num_workers,
        pipeline=d.pipeline,
        decoder=d.decoder,
        val_fraction=d.val_fraction,
        skip_bad_images=d.skip_bad_images,
        split=saved_split(run_dir),
        image_column=d.image_column,
        label_column=d.label_column,
        image_size=d.image_size,
        holdout=d.holdout,
        holdout_seed=d.holdout_seed,
    )


def build_run_data(cfg: RunConfig, device: torch.device, world: World, out: Path | None = None):
    """The run's loaders; a split saved in the run folder ``out`` is used again (resume, eval)."""
    return build_data(
        cfg.data.name,
        cfg.data.path,
        batch_size=cfg.train.batch_size // world.size,
        eval_batch_size=cfg.data.eval_batch_size,
        device=device,
        channels_last=cfg.train.channels_last,
        distributed=world.distributed,
        train_per_class=cfg.data.train_per_class,
        strong_view=get_spec(cfg.method.name).strong_view,
        **data_options(cfg, out),
    )


def data_info(data) -> dict[str, Any]:
    """What a prediction needs from the data set: its class names and evaluation preprocessing."""
    return {"classes": list(data.classes), "preprocess": eval_preprocess(data.test)}


def _size(loader) -> int | None:
    n = getattr(loader, "n", None)
    if n is None and hasattr(loader, "loader"):
        n = len(loader.loader.dataset)
    return n


def _parameters(model: nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters"


def teacher_accuracy(teacher: nn.Module, test_loader, device: torch.device, world: World) -> tuple[float, str]:
    """The teacher's test top-1: recorded in an rld run checkpoint of its last epoch, else measured."""
    meta = getattr(teacher, "checkpoint_metadata", None) or {}
    history = meta.get("history")
    if isinstance(history, list) and history and history[-1].get("epoch") == meta.get("epoch"):
        return float(history[-1]["test_top1"]), "recorded"
    return evaluate(teacher, test_loader, device, world)["test_top1"], "measured"


def setup_lines(cfg: RunConfig, out: Path, data, run: Run, teacher_fn, device: torch.device, world: World) -> list[str]:
    """The resolved setup of a run, in a few lines (logged when training starts)."""
    from rld.config import precision_summary
    from rld.methods import resolved_params

    train_n, test_n = _size(data.train), _size(data.test)
    sizes = f"{train_n:,} training / {test_n:,} test images, " if train_n and test_n else ""
    where = f" ({cfg.data.path})" if cfg.data.path else ""
    params = " ".join(f"{k}={v}" for k, v in resolved_params(cfg.method).items() if v is not None)
    lines = [
        f"run      {out}",
        f"data     {cfg.data.name}: {sizes}{data.num_classes} classes{where}",
        f"student  {cfg.model.student} ({_parameters(run.student)})",
    ]
    teacher = getattr(teacher_fn, "teacher", None) if teacher_fn is not None else None
    if teacher is not None:
        top1, how = teacher_accuracy(teacher, data.test, device, world)
        lines.append(
            f"teacher  {cfg.model.teacher} ({_parameters(teacher)}), test top-1 {top1:.2f}% ({how}), "
            f"{cfg.model.teacher_weights or cfg.model.teacher_checkpoint}"
        )
    precision = ", ".join(f"{k} {v}" for k, v in precision_summary(cfg).items())
    lines += [
        f"method   {cfg.method.name}: {params}",
        f"training {cfg.train.epochs} epochs, batch {cfg.train.batch_size}, lr {cfg.train.lr}, seed {cfg.seed}, "
        f"device {device}" + (f" ×{world.size} processes" if world.distributed else ""),
        f"precision {precision}",
    ]
    return lines


def method_inputs(cfg: RunConfig, data, teacher_fn) -> dict[str, Any]:
    """The keywords of :class:`Run` that a method reading features is built from: the teacher
    model, the input shape (of a test batch) and the training labels; empty for logit methods."""
    if not get_spec(cfg.method.name).reads_features:
        return {}
    return {
        "teacher": getattr(teacher_fn, "teacher", None),
        "input_shape": tuple(next(iter(data.test)).images.shape[1:]),
        "labels": getattr(data.train, "labels", None),
    }
