"""``rld bench`` (rld.fast.bench) pinned piece by piece, to the values its report relies on.

* ``run_bench``: which options it refuses (each bound, with its message) and accepts; the sweep sizes
  it plans by default on the CPU and on a (simulated) GPU; what each path is built from (its runs and
  their folders in the bench's ``rld-bench-`` temporary folder, loader, teacher provider, static /
  stacked / seeds / strict flags), the teacher copies (the conventional path's float32 default
  layout, the project's layout and precision), the cache it fills, and the whole report, for a
  method whose teacher logits are cached and for one that reads the teacher's features.
* ``_results``: medians, round medians, speed-ups and per-student figures from given step times;
  ``format_report``'s table; ``planned_entries`` across epochs; ``_filled_cache``; ``_bench_data``;
  ``resolve_cache_cfg``; the conventional path's loader, models and step; the device paths' defaults,
  seeds' streams, static steps and steps; ``available_cores``, ``_sync`` and ``_losses_compiled``.

No test needs a GPU: the GPU cases replace the device-bound parts with recorders.
"""

from __future__ import annotations

import dataclasses
import inspect
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import rld.fast.bench as bench
from conftest import TickingClock
from rld.data import CIFAR100_MEAN, CIFAR100_STD, ArraySplit, DeviceLoader
from rld.engine.batched import GroupStep
from rld.engine.distributed import World
from rld.engine.static import StaticSteps
from rld.engine.teacher import TeacherForward
from rld.engine.trainer import Run
from rld.errors import UserError
from rld.fast.cache import CachedTeacher
from rld.models import create_model

STEPS_MESSAGE = "--steps, --rounds and --batch-size must be >= 1, --warmup and --workers >= 0"
WEIGHTS = "random initialisation (step times do not depend on the values)"
CUDA_ONLY = {"measured": False, "reason": "measured on CUDA only (see rld.fast.bench)"}
NEEDS_CACHE = {"measured": False, "reason": "needs the teacher-logit cache"}


class _Reached(Exception):
    """Raised by a stand-in to stop run_bench where a test has seen what it checks."""


def _opts(**over) -> bench.BenchOptions:
    base = dict(pair="resnet8:resnet8", batch_size=8, synthetic_size=64, steps=1, warmup=0, rounds=1, workers=0)
    return bench.BenchOptions(**(base | over))


def _with_train(monkeypatch, **train) -> list:
    """bench._config with ``train`` fields replaced; returns the configurations it gave."""
    real, given = bench._config, []

    def config(opts):
        cfg = real(opts)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))
        given.append(cfg)
        return cfg

    monkeypatch.setattr(bench, "_config", config)
    return given


def _record_tmp(monkeypatch) -> list:
    """The bench's temporary folders: (keywords, path) of each."""
    made = []

    class Tmp(tempfile.TemporaryDirectory):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            made.append((kwargs, Path(self.name)))

    monkeypatch.setattr(bench, "tempfile", SimpleNamespace(TemporaryDirectory=Tmp))
    return made


def _bound(cls, *args, **kwargs) -> dict:
    """The arguments of ``cls(*args, **kwargs)`` by name, defaults included."""
    sig = inspect.signature(cls.__init__)
    bound = sig.bind(None, *args, **kwargs)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k != "self"}


def _stem(model: torch.nn.Module) -> torch.Tensor:
    """The first convolution's weight (3x3 over the 3 image channels)."""
    return next(p for p in model.parameters() if p.dim() == 4)


# ----------------------------------------------------------------------------- what run_bench refuses


@pytest.mark.parametrize(
    "field, value",
    [("steps", 0), ("warmup", -1), ("rounds", 0), ("batch_size", 0), ("workers", -1)],
)
def test_each_option_out_of_range_is_refused_alone(monkeypatch, field, value):
    """Every bound is checked on its own: one value out of range, the others valid, is refused."""
    monkeypatch.setattr(bench, "as_device", lambda device: pytest.fail("refused options must not go further"))
    valid = {"steps": 3, "warmup": 2, "rounds": 2, "batch_size": 8, "workers": 2}
    with pytest.raises(UserError) as err:
        bench.run_bench(_opts(**(valid | {field: value})))
    assert str(err.value) == STEPS_MESSAGE


def test_the_smallest_valid_options_are_accepted(monkeypatch):
    """steps, rounds and batch size of 1, no warm-up and no workers pass the checks."""
    seen = []

    def as_device(device):
        seen.append(device)
        raise _Reached

    monkeypatch.setattr(bench, "as_device", as_device)
    with pytest.raises(_Reached):
        bench.run_bench(_opts(steps=1, warmup=0, rounds=1, batch_size=1, workers=0))
    assert seen == ["cpu"]


def test_cuda_without_a_gpu_is_refused(monkeypatch):
    """--device cuda on a machine without CUDA stops before anything is built, with a hint."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench, "_config", lambda opts: pytest.fail("refused before the configuration"))
    with pytest.raises(UserError) as err:
        bench.run_bench(_opts(device="cuda"))
    assert str(err.value) == "--device cuda but no CUDA device is available; use --device cpu"


def _stop_at_the_models(monkeypatch) -> None:
    def create_model(*args, **kwargs):
        raise _Reached

    monkeypatch.setattr(bench, "create_model", create_model)


def _simulate_cuda(monkeypatch) -> list:
    """torch.cuda.is_available() True and the process set-up recorded instead of run."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    set_up = []
    monkeypatch.setattr(bench, "setup", lambda cfg, world: set_up.append(cfg))
    return set_up


@pytest.mark.parametrize(
    "seeds, sizes, message",
    [
        (0, (), "--sweep-seeds must be >= 1 and divide every sweep size, got 0 for ()"),
        (2, (3,), "--sweep-seeds must be >= 1 and divide every sweep size, got 2 for (3,)"),
        (2, (4, 6, 3), "--sweep-seeds must be >= 1 and divide every sweep size, got 2 for (4, 6, 3)"),
    ],
)
def test_sweep_seeds_below_one_or_not_dividing_a_size_are_refused(monkeypatch, seeds, sizes, message):
    """Fewer than one seed, or a number of seeds that leaves a remainder for one of the sizes."""
    _stop_at_the_models(monkeypatch)
    with pytest.raises(UserError) as err:
        bench.run_bench(_opts(sweep_sizes=sizes, sweep_seeds=seeds))
    assert str(err.value) == message


@pytest.mark.parametrize("seeds, sizes", [(1, (3,)), (1, ()), (3, None), (2, (4, 6))])
def test_sweep_seeds_of_one_or_dividing_every_size_are_accepted_on_the_cpu(monkeypatch, seeds, sizes):
    """On the CPU no sweep is planned by default, so any number of seeds divides the sizes."""
    _stop_at_the_models(monkeypatch)
    with pytest.raises(_Reached):
        bench.run_bench(_opts(sweep_sizes=sizes, sweep_seeds=seeds))


