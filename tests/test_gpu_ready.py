"""What a GPU run relies on, proved on the CPU: no host synchronisation in any training step, a
failed capture that leaves a working eager step, refusals that avoid a failed capture, resume
across layouts, honest bench fields, and the GPU check's time budget."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rld.config import resolve
from rld.data import ArraySplit, DeviceLoader, build_data
from rld.engine import train
from rld.engine.batched import GroupStep
from rld.engine.distributed import World
from rld.engine.loop import Member, group_step
from rld.engine.static import StaticSteps
from rld.engine.syncs import HostSyncCounter
from rld.engine.teacher import TeacherForward, build_teacher_fn
from rld.engine.trainer import Run, prepare_out_dir
from rld.errors import UserError
from rld.fast.cache import open_teacher_cache
from rld.losses import value_checks
from rld.models import create_model

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["vanilla", "kd", "dkd", "rld", "la", "rc", "lr", "ctkd"]


def _cfg(method: str, teacher: Path, *extra: str):
    """``method`` on the digits with resnet8 student and teacher (CIFAR presets give the published values)."""
    common = ["train.channels_last=false", "train.batch_size=32", "model.student=resnet8"]
    if method == "vanilla":
        return resolve("demo/vanilla", [*common, *extra])
    source = f"demo/{method}" if method in ("kd", "dkd", "rld") else f"cifar100/resnet56-resnet20/{method}"
    digits = [] if source.startswith("demo") else ["data.name=digits", "train.lr=0.05", "train.epochs=10"]
    return resolve(source, [*common, *digits, "model.teacher=resnet8", f"model.teacher_checkpoint={teacher}", *extra])


def _run(cfg, out: Path) -> Run:
    prepare_out_dir(out, resume=False)
    return Run(cfg, out, world=World(), device=torch.device("cpu"), num_classes=10, resume_from=None, resume=False)


@pytest.fixture(scope="module")
def digits():
    return build_data("digits", None, batch_size=32, eval_batch_size=512, device="cpu", seed=0)


@pytest.mark.parametrize("method", METHODS)
def test_no_host_sync_in_a_step_of_any_method_plain_or_static(method, teacher, digits, tmp_path):
    cfg = _cfg(method, teacher)
    run = _run(cfg, tmp_path / "plain")
    teacher_fn = build_teacher_fn(cfg, 10, torch.device("cpu")) if run.needs_teacher else None
    batch = next(iter(digits.train))
    run.begin_epoch(1)
    with value_checks(False), HostSyncCounter(fail=True):
        for _ in range(2):
            run.step(batch, teacher_fn(batch) if teacher_fn else None, 1)
    static_run = _run(cfg, tmp_path / "static")
    static = StaticSteps([Member(static_run)], digits.train, teacher_fn, capture=False)
    static_run.begin_epoch(1)
    static.start_epoch(1)
    counter = HostSyncCounter(fail=True)
    with value_checks(False), counter:
        for size in static.batch_sizes()[:2]:
            static.step(size)
    assert static_run.steps == 2 and counter.events == []


def test_no_host_sync_in_a_sweep_step_or_with_cached_teacher_logits(teacher, digits, tmp_path):
    runs = [_run(_cfg("rld", teacher, f"method.beta={b}"), tmp_path / f"b{b}") for b in (2, 8)]
    cfg = runs[0].cfg
    teacher_fn = build_teacher_fn(cfg, 10, torch.device("cpu"))
    members = [Member(r, torch.get_rng_state()) for r in runs]
    batch = next(iter(digits.train))
    for r in runs:
        r.begin_epoch(1)
    with value_checks(False), HostSyncCounter(fail=True):
        group_step(members, batch, teacher_fn, 1)
    # the same runs with their students stacked (rld.engine.batched; CTKD's trainable temperature too)
    runs.append(_run(_cfg("ctkd", teacher), tmp_path / "ctkd"))
    runs[-1].begin_epoch(1)
    members.append(Member(runs[-1], torch.get_rng_state()))
    stepper = GroupStep(members, batched=True)
    assert stepper.stacked == 3
    with value_checks(False), HostSyncCounter(fail=True):
        group_step(members, batch, teacher_fn, 1, stepper)
    assert [r.steps for r in runs] == [2, 2, 1]
    # a full teacher-logit cache of a tiny data set: lookups on the device only
    rng = np.random.default_rng(0)
    split = ArraySplit(rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 6).astype(np.int64))
    loader = DeviceLoader(split, 4, device="cpu", mean=(0.5,) * 3, std=(0.25,) * 3, train=True, flip=True)
    cached_cfg = resolve("demo/rld", ["train.teacher_cache=full", f"train.cache_dir={tmp_path / 'cache'}"])
    forward = TeacherForward(create_model("resnet8", num_classes=10).eval().requires_grad_(False), amp=False)
    provider = open_teacher_cache(cached_cfg, forward, loader, 10)
    run = _run(_cfg("rld", teacher), tmp_path / "cached")
    static = StaticSteps([Member(run)], loader, provider, capture=False)
    run.begin_epoch(1)
    static.start_epoch(1)
    with value_checks(False), HostSyncCounter(fail=True):
        for size in static.batch_sizes():
            static.step(size)
    assert run.steps == 2
    # two seeds' streams in one static step, the students stacked across them, one lookup for both batches
    pair = [_run(_cfg("rld", teacher, f"method.beta={b}"), tmp_path / f"seeds{b}") for b in (2, 8)]
    members = [Member(pair[0], stream=0), Member(pair[1], stream=1)]
    static = StaticSteps(members, [loader, loader.with_seed(1)], provider, capture=False, batched=True)
    assert static.stepper.stacked == 2
    for r in pair:
        r.begin_epoch(1)
    static.start_epoch(1)
    with value_checks(False), HostSyncCounter(fail=True):
        for size in static.batch_sizes():
            static.step(size)
    assert [r.steps for r in pair] == [2, 2]


def test_the_guard_sees_a_host_read(teacher, digits, tmp_path):
    """The value checks of the losses read the host (on CPU tensors): the guard must notice."""
    cfg = _cfg("rld", teacher)
    run = _run(cfg, tmp_path / "run")
    teacher_fn = build_teacher_fn(cfg, 10, torch.device("cpu"))
    batch = next(iter(digits.train))
    run.begin_epoch(1)
    counter = HostSyncCounter()
    with counter:
        run.step(batch, teacher_fn(batch), 1)
    assert counter.events and set(counter.events) == {"aten._local_scalar_dense (.item(), bool(), int(), .tolist())"}
    with pytest.raises(AssertionError, match="host synchronisation in a training step"):
        with HostSyncCounter(fail=True):
            torch.ones(2).sum().item()


def test_a_failed_capture_leaves_a_working_eager_step(teacher, tmp_path, caplog):
    """A capture that fails (simulated: the CPU cannot capture) is logged once with its cause, and
    the run goes on eagerly: the same training as the plain loop."""
    over = ["train.epochs=1", "train.batch_size=256", "data.eval_batch_size=512"]
    plain = _cfg("rld", teacher, *over, "train.static_step=off")
    train(plain, tmp_path / "plain")

    @contextlib.contextmanager
    def failing(self, graph):
        raise RuntimeError("operation not permitted when stream is capturing (simulated)")
        yield

    original_init = StaticSteps.__init__

    def capturing_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.capture = True  # as on CUDA: warm-up steps, then a capture attempt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StaticSteps, "__init__", capturing_init)
        mp.setattr(StaticSteps, "_new_graph", staticmethod(lambda: object()))
        mp.setattr(StaticSteps, "_capturing", failing)
        with caplog.at_level(logging.WARNING, logger="rld"):
            train(_cfg("rld", teacher, *over, "train.static_step=on"), tmp_path / "static")
    warnings = [r.getMessage() for r in caplog.records if "CUDA graph" in r.getMessage()]
    assert warnings == [
        "could not capture the training step (batch 256) as a CUDA graph (RuntimeError: operation not "
        "permitted when stream is capturing (simulated)); running it eagerly"
    ]
    a = torch.load(tmp_path / "plain/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "static/checkpoints/last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    assert a["history"][0]["steps"] == b["history"][0]["steps"] == 6


def test_static_step_on_with_a_lazy_cache_is_refused(teacher, tmp_path):
    cfg = _cfg("rld", teacher, "train.static_step=on", "train.teacher_cache=lazy", f"train.cache_dir={tmp_path}")
    with pytest.raises(UserError, match="train.static_step=on cannot run with train.teacher_cache=lazy"):
        train(cfg, tmp_path / "run")


def test_resume_with_another_layout_gives_momentum_buffers_their_parameters_layout(tmp_path):
    over = ["train.epochs=2", "train.batch_size=256", "data.eval_batch_size=512"]
    train(resolve("demo/vanilla", [*over, "train.channels_last=false", "train.epochs=1"]), tmp_path / "run")
    resumed = resolve("demo/vanilla", [*over, "train.channels_last=true"])  # an execution key: accepted
    run = Run(
        resumed,
        tmp_path / "run",
        world=World(),
        device=torch.device("cpu"),
        num_classes=10,
        resume_from=tmp_path / "run/checkpoints/last.pt",
        resume=True,
    )
    convs = [p for p in run.student.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    for p in convs:
        buf = run.optimizer.state[p]["momentum_buffer"]
        assert buf.stride() == p.stride()


def test_gpu_check_skips_what_does_not_fit_its_budget_and_says_so(tmp_path, capsys):
    """A budget that only the cheapest section fits: the others are skipped with their estimate and
    the seconds left, in the JSON and in the printed progress. (The whole check, every section
    measured, runs in tests/test_gpu_run.py.)"""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    sections = ["equality", "host_syncs", "bench", "stacked", "cache_build"]
    assert list(gpu_check.ESTIMATE_S) == sections
    small = {name: e["small"] for name, e in gpu_check.ESTIMATE_S.items()}
    assert small["cache_build"] < 3 <= min(v for k, v in small.items() if k != "cache_build")
    out = tmp_path / "gpu_check.json"
    report = gpu_check.main(["--device", "cpu", "--small", "--budget-s", "3", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(report, default=str)) and written["budget_s"] == 3
    for name in sections[:-1]:
        assert re.fullmatch(rf"needs ~{small[name]} s, [0-2] s left of the budget", written[name]["skipped"]), name
        assert set(written[name]) == {"skipped"} and f"{name}_seconds" not in written
    assert written["cache_build"]["sample_views"] == 32 and written["cache_build_seconds"] > 0
    printed = capsys.readouterr().out
    assert f"] equality: skipped (needs ~{small['equality']} s, " in printed
    assert f"] cache_build: start (~{small['cache_build']} s)" in printed and "] cache_build: done in " in printed
    targets = written["targets"]
    assert set(targets) == {"default_ms_per_step", "cached_ms_per_step", "sweep_16_speedup_vs_separate_cached"}
    assert all(t["measured"] is None and t["met"] is None for t in targets.values())
