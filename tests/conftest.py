"""Suite-wide settings and the helpers several test modules share.

* One intra-op thread per process. ``make test`` runs two workers on two cores: a second thread
  per worker only spins (a demo epoch takes 3x longer), and the processes the tests start inherit
  the same setting, so a run in a subprocess and one in the test process compute identically.
* The DKD/RLD loss kernel runs eagerly (compiling takes seconds per process). The tests that take
  the ``compiled_losses`` fixture, and ``test_losses.py``'s kernel tests, run the compiled kernel
  that users get by default.
* Under ``make mutation`` (``RLD_MUTATION`` set; see docs/testing.md) the code under test is a
  mutated copy whose functions torch.compile cannot trace: ``compiled_losses`` runs the kernel
  eagerly there (the tests that check compiling itself are deselected), and the processes the
  tests start import the same mutated copy.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

os.environ["RLD_COMPILE_LOSSES"] = "0"
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

MUTATION = bool(os.environ.get("RLD_MUTATION"))
if MUTATION:  # the processes the tests start import the mutated copy beside tests/, as this one does
    _src = str(Path(__file__).resolve().parents[1] / "src")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_src, os.environ.get("PYTHONPATH")) if p)


def _forget_rld_caches(package: str = "rld") -> None:
    """Clear the ``functools`` caches of the modules of ``package`` (``rld``, ``rld.config``, ...)."""
    for name, module in list(sys.modules.items()):
        if name == package or name.startswith(package + "."):
            for value in list(vars(module).values()):
                if callable(getattr(value, "cache_clear", None)) and getattr(value, "__module__", None) == name:
                    value.cache_clear()


def pytest_collection_modifyitems(config, items):
    """Under ``make mutation`` (mutmut forks each mutant's tests from a process that has collected
    them): forget what the mutated package's caches remember, since the unmutated code computed it
    there; and run the fastest tests first, since mutmut stops at the first failure (durations from
    its statistics, in the mutants/ folder it runs the tests from)."""
    if not MUTATION:
        return
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")  # e.g. rld.losses.kd.x_kd_loss__mutmut_3
    if "__mutmut_" in mutant:  # the caches of the mutated package (those of the others are unchanged)
        _forget_rld_caches(".".join(mutant.split(".")[:2]))
    stats = Path("mutmut-stats.json")
    if stats.is_file():
        import json

        duration = json.loads(stats.read_text()).get("duration_by_test", {})
        slowest = max(duration.values(), default=0.0) + 1.0
        items.sort(key=lambda item: duration.get(item.nodeid, slowest))


@pytest.fixture(autouse=MUTATION)
def _each_test_computes_what_rld_caches():
    """While mutmut records which test calls which function, every test starts with empty caches, so
    that a cached function is recorded for every test that uses it, not only for the first."""
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        _forget_rld_caches()


TIME_COLUMNS = ("epoch_time", "train_time")
HAS_CXX = any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++"))


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A resnet20 teacher (10 classes) in the shared checkpoint format; random weights (seed 123)."""
    from rld.models import create_model

    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save({"model": create_model("resnet20", num_classes=10).state_dict(), "epoch": 240}, path)
    return path


@pytest.fixture(scope="session")
def teacher(tmp_path_factory) -> Path:
    """A resnet8 teacher (10 classes) in the shared checkpoint format; random weights (seed 11)."""
    from rld.models import create_model

    torch.manual_seed(11)
    path = tmp_path_factory.mktemp("teacher") / "resnet8.pt"
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, path)
    return path


@pytest.fixture()
def tiny_cifar(tmp_path) -> Path:
    """A CIFAR-format .npz: 128 training and 64 test images of random pixels, 10 classes."""
    return write_tiny_cifar(tmp_path / "tiny.npz")


def write_tiny_cifar(path: Path) -> Path:
    """Write the ``tiny_cifar`` data set (always the same pixels and labels) to ``path``."""
    import numpy as np

    rng = np.random.default_rng(5)
    np.savez(
        path,
        train_x=rng.integers(0, 256, size=(128, 32, 32, 3), dtype=np.uint8),
        train_y=rng.integers(0, 10, size=128),
        test_x=rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8),
        test_y=rng.integers(0, 10, size=64),
        classes=np.array([f"c{i}" for i in range(10)]),
    )
    return path


def write_two_image_cifar(path: Path) -> Path:
    """A CIFAR-format .npz of two training and two test images (random pixels, labels 0 and 1, 10
    classes): a teacher-logit cache of all its views is small (2 x 162 entries)."""
    import numpy as np

    rng = np.random.default_rng(3)
    images = {k: rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8) for k in ("train_x", "test_x")}
    np.savez(path, **images, train_y=np.arange(2), test_y=np.arange(2), classes=np.array([str(i) for i in range(10)]))
    return path


