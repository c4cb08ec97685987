"""Edges of the engine's parts, each on its own: the stop signal's log line, the running loss of
progress lines, the refusals of a stack of students, what a discarded run folder leaves, the sweep
command's executor, the predictor of a method that predicts with more than the student, the count of
device-to-host copies, the fault point a test waits for."""

from __future__ import annotations

import logging
import math
import signal
from pathlib import Path

import pytest
import torch

from rld.engine import faults
from rld.engine.guard import StopSignals
from rld.engine.metrics import EpochMetrics
from rld.engine.syncs import HostSyncCounter

# ----------------------------------------------------------------------------- signals, metrics


def test_the_first_stop_signal_is_logged_by_name(caplog):
    stop = StopSignals()
    with caplog.at_level(logging.INFO, logger="rld"), stop:
        stop._handle(signal.SIGTERM, None)
    assert stop.signum == signal.SIGTERM
    assert [r.getMessage() for r in caplog.records] == [
        "SIGTERM: stopping at the next step boundary after saving the run's position (a second signal stops at once)"
    ]


def test_the_running_loss_is_the_mean_over_the_samples_seen_so_far():
    metrics = EpochMetrics(torch.device("cpu"))
    assert math.isnan(metrics.running_loss())
    targets, logits = torch.tensor([0, 1, 1]), torch.eye(3)[:, :2]
    metrics.record(targets, logits, torch.tensor(2.0), {})
    metrics.record(torch.tensor([1]), torch.tensor([[0.0, 1.0]]), torch.tensor(6.0), {})
    assert metrics.running_loss() == (2.0 * 3 + 6.0 * 1) / 4


# ----------------------------------------------------------------------------- device-to-host copies


def test_device_to_host_copies_are_counted_and_host_to_device_ones_are_not():
    # the meta device stands in for a GPU: its tensors have no data, so a copy to the host raises
    # after the counter has seen it
    counter = HostSyncCounter(fail=False)
    with counter:
        torch.zeros(2, device="meta").copy_(torch.zeros(2))  # host to device: no sync
        torch.zeros(2).copy_(torch.ones(2))  # host to host
        with pytest.raises(NotImplementedError):
            torch.zeros(2).copy_(torch.zeros(2, device="meta"))
        with pytest.raises(NotImplementedError):
            torch.zeros(2, device="meta").to("cpu")
    assert counter.events == ["device-to-host copy (copy_)", "device-to-host copy (.cpu() / .to('cpu'))"]


# ----------------------------------------------------------------------------- the fault point


