"""The training engine: one run = one student trained with one method, evaluated every epoch.

``train(cfg, out_dir)`` is the whole life of a run folder::

    out_dir/config.yaml            the resolved configuration
    out_dir/metrics.csv            one row per finished epoch
    out_dir/checkpoints/last.pt    everything an exact resume needs, rewritten atomically each epoch
    out_dir/checkpoints/best.pt    the student at its best test top-1 so far
    out_dir/tb/                    TensorBoard events, when tensorboard is installed

The engine only asks the method what it needs (``needs_teacher``, its trainable parameters) and
never branches on a method's name.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rld.config import TEACHER_PRECISIONS, RunConfig, from_dict, to_yaml
from rld.data import build_data
from rld.engine import checkpoint as ckpt
from rld.engine.distributed import World, all_sum, barrier, init_world, shutdown
from rld.engine.static import StaticSteps, StepMember, static_step_wanted
from rld.errors import UserError
from rld.methods import build_method
from rld.models import create_model, load_checkpoint

log = logging.getLogger("rld")

METRIC_COLUMNS = [
    "epoch",
    "train_loss",
    "train_top1",
    "test_loss",
    "test_top1",
    "test_top5",
    "lr",
    "epoch_time",
    "train_time",
    "steps",
]
TIME_COLUMNS = ("epoch_time", "train_time")


def lr_at(cfg: RunConfig, epoch: int) -> float:
    """Learning rate of ``epoch`` (counted from 1): decayed after each milestone (or every lr_step)."""
    t = cfg.train
    if t.lr_step:
        decays = (epoch - 1) // t.lr_step
    else:
        decays = sum(epoch > m for m in t.lr_milestones)
    return t.lr * t.lr_decay**decays


def resolve_device(name: str, world: World) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("train.device is cuda but no CUDA device is available; use --device cpu")
        if world.distributed:
            device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device


def prepare_out_dir(out: Path, resume: bool) -> Path | None:
    """Create the run folder; return the checkpoint to resume from, if any. Never destroys a run."""
    last = out / "checkpoints" / "last.pt"
    if last.exists() and not resume:
        raise UserError(f"{out} already holds a run; add --resume to continue it or choose another --out")
    if not resume and out.exists() and (out / "metrics.csv").exists():
        raise UserError(f"{out} already holds a run; add --resume to continue it or choose another --out")
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to the output folder {out}: {err.strerror}; choose another --out") from err
    return last if (resume and last.exists()) else None


def _build_teacher(cfg: RunConfig, num_classes: int, device: torch.device) -> nn.Module:
    m = cfg.model
    if not m.teacher:
        raise UserError(f"method {cfg.method.name!r} needs a teacher: set model.teacher (or use a preset)")
    if not m.teacher_checkpoint:
        raise UserError(
            f"method {cfg.method.name!r} needs a trained {m.teacher} teacher: pass --teacher CKPT "
            f"(train one with `rld train` and a vanilla preset, then use its checkpoints/last.pt)"
        )
    teacher = create_model(m.teacher, num_classes=num_classes, dataset=m.dataset)
    load_checkpoint(teacher, m.teacher_checkpoint)
    teacher.eval().requires_grad_(False)
    return teacher.to(device)


def _progress(iterable, total: int, world: World, desc: str):
    if world.is_main and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
    return iterable


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


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    columns = list(METRIC_COLUMNS)
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    ckpt.write_text_atomic(path, buf.getvalue())


def _tensorboard(out: Path, world: World):
    if not world.is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tb"))


# How a run executes, not what it trains: these may change when a run is resumed. (``train.amp``
# is not one of them: bf16 autocast changes the student's numbers.)
EXECUTION_KEYS = {
    "model": ("teacher_checkpoint",),
    "train": ("device", "cache_dir", "static_step", "channels_last"),
}


def _check_same_config(saved: RunConfig, cfg: RunConfig, where: Path) -> None:
    a, b = asdict(saved), asdict(cfg)
    for section, keys in EXECUTION_KEYS.items():
        for key in keys:
            a[section].pop(key, None), b[section].pop(key, None)
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


def train(cfg: RunConfig, out_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Train (or resume) the run described by ``cfg`` in ``out_dir``; returns the final summary."""
    out = Path(out_dir)
    device_kind = (
        "cuda"
        if cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    world = init_world(device_kind)
    try:
        return _train(cfg, out, resume, world)
    finally:
        shutdown(world)


class TeacherForward:
    """Teacher logits of a batch from the frozen, eval-mode teacher, always float32.

    The logits are never bf16-rounded: bf16 spacing is 0.0625 for |z| in [8, 16), which creates
    ties that change RLD's mask M_ge, the teacher argmax of SCD, LA's swap and LR's right/wrong
    split. With ``amp`` on CUDA the teacher's body runs under bf16 autocast and its final linear
    layer in float32 on the float32-cast pooled feature; on the CPU the whole teacher runs in
    float32, which costs less there (``benchmarks/teacher_precision.py``: on a CPU without bf16
    units the bf16 body is several times slower). ``bf16_body`` forces either way; ``precision``
    names the computation (it is part of the teacher-logit cache key).
    """

    def __init__(self, teacher: nn.Module, amp: bool, *, bf16_body: bool | None = None):
        if bf16_body is None:
            device_type = next(iter(teacher.parameters())).device.type
            bf16_body = bool(amp) and device_type == "cuda"
        self.teacher, self.amp, self.bf16_body = teacher, bool(amp), bool(bf16_body)
        self.precision = TEACHER_PRECISIONS[self.bf16_body]

    @torch.no_grad()
    def __call__(self, batch) -> torch.Tensor:
        x = batch.images
        if not self.bf16_body:
            with torch.autocast(x.device.type, enabled=False):
                return self.teacher(x).float()
        # no autocast weight cache: it cannot live across CUDA-graph replays (rld.engine.static)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False):
            pooled = self.teacher.forward_features(x).pooled
        return self.teacher.get_classifier()(pooled.float())


class Run:
    """One student trained with one method in one run folder.

    The loop that drives it (:func:`train`, or a sweep driving several runs on the same batches)
    calls :meth:`begin_epoch`, :meth:`step` for every batch, and :meth:`end_epoch`.
    """

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
    ):
        t = cfg.train
        self.cfg, self.out, self.world, self.device = cfg, out, world, device
        self.num_classes = num_classes
        self.amp = t.amp
        torch.manual_seed(cfg.seed)
        self.method = build_method(cfg.method).to(device)
        student = create_model(cfg.model.student, num_classes=num_classes, dataset=cfg.model.dataset)
        if world.distributed and t.sync_bn and device.type == "cuda":  # SyncBatchNorm is CUDA-only
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        self.student = student.to(device)
        if t.channels_last:
            self.student = self.student.to(memory_format=torch.channels_last)
        params = [p for p in [*self.student.parameters(), *self.method.parameters()] if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=t.nesterov
        )
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"test_top1": -math.inf, "epoch": 0}
        # Per-epoch metric accumulators, on the device, zeroed (never replaced) at each epoch start.
        self._sums: dict[str, torch.Tensor] = {}
        self._seen = torch.zeros((), dtype=torch.float64, device=device)
        self._correct = torch.zeros((), dtype=torch.float64, device=device)
        self.device_scalars: tuple[torch.Tensor, torch.Tensor] | None = None  # see use_device_scalars
        self.epoch: int | None = None  # the epoch begun last
        self.start_epoch = 1
        if world.is_main:
            (out / "config.yaml").write_text(to_yaml(cfg))
        if resume_from is not None or (world.distributed and resume):
            self._load(out / "checkpoints" / "last.pt")
        self.model = (
            DistributedDataParallel(self.student, device_ids=[device] if device.type == "cuda" else None)
            if world.distributed
            else self.student
        )
        self.tb = _tensorboard(out, world)

    def _load(self, path: Path) -> None:
        state = ckpt.load_run(path)
        _check_same_config(from_dict(state["config"]), self.cfg, self.out)
        self.student.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history, self.best, self.start_epoch = state["history"], state["best"], state["epoch"] + 1
        ckpt.set_rng_state(state["rng"])
        if self.world.is_main:
            _write_metrics(self.out / "metrics.csv", self.history)
            log.info("resuming %s from epoch %d", self.out, state["epoch"])

    @property
    def needs_teacher(self) -> bool:
        return self.method.needs_teacher

    def use_device_scalars(self) -> None:
        """Hold the learning rate and the epoch in device scalars, filled at each epoch start.

        For :mod:`rld.engine.static`: a step then reads no Python value that changes during
        training, so it can be replayed as a CUDA graph. The optimizer reads its learning rate from
        the tensor (on CUDA: float32 for the fused SGD kernel; on the CPU float64, which rounds as
        the plain float does); the method gets the epoch as a tensor (for its warm-up). Calling it
        again does nothing; calling it inside an epoch fills the scalars with that epoch's values.
        """
        if self.device_scalars is not None:
            return
        lr_dtype = torch.float32 if self.device.type == "cuda" else torch.float64
        self.device_scalars = (
            torch.zeros((), dtype=lr_dtype, device=self.device),
            torch.zeros((), dtype=torch.float32, device=self.device),
        )
        if self.epoch is not None:  # switched inside an epoch: its values go to the scalars now
            self._apply_schedule()

    def _apply_schedule(self) -> None:
        """The current epoch's learning rate into the optimizer (and the device scalars, if used)."""
        if self.device_scalars is None:
            lr = self.lr
        else:
            lr, epoch_t = self.device_scalars
            lr.fill_(self.lr)
            epoch_t.fill_(self.epoch)
        fused = self.device_scalars is not None and self.device.type == "cuda"
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            group["fused"], group["foreach"] = (True, False) if fused else (None, None)

    def begin_epoch(self, epoch: int) -> None:
        self.epoch, self.lr = epoch, lr_at(self.cfg, epoch)
        self._apply_schedule()
        self.model.train()
        self.method.train()
        for acc in (*self._sums.values(), self._seen, self._correct):
            acc.zero_()
        self._steps = 0
        self._tic = time.perf_counter()

    def step(self, batch, teacher_logits: torch.Tensor | None, epoch: int) -> None:
        """One optimisation step on ``batch``; metrics accumulate in place on the device (no host
        sync). With :meth:`use_device_scalars` the method gets the epoch from its device scalar."""
        x, y = batch.images, batch.targets
        if self.device_scalars is not None:
            epoch = self.device_scalars[1]
        # no autocast weight cache: it cannot live across CUDA-graph replays (rld.engine.static)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            logits = self.model(x)
        loss, parts = self.method(logits.float(), teacher_logits, y, epoch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        n = float(len(y))
        self._seen += n
        self._correct += (logits.detach().argmax(dim=1) == y).sum()
        for key, value in {"loss": loss, **parts}.items():
            if key not in self._sums:
                self._sums[key] = torch.zeros((), dtype=torch.float64, device=self.device)
            self._sums[key].add_(value.detach().double() * n)
        self._steps += 1

    def end_epoch(self, epoch: int, test_loader) -> dict[str, Any]:
        """Reduce the epoch's metrics, evaluate, checkpoint, write metrics.csv; returns the row."""
        keys = list(self._sums)
        totals = all_sum(torch.stack([*(self._sums[k] for k in keys), self._correct, self._seen]), self.world)
        totals = totals.tolist()  # the one host sync of the epoch's training part
        train_time = time.perf_counter() - self._tic
        n_seen = totals[-1]
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": totals[0] / n_seen,
            "train_top1": 100 * totals[-2] / n_seen,
        }
        row.update(evaluate(self.model, test_loader, self.device, self.world))
        row["lr"] = self.lr
        row["epoch_time"] = time.perf_counter() - self._tic
        row["train_time"] = train_time
        row["steps"] = self._steps
        row.update({f"loss_{k}": totals[i] / n_seen for i, k in enumerate(keys) if k != "loss"})
        self.history.append(row)
        improved = row["test_top1"] > self.best["test_top1"]
        if improved:
            self.best = {"test_top1": row["test_top1"], "epoch": epoch}
        if self.world.is_main:
            self._save(epoch, improved)
            if self.tb is not None:
                for key, value in row.items():
                    if key != "epoch":
                        self.tb.add_scalar(key, value, epoch)
            log.info(
                "%sepoch %d/%d  loss %.4f  test top-1 %.2f  top-5 %.2f  (best %.2f @ %d)  lr %.4g  %.1fs",
                f"[{self.out.name}] " if self.out.name else "",
                epoch,
                self.cfg.train.epochs,
                row["train_loss"],
                row["test_top1"],
                row["test_top5"],
                self.best["test_top1"],
                self.best["epoch"],
                self.lr,
                row["epoch_time"],
            )
        return row

    def _save(self, epoch: int, improved: bool) -> None:
        state = {
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
        }
        if improved:
            ckpt.save_atomic({**state, "optimizer": None}, self.out / "checkpoints" / "best.pt")
        ckpt.save_atomic(state, self.out / "checkpoints" / "last.pt")
        _write_metrics(self.out / "metrics.csv", self.history)

    def close(self) -> dict[str, Any]:
        if self.tb is not None:
            self.tb.close()
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


