"""Edges of rld.fast that the end-to-end tests pass over, each pinned to exact values and messages.

* ``rld sweep``: where Ray is imported (never for a plan or a local sweep), how a plan groups seeds
  (shared streams locally, one group per seed for Ray), ``.yml`` files, ``--epochs`` with the flags and
  with grid values of the schedule, what the sweep is called with, the JSON and table output, the
  exit status and summary of runs that did not finish under Ray, several diverged runs, and the hint
  printed when it is interrupted.
* ``rld bench``: the options it passes on, ``--sweep`` given empty or malformed, the printed table and
  the JSON file; the configuration a pair resolves to (its preset, the student's own recipe, the
  fallback); the device's name (GPU, CPU model from /proc/cpuinfo, fallbacks); the synthetic data;
  the conventional path's augmentation; step times from CUDA events (simulated) and perf_counter.
* The teacher-output store: per-chunk checksums (the samples named, at most three ranges and how
  many more), checksums missing or malformed in meta.json, unreadable epoch files, epochs memory-
  mapped, the copy to a (simulated) GPU at exactly a quarter of its free memory (each record once, in
  blocks of at most 64 MiB, also for records larger than half a block), and lookups from a GPU when the
  epoch stays on the host (the batch's records moved without waiting for the GPU).
* The teacher-logit cache's ``build`` honours its batch size and reports progress per batch; top-k
  records decode on the device they are on.
"""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import rld.engine.sweep as engine_sweep
import rld.executor as executor_module
import rld.fast.bench as bench
import rld.fast.store as store_module
from conftest import GpuIndices
from rld.cli import main
from rld.config import resolve
from rld.data import CIFAR100_MEAN, CIFAR100_STD
from rld.errors import UserError
from rld.fast import forms
from rld.fast.store import OutputStore, pack


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- rld sweep


NO_RAY = "--executor ray needs Ray, which is not installed: pip install 'rld[ray]'"


@pytest.fixture
def ray_imports(monkeypatch):
    """The times the command imported Ray (here: as if Ray were not installed)."""
    calls = []

    def import_ray():
        calls.append(1)
        raise UserError(NO_RAY)

    monkeypatch.setattr(executor_module, "import_ray", import_ray)
    return calls


@pytest.fixture
def fake_sweep(monkeypatch, tmp_path):
    """The sweep the command runs, replaced: it records its arguments and returns ``rows`` (set by the test)."""
    monkeypatch.chdir(tmp_path)
    state = {"rows": [], "calls": []}

    def sweep(preset, overrides, **kwargs):
        state["calls"].append({"preset": preset, "overrides": overrides, **kwargs})
        if isinstance(state["rows"], BaseException):
            raise state["rows"]
        return [dict(r) for r in state["rows"]]

    monkeypatch.setattr(engine_sweep, "sweep", sweep)
    return state


BATCHED = ["demo/rld", "method.beta=2,8", "train.batch_students=on", "--seeds", "0,1", "--dry-run"]


def test_a_local_plan_shares_a_group_across_seeds_without_importing_ray(capsys, monkeypatch, tmp_path, ray_imports):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "sweep", *BATCHED)
    assert (code, err, ray_imports) == (0, "", [])
    assert out.splitlines()[0] == "sweep: 4 runs in 1 lockstep group(s) (seeds 0, 1: 4 runs) -> runs/sweeps/demo/rld"


def test_a_ray_plan_has_one_group_per_seed_and_needs_no_ray(capsys, monkeypatch, tmp_path, ray_imports):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "sweep", *BATCHED, "--executor", "ray")
    assert (code, err, ray_imports) == (0, "", [])
    assert out.splitlines()[0] == (
        "sweep: 4 runs in 2 lockstep group(s) (seed 0: 2 runs; seed 1: 2 runs) -> runs/sweeps/demo/rld"
    )


def test_a_local_sweep_never_imports_ray_and_a_ray_sweep_does(capsys, fake_sweep, ray_imports):
    fake_sweep["rows"] = [{"run": "seed=0", "best_epoch": 1, "best_top1": 10.0, "last_top1": 10.0, "status": "done"}]
    code, _, err = run_cli(capsys, "sweep", "demo/kd")
    assert (code, err, ray_imports) == (0, "", [])
    code, out, err = run_cli(capsys, "sweep", "demo/kd", "--executor", "ray")
    assert (code, out, err, ray_imports) == (2, "", f"rld: error: {NO_RAY}\n", [1])
    assert len(fake_sweep["calls"]) == 1  # the Ray sweep stopped before it started


