"""The logic of the engine's CUDA branches, on a simulated CUDA machine (the CPU runs no CUDA kernel):
device resolution, the optimizer every path configures, warm-up steps that synchronise or fail,
and strict capture (``train.static_step=require``)."""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rld.config import resolve
from rld.data import build_data
from rld.engine import faults, train, trainer
from rld.engine.distributed import World
from rld.engine.loop import Member
from rld.engine.static import CaptureError, StaticSteps
from rld.engine.trainer import Run, prepare_out_dir, resolve_device
from rld.errors import UserError


@pytest.fixture
def simulated_cuda(monkeypatch) -> list[int]:
    """A machine with two CUDA devices as far as the Python side of ``torch.cuda`` can tell; yields the
    device indices passed to the driver's set-device call (``torch.cuda.set_device`` itself runs, with
    its own check for an index)."""
    selected: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_setDevice", selected.append, raising=False)
    return selected


@pytest.mark.parametrize(
    ("name", "world", "expected"),
    [
        ("cuda", World(), 0),
        ("auto", World(), 0),
        ("cuda:1", World(), 1),
        ("cuda", World(rank=1, local_rank=1, size=2), 1),  # torchrun: the process's LOCAL_RANK
    ],
)
def test_a_cuda_device_is_resolved_with_its_index_and_made_current(simulated_cuda, name, world, expected):
    device = resolve_device(name, world)
    assert device == torch.device("cuda", expected) and device.index == expected
    assert simulated_cuda == [expected]


def test_a_cuda_device_that_does_not_exist_is_refused(simulated_cuda):
    with pytest.raises(
        UserError, match=r"device cuda:2 does not exist: this machine has CUDA devices cuda:0 to cuda:1"
    ):
        resolve_device("cuda:2", World())
    assert simulated_cuda == []


def _cfg(teacher: Path, *extra: str):
    """RLD on the digits (1,347 images at batch 256: five full batches and one of 67), resnet8 -> resnet8."""
    over = ["train.channels_last=false", "train.batch_size=256", "data.eval_batch_size=512", "train.epochs=1"]
    model = ["model.student=resnet8", "model.teacher=resnet8", f"model.teacher_checkpoint={teacher}"]
    return resolve("demo/rld", [*over, *model, *extra])


def _run(cfg, out: Path) -> Run:
    prepare_out_dir(out, resume=False)
    return Run(cfg, out, world=World(), device=torch.device("cpu"), num_classes=10, resume_from=None, resume=False)


def test_on_cuda_the_plain_loop_and_the_whole_step_configure_one_optimizer(teacher, tmp_path, monkeypatch):
    """Both paths get the fused kernel with a float32 device learning rate (foreach and fused round
    differently, so two implementations could never train bit for bit alike)."""
    made = []

    def scalars(device):  # the device scalars, made on the CPU for the simulated CUDA device
        made.append(device)
        return torch.zeros((), dtype=torch.float32), torch.zeros((), dtype=torch.float32)

    monkeypatch.setattr(trainer, "_device_scalars", scalars, raising=False)
    configured = {}
    for path in ("plain", "static"):
        run = _run(_cfg(teacher), tmp_path / path)
        run.device = torch.device("cuda", 0)
        if path == "static":
            run.use_device_scalars()  # what StaticSteps does
        run.begin_epoch(1)
        configured[path] = [
            (g["fused"], g["foreach"], type(g["lr"]), getattr(g["lr"], "dtype", None), float(g["lr"]))
            for g in run.optimizer.param_groups
        ]
    assert (
        configured["plain"]
        == configured["static"]
        == [(True, False, torch.Tensor, torch.float32, float(torch.tensor(0.05)))]
    )
    assert made == [torch.device("cuda", 0)] * 2
    # and on the CPU both keep PyTorch's default
    cpu = _run(_cfg(teacher), tmp_path / "cpu")
    cpu.begin_epoch(1)
    assert [(g["fused"], g["foreach"], g["lr"]) for g in cpu.optimizer.param_groups] == [(None, None, 0.05)]


class _Stream:
    """A CUDA stream as far as the step's ordering calls go."""

    def wait_stream(self, other) -> None:
        pass


