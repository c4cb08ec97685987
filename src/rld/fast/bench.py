"""``rld bench``: milliseconds per training step of the three training paths, in one process.

* ``conventional`` — the way the common CIFAR KD code bases train: a ``torch.utils.data.DataLoader``
  over PIL images with torchvision ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``,
  ``ToTensor``, ``Normalize`` (shuffled), eager float32, a teacher forward every step and a host
  synchronisation per step (``loss.item()``). Its loader is the one a practitioner would set up on the
  machine: ``workers`` processes (default ``min(8, cores)``), kept alive across epochs, and pinned
  memory on CUDA.
* ``default_eager`` — the ``default`` step below run eagerly (no CUDA graph), so that the gain of
  each ingredient shows.
* ``default`` — the project's default path on the device: :class:`~rld.data.DeviceLoader` (uint8 data
  on the device, crop/flip there) and :meth:`Run.step <rld.engine.trainer.Run.step>` with the teacher
  forward (:class:`~rld.engine.teacher.TeacherForward`); no host synchronisation inside the epoch.
  On CUDA the whole step is replayed as a CUDA graph (:mod:`rld.engine.static`), as in training.
* ``cached`` — as ``default``, with the teacher logits looked up in the teacher-logit cache
  (:mod:`rld.fast.cache`). Filling the entries those steps use (their teacher forwards) is timed
  apart as ``cache_build_s``, opening the cache (key hashing, file creation) as ``cache_open_s``.
* ``sweep_M`` — M students of the same configuration stepped in lockstep on one stream with cached
  teacher logits (one CUDA graph for the whole group's step), as ``rld sweep`` steps them on the
  device (``train.batch_students``: stacked into one batched computation on CUDA, one after another
  on the CPU); ``sweep_M_one_by_one`` / ``sweep_M_stacked`` the other way, side by side. Measured on
  CUDA only by default (``--sweep 4`` on the CPU).
* ``sweep_M_seeds`` (``--sweep-seeds S``) — the M students spread over S seeds, each seed on its own
  data stream, stacked into one batched computation across the seeds: the group ``rld sweep`` forms
  of several seeds when it stacks students (:mod:`rld.engine.sweep`).

With ``require_capture`` a CUDA step that cannot be captured is an error naming the cause (the
``strict`` mode of :class:`~rld.engine.static.StaticSteps`) instead of a step run eagerly.

Each path runs ``warmup`` untimed steps, then ``steps`` timed ones; with ``rounds > 1`` the paths
take turns, round after round, so that a change of background load hits all of them. Reported:
the median over all timed steps (and each round's median). Step times come from
``time.perf_counter`` on the CPU (where every step is synchronous) and from CUDA events on a GPU
(the interval between the ends of consecutive steps, without synchronising inside the loop).
The teacher and students have random weights: step times do not depend on the values.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from rld.config import RunConfig, list_presets, resolve
from rld.data import CIFAR100_MEAN, CIFAR100_STD, ArrayDataset, ArraySplit, DeviceLoader, load_cifar100
from rld.data.device_loader import as_device
from rld.data.pil import ArrayImageDataset, array_transform
from rld.data.types import Batch
from rld.engine.batched import GroupStep, batch_students_wanted
from rld.engine.distributed import World
from rld.engine.loop import Member, group_step
from rld.engine.static import StaticSteps
from rld.engine.teacher import TeacherForward
from rld.engine.trainer import Run, setup
from rld.errors import UserError
from rld.fast.cache import CachedTeacher, LogitStore, open_teacher_cache
from rld.losses._fused import eager_kernel
from rld.methods import MethodContext, build_method, get_spec, logits_only
from rld.models import create_model

SYNTHETIC_TRAIN = 50_000
SYNTHETIC_CLASSES = 100


@dataclass
class BenchOptions:
    device: str = "cpu"
    pair: str = "resnet32x4-resnet8x4"
    method: str = "rld"
    steps: int = 40
    warmup: int = 5
    rounds: int = 3
    batch_size: int = 64
    workers: int | None = None  # DataLoader workers of the conventional path; None: min(8, cores)
    data: str | None = None
    synthetic_size: int = SYNTHETIC_TRAIN
    sweep_sizes: tuple[int, ...] | None = None  # None: (4, 16) on CUDA, none on the CPU
    sweep_seeds: int = 1  # > 1: also each sweep spread over this many seeds (data streams)
    seed: int = 0
    require_capture: bool = False  # CUDA: a step that cannot be captured is an error, not an eager step


# ----------------------------------------------------------------------------- set-up


def synthetic_cifar(n: int = SYNTHETIC_TRAIN, num_classes: int = SYNTHETIC_CLASSES, seed: int = 0) -> ArrayDataset:
    """CIFAR-shaped random data: train x (n, 32, 32, 3) uint8, y (n,); a tiny test split."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, num_classes, size=n).astype(np.int64)
    test = ArraySplit(x[:256].copy(), y[:256].copy())
    classes = [str(c) for c in range(num_classes)]
    return ArrayDataset("synthetic", ArraySplit(x, y), test, classes, CIFAR100_MEAN, CIFAR100_STD, flip=True)