def test_a_ray_sweep_is_given_the_seeds_flags_and_executor(capsys, fake_sweep, monkeypatch):
    monkeypatch.setattr(executor_module, "import_ray", lambda: None)
    fake_sweep["rows"] = [{"run": "seed=3", "best_epoch": 1, "best_top1": 10.0, "last_top1": 10.0, "status": "done"}]
    code, _, err = run_cli(capsys, "sweep", "demo/kd", "--seeds", "3,5", "--device", "cpu", "--executor", "ray")
    assert (code, err) == (0, "")
    (call,) = fake_sweep["calls"]
    assert call["seeds"] == [3, 5] and call["extra"] == ["train.device=cpu"]
    # --device cpu: the runs take no GPU on the cluster
    assert call["executor"] == executor_module.ExecutorOptions("ray", gpus_per_run=0.0)


def test_a_ray_sweep_refuses_a_numbered_gpu(capsys, fake_sweep, ray_imports):
    code, out, err = run_cli(capsys, "sweep", "demo/kd", "--device", "cuda:1", "--executor", "ray")
    assert (code, out) == (2, "")
    assert err == (
        "rld: error: --device cuda:1 does not apply to --executor ray: each run sees only the GPU Ray gives it; "
        "use --device cuda (or leave it out)\n"
    )
    assert fake_sweep["calls"] == [] and ray_imports == []


def test_a_ray_sweep_reports_the_runs_that_did_not_finish(capsys, fake_sweep, monkeypatch):
    monkeypatch.setattr(executor_module, "import_ray", lambda: None)
    fake_sweep["rows"] = [
        {"run": "method.temperature=2", "best_epoch": 3, "best_top1": 41.5, "last_top1": 40.25, "status": "done"},
        {"run": "method.temperature=4", "status": "failed", "error": "worker died"},
        {"run": "method.temperature=8", "status": "busy", "error": "another process trains it"},
    ]
    code, out, err = run_cli(capsys, "sweep", "demo/kd", "method.temperature=2,4,8", "--executor", "ray")
    assert code == 2
    assert out.splitlines() == [
        f"{'run':40s} {'best top-1':>10s} {'last top-1':>10s}",
        f"{'method.temperature=2':40s} {'    41.50%':>10s} {'    40.25%':>10s}",
        f"{'method.temperature=4':40s} {'—':>10s} {'failed':>10s}",
        f"{'method.temperature=8':40s} {'—':>10s} {'busy':>10s}",
        "summary → runs/sweeps/demo/kd/sweep.csv",
    ]
    assert err == (
        "rld: error: 2 of 3 runs did not finish:\n"
        "  method.temperature=4: failed: worker died\n"
        "  method.temperature=8: busy: another process trains it\n"
        "  the same command with --resume continues them (runs being trained elsewhere are left to that process)\n"
    )
    fake_sweep["rows"] = fake_sweep["rows"][:1]
    assert run_cli(capsys, "sweep", "demo/kd", "--executor", "ray")[0::2] == (0, "")


def test_a_ray_sweep_whose_failures_all_diverged_exits_with_3(capsys, fake_sweep, monkeypatch):
    monkeypatch.setattr(executor_module, "import_ray", lambda: None)
    fake_sweep["rows"] = [
        {"run": "a", "best_epoch": 1, "best_top1": 5.0, "last_top1": None, "status": "diverged", "diverged_epoch": 2}
    ]
    code, out, err = run_cli(capsys, "sweep", "demo/kd", "--executor", "ray")
    assert code == 3
    assert out.splitlines()[1] == f"{'a':40s} {'     5.00%':>10s} {'diverged @ 2':>10s}"
    assert err == "rld: error: 1 of 1 runs did not finish:\n  a: diverged: training diverged in epoch 2\n"


