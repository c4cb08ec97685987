"""The fast paths: teacher-logit cache (key, exactness, precision, lazy filling), lockstep sweeps, bench."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import (
    TickingClock,
    assert_same_run_state,
    assert_user_error,
    load_last,
    metric_lines,
    metric_rows,
    run_rld,
    write_two_image_cifar,
)
from rld.cli import main
from rld.config import resolve
from rld.data import ArraySplit, Batch, DeviceLoader
from rld.engine import train
from rld.engine.faults import FAULT_EXIT_STATUS
from rld.engine.sweep import group_runs, parse_grid, plan_sweep, split_values
from rld.engine.teacher import TeacherForward
from rld.errors import UserError
from rld.fast.cache import LogitStore, open_teacher_cache
from rld.fast.key import cache_key
from rld.losses import dkd_loss, kd_loss, mask_ge, rld_loss
from rld.models import create_model

FAST = ["train.batch_size=256", "data.eval_batch_size=512", "train.epochs=2"]


def _tiny_loader(n: int = 3, seed: int = 0, flip: bool = True) -> DeviceLoader:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    split = ArraySplit(x, rng.integers(0, 10, size=n).astype(np.int64))
    return DeviceLoader(split, 4, device="cpu", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), train=True, flip=flip)


def _tiny_teacher() -> TeacherForward:
    torch.manual_seed(7)
    return TeacherForward(create_model("resnet8", num_classes=10).eval().requires_grad_(False), amp=False)


def _cache_cfg(tmp_path: Path, mode: str, precision: str = "float16"):
    return resolve(
        "demo/rld",
        [f"train.teacher_cache={mode}", f"train.cache_dir={tmp_path}", f"train.cache_precision={precision}"],
    )


# ----------------------------------------------------------------------------- cache key


def test_cache_key_changes_with_one_teacher_weight_one_pixel_or_the_precision():
    loader, forward = _tiny_loader(), _tiny_teacher()

    def key(teacher=forward.teacher, data=loader, precision="float16"):
        return cache_key(
            teacher_name="resnet8",
            teacher=teacher,
            num_classes=10,
            loader=data,
            precision=precision,
            teacher_precision="float32",
        )

    base = key()
    assert key() == base and len(base) == 64
    assert key(precision="float32") != base
    with torch.no_grad():
        next(forward.teacher.parameters()).view(-1)[0] += 1e-3
    assert key() != base
    with torch.no_grad():
        next(forward.teacher.parameters()).view(-1)[0] -= 1e-3
    assert key() == base  # same weights again: same key
    buffer = dict(forward.teacher.named_buffers())
    running_var = next(v for k, v in buffer.items() if k.endswith("running_var"))
    running_var[0] += 0.5  # BatchNorm statistics count: an eval-mode forward uses them
    assert key() != base
    running_var[0] -= 0.5
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    x[2, 31, 0, 1] ^= 1  # one bit of one pixel
    changed = DeviceLoader(
        ArraySplit(x, np.zeros(3, dtype=np.int64)),
        4,
        device="cpu",
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        train=True,
        flip=True,
    )
    assert key(data=changed) != base


# ----------------------------------------------------------------------------- exactness and precision


def _on_the_fly(loader: DeviceLoader, forward: TeacherForward, idx: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    return forward(Batch(loader.render_views(idx, views), None, idx, views))


def test_full_cache_equals_the_teacher_forward_exactly_in_float32_and_to_rounding_in_float16(tmp_path):
    loader, forward = _tiny_loader(), _tiny_teacher()
    g = torch.Generator().manual_seed(1)
    idx, views = torch.randint(0, 3, (64,), generator=g), torch.randint(0, 162, (64,), generator=g)
    ref = _on_the_fly(loader, forward, idx, views)
    exact = open_teacher_cache(_cache_cfg(tmp_path, "full", "float32"), forward, loader, 10)
    assert exact.computed == 3 * 162 and exact.forward is None  # built up front; the teacher is released
    assert torch.equal(exact(Batch(None, None, idx, views)), ref)
    half = open_teacher_cache(_cache_cfg(tmp_path, "full", "float16"), forward, loader, 10)
    got = half(Batch(None, None, idx, views))
    assert got.dtype == torch.float32 and torch.equal(got, ref.half().float())  # round-to-nearest float16
    assert torch.allclose(got, ref, rtol=2**-11, atol=0)
    assert half.store.folder != exact.store.folder  # the precision is part of the key


def test_float16_storage_changes_the_distillation_losses_by_less_than_4e_4_relative():
    """The documented bound (README: float16 changes the losses by < 4e-4 relative)."""
    g = torch.Generator().manual_seed(0)
    for b, c in ((64, 100), (256, 1000)):
        target = torch.randint(0, c, (b,), generator=g)
        teacher = 3 * torch.randn(b, c, generator=g)
        teacher[torch.arange(b), target] += 12  # a confident teacher, logits up to ~25
        teacher[: b // 4] += 40  # and some large offsets: float16 rounds them coarsest
        student = torch.randn(b, c, generator=g, requires_grad=True)
        cached = teacher.half().float()
        for name, exact, approx in (
            ("rld", rld_loss(student, teacher, target), rld_loss(student, cached, target)),
            ("dkd", dkd_loss(student, teacher, target), dkd_loss(student, cached, target)),
            ("kd", kd_loss(student, teacher), kd_loss(student, cached)),
        ):
            assert abs(approx.item() - exact.item()) < 4e-4 * abs(exact.item()), name
            (g_exact,) = torch.autograd.grad(exact, student)
            (g_approx,) = torch.autograd.grad(approx, student)
            rows = (g_approx - g_exact).norm(dim=1) / g_exact.norm(dim=1)  # (B,)
            # Only a class whose teacher logit ties the true one within float16 rounding can move
            # across RLD's M_ge boundary; every other sample's gradient changes by well under 1 %.
            moved = (mask_ge(teacher, target) != mask_ge(cached, target)).any(dim=1)
            if name != "rld":
                moved = torch.zeros_like(moved)
            assert (rows[~moved] < 1e-2).all(), name


def _epoch(loader: DeviceLoader, epoch: int):
    loader.set_epoch(epoch)
    return list(loader)


def test_lazy_cache_fills_on_first_use_reuses_and_persists(tmp_path):
    loader, forward = _tiny_loader(n=10), _tiny_teacher()
    calls = []

    def counting(batch):
        calls.append(len(batch.images))
        return forward(batch)

    counting.teacher, counting.amp, counting.precision = forward.teacher, forward.amp, forward.precision
    cfg = _cache_cfg(tmp_path, "lazy")
    lazy = open_teacher_cache(cfg, counting, loader, 10)
    loader.set_epoch(3)
    first = [lazy(b) for b in loader]
    assert lazy.computed == 10 and sorted(calls) == [2, 4, 4]
    for b, got in zip(_epoch(loader, 3), first):
        assert torch.equal(got, forward(b).half().float())
    calls.clear()
    again = [lazy(b) for b in _epoch(loader, 3)]  # the same epoch: every entry is cached
    assert calls == [] and all(torch.equal(a, b) for a, b in zip(first, again))
    lazy.close()
    reopened = open_teacher_cache(cfg, counting, loader, 10)
    assert reopened.store.filled_count() == 10 and reopened.store.folder == lazy.store.folder
    assert all(torch.equal(reopened(b), a) for b, a in zip(_epoch(loader, 3), first))
    assert calls == []


def test_a_cache_folder_of_another_key_is_refused(tmp_path):
    loader, forward = _tiny_loader(), _tiny_teacher()
    folder = open_teacher_cache(_cache_cfg(tmp_path, "lazy"), forward, loader, 10).store.folder
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "key": "0" * 64}))
    with pytest.raises(UserError, match="belongs to another teacher or data set; delete the folder"):
        open_teacher_cache(_cache_cfg(tmp_path, "lazy"), forward, loader, 10)
    store = LogitStore.open(tmp_path, "other", key="k", shape=(2, 162, 3), precision="float32", meta={})
    assert store.shape == (2, 162, 3) and store.filled_count() == 0


def test_the_cache_needs_the_device_resident_loader(capsys, tmp_path, teacher_ckpt):
    args = ["train", "demo/rld", "--teacher", str(teacher_ckpt), "--out", str(tmp_path / "o")]
    code = main([*args, "data.pipeline=pil", "data.num_workers=0", "train.teacher_cache=lazy"])
    assert_user_error(
        code, capsys.readouterr().err.strip(), "train.teacher_cache=lazy needs the device-resident loader"
    )
    assert not (tmp_path / "o").exists()
    code = main(["cache", "demo/vanilla", "--cache-dir", str(tmp_path)])
    assert_user_error(code, capsys.readouterr().err.strip(), "trains without a teacher")


# ----------------------------------------------------------------------------- sweeps


def test_sweep_planning_grid_folders_and_groups(tmp_path):
    assert split_values("2,8") == ["2", "8"]
    assert split_values("[3,5],[4,6]") == ["[3,5]", "[4,6]"]
    assert parse_grid(["method.beta=2,8", "train.lr=0.1"]) == (["train.lr=0.1"], [("method.beta", ["2", "8"])])
    runs = plan_sweep(
        "demo/rld", ["method.beta=2,8", "method.temperature=2,4", "train.lr=0.1"], seeds=[0, 1], out=tmp_path
    )
    assert len(runs) == 8 and runs[0].name == "method.beta=2,method.temperature=2,seed=0"
    assert runs[-1].out == tmp_path / "method.beta=8,method.temperature=4,seed=1"
    assert {r.cfg.train.lr for r in runs} == {0.1} and runs[-1].cfg.method.temperature == 4.0
    groups = group_runs(runs)
    assert [len(g) for g in groups] == [4, 4] and [g[0].cfg.seed for g in groups] == [0, 1]
    batch_sizes = plan_sweep("demo/rld", ["train.batch_size=64,128"], seeds=None, out=tmp_path)
    assert len(group_runs(batch_sizes)) == 2  # another batch size is another data stream
    # with batched students the seeds of a seed-free data set share a group, each on its own stream
    batched = plan_sweep("demo/rld", ["method.beta=2,8", "train.batch_students=on"], seeds=[0, 1], out=tmp_path)
    assert [[r.name for r in g] for g in group_runs(batched)] == [[r.name for r in batched]]
    assert [len(g) for g in group_runs(batched, share_seeds=False)] == [2, 2]  # e.g. each a Ray task
    pil = plan_sweep("demo/rld", ["train.batch_students=on", "data.pipeline=pil"], seeds=[0, 1], out=tmp_path)
    assert len(group_runs(pil)) == 2  # one loader per seed there: no shared step
    with pytest.raises(UserError, match="either as --seeds or as seed=V1,V2"):
        plan_sweep("demo/rld", ["seed=0,1"], seeds=[2], out=tmp_path)
    with pytest.raises(UserError, match="sweep overrides must look like KEY=V1,V2"):
        plan_sweep("demo/rld", ["beta"], seeds=None, out=tmp_path)


def test_lockstep_sweep_reproduces_the_single_runs(tmp_path, teacher_ckpt, tiny_cifar, compiled_losses):
    """With the compiled loss kernel (the default users run): the lockstep sweep gives each run
    exactly the metrics and final state it gets trained alone (128 images at batch 48: a partial
    last batch of 32, so the kernel is compiled for two batch sizes)."""
    over = [*_tiny(tiny_cifar, teacher_ckpt), "train.batch_size=48", "train.epochs=2"]
    for beta in ("2", "8"):  # trained alone: demo/rld with beta = 2 and 8 (2 epochs, seed 0)
        train(resolve("demo/rld", [*over, f"method.beta={beta}"]), tmp_path / "single" / beta)
    # The same two runs in lockstep: identical metrics and state, own folders and checkpoints.
    out = tmp_path / "sweep"
    assert main(["sweep", "demo/rld", "method.beta=2,8", "--out", str(out), *over]) == 0
    names = ["method.beta=2,seed=0", "method.beta=8,seed=0"]
    for beta, name in zip(("2", "8"), names):
        run = out / name
        assert metric_rows(run / "metrics.csv") == metric_rows(tmp_path / "single" / beta / "metrics.csv")
        assert_same_run_state(load_last(tmp_path / "single" / beta), load_last(run))
        assert (run / "checkpoints" / "best.pt").is_file()
        assert resolve(str(run / "config.yaml")).method.beta == float(beta)
    summary = list(csv.DictReader(open(out / "sweep.csv")))
    assert [r["run"] for r in summary] == names
    best = [max(float(r["test_top1"]) for r in metric_rows(out / name / "metrics.csv")) for name in names]
    assert [r["best_top1"] for r in summary] == [f"{b:.6g}" for b in best]
    assert main(["sweep", "demo/rld", "method.beta=2,8", "--out", str(out), *over]) == 2  # never overwrites


def test_float32_lazy_cache_trains_exactly_like_the_teacher_forward(tmp_path, teacher_ckpt, tiny_cifar):
    """README: train.cache_precision=float32 stores exact logits, so training with the lazy cache
    equals the plain loop bit for bit: metrics, weights, optimizer state."""
    over = [*_tiny(tiny_cifar, teacher_ckpt), "train.batch_size=48", "train.epochs=2"]
    train(resolve("demo/rld", over), tmp_path / "plain")
    cached = [*over, "train.teacher_cache=lazy", "train.cache_precision=float32", f"train.cache_dir={tmp_path / 'c'}"]
    train(resolve("demo/rld", cached), tmp_path / "cached")
    assert metric_rows(tmp_path / "cached" / "metrics.csv") == metric_rows(tmp_path / "plain" / "metrics.csv")
    assert_same_run_state(load_last(tmp_path / "plain"), load_last(tmp_path / "cached"), ignore_config=CACHE_KEYS)
    # the cache was used: it holds exactly the (image, view) entries of the two epochs' plans
    from rld.data import build_data

    loader = build_data("cifar100", str(tiny_cifar), batch_size=48, device="cpu", seed=0).train
    plans = [loader.epoch_plan(epoch) for epoch in (1, 2)]
    entries = {(i, v) for order, views in plans for i, v in zip(order.tolist(), views.tolist())}
    (folder,) = (tmp_path / "c").iterdir()
    filled = np.load(folder / "index.npz")["filled"]
    assert {(int(i), int(v)) for i, v in zip(*np.nonzero(filled))} == entries


CACHE_KEYS = ("train.teacher_cache", "train.cache_precision", "train.cache_dir")


def _tiny(tiny_cifar: Path, teacher_ckpt: Path) -> list[str]:
    return [
        "data.name=cifar100",
        f"data.path={tiny_cifar}",
        "train.batch_size=64",
        f"model.teacher_checkpoint={teacher_ckpt}",
    ]


def test_multi_seed_sweep_equals_its_single_runs(tmp_path, teacher_ckpt, tiny_cifar):
    """Seeds 0 and 1 are two data streams (two groups, one after the other); each run ends with
    the state of the same run trained alone."""
    over = [*_tiny(tiny_cifar, teacher_ckpt), "train.epochs=2"]
    from rld.engine.sweep import sweep

    rows = sweep("demo/rld", ["method.beta=2,8"], seeds=[0, 1], out=tmp_path / "sweep", extra=over)
    names = [f"method.beta={b},seed={s}" for s in (0, 1) for b in (2, 8)]
    assert [r["run"] for r in rows] == names
    for name, (beta, seed) in zip(names, [(b, s) for s in (0, 1) for b in (2, 8)]):
        train(resolve("demo/rld", [*over, f"method.beta={beta}", f"seed={seed}"]), tmp_path / name)
        assert metric_rows(tmp_path / "sweep" / name / "metrics.csv") == metric_rows(tmp_path / name / "metrics.csv")
        assert_same_run_state(load_last(tmp_path / name), load_last(tmp_path / "sweep" / name))
    seed0, seed1 = (load_last(tmp_path / f"method.beta=2,seed={s}") for s in (0, 1))
    assert not torch.equal(seed0["model"]["fc.weight"], seed1["model"]["fc.weight"])  # two streams, two results


def test_sweep_crashed_while_checkpointing_resumes_exactly_with_the_cache(tmp_path, teacher_ckpt, tiny_cifar):
    """A sweep that crashes inside the 4th last.pt write (beta=8's of epoch 2) stands at epochs 2
    and 1; resumed, beta=8 catches up alone, then both continue in lockstep and end with the state
    of the runs trained alone."""
    over = [
        *_tiny(tiny_cifar, teacher_ckpt),
        "train.teacher_cache=lazy",  # the single runs fill the cache; the sweep reads the same float16 values
        f"train.cache_dir={tmp_path / 'cache'}",
        "train.epochs=3",
    ]
    for beta in ("2", "8"):
        train(resolve("demo/rld", [*over, f"method.beta={beta}"]), tmp_path / beta)
    out = tmp_path / "sweep"
    crashed = run_rld("sweep", "demo/rld", "method.beta=2,8", *over, "--out", str(out), fault="before_rename:4")
    assert crashed.returncode == FAULT_EXIT_STATUS, crashed.stderr[-2000:]
    ahead, behind = out / "method.beta=2,seed=0", out / "method.beta=8,seed=0"
    assert (load_last(ahead)["epoch"], load_last(behind)["epoch"]) == (2, 1)
    kept = {run: metric_lines(run) for run in (ahead, behind)}  # rows a resume must keep, wall times included
    from rld.engine.sweep import sweep

    rows = sweep("demo/rld", ["method.beta=2,8"], out=out, resume=True, extra=over)
    assert [r["run"] for r in rows] == ["method.beta=2,seed=0", "method.beta=8,seed=0"]
    for beta, run in (("2", ahead), ("8", behind)):
        assert metric_lines(run)[: len(kept[run])] == kept[run]
        assert metric_rows(run / "metrics.csv") == metric_rows(tmp_path / beta / "metrics.csv")
        assert_same_run_state(load_last(tmp_path / beta), load_last(run))


# ----------------------------------------------------------------------------- bench


def test_bench_reports_every_path(tmp_path, monkeypatch):
    """With a clock that ticks one second per reading every step lasts exactly 1000 ms, so each
    number of the report is known: medians, speed-ups, per-student time, cache timings, and the
    count of clock readings says how many steps were timed."""
    from rld.fast import bench

    clock = TickingClock()
    monkeypatch.setattr(bench, "time", clock)
    path = tmp_path / "bench.json"
    argv = ["bench", "--pair", "resnet8:resnet8", "--steps", "3", "--warmup", "1", "--rounds", "2"]
    argv += ["--batch-size", "8", "--workers", "0", "--synthetic-size", "64", "--sweep", "2", "--sweep-seeds", "2"]
    argv += ["--json", str(path)]
    assert main(argv) == 0
    report = json.loads(path.read_text())
    assert report["device"] == "cpu" and report["data"].startswith("synthetic")
    assert report["config"]["steps"] == 3 and report["config"]["rounds"] == 2
    assert (report["config"]["conventional_workers"], report["config"]["conventional_pin_memory"]) == (0, False)
    res = report["results"]
    paths = ["conventional", "default_eager", "default", "cached", "sweep_2", "sweep_2_stacked", "sweep_2_seeds"]
    assert list(res)[:7] == paths
    for name in paths:
        assert (res[name]["ms_per_step"], res[name]["round_medians_ms"]) == (1000.0, [1000.0, 1000.0]), name
        assert res[name]["captured"] is False, name  # no CUDA graph on the CPU
    assert res["default"]["speedup_vs_conventional"] == res["cached"]["speedup_vs_conventional"] == 1.0
    assert report["settings"] == {
        "precision": "float32",
        "channels_last": True,
        "deterministic": True,
        "compiled_losses": False,  # the suite runs the kernel eagerly (RLD_COMPILE_LOSSES=0)
    }
    assert (res["sweep_2"]["students"], res["sweep_2"]["ms_per_student_step"]) == (2, 500.0)
    assert res["sweep_2"]["speedup_vs_separate_cached"] == res["sweep_2"]["speedup_vs_default"] == 2.0
    # on the CPU `rld sweep` steps the students one after another; the stacked way is measured beside it
    assert (res["sweep_2"]["students_stacked"], res["sweep_2_stacked"]["students_stacked"]) == (0, 2)
    assert res["sweep_2_stacked"]["ms_per_student_step"] == 500.0
    # the two students over two seeds: always stacked, each on its own seed's stream
    assert (res["sweep_2_seeds"]["seeds"], res["sweep_2_seeds"]["students_stacked"], res["sweep_2"]["seeds"]) == (
        2,
        2,
        1,
    )
    assert report["config"]["sweep_seeds"] == 2
    assert res["cached"]["cache_entries"] == 2 * (1 + 3) * 8  # the rounds' warm-up and timed batches of 8
    assert (res["cached"]["cache_open_s"], res["cached"]["cache_build_s"]) == (1.0, 1.0)
    # 2 readings each for opening and filling the cache, then per round and path: one before the steps, one per step
    assert clock.readings == 2 + 2 + 2 * 7 * (3 + 1)
    assert res["sweep_4"] == {"measured": False, "reason": "measured on CUDA only (see rld.fast.bench)"}


def test_bench_conventional_loader_has_min_8_cores_workers_by_default(monkeypatch):
    """The DataLoader a practitioner would set up on the machine: a worker per core, at most 8."""
    from rld.fast import bench

    assert bench.BenchOptions().workers is None
    for cores, workers in ((2, 2), (16, 8)):
        monkeypatch.setattr(bench.os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert bench.default_workers() == workers


def test_a_cached_run_on_a_set_without_flips_equals_the_live_teacher_bit_for_bit(tmp_path, teacher_ckpt):
    """The digits set takes no flips (a mirrored digit is another symbol): its images have 81 views,
    the unflipped half of the 162. A full float32 cache of 16x16 digits holds exactly those for every
    image, and a run that reads it trains bit for bit as the run that asks the live teacher."""
    over = [
        "data.train_per_class=3",  # 30 images: 2 steps per epoch at batch 16, the last one of 14
        "data.image_size=16",
        "train.batch_size=16",
        "train.epochs=2",
        f"model.teacher_checkpoint={teacher_ckpt}",
    ]
    train(resolve("demo/rld", over), tmp_path / "live")
    cache = [*over, "train.teacher_cache=full", "train.cache_precision=float32", f"train.cache_dir={tmp_path / 'c'}"]
    train(resolve("demo/rld", cache), tmp_path / "cached")
    assert metric_rows(tmp_path / "cached" / "metrics.csv") == metric_rows(tmp_path / "live" / "metrics.csv")
    assert_same_run_state(load_last(tmp_path / "live"), load_last(tmp_path / "cached"), ignore_config=CACHE_KEYS)
    (folder,) = (tmp_path / "c").iterdir()
    filled = np.load(folder / "index.npz")["filled"]
    assert filled.shape == (30, 162) and filled[:, 0::2].all() and not filled[:, 1::2].any()


def test_rld_cache_builds_every_view_and_training_then_needs_no_teacher_forward(capsys, tmp_path, teacher_ckpt):
    data = write_two_image_cifar(tmp_path / "two.npz")
    common = ["data.name=cifar100", f"data.path={data}", "--teacher", str(teacher_ckpt)]
    assert main(["cache", "demo/rld", *common, "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "324 entries (324 computed now" in capsys.readouterr().out
    (folder,) = (tmp_path / "cache").iterdir()
    assert np.load(folder / "index.npz")["filled"].all()
    # full mode finds the complete cache: the provider has no teacher left, so a forward would raise
    args = ["train", "demo/rld", *common, "train.teacher_cache=full", f"train.cache_dir={tmp_path / 'cache'}"]
    assert main([*args, "--epochs", "1", "train.batch_size=2", "--out", str(tmp_path / "run")]) == 0
    assert "324 of 324 entries filled" in capsys.readouterr().out


# ----------------------------------------------------------------------------- whole-step execution


@pytest.mark.parametrize("data", ["digits", "cifar100"])
def test_static_step_trains_exactly_like_the_plain_loop(tmp_path, teacher_ckpt, tiny_cifar, data, request):
    """The step that CUDA graphs replay, run on the CPU: same metrics and weights as the plain loop.

    1347 digits at batch 256: five full batches and a partial one of 67; 128 CIFAR-format images at
    batch 48: two full batches and one of 32. The learning rate decays after epoch 1 and the RLD
    warm-up (3 epochs) scales the distillation terms in both epochs. The CIFAR-format case runs
    the compiled loss kernel (the default users run).
    """
    if data == "cifar100":
        request.getfixturevalue("compiled_losses")
    over = [*FAST, f"model.teacher_checkpoint={teacher_ckpt}", "train.lr_milestones=[1]"]
    if data == "cifar100":
        over += ["data.name=cifar100", f"data.path={tiny_cifar}", "train.batch_size=48"]
    train(resolve("demo/rld", [*over, "train.static_step=off"]), tmp_path / "plain")
    train(resolve("demo/rld", [*over, "train.static_step=on"]), tmp_path / "static")
    plain, static = metric_rows(tmp_path / "plain" / "metrics.csv"), metric_rows(tmp_path / "static" / "metrics.csv")
    steps = "6" if data == "digits" else "3"
    assert [r["steps"] for r in static] == [steps, steps] and [r["lr"] for r in static] == ["0.05", "0.005"]
    assert static == plain
    assert_same_run_state(
        load_last(tmp_path / "plain"), load_last(tmp_path / "static"), ignore_config=("train.static_step",)
    )


def test_static_step_in_a_sweep_and_where_it_is_chosen(tmp_path, teacher_ckpt):
    from rld.data import build_data
    from rld.engine.static import static_step_wanted
    from rld.engine.sweep import sweep

    over = [*FAST, f"model.teacher_checkpoint={teacher_ckpt}"]
    train(resolve("demo/rld", [*over, "method.beta=2"]), tmp_path / "single")
    rows = sweep("demo/rld", ["method.beta=2,8"], out=tmp_path / "sweep", extra=[*over, "train.static_step=on"])
    assert len(rows) == 2
    assert metric_rows(tmp_path / "sweep" / "method.beta=2,seed=0" / "metrics.csv") == metric_rows(
        tmp_path / "single" / "metrics.csv"
    )

    device = build_data("digits", None, batch_size=64, eval_batch_size=64, device="cpu", seed=0).train
    pil = build_data("digits", None, batch_size=64, device="cpu", seed=0, num_workers=0, pipeline="pil").train
    assert not static_step_wanted("auto", device, None, distributed=False)  # CUDA only by default
    assert static_step_wanted("on", device, None, distributed=False)
    assert not static_step_wanted("off", device, None, distributed=False)
    with pytest.raises(UserError, match=r"train.static_step=on needs the device-resident loader"):
        static_step_wanted("on", pil, None, distributed=False)
    with pytest.raises(UserError, match=r"train.static_step=on runs in one process"):
        static_step_wanted("on", device, None, distributed=True)


def test_bench_static_path_steps_like_the_plain_path_across_epochs(tmp_path):
    """``rld bench``'s CUDA default (the static step, strict as ``gpu_check.py`` runs it) run on the
    CPU: five steps of two full batches per epoch (10 images at batch 4, the partial batch left out)
    give the plain path's weights."""
    from rld.engine.distributed import World
    from rld.engine.trainer import Run
    from rld.fast.bench import DevicePath

    cfg = resolve("demo/vanilla", ["train.batch_size=4"])
    weights = []
    for static in (False, True):
        torch.manual_seed(0)
        out = tmp_path / str(static)
        (out / "checkpoints").mkdir(parents=True)
        run = Run(cfg, out, world=World(), device=torch.device("cpu"), num_classes=10, resume_from=None, resume=False)
        path = DevicePath(_tiny_loader(n=10), [run], None, static=static, strict=static)
        if static:
            assert path.static.strict and not path.captured  # nothing is captured on the CPU: strict changes nothing
        for _ in range(5):
            path.step()
        assert run.steps == 5
        weights.append(run.student.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
