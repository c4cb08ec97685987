"""Whole-step execution on device-resident data: one epoch as a fixed sequence of device work.

The plain loop slices each batch on the host and hands it to :meth:`Run.step
<rld.engine.trainer.Run.step>`. Here the epoch's plan of the device-resident loader — its order
and augmentation views, a pure function of (seed, epoch) — is copied into two static device buffers
when the epoch begins, and one step is

    read the batch at a device-side position  →  crop and flip  →  teacher forward (or cache
    lookup)  →  for every student: forward, loss, backward, SGD update, metrics added in place  →
    advance the position

(the students of a sweep's group one after another, or stacked: :mod:`rld.engine.batched`; a group
of several seeds reads one batch per seed, each from its own plan, at the same position)

which reads no Python value that changes inside an epoch: the learning rate and the epoch (for the
warm-up) are device scalars of each run (:meth:`Run.use_device_scalars
<rld.engine.trainer.Run.use_device_scalars>`), filled when the epoch begins. So the step is a
function of fixed buffers only. On CUDA it is captured once per batch size as a CUDA graph and
replayed — the full batch and the last partial one (16 images for 50,000 CIFAR-100 images at 64) —
after ``warmup`` eager runs of that size on a side stream (they are real training steps, and they
make the autograd, optimizer and allocator state that the capture records). The metrics are read
once per epoch, by :meth:`Run.end_epoch <rld.engine.trainer.Run.end_epoch>`.

A step that cannot be captured (it synchronises with the host, or the capture fails) runs eagerly
from then on, with one warning naming the cause; with ``train.static_step=require`` it is an error
(:class:`CaptureError`) instead, so that a check never passes on a silent fallback. A warm-up step
always runs to its end: an error inside one stops training with that error rather than leaving a
half-done step behind.

Everything a graph touches stays where it was captured: the parameters, gradients (allocated by
the captured backward from the graph's pool), momentum buffers, the batch and metric buffers.

On the CPU the same step runs without capture; the tests check that it trains exactly like the
plain loop, partial last batch, learning-rate decay and warm-up included.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from rld.data.device_loader import DeviceLoader
from rld.data.types import Batch
from rld.engine.batched import GroupStep
from rld.engine.teacher import teacher_outputs
from rld.errors import UserError

log = logging.getLogger("rld")


class CaptureError(UserError):
    """``train.static_step=require``: the training step could not be captured as a CUDA graph (the
    message names the cause)."""


def static_step_wanted(setting: str, loader: Any, teacher_fn: Any, distributed: bool) -> bool:
    """Whether ``train.static_step`` = ``setting`` means the static step for this run or group.

    ``on`` asks for it (and needs the device-resident loader); ``require`` too, and on CUDA every
    capture must succeed (``StaticSteps(strict=True)``); ``auto`` takes it on CUDA when the data,
    the teacher provider and the process set allow a capture; ``off`` never. A loader that yields a
    strongly augmented view (``Batch.strong``, MLKD's and CRLD's) runs the plain loop: the static
    step renders the protocol's view only (``auto`` skips it, ``on`` is refused).
    """
    if setting == "off":
        return False
    strong = getattr(loader, "strong", None) is not None
    capturable = (
        isinstance(loader, DeviceLoader) and not distributed and not getattr(teacher_fn, "lazy", False) and not strong
    )
    key = f"train.static_step={setting}"
    if setting in ("on", "require") and strong:
        raise UserError(
            f"{key} cannot run a method that trains on a strongly augmented view (MLKD, CRLD): "
            "use train.static_step=auto or off"
        )
    if setting in ("on", "require"):
        if not isinstance(loader, DeviceLoader):
            raise UserError(f"{key} needs the device-resident loader (data.pipeline=device)")
        if getattr(teacher_fn, "lazy", False):
            raise UserError(
                f"{key} cannot run with train.teacher_cache=lazy: its lookups read the host "
                "(which entries are filled); use train.teacher_cache=full (rld cache) or train.static_step=auto"
            )
        if distributed:
            raise UserError(f"{key} runs in one process; use train.static_step=off under torchrun")
        return True
    return capturable and loader.device.type == "cuda"


class StaticSteps:
    """The training steps of runs that share device-resident loaders and a teacher provider.

    ``members`` (:class:`rld.engine.loop.Member`: a run, its data stream, and ``enter``/``leave``
    around its eager work, where a sweep swaps each run's RNG state in and out) are stepped in
    lockstep (one run, or a sweep's group), each on the batches of its stream's loader: ``loader`` is
    one loader or a list of them, which differ only in their seed (one data set, batch size and
    sample count). Call :meth:`run_epoch` between the runs' ``begin_epoch``
    and ``end_epoch``.
    """

    def __init__(
        self,
        members: list[Any],
        loader: DeviceLoader | list[DeviceLoader],
        teacher_fn: Callable[[Batch], torch.Tensor] | None,
        *,
        capture: bool | None = None,
        warmup: int = 2,
        batched: bool = False,
        strict: bool = False,
    ):
        """``batched``: students of one architecture step as one batched computation
        (:class:`~rld.engine.batched.GroupStep`); ``strict`` (``train.static_step=require``): a step
        that cannot be captured raises :class:`CaptureError` instead of running eagerly."""
        self.loaders = list(loader) if isinstance(loader, (list, tuple)) else [loader]
        self.loader = self.loaders[0]
        if any(
            (lo.num_samples, lo.batch_size) != (self.loader.num_samples, self.loader.batch_size) for lo in self.loaders
        ):
            raise ValueError("the loaders of a StaticSteps must have one sample count and batch size")
        if any(not 0 <= m.stream < len(self.loaders) for m in members):
            raise ValueError("a member's stream has no loader")
        self.members, self.teacher_fn = members, teacher_fn
        self._methods = [[m.run.method for m in members if m.stream == s] for s in range(len(self.loaders))]
        self.stepper = GroupStep(members, batched)
        device = self.loader.device
        self.capture = device.type == "cuda" if capture is None else capture
        self.strict = strict
        drawing = [m.run.method.name for m in members if m.run.method.spec.uses_rng]
        if self.capture and len(members) > 1 and drawing:
            why = (
                f"method {drawing[0]} draws random numbers in its step, and one CUDA graph cannot give each run "
                "of a group its own random stream"
            )
            if strict:
                raise CaptureError(f"train.static_step=require: the group's step cannot be captured: {why}")
            log.info("the group's step runs eagerly: %s", why)
            self.capture = False
        self.warmup = warmup
        for m in members:
            m.run.use_device_scalars()  # (also inside an epoch already begun)
        shape = (len(self.loaders), self.loader.num_samples)  # the plan of each stream
        self._order = torch.zeros(shape, dtype=torch.int64, device=device)
        self._views = torch.zeros(shape, dtype=torch.int64, device=device)
        self._pos = torch.zeros((), dtype=torch.int64, device=device)
        self._offsets = torch.arange(self.loader.batch_size, device=device)
        self._graphs: dict[int, Any] = {}
        self._eager_runs: Counter[int] = Counter()
        self.attempts: list[dict[str, Any]] = []  # every capture attempt: size, captured, error
        self._side = torch.cuda.Stream(device) if self.capture and device.type == "cuda" else None

    @property
    def captured_sizes(self) -> list[int]:
        """The batch sizes whose step is replayed as a CUDA graph, in increasing order."""
        return sorted(self._graphs)

    def batch_sizes(self) -> list[int]:
        """The batch sizes of one epoch, in order: full batches, then the partial one if any."""
        n, b = self.loader.num_samples, self.loader.batch_size
        return [b] * (n // b) + ([n % b] if n % b else [])

    def run_epoch(
        self,
        epoch: int,
        progress: Callable[[Iterable[int]], Iterable[int]] = iter,
        *,
        start: int = 0,
        after_step: Callable[[int], None] | None = None,
    ) -> None:
        """The training steps of ``epoch`` for every member, from step ``start`` on (a resumed
        position: the first ``start`` batches of the plan are skipped); ``after_step(k)`` after the
        k-th step of the epoch (counted from 1, skipped steps included)."""
        self.start_epoch(epoch, start)
        for k, size in enumerate(progress(self.batch_sizes()[start:]), start + 1):
            self.step(size)
            if after_step is not None:
                after_step(k)

    def start_epoch(self, epoch: int, start: int = 0) -> None:
        """Load the loaders' plans of ``epoch`` into the static buffers and move to batch ``start``."""
        for s, loader in enumerate(self.loaders):
            order, views = loader.epoch_plan(epoch)
            self._order[s].copy_(order)
            self._views[s].copy_(views)
        self._pos.fill_(start * self.loader.batch_size)  # every batch before the last is full

    def step(self, size: int) -> None:
        """Step every member on the next ``size`` samples of the epoch's plan (captured on CUDA)."""
        self._step(size)

    def _body(self, size: int, swap_rng: bool = True) -> None:
        """One step on the next ``size`` samples of the plan: device work only."""
        at = self._pos + self._offsets[:size]
        batches = []
        for s, loader in enumerate(self.loaders):
            indices, views = self._order[s][at], self._views[s][at]
            batches.append(Batch(loader.render_views(indices, views), loader.targets(indices), indices, views))
        teachers = teacher_outputs(self.teacher_fn, batches, self._methods)
        self.stepper(batches, teachers, 0, swap_rng)
        self._pos += size

    def _step(self, size: int) -> None:
        if not self.capture:
            self._body(size)
            return
        graph = self._graphs.get(size)
        if graph is None and self._eager_runs[size] < self.warmup:
            self._warmup_step(size)
            return
        if graph is None:
            graph = self._capture(size)
            if graph is None:
                self._body(size)
                return
        graph.replay()  # the step's device work, its metrics and step counts included

    def _warmup_step(self, size: int) -> None:
        """An eager step before a capture, on a side stream on CUDA (as capturing requires). All but the
        first (which compiles and autotunes kernels) are watched for host synchronisations
        (:meth:`_host_syncs`). The step always runs to its end — its BatchNorm statistics, optimizer
        update and metrics are those of a whole step, and the plan moves on — so a step that
        synchronised is simply not captured; an error inside the step stops training with that error."""
        checked = self._eager_runs[size] > 0
        self._eager_runs[size] += 1
        with self._on_side_stream(), self._host_syncs(checked) as syncs:
            self._body(size)
        if syncs:
            self._give_up(size, f"the step synchronises with the host ({syncs[0]})")

    @contextmanager
    def _on_side_stream(self) -> Iterator[None]:
        """On CUDA, the block's work on the side stream, ordered after and before the current stream's."""
        if self._side is None:
            yield
            return
        current = torch.cuda.current_stream(self.loader.device)
        self._side.wait_stream(current)
        try:
            with torch.cuda.stream(self._side):
                yield
        finally:
            current.wait_stream(self._side)

    @contextmanager
    def _host_syncs(self, checked: bool) -> Iterator[list[str]]:
        """The host synchronisations of the block (filled when it ends; replaceable in tests, which
        cannot synchronise a CPU): on CUDA, with ``checked``, CUDA's sync debug mode in ``warn``
        (``error`` would stop the step halfway), the warnings it gives collected, any other passed on."""
        found: list[str] = []
        if not (checked and self._side is not None):
            yield found
            return
        before = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield found
            finally:
                torch.cuda.set_sync_debug_mode(before)
        for w in caught:
            if "synchroniz" in str(w.message):
                found.append(str(w.message).strip().splitlines()[0])
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def _give_up(self, size: int, cause: str) -> None:
        """No more capturing: the cause logged once (raised as :class:`CaptureError` when ``strict``),
        what a capture held freed."""
        self.attempts.append({"size": size, "captured": False, "error": cause})
        if self.strict:
            raise CaptureError(
                f"train.static_step=require: could not capture the training step (batch {size}) as a CUDA "
                f"graph: {cause}; use train.static_step=on to run it eagerly instead"
            )
        log.warning(
            "could not capture the training step (batch %d) as a CUDA graph (%s); running it eagerly", size, cause
        )
        self.capture = False
        self._graphs.clear()
        if self.loader.device.type == "cuda":
            torch.cuda.empty_cache()

    # How a graph is made and captured (replaceable in tests, which cannot capture on the CPU).
    @staticmethod
    def _new_graph():
        return torch.cuda.CUDAGraph()

    @contextmanager
    def _capturing(self, graph):
        # on the loader's device (cuda:N), on the side stream; thread_local: a DataLoader's pin-memory
        # thread allocating meanwhile cannot poison the capture
        with torch.cuda.device(self.loader.device):
            with torch.cuda.graph(graph, stream=self._side, capture_error_mode="thread_local"):
                yield

    def _capture(self, size: int):
        """The CUDA graph of a step of ``size`` samples, or None (and no more capturing) if the step
        cannot be captured. Capturing records the step without running it."""
        graph = self._new_graph()
        try:
            with self._capturing(graph):
                self._body(size, swap_rng=False)  # no RNG in a step; a capture may not set RNG state
        except Exception as exc:  # something in the step reads the host, or allocates across streams
            del graph
            self._give_up(size, f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}")
            return None
        self._graphs[size] = graph
        self.attempts.append({"size": size, "captured": True})
        return graph
