"""The numbers behind the figures, computed from run folders (no drawing here).

Every function takes run folders written by ``rld train`` / ``rld reproduce``. Models are the
run's ``checkpoints/best.pt`` student and, where a teacher is needed, the run's
``model.teacher`` loaded from its ``model.teacher_checkpoint``; data is the run's own test split
(``data_path`` points elsewhere when the data set has moved), in data-set order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rld.data import DataBundle, build_data
from rld.errors import UserError
from rld.experiments.runs import RunRecord

DEFAULT_MAX_SAMPLES = 2000
FIG7_CLASSES = ("leopard", "television", "dinosaur")  # the classes of the paper's Fig. 7


def _device(name: str) -> torch.device:
    """The device ``--device`` names, as training resolves it (auto, cpu, cuda, cuda:N; one that is not
    there, or of another kind, is refused in one line)."""
    from rld.engine.distributed import World
    from rld.engine.trainer import resolve_device

    return resolve_device(name, World())


@lru_cache(maxsize=2)
def _data(name: str, path: str | None, eval_batch_size: int, device: str, image_size: int | None = None) -> DataBundle:
    return build_data(
        name,
        path,
        batch_size=eval_batch_size,
        eval_batch_size=eval_batch_size,
        device=device,
        seed=0,
        image_size=image_size,
    )


def run_data(record: RunRecord, data_path: str | None = None, device: str = "auto") -> DataBundle:
    """The run's data set (its test split is what the figures use)."""
    cfg = record.config
    path = str(Path(data_path).expanduser()) if data_path else cfg.data.path
    return _data(cfg.data.name, path, cfg.data.eval_batch_size, str(_device(device)), cfg.data.image_size)


def load_student(record: RunRecord, num_classes: int, device: str = "auto") -> nn.Module:
    """The run's student at its best epoch (``checkpoints/best.pt``), in eval mode."""
    from rld.models import create_model, load_checkpoint

    path = record.path / "checkpoints" / "best.pt"
    if not path.is_file():
        raise UserError(f"{record.path} has no checkpoints/best.pt: the run has not finished an epoch")
    cfg = record.config
    from rld.engine.predictor import own_prediction, predictor

    if own_prediction(cfg):  # SimKD: the student's feature through the method's projector and classifier
        from rld.engine import checkpoint as ckpt

        return predictor(cfg, ckpt.load_run(path)).to(_device(device)).eval()
    model = create_model(cfg.model.student, num_classes=num_classes, dataset=cfg.model.dataset)
    load_checkpoint(model, path)
    return model.to(_device(device)).eval()


def teacher_checkpoint(record: RunRecord, teacher: str | Path | None = None) -> Path:
    """The run's teacher checkpoint: ``teacher`` (when the file has moved) or the recorded path.

    When the run recorded its teacher's SHA-256 (``teacher.json``), a file with other bytes is refused."""
    from rld.engine.checkpoint import TEACHER_RECORD, read_teacher_record, sha256_file
    from rld.models.sources import resolve_checkpoint

    m = record.config.model
    if not m.teacher or not m.teacher_checkpoint:
        raise UserError(
            f"{record.path} was trained without a teacher (method {record.config.method.name}); choose a distilled run"
        )
    path = resolve_checkpoint(teacher or m.teacher_checkpoint)
    if not path.is_file():
        how = "" if teacher else f" (recorded in {record.path}/config.yaml)"
        raise UserError(f"teacher checkpoint {path}{how} does not exist; pass --teacher CKPT to point at it")
    saved = read_teacher_record(record.path)
    if teacher and saved and saved.get("sha256") and sha256_file(path) != saved["sha256"]:
        raise UserError(
            f"{path} is not the teacher {record.path} was distilled from (its SHA-256 differs from "
            f"{TEACHER_RECORD}, which names {saved.get('checkpoint')})"
        )
    return path


def load_teacher(
    record: RunRecord, num_classes: int, device: str = "auto", teacher: str | Path | None = None
) -> nn.Module:
    """The run's teacher (``model.teacher`` with :func:`teacher_checkpoint`), in eval mode."""
    from rld.models import create_model, load_checkpoint

    m = record.config.model
    path = teacher_checkpoint(record, teacher)
    model = create_model(m.teacher, num_classes=num_classes, dataset=m.dataset)
    load_checkpoint(model, path)
    return model.to(_device(device)).eval()


