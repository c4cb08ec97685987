"""Ending a run cleanly: divergence (non-finite losses or weights) and preemption (SIGTERM / SIGINT).

Divergence. A step never reads a device value on the host. The epoch's loss sums (float64, added
on the device at every step, see :meth:`Run.step <rld.engine.trainer.Run.step>`) are the flag: one
non-finite step loss makes its sum non-finite. :meth:`Run.end_epoch
<rld.engine.trainer.Run.end_epoch>` reads them at the epoch's one host sync, together with
:func:`nonfinite_count` of the trained weights (a last step whose update went non-finite) — and
after the evaluation the test loss (finite weights whose logits overflow) — and with
``train.stop_on_nonfinite`` raises :class:`~rld.errors.DivergedError` before anything is saved.

Preemption. :class:`StopSignals` turns SIGTERM and SIGINT into a request that the loop honours at
the next step boundary: it saves the run's exact position (:func:`save_position`: the weights,
optimizer and method state, every RNG state, the epoch and the step within it, the partial metric
sums) as ``checkpoints/step.pt`` and raises :class:`~rld.errors.Interrupted`. A second signal acts
at once (the previous handler). ``train.checkpoint_every_steps`` saves the same position
periodically. ``--resume`` continues from ``step.pt`` when it is newer than ``last.pt``
(:func:`newest_checkpoint`): the loader skips the batches already trained and the run ends
bit-identical to an uninterrupted one (deterministic mode, on the CPU).

Under torchrun the processes must stop at the same step, so a signal is honoured where they meet
anyway: at a periodic mid-epoch checkpoint (``train.checkpoint_every_steps``) or at the end of the
epoch (after its checkpoint).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch

from rld.engine import checkpoint as ckpt
from rld.engine.distributed import World, all_sum
from rld.errors import DivergedError, Interrupted, UserError
from rld.models.checkpoint import read_torch_file

log = logging.getLogger("rld")

STEP_CHECKPOINT = "step.pt"
"""The mid-epoch checkpoint in ``RUN/checkpoints/``: ``last.pt``'s content plus a ``position``."""
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """While active (``with``): SIGTERM and SIGINT set :attr:`signum` instead of ending the process.

    The first signal is recorded (and logged); it also restores the previous handlers, so that a
    second one acts at once. Outside the main thread (where Python cannot install handlers) it does
    nothing.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        self._restore()
        log.info(
            "%s: stopping at the next step boundary after saving the run's position (a second signal stops at once)",
            signal.Signals(signum).name,
        )

    def agreed(self, world: World, device: torch.device) -> int | None:
        """The signal every process acts on: this one's; under torchrun, the highest any process got
        (a collective: call it at the same point on every process)."""
        if not world.distributed:
            return self.signum
        import torch.distributed as dist

        got = torch.tensor([self.signum or 0], dtype=torch.int64, device=device)
        dist.all_reduce(got, op=dist.ReduceOp.MAX)
        return self.signum or int(got.item()) or None


def interrupted(signum: int, where: str) -> Interrupted:
    return Interrupted(f"stopped by {signal.Signals(signum).name} {where}", signum)


# ----------------------------------------------------------------------------- divergence


def nonfinite_count(modules: list[torch.nn.Module]) -> torch.Tensor:
    """How many floating-point tensors of the modules' state (weights, buffers) hold a non-finite
    value: a float64 scalar on their device (no host sync)."""
    tensors = [t for m in modules for t in m.state_dict().values() if t.is_floating_point()]
    if not tensors:
        return torch.zeros((), dtype=torch.float64)
    flags = torch.stack([(~torch.isfinite(t)).any() for t in tensors])
    return flags.sum(dtype=torch.float64)


def nonfinite_parts(keys: list[str], totals: list[float], weights: float) -> list[str]:
    """The metric names of the non-finite loss sums (``train_loss``, ``loss_ce``, …) and ``weights``."""
    parts = [("train_loss" if k == "loss" else f"loss_{k}") for k, v in zip(keys, totals) if not math.isfinite(v)]
    return parts + (["weights"] if weights else [])


def diverged(run: Any, epoch: int, parts: list[str]) -> DivergedError:
    last = f"last.pt keeps epoch {epoch - 1}" if epoch > 1 else "no checkpoint was written"
    what = ", ".join(parts)
    return DivergedError(
        f"{run.out}: training diverged in epoch {epoch}: non-finite {what}; {last}. Lower train.lr or check the "
        "data (train.stop_on_nonfinite=false trains on regardless)",
        epoch=epoch,
        parts=parts,
    )


# ----------------------------------------------------------------------------- mid-epoch positions


def _peek(path: Path) -> dict:
    """A run checkpoint's entries, its tensors memory-mapped (not read); an unreadable file raises
    the UserError of :func:`rld.engine.checkpoint.load_run`."""
    try:
        state = read_torch_file(path, mmap=True)
    except Exception:
        state = None
    if not isinstance(state, dict) or state.get("format") != ckpt.FORMAT:
        state = ckpt.load_run(path)
    ckpt.check_run_state(state, path)
    return state


def newest_checkpoint(out: Path, last: Path) -> Path:
    """``step.pt`` when it continues ``last.pt`` (it holds the same finished epochs plus steps of the
    next one), else ``last.pt`` (``step.pt`` left over from before the last epoch's end is stale)."""
    step = out / "checkpoints" / STEP_CHECKPOINT
    if not step.exists():
        return last
    done = _peek(step)["epoch"]
    if last.exists() and _peek(last)["epoch"] != done:
        return last
    return step


def resume_point(path: Path | None) -> tuple[int, int]:
    """``(epoch, steps done in it)`` where a run resumed from checkpoint ``path`` continues."""
    if path is None:
        return 1, 0
    state = _peek(path)
    position = state.get("position")
    return (position["epoch"], position["step"]) if position else (state["epoch"] + 1, 0)


def save_position(run: Any, epoch: int, step: int, world: World) -> bool:
    """Write ``step.pt``: the run after ``step`` steps of ``epoch``. Every process calls it (under
    torchrun the partial metric sums of all of them are saved); rank 0 writes. Returns False (and
    writes nothing) when the state is non-finite and ``train.stop_on_nonfinite`` is on: the epoch's
    end reports the divergence, and the previous checkpoint stays the one to resume from."""
    keys, local = run.metrics.state()
    per_rank = _gather(local, world)
    bad = all_sum(nonfinite_count([run.student, run.method]).reshape(1), world)
    if run.cfg.train.stop_on_nonfinite:
        flat = [*per_rank.flatten().tolist(), *bad.tolist()]
        if not all(math.isfinite(v) for v in flat) or bad.item():
            log.warning("%s: not saving the position at epoch %d step %d: non-finite state", run.out, epoch, step)
            return False
    if world.is_main:
        state = run.checkpoint_state(epoch - 1)
        state["position"] = {
            "epoch": epoch,
            "step": step,
            "keys": keys,
            "sums": per_rank.cpu(),  # (world size, len(keys) + 2): the sums, correct, seen of each process
            "train_time": time.perf_counter() - run.metrics.tic,
        }
        run.folder.write({STEP_CHECKPOINT: state})
    return True


def _gather(t: torch.Tensor, world: World) -> torch.Tensor:
    if not world.distributed:
        return t[None].clone()
    import torch.distributed as dist

    out = [torch.empty_like(t) for _ in range(world.size)]
    dist.all_gather(out, t)
    return torch.stack(out)


def restore_position(run: Any, state_position: dict, world: World) -> int:
    """Put a resumed run back at its saved position inside the epoch just begun; returns the steps done."""
    sums = state_position["sums"]
    if sums.shape[0] != world.size:
        raise UserError(
            f"--resume: {run.out}/checkpoints/{STEP_CHECKPOINT} was written by {sums.shape[0]} process(es); "
            f"resume it with as many (or delete that file to resume from the epoch's start)"
        )
    steps = int(state_position["step"])
    run.metrics.load(state_position["keys"], sums[world.rank], steps, float(state_position.get("train_time", 0.0)))
    return steps