def test_on_a_gpu_sweeps_of_4_and_16_are_planned_by_default(monkeypatch):
    """The default sizes on CUDA show in the refusal of 3 seeds: (4, 16); 2 seeds divide them."""
    _simulate_cuda(monkeypatch)
    _stop_at_the_models(monkeypatch)
    with pytest.raises(UserError) as err:
        bench.run_bench(_opts(device="cuda", sweep_seeds=3))
    assert str(err.value) == "--sweep-seeds must be >= 1 and divide every sweep size, got 3 for (4, 16)"
    with pytest.raises(_Reached):
        bench.run_bench(_opts(device="cuda", sweep_seeds=2))


# ----------------------------------------------------------------------------- _results


class _P:
    """A measured path as _results reads it: ``captured`` (absent: None) and the stacked students."""

    def __init__(self, captured=None, stacked=None):
        if captured is not None:
            self.captured = captured
        if stacked is not None:
            self.stepper = SimpleNamespace(stacked=stacked)


def test_results_of_a_cached_method_with_a_sweep_of_4_over_2_seeds():
    """Medians over all steps and per round, captured flags, speed-ups against the conventional path,
    the cache figures, and per sweep its students, seeds and speed-ups; a sweep of 16 not measured."""
    times = {
        "conventional": [[30.0, 10.0, 20.0], [40.0, 50.0, 60.0]],
        "default_eager": [[7.0, 7.0], [7.0, 14.0]],
        "default": [[5.0], [5.0]],
        "cached": [[3.0, 4.0], [3.5, 3.5]],
        "sweep_4": [[10.0], [10.0]],
        "sweep_4_one_by_one": [[16.0], [16.0]],
        "sweep_4_seeds": [[8.0], [8.0]],
    }
    paths = {
        "conventional": _P(),
        "default_eager": _P(False),
        "default": _P(True),
        "cached": _P(True),
        "sweep_4": _P(True, 4),
        "sweep_4_one_by_one": _P(False, 0),
        "sweep_4_seeds": _P(True, 4),
    }
    cache = {"cache_build_s": 1.5, "cache_entries": 64, "cache_open_s": 0.25}
    opts = bench.BenchOptions(method="rld", sweep_seeds=2)
    results = bench._results(times, paths, opts, (4,), "sweep_{}_one_by_one", cache)
    assert results == {
        "conventional": {"ms_per_step": 35.0, "round_medians_ms": [20.0, 50.0], "captured": False},
        "default_eager": {
            "ms_per_step": 7.0,
            "round_medians_ms": [7.0, 10.5],
            "captured": False,
            "speedup_vs_conventional": 5.0,
        },
        "default": {
            "ms_per_step": 5.0,
            "round_medians_ms": [5.0, 5.0],
            "captured": True,
            "speedup_vs_conventional": 7.0,
        },
        "cached": {
            "ms_per_step": 3.5,
            "round_medians_ms": [3.5, 3.5],
            "captured": True,
            "speedup_vs_conventional": 10.0,
            "cache_build_s": 1.5,
            "cache_entries": 64,
            "cache_open_s": 0.25,
        },
        "sweep_4": {
            "ms_per_step": 10.0,
            "round_medians_ms": [10.0, 10.0],
            "captured": True,
            "students_stacked": 4,
            "students": 4,
            "seeds": 1,
            "ms_per_student_step": 2.5,
            "speedup_vs_separate_cached": 1.4,
            "speedup_vs_default": 2.0,
        },
        "sweep_4_one_by_one": {
            "ms_per_step": 16.0,
            "round_medians_ms": [16.0, 16.0],
            "captured": False,
            "students_stacked": 0,
            "students": 4,
            "seeds": 1,
            "ms_per_student_step": 4.0,
            "speedup_vs_separate_cached": 0.875,
            "speedup_vs_default": 1.25,
        },
        "sweep_4_seeds": {
            "ms_per_step": 8.0,
            "round_medians_ms": [8.0, 8.0],
            "captured": True,
            "students_stacked": 4,
            "students": 4,
            "seeds": 2,
            "ms_per_student_step": 2.0,
            "speedup_vs_separate_cached": 1.75,
            "speedup_vs_default": 2.5,
        },
        "sweep_16": CUDA_ONLY,
    }


def test_results_of_one_seed_have_no_seeds_sweep():
    """With one seed only the sweep and its other way are reported; the size-4 sweep is the one missing."""
    times = {name: [[4.0]] for name in ("conventional", "default", "cached", "sweep_16", "sweep_16_stacked")}
    paths = {"conventional": _P(), "default": _P(), "cached": _P(), "sweep_16": _P(None, 0)}
    paths["sweep_16_stacked"] = _P(None, 16)
    results = bench._results(times, paths, bench.BenchOptions(), (16,), "sweep_{}_stacked", {"cache_entries": 1})
    assert results["sweep_4"] == CUDA_ONLY
    assert results["sweep_16"] == {
        "ms_per_step": 4.0,
        "round_medians_ms": [4.0],
        "captured": False,
        "students_stacked": 0,
        "students": 16,
        "seeds": 1,
        "ms_per_student_step": 0.25,
        "speedup_vs_separate_cached": 16.0,
        "speedup_vs_default": 16.0,
    }
    assert results["sweep_16_stacked"]["students_stacked"] == 16
    assert list(results) == ["conventional", "default", "cached", "sweep_16", "sweep_16_stacked", "sweep_4"]


def test_results_of_a_method_reading_teacher_features_report_no_cache_and_no_sweeps():
    """No cache: ``cached`` says why, and every sweep size (asked for or not) needs the cache."""
    times = {"conventional": [[9.0]], "default_eager": [[6.0]], "default": [[3.0]]}
    paths = {"conventional": _P(), "default_eager": _P(False), "default": _P(False)}
    opts = bench.BenchOptions(method="at", sweep_seeds=2)
    results = bench._results(times, paths, opts, (4, 16), "sweep_{}_one_by_one", None)
    assert results == {
        "conventional": {"ms_per_step": 9.0, "round_medians_ms": [9.0], "captured": False},
        "default_eager": {
            "ms_per_step": 6.0,
            "round_medians_ms": [6.0],
            "captured": False,
            "speedup_vs_conventional": 1.5,
        },
        "default": {"ms_per_step": 3.0, "round_medians_ms": [3.0], "captured": False, "speedup_vs_conventional": 3.0},
        "cached": {
            "measured": False,
            "reason": "method at reads the teacher's features, which the teacher-logit cache does not hold",
        },
        "sweep_4": NEEDS_CACHE,
        "sweep_16": NEEDS_CACHE,
    }