def setup(cfg: RunConfig, world: World) -> torch.device:
    """Device and determinism settings of a process."""
    device = resolve_device(cfg.train.device, world)
    if cfg.train.batch_size % world.size:
        raise UserError(f"train.batch_size {cfg.train.batch_size} must be divisible by the {world.size} processes")
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return device


def build_run_data(cfg: RunConfig, device: torch.device, world: World):
    return build_data(
        cfg.data.name,
        cfg.data.path,
        batch_size=cfg.train.batch_size // world.size,
        eval_batch_size=cfg.data.eval_batch_size,
        device=device,
        seed=cfg.seed,
        num_workers=cfg.data.num_workers,
        channels_last=cfg.train.channels_last,
        distributed=world.distributed,
        pipeline=cfg.data.pipeline,
        train_per_class=cfg.data.train_per_class,
        image_size=cfg.data.image_size,
    )


def build_teacher_fn(cfg: RunConfig, num_classes: int, device: torch.device, train_loader=None):
    """The teacher-logit provider of a run: ``provider(batch) -> (B, C)`` float32 teacher logits.

    A forward pass of the frozen teacher, or, with ``train.teacher_cache`` lazy/full, lookups in the
    teacher-logit cache of ``train_loader`` (:mod:`rld.fast.cache`; device-resident loader only).
    """
    teacher = _build_teacher(cfg, num_classes, device)
    if cfg.train.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    forward = TeacherForward(teacher, cfg.train.amp)
    if cfg.train.teacher_cache == "off":
        return forward
    from rld.fast.cache import open_teacher_cache

    return open_teacher_cache(cfg, forward, train_loader, num_classes)