@contextlib.contextmanager
def _capturing_as_on_cuda(monkeypatch, syncs_in_step: bool = False, capture_fails: bool = False):
    """StaticSteps as on CUDA: warm-up steps on a side stream, watched with CUDA's sync debug mode, then
    a capture attempt. ``syncs_in_step``: the step makes a synchronising call, which warns as CUDA's
    ``warn`` mode does; ``capture_fails``: the capture raises as CUDA's does for a step that reads the host."""
    mode = {"now": 0}
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: mode["now"])
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda m: mode.update(now=m))
    original_init, original_body = StaticSteps.__init__, StaticSteps._body

    def capturing_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.capture, self._side = True, _Stream()

    def body(self, size, swap_rng=True):
        if syncs_in_step and mode["now"] in ("warn", 1):
            warnings.warn("called a synchronizing CUDA operation (simulated)", UserWarning, stacklevel=1)
        if syncs_in_step and mode["now"] in ("error", 2):
            raise RuntimeError("called a synchronizing CUDA operation (simulated)")
        original_body(self, size, swap_rng)

    @contextlib.contextmanager
    def failing(self, graph):
        raise RuntimeError("operation not permitted when stream is capturing (simulated)")
        yield

    monkeypatch.setattr(StaticSteps, "__init__", capturing_init)
    monkeypatch.setattr(StaticSteps, "_body", body)
    monkeypatch.setattr(StaticSteps, "_new_graph", staticmethod(lambda: object()))
    if capture_fails:
        monkeypatch.setattr(StaticSteps, "_capturing", failing)
    yield


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints/last.pt", weights_only=True)["model"]


def test_a_warm_up_step_that_synchronises_runs_whole_and_the_epoch_sees_every_batch_once(
    teacher, tmp_path, monkeypatch, caplog
):
    train(_cfg(teacher, "train.static_step=off"), tmp_path / "plain")
    with _capturing_as_on_cuda(monkeypatch, syncs_in_step=True), caplog.at_level(logging.WARNING, logger="rld"):
        train(_cfg(teacher, "train.static_step=on"), tmp_path / "static")
    warnings = [r.getMessage() for r in caplog.records if "CUDA graph" in r.getMessage()]
    assert warnings == [
        "could not capture the training step (batch 256) as a CUDA graph (the step synchronises with the host "
        "(called a synchronizing CUDA operation (simulated))); running it eagerly"
    ]
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "static")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same six batches, each once
    history = torch.load(tmp_path / "static/checkpoints/last.pt", weights_only=True)["history"]
    assert history[0]["steps"] == 6


def test_an_error_in_a_warm_up_step_stops_training_with_that_error(teacher, tmp_path, monkeypatch):
    """The second step is the checked warm-up of batch size 256: its error is not taken for a failed
    capture (which would leave the step half done and repeat its batch); nothing is written for the epoch."""
    monkeypatch.setattr(faults, "_spec", faults._parse("error_after_step:2"))
    monkeypatch.setattr(faults, "_counts", dict.fromkeys(faults.POINTS, 0))
    out = tmp_path / "static"
    with _capturing_as_on_cuda(monkeypatch):
        with pytest.raises(RuntimeError, match=r"RLD_FAULT: a step that fails \(error_after_step:2\)"):
            train(_cfg(teacher, "train.static_step=on"), out)
    assert not (out / "checkpoints/last.pt").exists() and not (out / "metrics.csv").exists()


@pytest.mark.parametrize("cause", ["sync", "capture"])
def test_strict_capture_refuses_to_fall_back_and_names_the_cause(teacher, tmp_path, monkeypatch, cause):
    expected = {
        "sync": r"the step synchronises with the host \(called a synchronizing CUDA operation \(simulated\)\)",
        "capture": r"RuntimeError: operation not permitted when stream is capturing \(simulated\)",
    }[cause]
    out = tmp_path / "run"
    simulated = _capturing_as_on_cuda(monkeypatch, syncs_in_step=cause == "sync", capture_fails=cause == "capture")
    with simulated, pytest.raises(CaptureError) as refused:
        train(_cfg(teacher, "train.static_step=require"), out)
    message = str(refused.value)
    assert message.startswith("train.static_step=require: could not capture the training step (batch 256)")
    assert re.search(expected, message), message
    assert isinstance(refused.value, UserError)  # the CLI prints it in one line, exit status 2
    assert not (out / "checkpoints/last.pt").exists()


def test_strict_capture_refuses_a_group_whose_method_draws_random_numbers():
    loader = build_data("digits", None, batch_size=64, eval_batch_size=512, device="cpu", seed=0).train
    spec = SimpleNamespace(uses_rng=True)
    members = [Member(SimpleNamespace(method=SimpleNamespace(name="crd", spec=spec))) for _ in range(2)]
    with pytest.raises(CaptureError, match="the group's step cannot be captured: method crd draws random numbers"):
        StaticSteps(members, loader, None, capture=True, strict=True)


def test_require_on_the_cpu_trains_as_on(teacher, tmp_path):
    """Nothing is captured on the CPU, so nothing can fall back: ``require`` is ``on`` there."""
    train(_cfg(teacher, "train.static_step=on"), tmp_path / "on")
    train(_cfg(teacher, "train.static_step=require"), tmp_path / "require")
    a, b = _weights(tmp_path / "on"), _weights(tmp_path / "require")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="train.static_step must be auto, on, off or require"):
        _cfg(teacher, "train.static_step=always")