# ----------------------------------------------------------------------------- format_report


def test_the_table_shows_speed_ups_cuda_graphs_sweeps_and_the_cache():
    """Every kind of row: no speed-up, a row not measured between measured ones, a CUDA graph,
    sweeps of one and of two seeds (two notes joined), and the cache line."""
    report = {
        "device_name": "GPU X",
        "torch": "2.5",
        "data": "synthetic",
        "results": {
            "conventional": {"ms_per_step": 35.0, "captured": False},
            "default": {"ms_per_step": 5.0, "captured": True, "speedup_vs_conventional": 7.0},
            "cached": {
                "ms_per_step": 3.5,
                "captured": False,
                "speedup_vs_conventional": 10.0,
                "cache_entries": 64,
                "cache_build_s": 1.25,
                "cache_open_s": 0.04,
            },
            "sweep_16": {"measured": False, "reason": "measured on CUDA only (see rld.fast.bench)"},
            "sweep_4": {
                "ms_per_step": 10.0,
                "captured": True,
                "students": 4,
                "seeds": 1,
                "students_stacked": 4,
                "speedup_vs_separate_cached": 1.4,
            },
            "sweep_4_seeds": {
                "ms_per_step": 8.0,
                "captured": False,
                "students": 4,
                "seeds": 2,
                "students_stacked": 0,
                "speedup_vs_separate_cached": 1.75,
            },
        },
    }
    assert bench.format_report(report).split("\n") == [
        "GPU X · torch 2.5 · synthetic",
        "path                   ms/step  x conventional",
        "conventional              35.0 ",
        "default                    5.0           7.00x  (CUDA graph)",
        "cached                     3.5          10.00x",
        "sweep_16                     —  (measured on CUDA only (see rld.fast.bench))",
        "sweep_4                   10.0   (CUDA graph; 4 students, 4 stacked: 1.4x the student-steps/s of one"
        " cached run)",
        "sweep_4_seeds              8.0   (4 students over 2 seeds, 0 stacked: 1.8x the student-steps/s of one"
        " cached run)",
        "cache: 64 entries built in 1.2s (opened in 0.0s)",
    ]


# ----------------------------------------------------------------------------- planned_entries, the cache


def _loader(n: int = 20, seed: int = 0) -> DeviceLoader:
    data = bench.synthetic_cifar(n, num_classes=10)
    return DeviceLoader(
        data.train, 8, device="cpu", mean=CIFAR100_MEAN, std=CIFAR100_STD, train=True, flip=True, seed=seed
    )


def test_planned_entries_take_full_batches_epoch_after_epoch():
    """20 images in batches of 8: two full batches an epoch (the last 4 images never), so 5 batches
    are epochs 0 and 1 whole and the first batch of epoch 2."""
    loader = _loader()
    (i0, v0), (i1, v1), (i2, v2) = (loader.epoch_plan(e) for e in range(3))
    idx, views = bench.planned_entries(loader, 5)
    assert torch.equal(idx, torch.cat([i0[:16], i1[:16], i2[:8]]))
    assert torch.equal(views, torch.cat([v0[:16], v1[:16], v2[:8]]))
    idx, views = bench.planned_entries(loader, 1)
    assert torch.equal(idx, i0[:8]) and torch.equal(views, v0[:8])
    idx, views = bench.planned_entries(loader, 3)
    assert torch.equal(idx, torch.cat([i0[:16], i1[:8]])) and torch.equal(views, torch.cat([v0[:16], v1[:8]]))


def test_resolve_cache_cfg_asks_for_a_lazy_float16_cache_of_the_bench_data_in_the_folder(tmp_path):
    """Whatever cache the configuration asks for (here a full float32 one elsewhere), the bench's is lazy,
    float16 and in its folder; only those settings and the data name (part of the cache folder's
    name) change."""
    cfg = bench._config(_opts())
    train = dataclasses.replace(cfg.train, teacher_cache="full", cache_dir="/elsewhere", cache_precision="float32")
    cfg = dataclasses.replace(cfg, train=train)
    out = bench.resolve_cache_cfg(cfg, tmp_path / "c")
    assert (out.train.teacher_cache, out.train.cache_dir, out.train.cache_precision) == (
        "lazy",
        str(tmp_path / "c"),
        "float16",
    )
    assert out.data.name == "bench" and cfg.data.name == "cifar100"
    assert dataclasses.replace(out, train=cfg.train, data=cfg.data) == cfg  # nothing else changes
    assert dataclasses.replace(out.train, teacher_cache=cfg.train.teacher_cache, cache_dir=cfg.train.cache_dir,
                               cache_precision=cfg.train.cache_precision) == cfg.train  # fmt: skip
    assert dataclasses.replace(out.data, name="cifar100") == cfg.data


def test_the_filled_cache_holds_every_seeds_plan_and_looks_up_without_a_teacher(tmp_path, monkeypatch):
    """The entries of the first batches of seeds 0, 1 and 2 are all filled; the figures count the
    entries of seed 0's plan and time opening and filling (one tick each); the provider it returns
    never computes (no teacher, not lazy) and reads the bench's loader."""
    monkeypatch.setattr(bench, "time", TickingClock())
    loader = _loader()
    cfg = bench.resolve_cache_cfg(bench._config(_opts()), tmp_path / "cache")
    torch.manual_seed(0)
    forward = TeacherForward(create_model("resnet8", num_classes=10).eval().requires_grad_(False), amp=False)
    lookup, figures = bench._filled_cache(cfg, forward, loader, 10, 3, 3)
    idx, views = bench.planned_entries(loader, 3)
    assert figures == {
        "cache_build_s": 1.0,
        "cache_entries": len(set(zip(idx.tolist(), views.tolist()))),
        "cache_open_s": 1.0,
    }
    assert isinstance(lookup, CachedTeacher)
    assert (lookup.forward, lookup.lazy, lookup.loader) == (None, False, loader)
    assert lookup.loader is loader
    for seed in (0, 1, 2):
        plan = bench.planned_entries(_loader(seed=seed), 3)
        assert lookup.store.missing(*plan).numel() == 0, seed
    other = bench.planned_entries(_loader(seed=3), 3)
    assert lookup.store.missing(*other).numel() > 0  # a seed the sweep does not use is not filled


def test_bench_data_is_synthetic_of_the_size_and_seed_asked_for():
    """Without --data: synthetic images of --synthetic-size and the bench's seed, and how they are described."""
    data, desc = bench._bench_data(bench.BenchOptions(synthetic_size=40, seed=3))
    expected = bench.synthetic_cifar(40, seed=3)
    assert np.array_equal(data.train.x, expected.train.x) and np.array_equal(data.train.y, expected.train.y)
    assert desc == "synthetic CIFAR-shaped random uint8 (40 images 32x32x3, 100 classes)"