def test_the_table_goes_on_after_a_group_that_did_not_train(capsys, fake_sweep):
    fake_sweep["rows"] = [
        {"run": "a", "status": "failed", "error": "x"},
        {"run": "b", "best_epoch": 2, "best_top1": 30.0, "last_top1": 29.5, "status": "done"},
    ]
    code, out, _ = run_cli(capsys, "sweep", "demo/kd")
    assert code == 0
    assert out.splitlines()[1:3] == [
        f"{'a':40s} {'—':>10s} {'failed':>10s}",
        f"{'b':40s} {'    30.00%':>10s} {'    29.50%':>10s}",
    ]


def test_several_diverged_runs_are_named_in_one_line(capsys, fake_sweep):
    row = {"best_epoch": 1, "best_top1": 5.0, "last_top1": None, "status": "diverged", "diverged_epoch": 2}
    fake_sweep["rows"] = [
        {"run": "a", **row},
        {"run": "b", "best_epoch": 2, "best_top1": 30.0, "last_top1": 29.5, "status": "done"},
        {"run": "c", **row},
    ]
    code, _, err = run_cli(capsys, "sweep", "demo/kd")
    assert (code, err) == (3, "rld: error: 2 of 3 runs diverged (a, c); the others finished\n")


def test_sweep_json_is_indented_and_writes_any_value_as_text(capsys, fake_sweep, tmp_path):
    fake_sweep["rows"] = [
        {"run": "a", "best_epoch": 1, "best_top1": 5.0, "last_top1": 4.0, "status": "done", "out": tmp_path / "a"}
    ]
    code, out, _ = run_cli(capsys, "sweep", "demo/kd", "--json")
    assert code == 0
    assert out == (
        "[\n"
        "  {\n"
        '    "run": "a",\n'
        '    "best_epoch": 1,\n'
        '    "best_top1": 5.0,\n'
        '    "last_top1": 4.0,\n'
        '    "status": "done",\n'
        f'    "out": "{tmp_path / "a"}"\n'
        "  }\n"
        "]\n"
    )


def test_an_interrupted_sweep_says_how_to_continue(capsys, fake_sweep):
    fake_sweep["rows"] = KeyboardInterrupt()
    code, out, err = run_cli(capsys, "sweep", "demo/kd")
    assert (code, out) == (130, "")
    assert err == "rld: interrupted; continue with: the same rld sweep command with --resume\n"