def _config(opts: BenchOptions) -> RunConfig:
    # TEACHER-STUDENT as in preset names and `rld reproduce --pairs`; TEACHER:STUDENT also accepted
    try:
        teacher, student = opts.pair.replace(":", "-").split("-")
    except ValueError:
        raise UserError(
            f"--pair must look like TEACHER-STUDENT (e.g. resnet32x4-resnet8x4), got {opts.pair!r}"
        ) from None
    over = [f"train.batch_size={opts.batch_size}", f"train.device={opts.device}", f"seed={opts.seed}"]
    name = f"cifar100/{teacher}-{student}/{opts.method}"
    if name in list_presets():
        return resolve(name, over)
    return resolve(
        f"cifar100/{student}/vanilla"
        if f"cifar100/{student}/vanilla" in list_presets()
        else "cifar100/resnet8/vanilla",
        [*over, f"model.student={student}", f"model.teacher={teacher}", f"method.name={opts.method}"],
    )


def device_name(device: torch.device) -> str:
    """A readable name of the device: the GPU model, or the CPU model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {available_cores()} cores, {torch.get_num_threads()} torch threads"


def available_cores() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers() -> int:
    """The conventional path's DataLoader workers when none are given: ``min(8, cores)``."""
    return min(8, available_cores())