def test_bench_data_reads_the_cifar100_arrays_given(monkeypatch):
    """--data: the CIFAR-100 arrays of that path, described with their size and classes."""
    loaded = bench.synthetic_cifar(24, num_classes=10)
    paths = []
    monkeypatch.setattr(bench, "load_cifar100", lambda path: paths.append(path) or loaded)
    data, desc = bench._bench_data(bench.BenchOptions(data="/data/c100"))
    assert data is loaded and paths == ["/data/c100"]
    assert desc == "cifar100 arrays from /data/c100 (24 training images, 10 classes)"


# ----------------------------------------------------------------------------- small helpers


def test_available_cores_without_affinity_is_the_cpu_count_or_one(monkeypatch):
    """Where the OS has no CPU affinity (macOS, Windows): the CPU count, or 1 when it is unknown."""
    monkeypatch.delattr(bench.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 6)
    assert bench.available_cores() == 6
    monkeypatch.setattr(bench.os, "cpu_count", lambda: None)  # unknown
    assert bench.available_cores() == 1


def test_sync_waits_for_the_given_gpu_only(monkeypatch):
    """The cache build is timed up to the GPU's end of work: that device is synchronised, a CPU never."""
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    bench._sync(torch.device("cpu"))
    assert synced == []
    bench._sync(torch.device("cuda", 1))
    assert synced == [torch.device("cuda", 1)]


def test_the_bench_reports_the_loss_kernel_setting_for_the_device(monkeypatch):
    """settings.compiled_losses: on when compiling is enabled and has not failed on the device type."""
    from rld.losses import _fused

    monkeypatch.setattr(_fused._Compiled, "enabled", True)
    monkeypatch.setattr(_fused._Compiled, "failed", {"cuda"})
    assert bench._losses_compiled(torch.device("cpu")) is True
    assert bench._losses_compiled(torch.device("cuda")) is False  # compiling failed there
    monkeypatch.setattr(_fused._Compiled, "enabled", False)
    assert bench._losses_compiled(torch.device("cpu")) is False


# ----------------------------------------------------------------------------- the conventional path


@pytest.mark.parametrize("device, workers, pinned", [("cuda", 1, True), ("cpu", 0, False), ("cpu", 3, False)])
def test_the_conventional_loader_is_shuffled_seeded_full_batches_pinned_on_cuda(monkeypatch, device, workers, pinned):
    """The DataLoader a practitioner sets up: shuffled by a generator of the run's seed, full
    batches of the configured size, the workers kept alive across epochs, pinned memory on CUDA."""
    seen = []

    def loader(dataset, **kwargs):
        seen.append((dataset, kwargs))
        raise _Reached

    monkeypatch.setattr(bench, "DataLoader", loader)
    data = bench.synthetic_cifar(16, num_classes=10)
    cfg = bench._config(_opts(seed=5))
    with pytest.raises(_Reached):
        bench.ConventionalPath(data, cfg, None, torch.device(device), workers)
    ((dataset, kwargs),) = seen
    assert len(dataset) == 16
    generator = kwargs.pop("generator")
    assert isinstance(generator, torch.Generator) and generator.initial_seed() == 5
    assert kwargs == {
        "batch_size": 8,
        "shuffle": True,
        "num_workers": workers,
        "pin_memory": pinned,
        "drop_last": True,
        "persistent_workers": workers > 0,
    }


class _Calls:
    """A callable that records its arguments and calls ``fn``."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.fn(*args, **kwargs)


def _conventional(method: str, n: int = 16):
    data = bench.synthetic_cifar(n, num_classes=10)
    cfg = bench._config(_opts(method=method))
    torch.manual_seed(0)
    teacher = create_model("resnet8", num_classes=10).eval().requires_grad_(False)
    return bench.ConventionalPath(data, cfg, teacher, torch.device("cpu"), workers=0), data


def test_conventional_steps_give_the_method_logits_targets_epoch_1_and_indices_across_epochs():
    """16 images, batches of 8: steps 1 and 2 are one epoch (every image once), step 3 starts the
    next; each step passes the method (student, teacher, targets, 1, indices), logits only for rld,
    and the gradients are set to None before each backward pass."""
    path, data = _conventional("rld")
    method = path.method = _Calls(path.method)
    params = [p for p in path.student.parameters()]
    path.step()
    grads = [p.grad for p in params]
    assert all(g is not None for g in grads)
    path.step()
    assert all(p.grad is not g for p, g in zip(params, grads))  # new tensors, not zeroed old ones
    path.step()
    assert len(method.calls) == 3
    indices = []
    for args, kwargs in method.calls:
        assert kwargs == {} and len(args) == 5
        s, t, y, epoch, i = args
        assert epoch == 1
        assert (s.feats, t.feats, s.pooled, t.pooled) == ([], [], None, None)
        assert s.logits.shape == t.logits.shape == (8, 10)
        assert s.logits.requires_grad and not t.logits.requires_grad
        assert torch.equal(y, torch.as_tensor(data.train.y)[i])
        indices.append(i)
    assert torch.equal(torch.sort(torch.cat(indices[:2])).values, torch.arange(16))
    assert len(set(indices[2].tolist())) == 8


def test_a_conventional_step_of_a_feature_method_gives_it_both_models_features():
    path, _ = _conventional("at")
    method = path.method = _Calls(path.method)
    path.step()
    ((s, t, _, epoch, _),) = [args for args, _ in method.calls]
    stages = len(path.teacher.forward_features(torch.zeros(2, 3, 32, 32)).feats)
    assert stages > 0 and epoch == 1
    assert len(s.feats) == len(t.feats) == stages
    assert s.pooled is not None and t.pooled is not None


class _Moved:
    """A loader tensor that records where it is moved to."""

    def __init__(self, tensor, moves):
        self.tensor, self.moves = tensor, moves

    def to(self, *args, **kwargs):
        self.moves.append((args, kwargs))
        return self.tensor.to(*args, **kwargs)


def test_a_conventional_batch_moves_to_the_path_device_without_blocking():
    """Images, targets and indices go to the path's device with non-blocking copies (pinned memory on CUDA)."""
    path, _ = _conventional("rld")
    x, y, i = next(iter(path.loader))
    moves = []
    path._it = iter([(_Moved(x, moves), _Moved(y, moves), _Moved(i, moves))])
    path.step()
    assert moves == [((torch.device("cpu"),), {"non_blocking": True})] * 3