def test_a_yml_file_names_the_sweep_folder_by_its_stem(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yml").write_text("preset: demo/kd\n")
    code, out, _ = run_cli(capsys, "sweep", "mine.yml", "method.temperature=2,4", "--dry-run")
    assert code == 0
    assert out.splitlines()[0] == "sweep: 2 runs in 1 lockstep group(s) (seed 0: 2 runs) -> runs/sweeps/mine"


def test_epochs_keep_the_flags_and_the_schedule_values_of_the_grid(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "sweep", "demo/kd", "--epochs", "2", "--device", "cpu", "--dry-run")
    assert code == 0
    lines = out.splitlines()
    assert lines[1] == "  seed=0  (epochs=2 lr_milestones=[1, 2])"
    cfg = yaml.safe_load("\n".join(lines[2:]))
    assert (cfg["train"]["device"], cfg["train"]["epochs"], cfg["train"]["lr_milestones"]) == ("cpu", 2, [1, 2])
    grid = ["sweep", "demo/kd", "train.lr_milestones=[3,5],[4,6]", "--epochs", "20", "--dry-run"]
    code, out, _ = run_cli(capsys, *grid)
    assert code == 0
    assert out.splitlines()[1:] == [
        "  train.lr_milestones=[3_5],seed=0  (epochs=20 lr_milestones=[3, 5])",
        "  train.lr_milestones=[4_6],seed=0  (epochs=20 lr_milestones=[4, 6])",
    ]


def test_epochs_scale_each_run_s_own_schedule_and_check_each_run_as_it_is(capsys, monkeypatch, tmp_path):
    """The schedule is each run's: a grid over methods scales RLD's warm-up though the preset's KD has
    none, and flags that the preset alone would refuse (a teacher for vanilla) are checked per run."""
    from rld.config import resolve
    from rld.engine.sweep import plan_sweep

    monkeypatch.chdir(tmp_path)
    runs = plan_sweep("demo/kd", ["method.name=kd,rld"], seeds=None, out=tmp_path, epochs=6)
    rld = resolve("demo/kd", ["method.name=rld"])  # the run unscaled
    assert [r.cfg.method.name for r in runs] == ["kd", "rld"]
    assert runs[1].cfg.method.warmup_epochs == pytest.approx(rld.method.warmup_epochs * 6 / rld.train.epochs)
    assert [r.cfg.train.epochs for r in runs] == [6, 6]
    kept = plan_sweep("demo/kd", ["method.name=rld", "method.warmup_epochs=3"], seeds=None, out=tmp_path, epochs=6)
    assert kept[0].cfg.method.warmup_epochs == 3
    grid = ["sweep", "demo/vanilla", "method.name=kd,dkd", "--teacher", "t.pt", "--epochs", "2", "--dry-run"]
    code, out, err = run_cli(capsys, *grid)
    assert (code, err) == (0, "")
    assert out.splitlines()[0].startswith("sweep: 2 runs in 1 lockstep group(s)")
    with pytest.raises(UserError) as caught:
        plan_sweep("demo/kd", ["train.epochs=3"], seeds=None, out=tmp_path, epochs=6)
    assert str(caught.value) == "--epochs and train.epochs=… both set train.epochs; give one of them"


# ----------------------------------------------------------------------------- rld bench (command)


REPORT = {
    "device_name": "Test CPU, 2 cores, 1 torch threads",
    "torch": "2.0",
    "data": "synthetic",
    "results": {
        "conventional": {"ms_per_step": 12.5, "round_medians_ms": [12.5], "captured": False},
        "cached": {"measured": False, "reason": "method at reads the teacher's features"},
    },
}


@pytest.fixture
def fake_bench(monkeypatch):
    """run_bench replaced: it records the options and returns REPORT."""
    seen = []
    monkeypatch.setattr(bench, "run_bench", lambda opts: seen.append(opts) or REPORT)
    return seen


def test_bench_passes_every_option_prints_the_table_and_writes_the_json(capsys, fake_bench, tmp_path):
    path = tmp_path / "bench.json"
    argv = ["bench", "--device", "cuda", "--pair", "resnet56-resnet20", "--method", "kd", "--steps", "3"]
    argv += ["--warmup", "1", "--rounds", "2", "--batch-size", "8", "--workers", "0", "--data", "/data/c100"]
    argv += ["--synthetic-size", "512", "--sweep", "4,8", "--sweep-seeds", "2", "--json", str(path)]
    code, out, err = run_cli(capsys, *argv)
    assert (code, err) == (0, "")
    assert fake_bench == [
        bench.BenchOptions(
            device="cuda",
            pair="resnet56-resnet20",
            method="kd",
            steps=3,
            warmup=1,
            rounds=2,
            batch_size=8,
            workers=0,
            data="/data/c100",
            synthetic_size=512,
            sweep_sizes=(4, 8),
            sweep_seeds=2,
        )
    ]
    assert out == (
        "Test CPU, 2 cores, 1 torch threads · torch 2.0 · synthetic\n"
        f"{'path':20s} {'ms/step':>9s} {'x conventional':>15s}\n"
        f"{'conventional':20s} {12.5:9.1f} \n"
        f"{'cached':20s} {'—':>9s}  (method at reads the teacher's features)\n"
        f"→ {path}\n"
    )
    assert path.read_text() == json.dumps(REPORT, indent=2) + "\n"
    assert path.read_text().splitlines()[1] == '  "device_name": "Test CPU, 2 cores, 1 torch threads",'


def test_bench_sweep_sizes_default_empty_and_malformed(capsys, fake_bench):
    assert run_cli(capsys, "bench")[0] == 0
    assert run_cli(capsys, "bench", "--sweep", "")[0] == 0
    assert [opts.sweep_sizes for opts in fake_bench] == [None, ()]  # None: the device's default sizes
    assert fake_bench[0] == bench.BenchOptions(workers=None)
    code, out, err = run_cli(capsys, "bench", "--sweep", "4,x")
    assert (code, out) == (2, "")
    assert err == "rld: error: --sweep must be comma-separated integers (e.g. 0,1,2), got '4,x'\n"
    assert len(fake_bench) == 2


# ----------------------------------------------------------------------------- rld bench (library)


def test_a_pair_resolves_to_its_preset_or_the_students_recipe_or_the_fallback():
    over = ["train.batch_size=32", "train.device=cpu", "seed=5"]
    opts = bench.BenchOptions(pair="resnet32x4:resnet8x4", method="mlkd", batch_size=32, seed=5)
    cfg = bench._config(opts)
    assert cfg == resolve("cifar100/resnet32x4-resnet8x4/mlkd", over)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.seed) == (0.025, 32, 5)  # the preset's, not resnet8x4's 0.05
    # no preset of the pair and method: the student's own vanilla recipe (MobileNetV2 trains at lr 0.01)
    cfg = bench._config(bench.BenchOptions(pair="resnet32x4-MobileNetV2", method="rld", batch_size=32, seed=5))
    assert (cfg.model.teacher, cfg.model.student, cfg.method.name) == ("resnet32x4", "MobileNetV2", "rld")
    assert (cfg.train.lr, cfg.train.batch_size, cfg.seed, cfg.train.device) == (0.01, 32, 5, "cpu")
    # a student without a CIFAR-100 recipe: resnet8's
    cfg = bench._config(bench.BenchOptions(pair="resnet32x4-MobileNetV1", method="kd"))
    assert cfg == resolve(
        "cifar100/resnet8/vanilla",
        ["train.batch_size=64", "train.device=cpu", "seed=0", "model.student=MobileNetV1"]
        + ["model.teacher=resnet32x4", "method.name=kd"],
    )
    assert (cfg.model.student, cfg.train.lr) == ("MobileNetV1", 0.05)