@dataclass
class TestOutputs:
    """A model's outputs on the whole test split, in data-set order."""

    logits: torch.Tensor  # (N, C) float32, on the CPU
    pooled: torch.Tensor  # (N, D)
    targets: torch.Tensor  # (N,) int64


@torch.no_grad()
def test_outputs(model: nn.Module, data: DataBundle) -> TestOutputs:
    logits, pooled, targets = [], [], []
    for batch in data.test:
        out = model.forward_features(batch.images)
        logits.append(out.logits.float().cpu())
        pooled.append(out.pooled.float().cpu())
        targets.append(batch.targets.cpu())
    return TestOutputs(torch.cat(logits), torch.cat(pooled), torch.cat(targets))


# ----------------------------------------------------------------------------- Fig. 4: t-SNE


def subsample(n: int, max_samples: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_samples`` of ``n`` items (all of them when n is small enough)."""
    if max_samples is not None and max_samples < 1:
        raise UserError(f"--max-samples must be >= 1, got {max_samples}")
    if max_samples is None or n <= max_samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))


@dataclass
class PooledFeatures:
    features: np.ndarray  # (n, D) the students' pooled features
    labels: np.ndarray  # (n,)
    indices: np.ndarray  # (n,) positions in the test split
    classes: list[str]


def pooled_features(
    run_dir: str | Path,
    *,
    data_path: str | None = None,
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    device: str = "auto",
) -> PooledFeatures:
    """The best student's pooled test features (``forward_features(x).pooled``), the t-SNE input."""
    record = RunRecord.load(run_dir)
    data = run_data(record, data_path, device)
    outputs = test_outputs(load_student(record, data.num_classes, device), data)
    keep = subsample(len(outputs.targets), max_samples)
    return PooledFeatures(outputs.pooled.numpy()[keep], outputs.targets.numpy()[keep], keep, list(data.classes))


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE embedding (scikit-learn, PCA initialisation) of ``features (n, D)`` → ``(n, 2)``."""
    from sklearn.manifold import TSNE

    n = features.shape[0]
    if n < 4:
        raise UserError(f"t-SNE needs at least 4 test samples, got {n}")
    perplexity = float(min(30.0, (n - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(features.astype(np.float64))


# ----------------------------------------------------------------------------- Fig. 5: logit difference


def logit_difference_matrix(
    run_dir: str | Path, *, data_path: str | None = None, device: str = "auto", teacher: str | Path | None = None
) -> np.ndarray:
    """Per-class mean absolute teacher–student logit difference on the test set: ``(C,)``.

    Entry ``c`` is ``mean_n |z_T[n, c] − z_S[n, c]|`` over every test sample ``n``, with the
    run's best student and its teacher.
    """
    record = RunRecord.load(run_dir)
    data = run_data(record, data_path, device)
    student = test_outputs(load_student(record, data.num_classes, device), data)
    outputs = test_outputs(load_teacher(record, data.num_classes, device, teacher), data)
    return (outputs.logits.double() - student.logits.double()).abs().mean(dim=0).numpy()


def grid_shape(num_classes: int) -> tuple[int, int]:
    """A near-square (rows, columns) layout for ``num_classes`` cells: 100 → 10×10, 10 → 3×4."""
    cols = int(np.ceil(np.sqrt(num_classes)))
    rows = int(np.ceil(num_classes / cols))
    return rows, cols


def as_grid(values: np.ndarray) -> np.ndarray:
    """``values (C,)`` laid out row by row in :func:`grid_shape`, unused cells NaN."""
    rows, cols = grid_shape(len(values))
    grid = np.full(rows * cols, np.nan)
    grid[: len(values)] = values
    return grid.reshape(rows, cols)


# ----------------------------------------------------------------------------- Fig. 6: time vs accuracy


def extra_parameters(record: RunRecord) -> int:
    """Trainable parameters the method adds to the student (CTKD's temperature: 1; a feature method's
    regressors, connectors, embeddings: recorded in the run's checkpoint)."""
    from rld.methods import build_method, get_spec

    if not get_spec(record.config.method.name).reads_features:
        return build_method(record.config.method).extra_parameters()
    from rld.engine import checkpoint as ckpt

    path = record.path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise UserError(f"{record.path} has no checkpoints/last.pt: the run has not finished an epoch")
    count = ckpt.load_run(path).get("method_parameters")  # never unpickles code (weights_only)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise UserError(f"checkpoint {path} records no count of the method's parameters: it is damaged")
    return count


@dataclass
class TimeAccuracy:
    name: str
    method: str
    ms_per_batch: float
    top1: float
    extra_params: int


def time_accuracy_points(run_dirs: list[str | Path], metric: str = "best") -> list[TimeAccuracy]:
    """For each run: training ms per batch (``train_time / steps``, averaged over epochs), test top-1
    (best or last epoch) and the method's extra trainable parameters."""
    points = []
    for run_dir in run_dirs:
        record = RunRecord.load(run_dir)
        top1 = record.top(metric)
        if top1 is None:
            raise UserError(f"{record.path} has no finished epoch yet")
        points.append(
            TimeAccuracy(record.name, record.config.method.name, record.ms_per_batch, top1, extra_parameters(record))
        )
    return points


# ----------------------------------------------------------------------------- Fig. 7: class correlation


def resolve_classes(wanted: list[str] | None, classes: list[str]) -> list[int]:
    """Class names or indices → indices. Default: the paper's Fig. 7 classes, else the first three."""
    if not wanted:
        if all(c in classes for c in FIG7_CLASSES):
            return [classes.index(c) for c in FIG7_CLASSES]
        chosen = list(range(min(3, len(classes))))
        logging.getLogger("rld").info(
            "the data has no classes %s (the paper's Fig. 7); showing the first classes %s instead (--classes)",
            ", ".join(FIG7_CLASSES),
            ", ".join(classes[i] for i in chosen),
        )
        return chosen
    out = []
    for item in wanted:
        item = item.strip()
        if item in classes:
            out.append(classes.index(item))
        elif item.isdigit() and int(item) < len(classes):
            out.append(int(item))
        else:
            shown = ", ".join(classes[:12]) + (", …" if len(classes) > 12 else "")
            raise UserError(f"unknown class {item!r}: give a name ({shown}) or an index 0..{len(classes) - 1}")
    return out


@dataclass
class TopLogits:
    """The ``k`` largest logits of one panel, largest first."""

    title: str
    target: int  # the class the panel is about
    indices: np.ndarray  # (k,) class indices
    names: list[str]
    values: np.ndarray  # (k,)
    samples: int  # how many test samples were averaged (1 for a single sample)


def class_top_logits(
    run_dir: str | Path,
    classes: list[str] | None = None,
    *,
    k: int = 10,
    sample: int | None = None,
    model: str = "student",
    data_path: str | None = None,
    device: str = "auto",
    teacher: str | Path | None = None,
) -> list[TopLogits]:
    """Fig. 7: for each chosen class, the top-``k`` logits averaged over its test samples; then the
    top-``k`` logits of one sample (test index ``sample``; default the first test sample of the
    last chosen class). ``model``: the run's best ``student`` or its ``teacher``."""
    record = RunRecord.load(run_dir)
    data = run_data(record, data_path, device)
    if model not in ("student", "teacher"):
        raise UserError(f"--model must be student or teacher, got {model!r}")
    if model == "student":
        net = load_student(record, data.num_classes, device)
    else:
        net = load_teacher(record, data.num_classes, device, teacher)
    out = test_outputs(net, data)
    names = list(data.classes)
    chosen = resolve_classes(classes, names)
    if k < 1:
        raise UserError(f"--k must be >= 1, got {k}")
    k = min(k, len(names))
    panels = []
    for c in chosen:
        mask = out.targets == c
        if not bool(mask.any()):
            raise UserError(f"class {names[c]!r} has no test samples")
        mean = out.logits[mask].double().mean(dim=0)
        values, idx = torch.topk(mean, k)
        panels.append(
            TopLogits(
                f"{names[c]}: mean over {int(mask.sum())} test sample{'s' if int(mask.sum()) != 1 else ''}",
                c,
                idx.numpy(),
                [names[i] for i in idx.tolist()],
                values.numpy(),
                int(mask.sum()),
            )
        )
    if sample is None:
        sample = int(torch.nonzero(out.targets == chosen[-1])[0, 0])
    if not 0 <= sample < len(out.targets):
        raise UserError(f"--sample must be a test index in 0..{len(out.targets) - 1}, got {sample}")
    target = int(out.targets[sample])
    values, idx = torch.topk(out.logits[sample].double(), k)
    panels.append(
        TopLogits(
            f"one {names[target]} sample (test #{sample})",
            target,
            idx.numpy(),
            [names[i] for i in idx.tolist()],
            values.numpy(),
            1,
        )
    )
    return panels