def test_the_conventional_path_builds_its_student_method_and_optimizer_on_the_device(monkeypatch):
    """On the device it is given (here "meta", where tensors have no values): the student with the
    data's classes, the method built from the context of the models, the image shape and the training
    labels (int64 whatever the arrays' integer type), and SGD with the configuration's settings.
    The images here are 24x24: the context has their shape."""
    contexts, built = [], []
    real_context, real_build = bench.MethodContext, bench.build_method
    monkeypatch.setattr(bench, "MethodContext", lambda *a, **k: contexts.append(real_context(*a, **k)) or contexts[-1])
    monkeypatch.setattr(bench, "build_method", lambda *args: built.append(args) or real_build(*args))
    data = bench.synthetic_cifar(16, num_classes=10)
    small = np.ascontiguousarray(data.train.x[:, :24, :24])
    data = dataclasses.replace(data, train=ArraySplit(small, data.train.y.astype(np.int32)))
    cfg = bench._config(_opts(method="ctkd", seed=5))
    meta = torch.device("meta")
    teacher = create_model("resnet8", num_classes=10).to(meta).eval().requires_grad_(False)
    path = bench.ConventionalPath(data, cfg, teacher, meta, 0)
    assert {p.device for p in path.student.parameters()} == {meta}
    assert {p.device for p in path.method.parameters()} == {meta}  # ctkd learns its temperature
    assert path.student.training and path.student(torch.zeros(2, 3, 32, 32, device=meta)).shape == (2, 10)
    (context,) = contexts
    assert (context.student, context.teacher) == (path.student, teacher)
    assert context.student is path.student and context.teacher is teacher
    targets = context.train_targets
    assert (targets.dtype, targets.device, targets.shape) == (torch.int64, meta, (16,))
    assert (context.num_classes, context.input_shape, context.num_samples, context.seed) == (10, (3, 24, 24), 16, 5)
    ((method_cfg, built_context),) = built
    assert method_cfg is cfg.method and built_context is context
    t = cfg.train
    assert {k: path.optimizer.defaults[k] for k in ("lr", "momentum", "weight_decay")} == {
        "lr": t.lr,
        "momentum": t.momentum,
        "weight_decay": t.weight_decay,
    }
    assert (t.lr, t.momentum, t.weight_decay) == (0.05, 0.9, 5e-4)


# ----------------------------------------------------------------------------- the device paths


@pytest.fixture
def device_runs(tmp_path):
    """make(count): runs of rld resnet8 on 20 images (batches of 8) as run_bench makes them, the loader and forward."""
    cfg = bench._config(_opts())
    loader = _loader()
    torch.manual_seed(0)
    teacher = create_model("resnet8", num_classes=10).eval().requires_grad_(False)
    forward = TeacherForward(teacher, amp=False)
    made = []

    def make(count: int) -> list[Run]:
        runs = []
        for _ in range(count):
            out = tmp_path / f"r{len(made)}"
            run = Run(cfg, out, world=World(), device=torch.device("cpu"), num_classes=10, resume_from=None,
                      resume=False, teacher=teacher, input_shape=(3, 32, 32), labels=loader.labels)  # fmt: skip
            made.append(run)
            runs.append(run)
        return runs

    return SimpleNamespace(make=make, loader=loader, forward=forward)


def test_a_device_path_by_default_steps_its_runs_eagerly_one_after_another_on_one_stream(device_runs):
    """Defaults: no static step, students not stacked, one data stream (the loader given); each run
    starts epoch 1 and keeps its own copy of the RNG state taken when the path was made."""
    runs, loader = device_runs.make(2), device_runs.loader
    state = torch.get_rng_state()
    path = bench.DevicePath(loader, runs, device_runs.forward)
    assert path.static is None and path.captured is False
    assert isinstance(path.stepper, GroupStep) and path.stepper.stacked == 0
    assert len(path.loaders) == 1 and path.loaders[0] is loader
    assert [m.run for m in path.members] == runs and [m.stream for m in path.members] == [0, 0]
    assert all(torch.equal(m.rng, state) for m in path.members)
    assert [r.epoch for r in runs] == [1, 1]


def test_a_device_path_over_seeds_gives_each_run_the_stream_of_its_seed(device_runs):
    """Four runs over two seeds: runs 0, 1 on the loader (seed 0), runs 2, 3 on its copy of seed 1."""
    runs, loader = device_runs.make(4), device_runs.loader
    path = bench.DevicePath(loader, runs, device_runs.forward, batched=True, seeds=2)
    assert [x.seed for x in path.loaders] == [0, 1] and path.loaders[0] is loader
    assert [m.stream for m in path.members] == [0, 0, 1, 1]
    assert path.stepper.stacked == 4


def test_a_static_device_path_on_the_cpu_steps_through_static_steps(device_runs):
    """static: the StaticSteps of the members, loaders and teacher provider, stacked as asked, strict
    only when asked; the path steps with its stepper; nothing is captured on the CPU."""
    runs, loader = device_runs.make(2), device_runs.loader
    path = bench.DevicePath(loader, runs, device_runs.forward, static=True, batched=True, strict=True)
    assert isinstance(path.static, StaticSteps) and path.captured is False
    assert path.static.teacher_fn is device_runs.forward and path.static.strict is True
    assert path.stepper is path.static.stepper and path.stepper.stacked == 2
    assert path.static.loaders == [loader]
    other = bench.DevicePath(loader, device_runs.make(2), device_runs.forward, static=True)
    assert other.static.strict is False and other.stepper.stacked == 0


def test_an_eager_device_path_step_hands_the_next_full_batch_to_its_stepper_at_epoch_1(device_runs):
    """Each step: one call of the path's own stepper with the loader's next full batch (the partial
    last batch of 4 skipped), the teacher's logits on it and epoch 1."""
    runs, loader = device_runs.make(2), device_runs.loader
    path = bench.DevicePath(loader, runs, device_runs.forward, batched=True)
    stepper = path.stepper = _Calls(path.stepper)
    for _ in range(3):
        path.step()
    assert len(stepper.calls) == 3
    plans = [loader.epoch_plan(e)[0] for e in (0, 1)]
    expected = [plans[0][:8], plans[0][8:16], plans[1][:8]]
    for (args, kwargs), indices in zip(stepper.calls, expected):
        batches, teachers, epoch = args
        assert kwargs == {} and epoch == 1 and len(batches) == len(teachers) == 1
        assert torch.equal(batches[0].indices, indices)
        assert teachers[0].shape == (8, 10)


# ----------------------------------------------------------------------------- run_bench on the CPU