@pytest.mark.parametrize("pair", ["resnet8x4", "a-b-c"])
def test_a_pair_that_is_not_teacher_student_is_refused(pair):
    with pytest.raises(UserError) as err:
        bench._config(bench.BenchOptions(pair=pair))
    assert str(err.value) == f"--pair must look like TEACHER-STUDENT (e.g. resnet32x4-resnet8x4), got {pair!r}"


@pytest.fixture
def cpu_facts(monkeypatch):
    """/proc/cpuinfo (set ``text``; None: unreadable), the platform's processor and machine, 6 cores."""
    facts = {"text": None, "processor": "", "machine": "aarch64"}

    def fake_open(path, *args, **kwargs):
        if path == "/proc/cpuinfo" and facts["text"] is not None:
            return io.StringIO(facts["text"])
        raise FileNotFoundError(2, "No such file or directory", path)

    monkeypatch.setattr(bench, "open", fake_open, raising=False)
    monkeypatch.setattr(bench.platform, "processor", lambda: facts["processor"])
    monkeypatch.setattr(bench.platform, "machine", lambda: facts["machine"])
    monkeypatch.setattr(bench, "available_cores", lambda: 6)
    return facts


def test_the_cpu_is_named_by_its_model_in_cpuinfo(cpu_facts):
    threads = torch.get_num_threads()
    cpu_facts["text"] = (
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon Gold 6248 (rev: 7) \nflags\t: x\n"
    )
    assert bench.device_name(torch.device("cpu")) == f"Xeon Gold 6248 (rev: 7), 6 cores, {threads} torch threads"


def test_without_a_model_name_the_cpu_is_named_by_the_platform(cpu_facts):
    threads = torch.get_num_threads()
    cpu_facts["text"] = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\n"  # as on ARM
    assert bench.device_name(torch.device("cpu")) == f"aarch64, 6 cores, {threads} torch threads"
    cpu_facts.update(text=None, processor="i386", machine="x86_64")  # no /proc/cpuinfo
    assert bench.device_name(torch.device("cpu")) == f"i386, 6 cores, {threads} torch threads"


def test_a_gpu_is_named_by_its_model(monkeypatch):
    names = {torch.device("cuda", 0): "NVIDIA A100", torch.device("cuda", 1): "NVIDIA H200"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: names[device])
    assert bench.device_name(torch.device("cuda", 1)) == "NVIDIA H200"


