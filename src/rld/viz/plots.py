"""One function per figure kind of ``rld plot``: compute the numbers, draw, write the PNG."""

from __future__ import annotations

import logging
from pathlib import Path

from rld.experiments.runs import RunRecord
from rld.viz import compute, figures

log = logging.getLogger("rld")


def _label(run_dir: str | Path) -> str:
    record = RunRecord.load(run_dir)
    cfg = record.config
    teacher = f"{cfg.model.teacher} → " if cfg.model.teacher else ""
    return f"{record.name}: {teacher}{cfg.model.student}, {cfg.method.name}"


def plot_tsne(
    runs: list[str | Path],
    out: str | Path,
    *,
    data_path: str | None = None,
    max_samples: int | None = compute.DEFAULT_MAX_SAMPLES,
    device: str = "auto",
    seed: int = 0,
) -> Path:
    """Fig. 4: t-SNE of each run's pooled test features, side by side."""
    panels = []
    for run in runs:
        feats = compute.pooled_features(run, data_path=data_path, max_samples=max_samples, device=device)
        log.info("t-SNE of %d pooled features of %s", len(feats.labels), run)
        panels.append((_label(run), compute.tsne_embedding(feats.features, seed=seed), feats))
    return figures.save(figures.tsne_figure(panels), out)


def plot_logit_difference(
    runs: list[str | Path],
    out: str | Path,
    *,
    data_path: str | None = None,
    device: str = "auto",
    teacher: str | Path | None = None,
) -> Path:
    """Fig. 5: per-class mean |teacher − student| logit difference of each run, as heat maps
    (``teacher``: the teacher checkpoint, when it has moved since the runs were trained)."""
    panels, classes = [], []
    for run in runs:
        matrix = compute.logit_difference_matrix(run, data_path=data_path, device=device, teacher=teacher)
        panels.append((_label(run), matrix))
        classes = compute.run_data(RunRecord.load(run), data_path, device).classes
    return figures.save(figures.logit_difference_figure(panels, list(classes)), out)


def plot_time_vs_accuracy(runs: list[str | Path], out: str | Path, *, metric: str = "best") -> Path:
    """Fig. 6: training time per batch vs top-1, bubble size from the method's extra parameters."""
    points = compute.time_accuracy_points(runs, metric=metric)
    return figures.save(figures.time_accuracy_figure(points, metric), out)


def plot_class_correlation(
    run: str | Path,
    out: str | Path,
    *,
    classes: list[str] | None = None,
    k: int = 10,
    sample: int | None = None,
    model: str = "student",
    data_path: str | None = None,
    device: str = "auto",
    teacher: str | Path | None = None,
) -> Path:
    """Fig. 7: the top-k logits averaged over each chosen class's test samples, and of one sample."""
    panels = compute.class_top_logits(
        run, classes, k=k, sample=sample, model=model, data_path=data_path, device=device, teacher=teacher
    )
    title = f"Top-{k} logits of the {model} of {_label(run)} (red: the class itself)"
    return figures.save(figures.class_correlation_figure(panels, title), out)