def test_the_wait_fault_says_it_waits_then_pauses_under_an_alarm(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(faults.signal, "alarm", lambda s: calls.append(("alarm", s)))
    monkeypatch.setattr(faults.signal, "pause", lambda: calls.append(("pause",)))
    faults._act("wait", None)
    assert capsys.readouterr().err == "RLD_FAULT: waiting for a signal\n"
    assert calls == [("alarm", faults.WAIT_LIMIT_S), ("pause",), ("alarm", 0)]


# ----------------------------------------------------------------------------- stacks, folders, sweeps


def test_a_stack_of_students_refuses_streams_that_do_not_match_its_runs(monkeypatch):
    from rld.engine import batched

    monkeypatch.setattr(batched, "stack_key", lambda run: "one key")  # two runs that stack
    with pytest.raises(ValueError) as caught:
        batched.StudentStack([object(), object()], streams=[0])
    assert str(caught.value) == "a StudentStack takes one stream per run"


def test_a_discarded_run_folder_whose_removal_fails_is_left_without_an_error(tmp_path, monkeypatch):
    from rld.engine import folder as folder_module
    from rld.engine.distributed import World

    out = tmp_path / "run"
    (out / "tb").mkdir(parents=True)
    (out / "tb" / "events").write_text("x")
    (out / "config.yaml").write_text("x")
    removed = []

    def rmtree(path, ignore_errors=False):  # a folder the user may not remove (another owner)
        if not ignore_errors:
            raise PermissionError(13, "Permission denied", str(path))
        removed.append(Path(path).name)

    monkeypatch.setattr(folder_module.shutil, "rmtree", rmtree)
    run = folder_module.RunFolder(out, World())
    run.fresh = True
    run.discard()  # the command's own error is what the user sees, not this one
    assert removed == ["tb"] and not (out / "config.yaml").exists()


def test_sweep_plans_then_trains_its_runs_where_the_executor_says(tmp_path, monkeypatch):
    from rld.engine import sweep as sweep_module
    from rld.executor import ExecutorOptions

    seen = {}

    def train_runs(runs, **kw):
        seen.update(kw, runs=[r.out.name for r in runs])
        return ["done"]

    monkeypatch.setattr(sweep_module, "train_runs", train_runs)
    options = ExecutorOptions(kind="local", cpus_per_run=2.0)
    got = sweep_module.sweep("demo/kd", ["method.temperature=2,4"], out=tmp_path, resume=True, executor=options)
    assert got == ["done"] and seen["executor"] is options and seen["resume"] is True
    assert seen["summary"] == tmp_path / "sweep.csv" and len(seen["runs"]) == 2


# ----------------------------------------------------------------------------- a method's own prediction


def test_the_predictor_of_a_method_with_its_own_prediction_loads_the_method_state():
    from rld.config import resolve
    from rld.engine.predictor import predictor
    from rld.methods import MethodContext, build_method
    from rld.models import create_model

    cfg = resolve("demo/simkd", [])
    torch.manual_seed(3)
    student = create_model(cfg.model.student, num_classes=10, dataset=cfg.model.dataset)
    teacher = create_model(cfg.model.teacher, num_classes=10, dataset=cfg.model.dataset)
    method = build_method(cfg.method, MethodContext(student, teacher, 10, (3, 32, 32), seed=cfg.seed))
    with torch.no_grad():
        for p in method.parameters():
            p.normal_()  # trained values: not those a fresh build starts from
    state = {
        "num_classes": 10,
        "model": student.state_dict(),
        "method": method.state_dict(),
        "input_shape": [3, 32, 32],
    }
    module = predictor(cfg, state)
    assert not module.training
    loaded = module.method.state_dict()
    assert loaded.keys() == state["method"].keys()
    assert all(torch.equal(loaded[k], v) for k, v in state["method"].items())


def test_a_group_is_described_by_its_seeds_and_its_number_of_runs(tmp_path):
    from rld.engine.sweep import describe_group, plan_sweep

    one = plan_sweep("demo/kd", [], seeds=None, out=tmp_path)
    assert describe_group(one) == "seed 0: 1 run"
    two = plan_sweep("demo/kd", ["method.temperature=2,4"], seeds=[3], out=tmp_path)
    assert describe_group(two) == "seed 3: 2 runs"
    seeds = plan_sweep("demo/kd", [], seeds=[0, 1], out=tmp_path)
    assert describe_group(seeds) == "seeds 0, 1: 2 runs"


def test_checking_runs_groups_the_seeds_of_one_stream_together_unless_told(tmp_path):
    from rld.engine.sweep import check_runs, plan_sweep

    runs = plan_sweep("demo/kd", ["train.batch_students=true"], seeds=[0, 1], out=tmp_path)  # students batched
    groups, resume_from = check_runs(runs, resume=False, build=False)
    assert [[r.name for r in g] for g in groups] == [["seed=0", "seed=1"]]
    assert resume_from == {r.out: None for r in runs} and not any(tmp_path.iterdir())
    groups, _ = check_runs(runs, resume=False, build=False, share_seeds=False)
    assert [[r.name for r in g] for g in groups] == [["seed=0"], ["seed=1"]]


# ----------------------------------------------------------------------------- resuming


def test_a_resume_that_would_undo_trained_epochs_is_refused_and_a_new_schedule_is_named(tmp_path):
    from rld.config import resolve
    from rld.engine.trainer import _check_same_config
    from rld.errors import UserError

    saved = resolve("demo/kd", ["train.epochs=4"])
    with pytest.raises(UserError) as caught:
        _check_same_config(saved, resolve("demo/kd", ["train.epochs=2"]), tmp_path / "run", 3)
    assert str(caught.value) == (
        f"--resume: {tmp_path / 'run'} has trained 3 epochs already; train.epochs=2 would undo them "
        "(choose a larger train.epochs or another --out)"
    )
    longer = resolve("demo/kd", ["train.epochs=8", "train.lr_milestones=[5,7]"])
    assert _check_same_config(saved, longer, tmp_path / "run", 3) == ["train.epochs", "train.lr_milestones"]


def test_resuming_with_a_new_schedule_logs_every_key_it_changes(tmp_path, caplog):
    from rld.config import resolve
    from rld.engine import train

    over = ["train.batch_size=256", "data.eval_batch_size=512", "data.train_per_class=8"]
    train(resolve("demo/vanilla", [*over, "train.epochs=1"]), tmp_path)
    with caplog.at_level(logging.INFO, logger="rld"):
        train(resolve("demo/vanilla", [*over, "train.epochs=2", "train.lr_milestones=[2]"]), tmp_path, resume=True)
    assert "resuming with a new schedule (train.epochs, train.lr_milestones) from epoch 2" in [
        r.getMessage() for r in caplog.records
    ]


def test_a_resumed_method_state_that_does_not_fit_is_named_as_such(tmp_path, teacher_ckpt):
    from rld.config import resolve
    from rld.engine import train
    from rld.errors import UserError

    # CTKD: a method with state of its own (its learned temperature)
    over = ["method.name=ctkd", "model.teacher=resnet20", f"model.teacher_checkpoint={teacher_ckpt}"]
    over += ["train.batch_size=256", "data.eval_batch_size=512"]
    over += ["data.train_per_class=8", "train.epochs=1"]
    train(resolve("demo/vanilla", over), tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=False)
    state["method"] = {"bogus": torch.zeros(1)}
    torch.save(state, last)
    with pytest.raises(UserError) as caught:
        train(resolve("demo/vanilla", [*over[:-1], "train.epochs=2"]), tmp_path, resume=True)
    assert str(caught.value).startswith(f"checkpoint {last}: its method state do not fit ")


def test_checking_runs_builds_each_group_whose_stream_differs_in_more_than_its_seed(tmp_path, monkeypatch):
    """The first group is built when it trains; each other group is built once by the check, groups
    that differ only in the views their method trains on (MLKD's strong view) each once too."""
    from rld.engine import sweep as sweep_module

    built = []
    monkeypatch.setattr(sweep_module, "_build_group", lambda group, *a, **kw: built.append([r.name for r in group]))
    grid = ["data.train_per_class=8,16", "method.name=kd,mlkd"]
    runs = sweep_module.plan_sweep("demo/kd", grid, seeds=[0, 1], out=tmp_path)
    groups, _ = sweep_module.check_runs(runs, resume=False, share_seeds=False)
    assert len(groups) == 8 and all(len(g) == 1 for g in groups)
    # the seed-1 groups differ from the seed-0 ones only in their seed
    assert built == [
        ["data.train_per_class=8,method.name=mlkd,seed=0"],
        ["data.train_per_class=16,method.name=kd,seed=0"],
        ["data.train_per_class=16,method.name=mlkd,seed=0"],
    ]


@pytest.mark.parametrize("state", [{"model": {}}, {"format": "other"}, [1, 2]])
def test_a_file_that_is_no_run_checkpoint_is_refused_naming_the_marker(tmp_path, state):
    from rld.engine import checkpoint as ckpt
    from rld.errors import UserError

    path = tmp_path / "weights.pt"
    torch.save(state, path)
    with pytest.raises(UserError) as caught:
        ckpt.load_run(path)
    assert str(caught.value) == f"{path} is not an rld run checkpoint (no '{ckpt.FORMAT}' format marker)"


@pytest.mark.parametrize("check,opened", [(True, "off"), (False, "full")])
def test_a_check_builds_the_teacher_without_opening_its_logit_cache(tmp_path, monkeypatch, check, opened):
    """Opening the teacher-logit cache fills it (a pass of the teacher over the data): the check that
    a group can be built must not, while training opens it."""
    from rld.engine import sweep as sweep_module

    class Built(Exception):
        pass

    seen = []

    def build_teacher_fn(cfg, num_classes, device, loader):
        seen.append(cfg.train.teacher_cache)
        raise Built

    monkeypatch.setattr(sweep_module, "build_teacher_fn", build_teacher_fn)
    runs = sweep_module.plan_sweep("demo/kd", ["train.teacher_cache=full"], seeds=None, out=tmp_path)
    with pytest.raises(Built):
        sweep_module._build_group(runs, {runs[0].out: None}, False, check=check)
    assert seen == [opened]


def test_each_run_of_a_sweep_over_an_image_folder_is_given_the_folder_s_split(tmp_path, monkeypatch):
    """A folder split by data.val_fraction: every run records the split (split.json), as rld train does."""
    import numpy as np
    from PIL import Image

    from rld.engine import sweep as sweep_module

    root = tmp_path / "pets"
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)).save(root / name / f"{i}.png")

    class Built(Exception):
        pass

    splits = []

    def run(*args, split=None, **kwargs):
        splits.append(split)
        raise Built

    monkeypatch.setattr(sweep_module, "Run", run)
    over = [f"data.path={root}", "data.val_fraction=0.4", "data.num_workers=0", "model.student_weights=null"]
    runs = sweep_module.plan_sweep("custom/kd", over, seeds=None, out=tmp_path / "sweep")
    with pytest.raises(Built):
        sweep_module._build_group(runs, {runs[0].out: None}, False, check=True, teacher=False)
    assert len(splits) == 1 and splits[0].classes == ["cat", "dog"] and len(splits[0].val) == 4