def test_synthetic_data_is_cifar_shaped_seeded_and_has_a_test_split_of_256():
    data = bench.synthetic_cifar(300, num_classes=10)
    assert data.name == "synthetic" and data.classes == [str(c) for c in range(10)] and data.num_classes == 10
    assert data.flip is True and (data.mean, data.std) == (CIFAR100_MEAN, CIFAR100_STD)
    x, y = data.train.x, data.train.y
    assert x.shape == (300, 32, 32, 3) and x.dtype == np.uint8 and (x.min(), x.max()) == (0, 255)
    assert y.shape == (300,) and y.dtype == np.int64 and (y.min(), y.max()) == (0, 9)
    assert np.array_equal(data.test.x, x[:256]) and np.array_equal(data.test.y, y[:256])
    assert data.test.x.shape == (256, 32, 32, 3) and len(data.test) == 256
    again, other = bench.synthetic_cifar(300, num_classes=10, seed=0), bench.synthetic_cifar(300, 10, seed=1)
    assert np.array_equal(again.train.x, x) and np.array_equal(again.train.y, y)
    assert not np.array_equal(other.train.x, x)


def test_the_conventional_path_crops_and_flips_as_the_cifar_code_bases(tmp_path):
    import torchvision.transforms as T
    from PIL import Image

    from rld.models import create_model

    data = bench.synthetic_cifar(8, num_classes=10)
    cfg = resolve("demo/vanilla", ["train.batch_size=4"])
    teacher = create_model("resnet8", num_classes=10).eval()
    path = bench.ConventionalPath(data, cfg, teacher, torch.device("cpu"), workers=0)
    normalize = T.Normalize(CIFAR100_MEAN, CIFAR100_STD)
    expected = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), normalize])

    for seed in range(8):
        torch.manual_seed(seed)
        image, target, index = path.loader.dataset[seed]
        torch.manual_seed(seed)
        assert torch.equal(image, expected(Image.fromarray(data.train.x[seed])))
        assert (target, index) == (int(data.train.y[seed]), seed)


class _Path:
    """A path whose steps take the given milliseconds of a simulated clock."""

    def __init__(self, clock: list[float], durations: list[float]):
        self.clock, self.durations = clock, iter(durations)

    def step(self) -> None:
        self.clock[0] += next(self.durations)


def test_cpu_step_times_are_perf_counter_intervals_after_the_warmup(monkeypatch):
    now = [10.0]  # seconds
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    path = _Path(now, [1.0, 0.25, 0.5])  # the first is a warm-up step
    assert bench._time_steps(path, 1, 2, torch.device("cpu")) == [250.0, 500.0]


def test_cuda_step_times_are_the_intervals_between_timing_events(monkeypatch):
    gpu_ms, synced = [0.0], []

    class Event:
        def __init__(self, enable_timing=False):
            self.timing, self.at = enable_timing, None

        def record(self):
            self.at = gpu_ms[0]

        def elapsed_time(self, end):
            if not (self.timing and end.timing):
                raise RuntimeError("Both events must be created with argument 'enable_timing=True'")
            return end.at - self.at

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: synced.append(1))
    path = _Path(gpu_ms, [7.0, 2.5, 4.0, 1.5])
    assert bench._time_steps(path, 1, 3, torch.device("cuda")) == [2.5, 4.0, 1.5]
    assert synced == [1]


# ----------------------------------------------------------------------------- the teacher-output store


C = 4  # classes: float32 records of 16 bytes