def metric_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` without the wall-time columns (the only ones allowed to differ)."""
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(f)]


def metric_lines(run: Path) -> list[str]:
    """The lines of a run's ``metrics.csv`` as written, wall times included: rows a resume kept
    stay the same text, rows trained again would not (their times differ)."""
    return (Path(run) / "metrics.csv").read_text().splitlines()


def assert_user_error(code: int, err: str, message: str) -> None:
    """A user error as the CLI reports it: exit status 2 and one line ``rld: error: …`` (argument
    errors: ``rld COMMAND: error: …``) holding ``message``."""
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("rld: error: ") or (err.startswith("rld ") and ": error: " in err), err
    assert message in err, err


def folder_snapshot(root: Path) -> dict[str, tuple[bytes | None, int, int]]:
    """Every file and folder under ``root`` (the folder itself too): its bytes (None for a folder),
    modification time in ns and inode number. Equal snapshots mean an untouched folder: a file
    rewritten with the same bytes, or replaced by a renamed copy, differs in its time or inode; a
    file created and removed again changes its folder's time."""

    def entry(p: Path) -> tuple[bytes | None, int, int]:
        st = p.stat()
        return (p.read_bytes() if p.is_file() else None), st.st_mtime_ns, st.st_ino

    root = Path(root)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): entry(p) for p in [root, *sorted(root.rglob("*"))]}


def assert_same_tensors(a, b, where: str = "") -> None:
    """Nested dicts/lists of tensors and plain values, equal bit for bit (``torch.equal`` for tensors)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, sorted(a), sorted(b))
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def assert_same_run_state(a: dict, b: dict, *, ignore_config: tuple[str, ...] = ()) -> None:
    """Two ``last.pt`` states hold the same training state bit for bit: model, optimizer, method
    state, epoch, best, torch's RNG state and the history (without its wall times).
    ``ignore_config``: dotted config keys allowed to differ (execution settings changed on resume)."""
    for key in ("model", "optimizer", "method"):
        assert_same_tensors(a[key], b[key], key)
    # torch's generator drives the run (initialisation, the data order comes from seed and epoch);
    # numpy's and Python's are saved too but never seeded or used by training
    assert_same_tensors(a["rng"]["torch"], b["rng"]["torch"], "rng.torch")
    assert (a["epoch"], a["best"], a["num_classes"]) == (b["epoch"], b["best"], b["num_classes"])
    strip = [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in a["history"]]
    assert strip == [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in b["history"]]
    ca, cb = a["config"], b["config"]
    for dotted in ignore_config:
        section, key = dotted.split(".")
        ca, cb = {**ca, section: {**ca[section], key: None}}, {**cb, section: {**cb[section], key: None}}
    assert ca == cb


def load_last(run: Path) -> dict:
    return torch.load(Path(run) / "checkpoints" / "last.pt", weights_only=True)


@pytest.fixture
def loss_compiler():
    """``rld.losses._fused`` with compiling on, a compile counter (inductor) as backend, and dynamo
    reset around the test; yields ``(module, counter)``."""
    import torch._dynamo.testing

    from rld.losses import _fused

    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    _fused.use_compiled(True)
    _fused._Compiled.fn, _fused._Compiled.backend = None, counter
    _fused._Compiled.failed.clear()
    yield _fused, counter
    _fused.use_compiled(None)
    _fused._Compiled.fn, _fused._Compiled.backend = None, "inductor"
    _fused._Compiled.failed.clear()
    torch._dynamo.reset()


def assert_compiled(fused, counter) -> None:
    """The loss kernel was compiled and never fell back to eager."""
    assert not fused._Compiled.failed, f"the loss kernel could not be compiled on {fused._Compiled.failed}"
    assert counter.frame_count > 0, "the loss kernel was never compiled"


@pytest.fixture
def compiled_losses(request):
    """The DKD/RLD kernel compiled as users run it by default. Skipped only without a C++ compiler;
    with one, a compile that breaks (and falls back to eager) fails the test. Under a mutation run
    the kernel runs eagerly (yields the module and no counter)."""
    if MUTATION:
        from rld.losses import _fused

        yield _fused, None
        return
    if not HAS_CXX:
        pytest.skip("torch.compile needs a C++ compiler on the CPU (without one the kernel runs eagerly)")
    loss_compiler = request.getfixturevalue("loss_compiler")
    yield loss_compiler
    assert_compiled(*loss_compiler)


def fresh_compile(fused) -> None:
    """Forget the compiled kernel, as a new process would (the next call compiles it again)."""
    torch._dynamo.reset()
    fused._Compiled.fn = None


def run_rld(*args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    """``python -m rld.cli ARGS`` in a new process (optionally with ``RLD_FAULT`` set; see rld.engine.faults)."""
    env = {k: v for k, v in os.environ.items() if k != "RLD_FAULT"}
    if fault:
        env["RLD_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "rld.cli", *args], env=env, capture_output=True, text=True)


@contextmanager
def rld_processes(root: Path, jobs: dict[str, tuple[list[str], str | None]]):
    """``python -m rld.cli ARGS`` processes started together, one per job ``name -> (ARGS, RLD_FAULT
    or None)``, each writing ``root/<name>.log``; yields ``name -> (process, log file)``. On leaving,
    the processes still running are killed and the logs closed."""
    procs = {}
    try:
        for name, (args, fault) in jobs.items():
            env = {k: v for k, v in os.environ.items() if k != "RLD_FAULT"}
            if fault:
                env["RLD_FAULT"] = fault
            log = open(root / f"{name}.log", "w")
            proc = subprocess.Popen([sys.executable, "-m", "rld.cli", *args], env=env, stdout=log, stderr=log)
            procs[name] = (proc, log)
        yield procs
    finally:
        for proc, log in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


# resnet8 on 16x16 inputs with no logger: a fraction of a second per run (image-folder tests)
TINY_RUN = [
    "model.student=resnet8",
    "model.dataset=cifar100",
    "model.student_weights=null",
    "data.image_size=16",
    "data.num_workers=0",
    "train.batch_size=4",
    "train.epochs=1",
    "train.warmup_epochs=0",
    "train.loggers=[]",
]


def write_class_folders(root: Path, classes: tuple[str, ...] = ("a", "b"), size: int = 12) -> Path:
    """One folder of six size x size PNG images (random pixels, seed 0) per class under ``root``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def save_hf_folder(root: Path, out: Path, classes: tuple[str, ...]) -> Path:
    """The PNG images of ``root/<class>/*.png`` as a Hugging Face ``datasets`` folder with one
    ``train`` split (``image``, ``label``), saved to ``out``; skips the test without ``datasets``."""
    from PIL import Image

    datasets = pytest.importorskip("datasets")
    files = sorted(root.rglob("*.png"))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(classes))})
    rows = {"image": [Image.open(f).copy() for f in files], "label": [classes.index(f.parent.name) for f in files]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(str(out))
    return out


def method_context(student, teacher, labels=None, num_classes: int = 3, input_shape=(3, 8, 8)):
    """A :class:`rld.methods.MethodContext` of two models for 8×8 inputs, with training ``labels``
    (CRD's) or none."""
    from rld.methods import MethodContext

    return MethodContext(
        student=student,
        teacher=teacher,
        num_classes=num_classes,
        input_shape=input_shape,
        num_samples=0 if labels is None else len(labels),
        train_targets=labels,
        seed=0,
    )


def method_refusal(params: dict, ctx=None) -> str:
    """The UserError message of checking a method's ``params`` (building it, given ``ctx``)."""
    from rld.errors import UserError
    from rld.methods import build_method, method_params

    with pytest.raises(UserError) as caught:
        if ctx is None:
            method_params(params)
        else:
            build_method(params, ctx)
    return str(caught.value)


def random_rgb(n: int, h: int, w: int, seed: int, low: int = 0, high: int = 256):
    """``n`` random ``h``×``w`` RGB images, (N, H, W, 3) uint8 (numpy)."""
    import numpy as np

    return np.random.default_rng(seed).integers(low, high, (n, h, w, 3), dtype=np.uint8)


def to_nchw(images) -> torch.Tensor:
    """(N, H, W, 3) uint8 images → (N, 3, H, W) float32 pixel values."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float()


def to_nhwc(x: torch.Tensor):
    """(N, 3, H, W) → (N, H, W, 3) numpy, for comparing with PIL's images."""
    return x.permute(0, 2, 3, 1).numpy()


class TickingClock:
    """A stand-in for the ``time`` module of rld.fast.bench: ``perf_counter`` advances by exactly one
    second at every reading, so each timed step lasts 1000 ms; ``readings`` counts them."""

    def __init__(self):
        self.readings = 0

    def perf_counter(self) -> float:
        self.readings += 1
        return float(self.readings)


class GpuIndices:
    """Sample indices of a batch on a (simulated) GPU: ``device`` says cuda:0, ``cpu()`` gives the
    values, indexing keeps the kind."""

    device = torch.device("cuda", 0)

    def __init__(self, values: torch.Tensor):
        self.values = values

    def cpu(self) -> torch.Tensor:
        return self.values

    def __getitem__(self, at) -> GpuIndices:
        return GpuIndices(self.values[at])