@pytest.fixture
def recorded(monkeypatch):
    """run_bench on the CPU with its parts recorded (each still the real one) and a clock of 1 s a reading."""
    rec = SimpleNamespace(loaders=[], runs=[], device_paths=[], conventional=[], filled=[], compiled=[])
    rec.tmp = _record_tmp(monkeypatch)
    monkeypatch.setattr(bench, "time", TickingClock())
    real_loader, real_run, real_path = bench.DeviceLoader, bench.Run, bench.DevicePath
    real_conventional, real_filled, real_compiled = bench.ConventionalPath, bench._filled_cache, bench._losses_compiled

    class Loader(real_loader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            rec.loaders.append(self)

    class Run(real_run):
        def __init__(self, cfg, out, **kwargs):
            rec.runs.append(SimpleNamespace(cfg=cfg, out=out, kw=kwargs, ready=(out / "checkpoints").is_dir()))
            super().__init__(cfg, out, **kwargs)

    class Path_(real_path):
        def __init__(self, *args, **kwargs):
            rec.device_paths.append(_bound(real_path, *args, **kwargs))
            super().__init__(*args, **kwargs)

    class Conventional(real_conventional):
        def __init__(self, *args, **kwargs):
            rec.conventional.append(_bound(real_conventional, *args, **kwargs))
            super().__init__(*args, **kwargs)
            rec.conventional[-1]["path"] = self

    def filled(*args):
        out = real_filled(*args)
        rec.filled.append((args, out))
        return out

    monkeypatch.setattr(bench, "DeviceLoader", Loader)
    monkeypatch.setattr(bench, "Run", Run)
    monkeypatch.setattr(bench, "DevicePath", Path_)
    monkeypatch.setattr(bench, "ConventionalPath", Conventional)
    monkeypatch.setattr(bench, "_filled_cache", filled)
    monkeypatch.setattr(bench, "_losses_compiled", lambda device: rec.compiled.append(device) or real_compiled(device))
    return rec


def _check_runs_and_teachers(rec, cfg, tmp: Path, tags: list[str], num_classes: int) -> None:
    """Each run: the bench's configuration, its folder (checkpoints made) in the temporary folder,
    the project teacher, the image shape and the labels of the bench's loader; the conventional
    path's teacher a separate float32 copy in the default layout."""
    (conv,) = rec.conventional
    forward = rec.device_paths[0]["teacher_fn"]
    assert isinstance(forward, TeacherForward)
    project = forward.teacher
    assert [r.out for r in rec.runs] == [tmp / tag for tag in tags]
    for r in rec.runs:
        assert r.cfg is cfg and r.ready, r.out
        assert isinstance(r.kw.pop("world"), World) and r.kw.pop("labels") is rec.loaders[0].labels
        assert r.kw.pop("teacher") is project
        assert r.kw == {
            "device": torch.device("cpu"),
            "num_classes": num_classes,
            "resume_from": None,
            "resume": False,
            "input_shape": (3, 32, 32),
        }
    teacher = conv["teacher"]
    assert teacher is not project and not teacher.training and not project.training
    assert not any(p.requires_grad for p in [*teacher.parameters(), *project.parameters()])
    assert teacher(torch.zeros(2, 3, 32, 32)).shape == (2, num_classes)
    assert _stem(teacher) is not _stem(project) and torch.equal(_stem(teacher), _stem(project))
    assert _stem(teacher).is_contiguous() and not _stem(teacher).is_contiguous(memory_format=torch.channels_last)
    assert _stem(project).is_contiguous(memory_format=torch.channels_last) and not _stem(project).is_contiguous()
    loader = conv["path"].loader
    assert (loader.batch_size, loader.drop_last, loader.num_workers, loader.pin_memory) == (8, True, 0, False)
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler) and loader.persistent_workers is False
    assert conv["device"] == torch.device("cpu") and conv["workers"] == 0 and conv["cfg"] is cfg


def _check_loaders(rec, count: int) -> None:
    """A fresh loader per path, all alike: batches of 8 with the bench's augmentation and layout."""
    assert len(rec.loaders) == count and len({id(x) for x in rec.loaders}) == count
    assert [p["loader"] for p in rec.device_paths] == rec.loaders[1:]
    for x in rec.loaders:
        assert (x.batch_size, x.train, x.flip, x.channels_last, x.seed, x.device) == (
            8,
            True,
            True,
            True,
            0,
            torch.device("cpu"),
        )


def test_a_cpu_bench_of_a_cached_method_builds_each_path_and_reports_it(recorded, monkeypatch):
    """rld with a sweep of 2 stacked (train.batch_students=on) and require_capture: the paths, their
    runs, flags and providers, the cache filled in the temporary folder, and the whole report."""
    rec = recorded
    given = _with_train(monkeypatch, batch_students="on")
    report = bench.run_bench(_opts(sweep_sizes=(2,), require_capture=True))
    (cfg,) = given
    ((kwargs, tmp),) = rec.tmp
    assert kwargs == {"prefix": "rld-bench-"} and tmp.name.startswith("rld-bench-") and not tmp.exists()
    tags = ["eager0", "default0", "cached0", "sweep2-0", "sweep2-1", "other2-0", "other2-1"]
    _check_runs_and_teachers(rec, cfg, tmp, tags, 100)
    _check_loaders(rec, 6)
    ((args, (lookup, _)),) = rec.filled
    forward = rec.device_paths[0]["teacher_fn"]
    cache_cfg, fill_forward, fill_loader, num_classes, batches, seeds = args
    assert (fill_forward, fill_loader, num_classes, batches, seeds) == (forward, rec.loaders[0], 100, 1, 1)
    assert fill_forward is forward and fill_loader is rec.loaders[0]
    assert (cache_cfg.train.cache_dir, cache_cfg.train.teacher_cache, cache_cfg.data.name) == (
        str(tmp / "cache"),
        "lazy",
        "bench",
    )
    runs = iter(rec.runs)
    flags = [
        (forward, False, False, 1, False),
        (forward, False, False, 1, True),
        (lookup, False, False, 1, True),
        (lookup, False, True, 1, True),
        (lookup, False, False, 1, True),
    ]
    for p, (fn, static, batched, seeds, strict), count in zip(rec.device_paths, flags, [1, 1, 1, 2, 2], strict=True):
        assert p["teacher_fn"] is fn
        assert (p["static"], p["batched"], p["seeds"], p["strict"]) == (static, batched, seeds, strict)
        assert p["static"] is static and p["batched"] is batched and p["strict"] is strict
        assert [r.out for r in p["runs"]] == [next(runs).out for _ in range(count)]
    assert rec.compiled == [torch.device("cpu")]
    step = {"ms_per_step": 1000.0, "round_medians_ms": [1000.0], "captured": False}
    sweep = step | {"students": 2, "seeds": 1, "ms_per_student_step": 500.0}
    sweep |= {"speedup_vs_separate_cached": 2.0, "speedup_vs_default": 2.0}
    assert report == {
        "device": "cpu",
        "device_name": bench.device_name(torch.device("cpu")),
        "torch": torch.__version__,
        "data": "synthetic CIFAR-shaped random uint8 (64 images 32x32x3, 100 classes)",
        "config": {
            "pair": "resnet8:resnet8",
            "method": "rld",
            "batch_size": 8,
            "steps": 1,
            "warmup": 0,
            "rounds": 1,
            "sweep_seeds": 1,
            "conventional_workers": 0,
            "conventional_pin_memory": False,
            "require_capture": True,
            "cache_precision": "float16",
            "weights": WEIGHTS,
        },
        "settings": {"precision": "float32", "channels_last": True, "deterministic": True, "compiled_losses": False},
        "results": {
            "conventional": step,
            "default_eager": step | {"speedup_vs_conventional": 1.0},
            "default": step | {"speedup_vs_conventional": 1.0},
            "cached": step
            | {"speedup_vs_conventional": 1.0, "cache_build_s": 1.0, "cache_entries": 8, "cache_open_s": 1.0},
            "sweep_2": sweep | {"students_stacked": 2},
            "sweep_2_one_by_one": sweep | {"students_stacked": 0},
            "sweep_4": CUDA_ONLY,
            "sweep_16": CUDA_ONLY,
        },
    }