def _rewrite_meta(folder: Path, **changes) -> None:
    """meta.json with ``changes``, its checksum (a CRC-32 of the rest, as the store writes it) renewed."""
    meta = json.loads((folder / "meta.json").read_text())
    body = {k: v for k, v in meta.items() if k != "checksum"} | changes
    body["checksum"] = zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    (folder / "meta.json").write_text(json.dumps(body))


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A float32 store of 9 samples in chunks of 2 records (the last holds sample 8), epoch 1 written."""
    monkeypatch.setattr(store_module, "CHUNK_BYTES", 2 * 4 * C)
    s = OutputStore.open(tmp_path, "store", key="k", num_samples=9, num_classes=C, form="float32")
    logits = torch.arange(9 * C, dtype=torch.float32).reshape(9, C)
    records = pack(forms.encode(logits, torch.zeros(9, dtype=torch.long), "float32"), s.dtype)
    with s.filling():
        s.write_epoch(1, [(np.arange(9), records)])
    assert s.chunk == 2 and s.epochs == [1]
    return s


def _damage(store: OutputStore, chunks: list[int]) -> None:
    path = store.path(1)
    raw = bytearray(path.read_bytes())
    header = len(raw) - store.epoch_bytes
    for c in chunks:
        raw[header + c * store.chunk * store.dtype.itemsize] ^= 0x10
    path.write_bytes(bytes(raw))


def _epoch_damaged(store: OutputStore, what: str) -> str:
    path = store.path(1)
    return (
        f"the teacher-output store {store.folder} is damaged: epoch 1: {what}; it is not used. Delete {path.name} "
        f"(rm '{path}') and run `rld cache PRESET … --epochs E` again: it recomputes only that epoch"
    )


@pytest.mark.parametrize(
    "chunks, samples",
    [
        ([], None),
        ([4], "8-8"),
        ([0, 2], "0-1, 4-5"),
        ([0, 2, 4], "0-1, 4-5, 8-8"),
        ([0, 1, 2, 3], "0-1, 2-3, 4-5 and 1 more chunks"),
        ([0, 1, 2, 3, 4], "0-1, 2-3, 4-5 and 2 more chunks"),
    ],
)
def test_a_damaged_chunk_names_its_samples_three_ranges_at_most(store, chunks, samples):
    _damage(store, chunks)
    if samples is None:
        store.verify(1)  # intact: every chunk matches
        return
    with pytest.raises(UserError) as err:
        store.verify(1)
    assert str(err.value) == _epoch_damaged(store, f"the records of samples {samples} do not match their checksum")


@pytest.mark.parametrize("text", ["", "count-1", "count+1", "odd", "zzzzzzzz", 12345, None])
def test_checksums_missing_or_malformed_in_meta_json_are_refused(store, text):
    crcs = store.meta["epochs"]["1"]
    assert len(crcs) == 5 * 8
    text = {"count-1": crcs[:-8], "count+1": crcs + crcs[:8], "odd": crcs[:-8] + "abc"}.get(text, text)
    if text == "zzzzzzzz":
        text = crcs[:-8] + text
    _rewrite_meta(store.folder, epochs={"1": text})
    store.reload()
    with pytest.raises(UserError) as err:
        store.verify(1)
    assert str(err.value) == (
        f"the teacher-output store {store.folder} is damaged (meta.json gives no valid checksums for epoch 1); it "
        f"is not used. Delete the folder (rm -r '{store.folder}') and fill it again with `rld cache PRESET … "
        "--epochs E`"
    )


def test_an_unreadable_epoch_file_is_refused_with_the_first_line_of_the_reason(store):
    path = store.path(1)
    path.write_bytes(b"not an array " * 20)
    try:
        np.load(path)
    except ValueError as err:
        reason = str(err).splitlines()[0]
    with pytest.raises(UserError) as err:
        store.load_epoch(1)
    assert str(err.value) == _epoch_damaged(store, f"unreadable: {reason}")


def test_an_epoch_is_read_memory_mapped_and_by_default_on_the_cpu(store):
    store.load_epoch(1)
    records = store._epoch[1]
    assert records.device == torch.device("cpu")
    table = store._map(1)
    base = table
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap) and base.mode == "c"  # copy-on-write: never written back
    got = store.lookup(1, torch.tensor([8, 0]))
    assert torch.equal(got["logits"], torch.tensor([[32.0, 33, 34, 35], [0, 1, 2, 3]]))


class _DeviceBuffer(torch.Tensor):
    """Memory of the simulated GPU (a CPU tensor): the rows of each copy into it are recorded."""

    copies: list[int] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.copy_:
            cls.copies.append(args[1].shape[0])
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.fixture
def gpu(monkeypatch):
    """A simulated GPU: its free memory (set ``free``), the devices asked, the buffers made on it (filled
    with 0xAB, as uninitialised memory), the rows of each copy into them, the tensors moved to it."""
    state = {"free": 0, "asked": [], "made": [], "copies": [], "moved": []}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: state["asked"].append(d) or (state["free"], 1 << 40))
    monkeypatch.setattr(_DeviceBuffer, "copies", state["copies"])
    real_empty, real_to = torch.empty, torch.Tensor.to

    def empty(shape, dtype, device):
        state["made"].append(torch.device(device))
        return real_empty(shape, dtype=dtype).fill_(0xAB).as_subclass(_DeviceBuffer)

    def to(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, torch.device) and target.type == "cuda":
            state["moved"].append((target, tuple(self.shape), kwargs.get("non_blocking", False)))
            return self.clone()
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(store_module.torch, "empty", empty)
    monkeypatch.setattr(torch.Tensor, "to", to)
    return state


def test_an_epoch_of_exactly_a_quarter_of_the_free_memory_is_copied(store, gpu):
    gpu["free"] = 4 * store.epoch_bytes
    store.load_epoch(1, "cuda:0")
    assert gpu["asked"] == [torch.device("cuda:0")] and gpu["made"] == [torch.device("cuda:0")]
    assert gpu["copies"] == [9]  # one block of 64 MiB at most: the whole epoch, each record once
    assert torch.equal(store._epoch[1], torch.from_numpy(np.asarray(store._map(1))))


def test_records_larger_than_a_copy_block_are_copied_whole(tmp_path, gpu):
    """int8 records of 2**25 classes (just over 32 MiB each): every record is a copy block of its own."""
    classes = 1 << 25
    store = OutputStore.open(tmp_path, "big", key="k", num_samples=2, num_classes=classes, form="int8")
    records = np.zeros(2, dtype=store.dtype)
    records["q"][1, ::4096] = 7
    records["lo"], records["step"] = [1.0, 2.0], [0.5, 0.25]
    with store.filling():
        store.write_epoch(1, [(np.arange(2), records)])
    gpu["free"] = 1 << 40
    store.load_epoch(1, "cuda:0")
    assert gpu["made"] == [torch.device("cuda:0")]
    assert gpu["copies"] == [1, 1]  # blocks of 64 MiB at most: one record each, each record once
    got = store.lookup(1, torch.tensor([1, 0]))
    assert torch.equal(got["q"], torch.from_numpy(records["q"][[1, 0]]))
    assert got["lo"].tolist() == [2.0, 1.0] and got["step"].tolist() == [0.25, 0.5]


def test_an_epoch_too_large_for_the_gpu_is_gathered_on_the_host_and_the_batch_moved(store, gpu):
    expected = store.lookup(1, torch.tensor([5, 1]))
    store.release()
    gpu["free"] = 4 * store.epoch_bytes - 1
    got = store.lookup(1, GpuIndices(torch.tensor([5, 1])))
    assert gpu["asked"] == [torch.device("cuda:0")] and gpu["made"] == []  # kept on the host
    # the batch's records only, without waiting for the GPU
    assert gpu["moved"] == [(torch.device("cuda:0"), (2, 4 * C), True)]
    assert torch.equal(got["logits"], expected["logits"])


# ----------------------------------------------------------------------------- cache build, decoding


def test_building_the_logit_cache_fills_in_batches_of_the_given_size_and_reports_each(tmp_path):
    from rld.data import ArraySplit, DeviceLoader
    from rld.engine.teacher import TeacherForward
    from rld.fast.cache import open_teacher_cache
    from rld.models import create_model

    rng = np.random.default_rng(0)
    split = ArraySplit(rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8), np.zeros(3, dtype=np.int64))
    loader = DeviceLoader(split, 4, device="cpu", mean=(0.5,) * 3, std=(0.25,) * 3, train=True, flip=False)
    torch.manual_seed(7)
    forward = TeacherForward(create_model("resnet8", num_classes=10).eval().requires_grad_(False), amp=False)
    cfg = resolve("demo/rld", ["train.teacher_cache=lazy", f"train.cache_dir={tmp_path}"])
    provider = open_teacher_cache(cfg, forward, loader, 10)
    calls = []
    assert provider.build(batch_size=100, progress=lambda done, total: calls.append((done, total))) == 3 * 81
    assert calls == [(100, 243), (200, 243), (243, 243)]  # 81 unflipped views of each of the 3 images


def test_topk_records_decode_on_the_device_they_are_on():
    """The meta device stands in for a GPU: every tensor of the decoding stays where the records are."""
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 2, 3, 9])
    record = {k: v.to("meta") for k, v in forms.encode(logits, targets, "topk", 3).items()}
    out = forms.decode(record, targets.to("meta"), 10, "topk")
    assert (out.device, out.shape, out.dtype) == (torch.device("meta"), (4, 10), torch.float32)