# ----------------------------------------------------------------------------- the process group


@pytest.mark.parametrize("kind,backend", [("cuda", "nccl"), ("cpu", "gloo")])
def test_a_torchrun_process_joins_its_group_with_the_device_s_backend(monkeypatch, kind, backend):
    from rld.engine import distributed

    joined = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: bool(joined))
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: joined.append(backend))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 3)
    world = distributed.init_world(kind)
    assert joined == [backend] and (world.rank, world.local_rank, world.size) == (3, 1, 4)
    assert distributed.init_world(kind) == world and joined == [backend]  # joined once
    monkeypatch.delenv("LOCAL_RANK")
    assert distributed.init_world(kind).local_rank == 0


@pytest.mark.parametrize("sync_bn", [True, False])
def test_a_torchrun_process_on_the_cpu_keeps_its_batchnorm_per_process(tmp_path, monkeypatch, sync_bn):
    """SyncBatchNorm is CUDA-only: a CPU (gloo) process of a group of two keeps plain BatchNorm
    whatever train.sync_bn says, and its student and method are wrapped for the group."""
    from rld.config import resolve
    from rld.engine import trainer
    from rld.engine.distributed import World

    wrapped = []
    monkeypatch.setattr(trainer, "DistributedDataParallel", lambda m, device_ids: wrapped.append(device_ids) or m)
    cfg = resolve("demo/vanilla", ["model.student=resnet8", f"train.sync_bn={str(sync_bn).lower()}"])
    run = trainer.Run(
        cfg, tmp_path, world=World(size=2), device=torch.device("cpu"), num_classes=10, resume_from=None, resume=False
    )
    kinds = {type(m) for m in run.student.modules()}
    assert torch.nn.BatchNorm2d in kinds and torch.nn.SyncBatchNorm not in kinds
    assert wrapped == [None] and run.model.student is run.student


