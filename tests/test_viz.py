"""Figures (t-SNE, logit difference, time vs accuracy, class correlation) and the HTML report.

The runs are tiny: a subset of the embedded digits (20 training and 10 test images per class)
saved as an .npz, a resnet8 teacher trained for one epoch and KD / RLD resnet8 students for two.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from conftest import assert_user_error
from rld.cli import main
from rld.config import resolve
from rld.data import build_data, load_digits
from rld.engine import train
from rld.errors import UserError
from rld.experiments.runs import RunRecord
from rld.models import create_model, load_checkpoint
from rld.viz import (
    class_top_logits,
    extra_parameters,
    grid_shape,
    logit_difference_matrix,
    pooled_features,
    time_accuracy_points,
)
from rld.viz.compute import as_grid, resolve_classes, subsample

N_TEST = 100
FAST = ["train.batch_size=256", "data.eval_batch_size=512", "data.name=cifar100"]


def _digits_subset(path: Path) -> Path:
    digits = load_digits()

    def take(split, per_class):
        keep = np.concatenate([np.flatnonzero(split.y == c)[:per_class] for c in range(10)])
        keep.sort()
        return split.x[keep], split.y[keep]

    train_x, train_y = take(digits.train, 20)
    test_x, test_y = take(digits.test, N_TEST // 10)
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    np.savez(path, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, classes=names)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("viz")
    data = _digits_subset(root / "digits.npz")
    common = [*FAST, f"data.path={data}"]
    teacher = root / "runs" / "teacher"
    train(resolve("demo/teacher", [*common, "model.student=resnet8", "train.epochs=1"]), teacher)
    ckpt = teacher / "checkpoints" / "best.pt"
    out = {"root": root / "runs", "teacher": teacher, "data": data}
    for method in ("kd", "rld"):
        cfg = resolve(
            f"demo/{method}",
            [*common, "model.teacher=resnet8", f"model.teacher_checkpoint={ckpt}", "train.epochs=2"],
        )
        out[method] = root / "runs" / method
        train(cfg, out[method])
    return out


def _models_and_data(run: Path):
    record = RunRecord.load(run)
    cfg = record.config
    data = build_data("cifar100", cfg.data.path, batch_size=64, device="cpu", seed=0)
    student = create_model(cfg.model.student, num_classes=10)
    load_checkpoint(student, run / "checkpoints" / "best.pt")
    teacher = create_model(cfg.model.teacher, num_classes=10)
    load_checkpoint(teacher, cfg.model.teacher_checkpoint)
    x = torch.cat([b.images for b in data.test])
    y = torch.cat([b.targets for b in data.test])
    return student.eval(), teacher.eval(), x, y


def _pixels_vary(path: Path) -> float:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    return float(image[..., :3].std())


# ----------------------------------------------------------------------------- the numbers


def test_logit_difference_matrix_equals_a_direct_computation(runs):
    student, teacher, x, _ = _models_and_data(runs["rld"])
    with torch.no_grad():
        expected = (teacher(x).double() - student(x).double()).abs().mean(dim=0).numpy()
    got = logit_difference_matrix(runs["rld"], device="cpu")
    assert got.shape == (10,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, logit_difference_matrix(runs["kd"], device="cpu"))


def test_tsne_input_is_the_pooled_feature_of_every_test_sample(runs):
    student, _, x, y = _models_and_data(runs["kd"])
    feats = pooled_features(runs["kd"], device="cpu")
    dim = student.get_classifier().in_features
    assert feats.features.shape == (N_TEST, dim)
    with torch.no_grad():
        expected = student.forward_features(x).pooled.numpy()
    np.testing.assert_allclose(feats.features, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(feats.labels, y.numpy())
    assert feats.classes[3] == "three"
    few = pooled_features(runs["kd"], max_samples=40, device="cpu")
    assert few.features.shape == (40, dim)
    np.testing.assert_allclose(few.features, expected[few.indices], rtol=1e-5, atol=1e-5)


def test_class_correlation_top10_equals_torch_topk(runs):
    student, _, x, y = _models_and_data(runs["rld"])
    with torch.no_grad():
        logits = student(x).double()
    panels = class_top_logits(runs["rld"], ["three", "7"], k=10, sample=5, device="cpu")
    assert [p.target for p in panels] == [3, 7, int(y[5])]
    for panel, c in zip(panels[:2], (3, 7)):
        values, idx = torch.topk(logits[y == c].mean(dim=0), 10)
        np.testing.assert_array_equal(panel.indices, idx.numpy())
        np.testing.assert_allclose(panel.values, values.numpy(), rtol=1e-6)
        assert panel.samples == 10
    values, idx = torch.topk(logits[5], 10)
    np.testing.assert_array_equal(panels[2].indices, idx.numpy())
    assert panels[2].samples == 1 and "test #5" in panels[2].title
    default = class_top_logits(runs["rld"], None, k=4, device="cpu")  # first three classes, then one sample
    assert [p.target for p in default] == [0, 1, 2, 2] and len(default[0].values) == 4


def _run_folder(path: Path, preset: str, rows: list[tuple[float, float, int]]) -> Path:
    """A run folder with the given (test_top1, train_time, steps) per epoch."""
    from rld.config import to_yaml

    path.mkdir(parents=True)
    (path / "config.yaml").write_text(to_yaml(resolve(preset)))
    with open(path / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", "test_top1", "test_top5", "epoch_time", "train_time", "steps"])
        for epoch, (top1, train_time, steps) in enumerate(rows, 1):
            w.writerow([epoch, 1.0, top1, 90.0, train_time + 1.0, train_time, steps])
    return path


def test_time_vs_accuracy_points_come_from_metrics_csv(tmp_path):
    # ms per batch = mean over epochs of 1000 · train_time / steps; top-1 of the best or the last epoch
    kd = _run_folder(
        tmp_path / "kd", "cifar100/resnet56-resnet20/kd", [(40.0, 3.0, 10), (55.5, 6.0, 10), (50.0, 2.0, 5)]
    )
    ctkd = _run_folder(tmp_path / "ctkd", "cifar100/resnet56-resnet20/ctkd", [(61.25, 0.5, 4)])
    points = time_accuracy_points([kd, ctkd])
    assert [(p.name, p.method, p.ms_per_batch, p.top1, p.extra_params) for p in points] == [
        ("kd", "kd", (300.0 + 600.0 + 400.0) / 3, 55.5, 0),
        ("ctkd", "ctkd", 125.0, 61.25, 1),  # CTKD's learnable temperature
    ]
    assert [p.top1 for p in time_accuracy_points([kd, ctkd], metric="last")] == [50.0, 61.25]


def test_time_vs_accuracy_of_real_runs(runs):
    (point,) = time_accuracy_points([runs["kd"]])
    rows = list(csv.DictReader(open(runs["kd"] / "metrics.csv")))
    assert point.top1 == max(float(r["test_top1"]) for r in rows)
    assert extra_parameters(RunRecord.load(runs["rld"])) == 0


def test_grid_layout_and_class_resolution():
    assert grid_shape(100) == (10, 10)
    assert grid_shape(10) == (3, 4)
    assert grid_shape(7) == (3, 3)
    grid = as_grid(np.arange(10.0))
    assert grid.shape == (3, 4) and grid[2, 1] == 9 and np.isnan(grid[2, 2:]).all()
    assert resolve_classes(["b", "0"], ["a", "b", "c"]) == [1, 0]
    with pytest.raises(UserError, match="unknown class 'dog'"):
        resolve_classes(["dog"], ["a", "b", "c"])
    np.testing.assert_array_equal(subsample(5, 10), np.arange(5))
    picked = subsample(1000, 10)
    assert len(set(picked)) == 10 and (np.diff(picked) > 0).all()


# ----------------------------------------------------------------------------- figures and report


@pytest.fixture(scope="module")
def figures(runs) -> dict[str, Path]:
    folder = runs["root"] / "figures"
    kd, rld = str(runs["kd"]), str(runs["rld"])
    commands = {
        "tsne": ["tsne", kd, rld, "--max-samples", "60"],
        "logit-diff": ["logit-diff", kd, rld],
        "time-vs-acc": ["time-vs-acc", str(runs["teacher"]), kd, rld],
        "class-corr": ["class-corr", rld, "--classes", "three,seven", "--k", "5"],
    }
    out = {}
    for kind, args in commands.items():
        out[kind] = folder / f"{kind}.png"
        assert main(["plot", *args, "--out", str(out[kind])]) == 0
    return out


def test_every_plot_kind_draws_a_non_blank_png(figures):
    for kind, path in figures.items():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", kind
        assert _pixels_vary(path) > 0.05, kind


def test_report_embeds_the_runs_curves_and_figures(runs, figures, tmp_path):
    page_path = tmp_path / "report.html"
    assert main(["report", str(runs["root"]), "--out", str(page_path)]) == 0
    page = page_path.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page
    for name in ("teacher", "kd", "rld"):
        assert f"<td>{name}</td>" in page
    assert "Learning curves" in page
    assert page.count("data:image/png;base64,") == 1 + len(figures)  # the curves and every PNG under DIR
    record = RunRecord.load(runs["rld"])
    assert f"{record.best['test_top1']:.2f} (epoch {record.best['epoch']})" in page
    assert "<td>resnet8</td>" in page and "<td>rld</td>" in page


def test_plot_and_report_errors_are_one_line(runs, tmp_path, capsys):
    cases = [
        (["plot", "logit-diff", str(runs["teacher"]), "--out", str(tmp_path / "x.png")], "without a teacher"),
        (["plot", "tsne", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")], "does not exist"),
        (
            ["plot", "class-corr", str(runs["kd"]), "--classes", "dog", "--out", str(tmp_path / "x.png")],
            "unknown class",
        ),
        (["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")], "is not a folder"),
        (  # a device of another kind (a traceback from the data loader before) or that is not there
            ["plot", "tsne", str(runs["kd"]), "--device", "mps", "--out", str(tmp_path / "x.png")],
            "unknown device 'mps': use auto, cpu, cuda or cuda:N",
        ),
        (["plot", "tsne", str(runs["kd"]), "--device", "cuda:99", "--out", str(tmp_path / "x.png")], "cuda"),
    ]
    for argv, message in cases:
        code = main(argv)
        assert_user_error(code, capsys.readouterr().err.strip(), message)