class _Clock:
    """Per-step durations: perf_counter on the CPU, CUDA events (no synchronisation) on a GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def tick(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [1000 * (b - a) for a, b in zip(self.marks, self.marks[1:])]


# ----------------------------------------------------------------------------- the paths


class ConventionalPath:
    """DataLoader + PIL transforms, teacher forward each step, ``loss.item()`` each step."""

    def __init__(
        self, data: ArrayDataset, cfg: RunConfig, teacher: torch.nn.Module, device: torch.device, workers: int
    ):
        transform = array_transform(data.mean, data.std, train=True, flip=data.flip)
        self.loader = DataLoader(
            ArrayImageDataset(data.train, transform),
            batch_size=cfg.train.batch_size,
            shuffle=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        self.device, self.teacher = device, teacher
        torch.manual_seed(cfg.seed)
        self.student = create_model(cfg.model.student, num_classes=data.num_classes).to(device).train()
        self.spec = get_spec(cfg.method.name)
        context = MethodContext(
            self.student,
            teacher,
            data.num_classes,
            input_shape=(3, *data.train.x.shape[1:3]),
            num_samples=len(data.train),
            train_targets=torch.as_tensor(data.train.y, dtype=torch.int64, device=device),
            seed=cfg.seed,
        )
        self.method = build_method(cfg.method, context).to(device)
        t = cfg.train
        params = [*self.student.parameters(), *self.method.parameters()]
        self.optimizer = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        self._it = iter(self.loader)

    def step(self) -> None:
        try:
            x, y, i = next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            x, y, i = next(self._it)
        x, y, i = (v.to(self.device, non_blocking=True) for v in (x, y, i))
        with torch.no_grad():
            t = self.teacher.forward_features(x) if self.spec.teacher_features else logits_only(self.teacher(x))
        s = self.student.forward_features(x) if self.spec.student_features else logits_only(self.student(x))
        with eager_kernel():  # the plain eager losses, as the common code bases compute them
            loss, _ = self.method(s, t, y, 1, i)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        loss.item()


class DevicePath:
    """DeviceLoader batches and ``Run.step`` with a teacher-logit provider (forward or cache).

    ``static``: the whole step of :mod:`rld.engine.static` (CUDA graphs on a GPU), else the plain
    loop; full batches only (one shape), the epochs following one another; ``strict``: a step that
    cannot be captured raises instead of running eagerly. ``seeds``: the runs are
    spread evenly over this many data streams (the loader with seeds 0, 1, …), as a sweep's group of
    several seeds.
    """

    def __init__(
        self,
        loader: DeviceLoader,
        runs: list[Run],
        teacher_fn: Any,
        static: bool = False,
        batched: bool = False,
        seeds: int = 1,
        strict: bool = False,
    ):
        self.loader, self.teacher_fn = loader, teacher_fn
        self.loaders = [loader, *(loader.with_seed(loader.seed + s) for s in range(1, seeds))]
        streams = [k * seeds // len(runs) for k in range(len(runs))]
        self.members = [Member(run, torch.get_rng_state(), stream=s) for run, s in zip(runs, streams)]
        self.static = (
            StaticSteps(self.members, self.loaders, teacher_fn, batched=batched, strict=strict) if static else None
        )
        self.stepper = self.static.stepper if self.static is not None else GroupStep(self.members, batched)
        for run in runs:
            run.begin_epoch(1)
        self._it = self._batches() if self.static is None else None
        self._epoch, self._left = 0, 0

    def _batches(self) -> Iterator[tuple[Batch, ...]]:
        while True:
            for batches in zip(*self.loaders):  # each pass is the next epoch of the loaders
                if len(batches[0].targets) == self.loader.batch_size:  # full batches only: one shape
                    yield batches

    @property
    def captured(self) -> bool:
        """Whether the step runs as a CUDA graph (some batch size was captured)."""
        return self.static is not None and bool(self.static.captured_sizes)

    def step(self) -> None:
        if self.static is None:
            group_step(self.members, list(next(self._it)), self.teacher_fn, 1, self.stepper)
            return
        if self._left == 0:
            self.static.start_epoch(self._epoch)
            self._epoch += 1
            self._left = self.loader.num_samples // self.loader.batch_size
        self.static.step(self.loader.batch_size)
        self._left -= 1


def planned_entries(loader: DeviceLoader, batches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, views) (M,) of the first ``batches`` full batches the loader will give from epoch 0."""
    idx_parts, view_parts, left, epoch = [], [], batches, 0
    while left > 0:
        idx, views = loader.epoch_plan(epoch)
        full = (idx.numel() // loader.batch_size) * loader.batch_size
        take = min(left, full // loader.batch_size) * loader.batch_size
        idx_parts.append(idx[:take])
        view_parts.append(views[:take])
        left -= take // loader.batch_size
        epoch += 1
    return torch.cat(idx_parts), torch.cat(view_parts)


def _time_steps(path: Any, warmup: int, steps: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        path.step()
    clock = _Clock(device)
    clock.tick()
    for _ in range(steps):
        path.step()
        clock.tick()
    return clock.intervals_ms()


# ----------------------------------------------------------------------------- driver


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Measure the paths; returns the JSON-ready report (see the module docstring)."""
    workers = default_workers() if opts.workers is None else opts.workers
    if opts.steps < 1 or opts.warmup < 0 or opts.rounds < 1 or opts.batch_size < 1 or workers < 0:
        raise UserError("--steps, --rounds and --batch-size must be >= 1, --warmup and --workers >= 0")
    device = as_device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available; use --device cpu")
    cfg = _config(opts)
    setup(cfg, World())  # the process settings `rld train` uses (deterministic kernels, cuDNN, ...)
    data, data_desc = _bench_data(opts)
    sweep_sizes = opts.sweep_sizes if opts.sweep_sizes is not None else ((4, 16) if device.type == "cuda" else ())
    seeds = opts.sweep_seeds
    if seeds < 1 or any(m % seeds for m in sweep_sizes):
        raise UserError(f"--sweep-seeds must be >= 1 and divide every sweep size, got {seeds} for {sweep_sizes}")
    per_path = opts.warmup + opts.steps

    torch.manual_seed(opts.seed)
    teacher = create_model(cfg.model.teacher, num_classes=data.num_classes).to(device).eval().requires_grad_(False)
    layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    # the project's settings (train.channels_last, train.amp) for its paths; the
    # conventional path keeps its own model copies in float32 and the default layout
    project_teacher = copy.deepcopy(teacher).to(memory_format=layout)
    forward = TeacherForward(project_teacher, amp=cfg.train.amp)

    def fresh_loader() -> DeviceLoader:
        return DeviceLoader(
            data.train,
            opts.batch_size,
            device=device,
            mean=data.mean,
            std=data.std,
            train=True,
            flip=data.flip,
            channels_last=cfg.train.channels_last,
        )

    loader = fresh_loader()
    cacheable = not get_spec(cfg.method.name).teacher_features  # the cache holds teacher logits only
    with tempfile.TemporaryDirectory(prefix="rld-bench-") as tmp:
        cache_cfg = resolve_cache_cfg(cfg, Path(tmp) / "cache")
        if cacheable:
            lookup, cache = _filled_cache(cache_cfg, forward, loader, data.num_classes, per_path * opts.rounds, seeds)

        def runs(count: int, tag: str) -> list[Run]:
            made = []
            for k in range(count):
                out = Path(tmp) / f"{tag}{k}"
                (out / "checkpoints").mkdir(parents=True)
                made.append(
                    Run(
                        cfg,
                        out,
                        world=World(),
                        device=device,
                        num_classes=data.num_classes,
                        resume_from=None,
                        resume=False,
                        teacher=project_teacher,
                        input_shape=(3, *data.train.x.shape[1:3]),
                        labels=loader.labels,
                    )
                )
            return made

        static = device.type == "cuda"  # the default there: the whole step as CUDA graphs
        strict = opts.require_capture
        paths: dict[str, Any] = {
            "conventional": ConventionalPath(data, cfg, teacher, device, workers),
            "default_eager": DevicePath(fresh_loader(), runs(1, "eager"), forward, False),
            "default": DevicePath(fresh_loader(), runs(1, "default"), forward, static, strict=strict),
        }
        if cacheable:
            paths["cached"] = DevicePath(fresh_loader(), runs(1, "cached"), lookup, static, strict=strict)
        # each sweep as `rld sweep` steps it on this device (train.batch_students), and the other way
        stacked = batch_students_wanted(cfg.train.batch_students, device)
        other = "sweep_{}_one_by_one" if stacked else "sweep_{}_stacked"
        for m in sweep_sizes if cacheable else ():
            group, others = runs(m, f"sweep{m}-"), runs(m, f"other{m}-")
            paths[f"sweep_{m}"] = DevicePath(fresh_loader(), group, lookup, static, stacked, strict=strict)
            paths[other.format(m)] = DevicePath(fresh_loader(), others, lookup, static, not stacked, strict=strict)
            if seeds > 1:
                spread = runs(m, f"seeds{m}-")
                paths[f"sweep_{m}_seeds"] = DevicePath(fresh_loader(), spread, lookup, static, True, seeds, strict)
        times: dict[str, list[list[float]]] = {name: [] for name in paths}
        for _ in range(opts.rounds):
            for name, path in paths.items():
                times[name].append(_time_steps(path, opts.warmup, opts.steps, device))

    results = _results(times, paths, opts, sweep_sizes, other, cache if cacheable else None)
    return {
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "data": data_desc,
        "config": {
            "pair": opts.pair,
            "method": opts.method,
            "batch_size": opts.batch_size,
            "steps": opts.steps,
            "warmup": opts.warmup,
            "rounds": opts.rounds,
            "sweep_seeds": seeds,
            "conventional_workers": workers,
            "conventional_pin_memory": device.type == "cuda",
            "require_capture": opts.require_capture,
            "cache_precision": cache_cfg.train.cache_precision,
            "weights": "random initialisation (step times do not depend on the values)",
        },
        "settings": {  # of the project's paths; the conventional path: float32, default layout, eager losses
            "precision": "bf16 autocast (student)" if cfg.train.amp else "float32",
            "channels_last": cfg.train.channels_last,
            "deterministic": cfg.train.deterministic,
            "compiled_losses": _losses_compiled(device),
        },
        "results": results,
    }


def _filled_cache(
    cache_cfg: RunConfig, forward: TeacherForward, loader: DeviceLoader, num_classes: int, batches: int, seeds: int
) -> tuple[CachedTeacher, dict[str, Any]]:
    """A teacher-logit cache holding the entries of the first ``batches`` batches of ``loader`` (and of
    the loaders of its ``seeds`` - 1 next seeds, untimed), on the device; and how long opening and
    filling it took."""
    t0 = time.perf_counter()
    provider = open_teacher_cache(cache_cfg, forward, loader, num_classes)
    open_s = time.perf_counter() - t0
    idx, views = planned_entries(loader, batches)  # every path replays this plan
    t0 = time.perf_counter()
    entries = provider.fill(idx, views)
    _sync(loader.device)
    build_s = time.perf_counter() - t0
    for k in range(1, seeds):  # the plans of a sweep's other seeds
        provider.fill(*planned_entries(loader.with_seed(loader.seed + k), batches))
    store: LogitStore = provider.store
    store.to_device(loader.device)
    figures = {"cache_build_s": build_s, "cache_entries": entries, "cache_open_s": open_s}
    return CachedTeacher(store, None, loader, lazy=False), figures


def _bench_data(opts: BenchOptions) -> tuple[ArrayDataset, str]:
    """The bench's data set (CIFAR-100 arrays of ``--data``, else synthetic) and its description."""
    if opts.data:
        data = load_cifar100(opts.data)
        return data, f"cifar100 arrays from {opts.data} ({len(data.train)} training images, {data.num_classes} classes)"
    data = synthetic_cifar(opts.synthetic_size, seed=opts.seed)
    return data, f"synthetic CIFAR-shaped random uint8 ({len(data.train)} images 32x32x3, {data.num_classes} classes)"


def _results(
    times: dict[str, list[list[float]]],
    paths: dict[str, Any],
    opts: BenchOptions,
    sweep_sizes: tuple[int, ...],
    other: str,
    cache: dict[str, Any] | None,
) -> dict[str, Any]:
    """Per path: the median ms/step and each round's, whether it was captured, its speed-ups; the
    cache's build figures (``cache``; None: the method's teacher outputs cannot be cached)."""
    seeds = opts.sweep_seeds
    cacheable = cache is not None
    results: dict[str, Any] = {}
    for name, rounds in times.items():
        pooled = [t for r in rounds for t in r]
        results[name] = {
            "ms_per_step": statistics.median(pooled),
            "round_medians_ms": [statistics.median(r) for r in rounds],
            "captured": bool(getattr(paths[name], "captured", False)),
        }
        if name.startswith("sweep_"):
            results[name]["students_stacked"] = paths[name].stepper.stacked
    conv = results["conventional"]["ms_per_step"]
    for name in ("default_eager", "default", "cached"):
        if name in results:
            results[name]["speedup_vs_conventional"] = conv / results[name]["ms_per_step"]
    if cacheable:
        results["cached"].update(cache)
    else:
        no_cache = f"method {opts.method} reads the teacher's features, which the teacher-logit cache does not hold"
        results["cached"] = {"measured": False, "reason": no_cache}
    for m in (4, 16):
        if m not in sweep_sizes or not cacheable:
            reason = "measured on CUDA only (see rld.fast.bench)" if cacheable else "needs the teacher-logit cache"
            results[f"sweep_{m}"] = {"measured": False, "reason": reason}
    for m in sweep_sizes if cacheable else ():
        for name in (f"sweep_{m}", other.format(m), *([f"sweep_{m}_seeds"] if seeds > 1 else [])):
            r = results[name]
            r["students"], r["seeds"] = m, seeds if name.endswith("_seeds") else 1
            r["ms_per_student_step"] = r["ms_per_step"] / m
            r["speedup_vs_separate_cached"] = results["cached"]["ms_per_step"] * m / r["ms_per_step"]
            r["speedup_vs_default"] = results["default"]["ms_per_step"] * m / r["ms_per_step"]
    return results


def _losses_compiled(device: torch.device) -> bool:
    from rld.losses import _fused

    return bool(_fused._compiling_wanted(device))


def resolve_cache_cfg(cfg: RunConfig, cache_dir: Path) -> RunConfig:
    """``cfg`` with a lazy float16 teacher-logit cache in ``cache_dir`` (filled by the bench itself)."""
    from dataclasses import replace

    train = replace(cfg.train, teacher_cache="lazy", cache_dir=str(cache_dir), cache_precision="float16")
    return replace(cfg, train=train, data=replace(cfg.data, name="bench"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_report(report: dict[str, Any]) -> str:
    """A small table of the report for the terminal."""
    lines = [f"{report['device_name']} · torch {report['torch']} · {report['data']}"]
    lines.append(f"{'path':20s} {'ms/step':>9s} {'x conventional':>15s}")
    for name, r in report["results"].items():
        if not r.get("measured", True):
            lines.append(f"{name:20s} {'—':>9s}  ({r['reason']})")
            continue
        speed = r.get("speedup_vs_conventional")
        notes = ["CUDA graph"] if r.get("captured") else []
        if "students" in r:
            over = f" over {r['seeds']} seeds" if r["seeds"] > 1 else ""
            notes.append(
                f"{r['students']} students{over}, {r['students_stacked']} stacked: "
                f"{r['speedup_vs_separate_cached']:.1f}x the student-steps/s of one cached run"
            )
        note = f"  ({'; '.join(notes)})" if notes else ""
        lines.append(f"{name:20s} {r['ms_per_step']:9.1f} {'' if speed is None else f'{speed:14.2f}x'}{note}")
    cached = report["results"]["cached"]
    if cached.get("measured", True):
        lines.append(
            f"cache: {cached['cache_entries']} entries built in {cached['cache_build_s']:.1f}s "
            f"(opened in {cached['cache_open_s']:.1f}s)"
        )
    return "\n".join(lines)