def test_a_cpu_bench_of_a_feature_method_on_cifar_arrays_measures_no_cache_and_no_sweep(recorded, monkeypatch):
    """at reads the teacher's features: no cache is filled, the sweep asked for is not run, and the
    models have the classes of the data read from --data."""
    rec = recorded
    data = bench.synthetic_cifar(48, num_classes=10, seed=1)
    monkeypatch.setattr(bench, "load_cifar100", lambda path: data if path == "/data/c100" else None)
    given = _with_train(monkeypatch)
    opts = _opts(method="at", data="/data/c100", sweep_sizes=(2,), warmup=1, rounds=2)
    report = bench.run_bench(opts)
    (cfg,) = given
    ((_, tmp),) = rec.tmp
    assert rec.filled == [] and rec.conventional[0]["data"] is data
    _check_runs_and_teachers(rec, cfg, tmp, ["eager0", "default0"], 10)
    _check_loaders(rec, 3)
    forward = rec.device_paths[0]["teacher_fn"]
    assert [(p["teacher_fn"], p["static"], p["batched"], p["seeds"], p["strict"]) for p in rec.device_paths] == [
        (forward, False, False, 1, False),
        (forward, False, False, 1, False),
    ]
    step = {"ms_per_step": 1000.0, "round_medians_ms": [1000.0, 1000.0], "captured": False}
    assert report == {
        "device": "cpu",
        "device_name": bench.device_name(torch.device("cpu")),
        "torch": torch.__version__,
        "data": "cifar100 arrays from /data/c100 (48 training images, 10 classes)",
        "config": {
            "pair": "resnet8:resnet8",
            "method": "at",
            "batch_size": 8,
            "steps": 1,
            "warmup": 1,
            "rounds": 2,
            "sweep_seeds": 1,
            "conventional_workers": 0,
            "conventional_pin_memory": False,
            "require_capture": False,
            "cache_precision": "float16",
            "weights": WEIGHTS,
        },
        "settings": {"precision": "float32", "channels_last": True, "deterministic": True, "compiled_losses": False},
        "results": {
            "conventional": step,
            "default_eager": step | {"speedup_vs_conventional": 1.0},
            "default": step | {"speedup_vs_conventional": 1.0},
            "cached": {
                "measured": False,
                "reason": "method at reads the teacher's features, which the teacher-logit cache does not hold",
            },
            "sweep_4": NEEDS_CACHE,
            "sweep_16": NEEDS_CACHE,
        },
    }


# ----------------------------------------------------------------------------- run_bench on a simulated GPU


class _SimModel(torch.nn.Module):
    """A model whose moves are recorded; a move to CUDA is only recorded (no GPU here)."""

    def __init__(self, name: str, num_classes: int):
        super().__init__()
        self.name, self.num_classes, self.moves = name, num_classes, []
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def to(self, *args, **kwargs):
        self.moves.append((args, kwargs))
        if any(isinstance(a, torch.device) and a.type == "cuda" for a in args):
            return self
        return super().to(*args, **kwargs)


SIM_MS = {
    "conventional": 40.0,
    "eager0": 20.0,
    "default0": 10.0,
    "cached0": 8.0,
    "sweep4-0": 16.0,
    "other4-0": 20.0,
    "seeds4-0": 16.0,
    "sweep16-0": 32.0,
    "other16-0": 64.0,
    "seeds16-0": 40.0,
}


