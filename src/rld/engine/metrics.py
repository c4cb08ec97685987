"""A run's training metrics of the epoch so far, kept on the device.

Every step adds to them in place (:meth:`EpochMetrics.record`): no host read inside an epoch, and
a CUDA-graph replay of a step adds as the step itself does (the step count is a device tensor too).
:meth:`EpochMetrics.reduce` reads them once, at the epoch's end, summed over the processes;
:meth:`EpochMetrics.state` and :meth:`EpochMetrics.load` carry a position inside an epoch through
``step.pt`` (:mod:`rld.engine.guard`).
"""

from __future__ import annotations

import time

import torch

from rld.engine.distributed import World, all_sum


class EpochMetrics:
    """Sums over the epoch's steps on ``device``: the loss and its named parts (each weighted by the
    batch size), the correct predictions, the samples seen, and the steps taken."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}  # "loss" and each part; made at a key's first record
        self.correct = torch.zeros((), dtype=torch.float64, device=device)
        self.seen = torch.zeros((), dtype=torch.float64, device=device)
        self.steps = torch.zeros((), dtype=torch.int64, device=device)
        self.tic = time.perf_counter()

    def begin(self) -> None:
        """Zero the sums in place (a captured step keeps adding to the same tensors) and start the clock."""
        for acc in (*self.sums.values(), self.correct, self.seen, self.steps):
            acc.zero_()
        self.tic = time.perf_counter()

    def record(self, targets: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor, parts: dict) -> None:
        """Add a finished step: ``targets`` (B,), ``logits`` (B, C) what the student predicted, the
        step's loss and its named parts (scalars)."""
        n = float(len(targets))
        self.seen += n
        self.correct += (logits.detach().argmax(dim=1) == targets).sum()
        for key, value in {"loss": loss, **parts}.items():
            if key not in self.sums:
                self.sums[key] = torch.zeros((), dtype=torch.float64, device=self.device)
            self.sums[key].add_(value.detach().double() * n)
        self.steps += 1

    def running_loss(self) -> float:
        """The mean loss so far (reads the device: for progress lines only)."""
        seen = float(self.seen)
        return float(self.sums["loss"]) / seen if seen and "loss" in self.sums else float("nan")

    def reduce(self, world: World, extra: list[torch.Tensor] = ()) -> tuple[dict[str, float], int, list[float]]:
        """The epoch's means ``{"loss": …, part: …, "top1": %}`` over every process, this process's step
        count, and the values of ``extra`` (scalars summed over the processes), in one host read."""
        keys = list(self.sums)
        summed = all_sum(torch.stack([*(self.sums[k] for k in keys), self.correct, self.seen, *extra]), world)
        values = torch.cat([summed, self.steps.double()[None]]).tolist()  # the one host sync of the epoch
        steps = int(values.pop())
        extras = [values.pop() for _ in extra][::-1]
        seen = values[-1]
        means = {k: values[i] / seen for i, k in enumerate(keys)}
        means["top1"] = 100 * values[-2] / seen
        return means, steps, extras

    def state(self) -> tuple[list[str], torch.Tensor]:
        """The sums' keys and a (len(keys) + 2,) tensor of the sums, correct and seen (this process's)."""
        keys = list(self.sums)
        return keys, torch.stack([*(self.sums[k] for k in keys), self.correct, self.seen])

    def load(self, keys: list[str], values: torch.Tensor, steps: int, train_time: float) -> None:
        """Continue from :meth:`state`'s ``keys`` and ``values`` after ``steps`` steps and ``train_time`` seconds."""
        values = values.to(self.device)
        for i, key in enumerate(keys):
            if key not in self.sums:
                self.sums[key] = torch.zeros((), dtype=torch.float64, device=self.device)
            self.sums[key].copy_(values[i])
        self.correct.copy_(values[-2])
        self.seen.copy_(values[-1])
        self.steps.fill_(steps)
        self.tic = time.perf_counter() - train_time