# ----------------------------------------------------------------------------- progress lines


def test_progress_lines_come_at_most_every_period_and_never_after_the_last_step(monkeypatch, caplog):
    from rld.engine import loop

    clock = iter([0.0, 10.0, 70.0, 80.0, 200.0])  # start, then after steps 1..4
    monkeypatch.setattr(loop.time, "perf_counter", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="rld"):
        items = list(loop._progress_lines(range(4), 4, "epoch 1/2", lambda: 1.23456))
    assert items == [0, 1, 2, 3]
    # at step 2 (70 s, ETA 70 / 2 · 2 = 70 s); step 3 comes 10 s later; step 4 is the last
    assert [r.getMessage() for r in caplog.records] == ["epoch 1/2: step 2/4  loss 1.2346  ETA 1:10"]


@pytest.mark.parametrize("device,kind", [("cpu", "cpu"), ("cuda:1", "cuda"), ("cuda", "cuda")])
def test_training_joins_the_process_group_of_its_device_kind(tmp_path, monkeypatch, device, kind):
    from rld.config import resolve
    from rld.engine import loop

    class Joined(Exception):
        pass

    kinds = []

    def init_world(device_kind):
        kinds.append(device_kind)
        raise Joined

    monkeypatch.setattr(loop, "init_world", init_world)
    with pytest.raises(Joined):
        loop.train(resolve("demo/vanilla", [f"train.device={device}"]), tmp_path)
    assert kinds == [kind] and not any(tmp_path.iterdir())