def test_a_gpu_bench_builds_static_strict_paths_for_sweeps_of_4_and_16_over_2_seeds(monkeypatch):
    """On CUDA (simulated: every part that needs the GPU is a recorder) every project path is a
    static one, sweeps of 4 and 16 are planned and stacked (train.batch_students=auto), the
    conventional loader pins memory with min(8, cores) workers, the teacher goes to the GPU and its
    project copy keeps the configuration's layout (channels_last off here) under bf16 autocast."""
    set_up = _simulate_cuda(monkeypatch)
    tmp_made = _record_tmp(monkeypatch)
    given = _with_train(monkeypatch, amp=True, channels_last=False)
    models, loaders, runs, paths, conventional, filled, timed = [], [], [], [], [], [], []
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"Simulated GPU {device}")
    monkeypatch.setattr(bench, "default_workers", lambda: 3)

    def create(name, num_classes=100):
        models.append(_SimModel(name, num_classes))
        return models[-1]

    monkeypatch.setattr(bench, "create_model", create)

    class Loader:
        def __init__(self, split, batch_size, **kwargs):
            self.split, self.batch_size, self.kwargs = split, batch_size, kwargs
            self.labels = torch.as_tensor(split.y)
            loaders.append(self)

    class Run:
        def __init__(self, cfg, out, **kwargs):
            self.cfg, self.out, self.kwargs, self.ready = cfg, out, kwargs, (out / "checkpoints").is_dir()
            runs.append(self)

    class Conventional:
        ms = SIM_MS["conventional"]

        def __init__(self, data, cfg, teacher, device, workers):
            conventional.append((self, (data, cfg, teacher, device, workers)))

    class Path_:
        def __init__(self, loader, runs, teacher_fn, static=False, batched=False, seeds=1, strict=False):
            self.args = (loader, runs, teacher_fn, static, batched, seeds, strict)
            self.captured, self.ms = static, SIM_MS[runs[0].out.name]
            self.stepper = SimpleNamespace(stacked=len(runs) if batched else 0)
            paths.append(self)

    lookup = object()
    figures = {"cache_build_s": 0.5, "cache_entries": 96, "cache_open_s": 0.25}

    def fill(*args):
        filled.append(args)
        return lookup, figures

    def time_steps(path, warmup, steps, device):
        timed.append((path, warmup, steps, device))
        return [path.ms] * steps

    for name, value in [("DeviceLoader", Loader), ("Run", Run), ("ConventionalPath", Conventional)]:
        monkeypatch.setattr(bench, name, value)
    for name, value in [("DevicePath", Path_), ("_filled_cache", fill), ("_time_steps", time_steps)]:
        monkeypatch.setattr(bench, name, value)

    opts = _opts(device="cuda", workers=None, steps=3, warmup=1, rounds=2, sweep_seeds=2, require_capture=True)
    report = bench.run_bench(opts)
    cuda = torch.device("cuda")
    (cfg,) = given
    assert set_up == [cfg]
    ((kwargs, tmp),) = tmp_made
    assert kwargs == {"prefix": "rld-bench-"} and not tmp.exists()
    # the teacher: on the GPU, in eval mode, frozen; the project's copy in the configured layout
    (teacher,) = models
    ((conv_path, (data, conv_cfg, conv_teacher, conv_device, workers)),) = conventional
    assert (conv_cfg, conv_teacher, conv_device, workers) == (cfg, teacher, cuda, 3)
    assert conv_teacher is teacher and len(data.train) == 64 and data.num_classes == 100
    assert (teacher.name, teacher.num_classes, teacher.moves) == ("resnet8", 100, [((cuda,), {})])
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    forward = paths[0].args[2]
    assert isinstance(forward, TeacherForward) and forward.amp is True
    project = forward.teacher
    assert project is not teacher and project.conv.weight is not teacher.conv.weight
    assert project.moves == [((cuda,), {}), ((), {"memory_format": torch.contiguous_format})]
    # the loaders: the cache's, then a fresh one per path
    assert len(loaders) == 1 + 9 and len({id(x) for x in loaders}) == 10
    for x in loaders:
        assert x.split is data.train and x.batch_size == 8
        assert x.kwargs == {
            "device": cuda,
            "mean": data.mean,
            "std": data.std,
            "train": True,
            "flip": True,
            "channels_last": False,
        }
    ((cache_cfg, fill_forward, fill_loader, num_classes, batches, seeds),) = filled
    assert (fill_forward, fill_loader, num_classes, batches, seeds) == (forward, loaders[0], 100, 8, 2)
    assert cache_cfg.train.cache_dir == str(tmp / "cache") and cache_cfg.train.cache_precision == "float16"
    # the runs and the paths
    for r in runs:
        assert r.cfg is cfg and r.ready and r.out.parent == tmp
        assert isinstance(r.kwargs.pop("world"), World)
        assert r.kwargs.pop("teacher") is project and r.kwargs.pop("labels") is loaders[0].labels
        assert r.kwargs == {
            "device": cuda,
            "num_classes": 100,
            "resume_from": None,
            "resume": False,
            "input_shape": (3, 32, 32),
        }
    expected = [
        ("eager", 1, forward, False, False, 1, False),
        ("default", 1, forward, True, False, 1, True),
        ("cached", 1, lookup, True, False, 1, True),
    ]
    for m in (4, 16):
        expected += [
            (f"sweep{m}-", m, lookup, True, True, 1, True),
            (f"other{m}-", m, lookup, True, False, 1, True),
            (f"seeds{m}-", m, lookup, True, True, 2, True),
        ]
    assert len(paths) == len(expected)
    for path, loader, (tag, count, fn, static, batched, seeds, strict) in zip(paths, loaders[1:], expected):
        p_loader, p_runs, p_fn, *flags = path.args
        assert p_loader is loader and p_fn is fn
        assert [r.out.name for r in p_runs] == [f"{tag}{k}" for k in range(count)]
        assert flags == [static, batched, seeds, strict]
        assert [type(f) for f in flags] == [bool, bool, int, bool]
    assert sum(len(p.args[1]) for p in paths) == len(runs) == 3 + 3 * 4 + 3 * 16
    # each round times every path in turn
    every = [conv_path, *paths]
    assert [t[0] for t in timed] == every + every
    assert {t[1:] for t in timed} == {(1, 3, cuda)}

    def sweep(ms, stacked, students, seeds, cached, default):
        return {
            "ms_per_step": ms,
            "round_medians_ms": [ms, ms],
            "captured": True,
            "students_stacked": stacked,
            "students": students,
            "seeds": seeds,
            "ms_per_student_step": ms / students,
            "speedup_vs_separate_cached": cached,
            "speedup_vs_default": default,
        }

    assert report == {
        "device": "cuda",
        "device_name": "Simulated GPU cuda",
        "torch": torch.__version__,
        "data": "synthetic CIFAR-shaped random uint8 (64 images 32x32x3, 100 classes)",
        "config": {
            "pair": "resnet8:resnet8",
            "method": "rld",
            "batch_size": 8,
            "steps": 3,
            "warmup": 1,
            "rounds": 2,
            "sweep_seeds": 2,
            "conventional_workers": 3,
            "conventional_pin_memory": True,
            "require_capture": True,
            "cache_precision": "float16",
            "weights": WEIGHTS,
        },
        "settings": {
            "precision": "bf16 autocast (student)",
            "channels_last": False,
            "deterministic": True,
            "compiled_losses": False,  # the suite runs the kernel eagerly (RLD_COMPILE_LOSSES=0)
        },
        "results": {
            "conventional": {"ms_per_step": 40.0, "round_medians_ms": [40.0, 40.0], "captured": False},
            "default_eager": {
                "ms_per_step": 20.0,
                "round_medians_ms": [20.0, 20.0],
                "captured": False,
                "speedup_vs_conventional": 2.0,
            },
            "default": {
                "ms_per_step": 10.0,
                "round_medians_ms": [10.0, 10.0],
                "captured": True,
                "speedup_vs_conventional": 4.0,
            },
            "cached": {
                "ms_per_step": 8.0,
                "round_medians_ms": [8.0, 8.0],
                "captured": True,
                "speedup_vs_conventional": 5.0,
                **figures,
            },
            "sweep_4": sweep(16.0, 4, 4, 1, 2.0, 2.5),
            "sweep_4_one_by_one": sweep(20.0, 0, 4, 1, 1.6, 2.0),
            "sweep_4_seeds": sweep(16.0, 4, 4, 2, 2.0, 2.5),
            "sweep_16": sweep(32.0, 16, 16, 1, 4.0, 5.0),
            "sweep_16_one_by_one": sweep(64.0, 0, 16, 1, 2.0, 2.5),
            "sweep_16_seeds": sweep(40.0, 16, 16, 2, 3.2, 4.0),
        },
    }