def _train(cfg: RunConfig, out: Path, resume: bool, world: World) -> dict[str, Any]:
    device = setup(cfg, world)
    resume_from = prepare_out_dir(out, resume) if world.is_main else None
    barrier(world)
    data = build_run_data(cfg, device, world)
    run = Run(
        cfg, out, world=world, device=device, num_classes=data.num_classes, resume_from=resume_from, resume=resume
    )
    teacher_fn = build_teacher_fn(cfg, data.num_classes, device, data.train) if run.needs_teacher else None
    static = None
    if static_step_wanted(cfg.train.static_step, data.train, teacher_fn, world.distributed):
        static = StaticSteps([StepMember(run)], data.train, teacher_fn)
    for epoch in range(run.start_epoch, cfg.train.epochs + 1):
        run.begin_epoch(epoch)
        desc = f"epoch {epoch}/{cfg.train.epochs}"
        if static is not None:
            static.run_epoch(epoch, lambda sizes, desc=desc: _progress(sizes, len(sizes), world, desc))
        else:
            data.train.set_epoch(epoch)
            for batch in _progress(data.train, len(data.train), world, desc):
                run.step(batch, teacher_fn(batch) if teacher_fn else None, epoch)
        run.end_epoch(epoch, data.test)
        barrier(world)
    return run.close()


def evaluate_weights(
    cfg: RunConfig, model_name: str, weights: str | Path, data_path: str | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Test loss, top-1 and top-5 of ``model_name`` with ``weights`` on the test split of ``cfg``'s data."""
    world = World()
    dev = resolve_device(device, world)
    data = build_data(
        cfg.data.name,
        data_path or cfg.data.path,
        batch_size=cfg.data.eval_batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        device=dev,
        seed=cfg.seed,
        num_workers=cfg.data.num_workers,
        pipeline=cfg.data.pipeline,
        image_size=cfg.data.image_size,
    )
    model = create_model(model_name, num_classes=data.num_classes, dataset=cfg.model.dataset)
    load_checkpoint(model, weights)
    return evaluate(model.to(dev), data.test, dev, world)


def evaluate_checkpoint(path: str | Path, data_path: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Evaluate a run checkpoint (``last.pt`` / ``best.pt``) on its data set's test split."""
    state = ckpt.load_run(Path(path))
    cfg = from_dict(state["config"])
    metrics = evaluate_weights(cfg, cfg.model.student, path, data_path, device)
    return {"checkpoint": str(path), "model": cfg.model.student, "epoch": state["epoch"], **metrics}