@pytest.mark.parametrize("data", ["imagefolder", "cifar100"])
def test_the_teacher_s_stored_outputs_are_opened_for_the_run_s_classes(monkeypatch, data):
    """With train.teacher_cache an image folder reads the store `rld cache` filled, other data the
    teacher-logit cache; both are opened for the run's number of classes."""
    import rld.fast.store
    from rld.config import resolve
    from rld.engine import teacher as teacher_module

    opened = []
    monkeypatch.setattr(teacher_module, "_build_teacher", lambda cfg, n, device: torch.nn.Linear(2, n))
    monkeypatch.setattr(rld.fast.store, "open_teacher_store", lambda *a: opened.append(("store", a[-1])))
    monkeypatch.setattr(teacher_module, "open_teacher_cache", lambda *a: opened.append(("cache", a[-1])))
    cfg = resolve("demo/kd", ["train.teacher_cache=full", "train.channels_last=false"])
    cfg.data.name = data
    teacher_module.build_teacher_fn(cfg, 7, torch.device("cpu"), train_loader=None)
    assert opened == [("store" if data == "imagefolder" else "cache", 7)]


# ----------------------------------------------------------------------------- the static step


@pytest.mark.parametrize("teacher_fn", [None, "forward", "lazy", "full"])
def test_auto_takes_the_static_step_on_a_gpu_unless_the_teacher_s_lookups_read_the_host(teacher_fn):
    """train.static_step=auto on a (simulated) CUDA device-resident loader: captured with no teacher,
    a teacher forward or a full cache; not with a lazy cache, whose lookups read the host."""
    from types import SimpleNamespace

    from rld.data.device_loader import DeviceLoader
    from rld.engine.static import static_step_wanted

    loader = object.__new__(DeviceLoader)  # its settings only: nothing is loaded
    loader.__dict__.update(device=torch.device("cuda", 0), strong=None)
    provider = {
        None: None,
        "forward": object(),  # a forward pass: no lazy attribute
        "lazy": SimpleNamespace(lazy=True),
        "full": SimpleNamespace(lazy=False),
    }[teacher_fn]
    assert static_step_wanted("auto", loader, provider, distributed=False) is (teacher_fn != "lazy")
    assert static_step_wanted("auto", loader, provider, distributed=True) is False
    loader.device = torch.device("cpu")
    assert static_step_wanted("auto", loader, provider, distributed=False) is False


def test_an_output_folder_whose_checkpoints_folder_is_a_file_is_refused(tmp_path):
    from rld.engine.trainer import _check_writable
    from rld.errors import UserError

    out = tmp_path / "run"
    out.mkdir()
    _check_writable(out)  # both can be made
    (out / "checkpoints").write_text("not a folder")
    with pytest.raises(UserError) as caught:
        _check_writable(out)
    assert str(caught.value) == (
        f"cannot write to the output folder {out}: {out / 'checkpoints'} is not a folder; choose another --out"
    )


def test_a_run_folder_s_lock_file_is_readable_by_all_and_writable_by_its_owner(tmp_path):
    import os

    from rld.engine import lock

    umask = os.umask(0o022)
    try:
        held = lock.hold(tmp_path / "run")
        try:
            assert (tmp_path / "run" / lock.LOCK_FILE).stat().st_mode & 0o777 == 0o644
        finally:
            held.release()
    finally:
        os.umask(umask)


def test_the_data_options_of_a_run_are_every_data_setting_it_makes(tmp_path):
    from rld.config import resolve
    from rld.engine.trainer import data_options

    over = ["data.num_workers=3", "data.val_fraction=0.25", "data.skip_bad_images=true", "data.image_column=img"]
    over += ["data.label_column=fine", "data.image_size=24", "data.holdout=0.1", "data.holdout_seed=7", "seed=5"]
    cfg = resolve("demo/kd", over)
    assert data_options(cfg, tmp_path) == {
        "seed": 5,
        "num_workers": 3,
        "pipeline": cfg.data.pipeline,
        "decoder": cfg.data.decoder,
        "val_fraction": 0.25,
        "skip_bad_images": True,
        "split": None,
        "image_column": "img",
        "label_column": "fine",
        "image_size": 24,
        "holdout": 0.1,
        "holdout_seed": 7,
    }
