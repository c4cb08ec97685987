"""rld tune: the validation split carved out of the training set (every data set kind), a grid that
never reads the test split, the selection rule, and a final run that equals a plain rld train."""

from __future__ import annotations

import csv
import json
import os
import shlex
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from PIL import Image

from conftest import (
    assert_same_run_state,
    assert_user_error,
    load_last,
    metric_lines,
    metric_rows,
    save_hf_folder,
)
from rld.cli import main
from rld.data import build as data_build
from rld.data import build_data, load_digits
from rld.data.device_folder import DeviceFolderLoader
from rld.data.device_loader import DeviceLoader
from rld.data.holdout import holdout_split
from rld.errors import UserError
from rld.experiments import tune as tuning
from rld.experiments.runs import read_config
from rld.experiments.tune import choose

CLASSES = ("cat", "dog", "fox")
# tiny, fast digits runs: 10 training images per class (1 of them held out), 16x16 inputs
DIGITS = ["data.image_size=16", "data.train_per_class=10"]


def _images(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
            pixels[..., c] = 255
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


class Reads:
    """Every image file opened and every folder listed, with the phase of the tune it happened in."""

    def __init__(self, monkeypatch):
        self.phase, self.events = "plan", []
        open_image, scandir = PIL.Image.open, os.scandir

        def opened(fp, *args, **kwargs):
            path = os.fspath(fp) if isinstance(fp, str | os.PathLike) else getattr(fp, "name", repr(fp))
            self.events.append((self.phase, str(path)))
            return open_image(fp, *args, **kwargs)

        def listed(path="."):
            self.events.append((self.phase, str(path)))
            return scandir(path)

        monkeypatch.setattr(PIL.Image, "open", opened)
        monkeypatch.setattr(os, "scandir", listed)

    def under(self, paths) -> list[tuple[str, str]]:
        paths = [str(p) for p in paths]
        return [(phase, p) for phase, p in self.events if any(p == q or p.startswith(q + os.sep) for q in paths)]


def _phases(monkeypatch, reads) -> None:
    """Record the phase of the tune: the grid (train_runs) and the final runs (train)."""
    train_runs, train = tuning.train_runs, tuning.train

    def grid(*args, **kwargs):
        reads.phase = "grid"
        return train_runs(*args, **kwargs)

    def final(*args, **kwargs):
        reads.phase = "final"
        return train(*args, **kwargs)

    monkeypatch.setattr(tuning, "train_runs", grid)
    monkeypatch.setattr(tuning, "train", final)


# ----------------------------------------------------------------------------- the validation split


def _kind(kind: str, tmp_path: Path, tiny_cifar: Path) -> tuple[str, str | None, dict, list[Path]]:
    """(data name, path, build_data keywords, what the data set's own evaluation part is made of)."""
    if kind == "digits":
        return kind, None, {"image_size": 16}, []
    if kind == "cifar100":
        return kind, str(tiny_cifar), {}, []
    if kind == "imagefolder":
        _images(tmp_path / "d" / "train", 8), _images(tmp_path / "d" / "val", 2)
        return "imagefolder", str(tmp_path / "d"), {"image_size": 16}, [tmp_path / "d" / "val"]
    root = _images(tmp_path / "d", 10)
    if kind == "manifest":
        lines = ["path,label"] + [f"{p.relative_to(root)},{p.parent.name}" for p in sorted(root.rglob("*.png"))]
        (root / "labels.csv").write_text("\n".join(lines) + "\n")
        root = root / "labels.csv"
    if kind == "hf":
        return "hf", str(save_hf_folder(root, tmp_path / "hf", CLASSES)), {"image_size": 16, "val_fraction": 0.2}, []
    return "imagefolder", str(root), {"image_size": 16, "val_fraction": 0.2}, []


@pytest.mark.parametrize(
    "kind,pipeline",
    [
        ("digits", "device"),
        ("cifar100", "pil"),
        ("imagefolder", "device"),
        ("imagefolder", "pil"),
        ("folder", "device"),
        ("manifest", "device"),
        ("hf", "device"),
    ],
)
def test_the_holdout_is_a_stratified_seeded_part_of_the_training_split(
    tmp_path, tiny_cifar, monkeypatch, kind, pipeline
):
    """data.holdout carves a stratified part of the training split, the same for every run seed,
    evaluated with the evaluation transform; the data set's own evaluation part is never built."""
    name, path, extra, evaluation = _kind(kind, tmp_path, tiny_cifar)
    options = dict(batch_size=8, device="cpu", num_workers=0, pipeline=pipeline, **extra)
    plain = build_data(name, path, seed=3, **options)
    reads = Reads(monkeypatch)
    held = build_data(name, path, seed=3, holdout=0.25, holdout_seed=5, **options)
    h = held.holdout
    train_y = _labels(plain.train)  # the training split's labels, in its order
    assert h.train_size == len(train_y) and (h.fraction, h.seed) == (0.25, 5)
    assert sorted(h.val_indices + h.train_indices) == list(range(len(train_y)))
    assert h.val_size == int(np.ceil(0.25 * len(train_y)))
    expected = holdout_split(train_y, 0.25, 5)  # stratified: as scikit-learn splits these labels
    assert h == expected and h.val_per_class == tuple(np.bincount(train_y[list(h.val_indices)]))
    assert max(abs(np.bincount(train_y[list(h.val_indices)]) / np.bincount(train_y) - 0.25)) < 0.2
    # the loaders: the rest trains, the held-out images evaluate (in order, their labels)
    targets = torch.cat([b.targets for b in held.test]).numpy()
    assert targets.tolist() == train_y[list(h.val_indices)].tolist()
    assert _labels(held.train).tolist() == train_y[list(h.train_indices)].tolist()
    if name in ("digits", "cifar100"):
        data = load_digits(16) if name == "digits" else None
        if data is not None:  # un-augmented held-out training images: the evaluation view
            x = torch.from_numpy(data.train.x[list(h.val_indices)]).permute(0, 3, 1, 2).float() / 255
            want = (x - torch.tensor(data.mean)[:, None, None]) / torch.tensor(data.std)[:, None, None]
            images = torch.cat([b.images for b in held.test])
            assert torch.allclose(images, want, atol=1e-6) and not held.test.train
    elif isinstance(held.test, DeviceFolderLoader):  # the held-out training images, evaluated
        assert held.train.train and not held.test.train
        assert set(held.test.files) <= set(plain.train.files) and not set(held.test.files) & set(held.train.files)
    else:
        transform = repr(held.test.loader.dataset.base.base.transform)
        assert "CenterCrop" in transform and "RandomResizedCrop" not in transform
        assert "RandomResizedCrop" in repr(held.train.loader.dataset.base.base.transform)
    assert not reads.under(evaluation), reads.under(evaluation)  # ROOT/val: not even listed
    again = build_data(
        name, path, seed=4 if name in ("digits", "cifar100") else 3, holdout=0.25, holdout_seed=5, **options
    )
    assert again.holdout == h  # the same held-out images for another run seed
    other = build_data(name, path, seed=3, holdout=0.25, holdout_seed=6, **options)
    assert other.holdout.val_indices != h.val_indices


def _labels(loader) -> np.ndarray:
    """The labels of a loader's split in its stored order (no image is read)."""
    return (loader._y if isinstance(loader, DeviceLoader) else loader.labels).numpy()


# ----------------------------------------------------------------------------- the selection rule


def _fake_training(monkeypatch, table: dict[str, float]) -> None:
    """No training: the grid's validation top-1 comes from ``table`` (run folder name -> value)."""
    monkeypatch.setattr(tuning, "train_runs", lambda runs, **kw: [])
    monkeypatch.setattr(tuning, "validation_top1", lambda run_dir, epochs: table[Path(run_dir).name])
    monkeypatch.setattr(tuning, "train", lambda cfg, out, resume=False, **kw: {"last_top1": 50.0 + cfg.seed})


def _run_choice(tmp_path, capsys, monkeypatch, name, betas, temps, values):
    table = {}
    for s, per_seed in enumerate(values):
        for (b, t), v in per_seed.items():
            table[f"method.beta={b},method.temperature={t},seed={s}"] = v
    _fake_training(monkeypatch, table)
    grid = [f"method.beta={betas}", f"method.temperature={temps}"]
    out = tmp_path / name
    assert main(["tune", "demo/rld", *DIGITS, "--grid", *grid, "--seeds", "0,1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    chosen = next(line for line in text.splitlines() if line.startswith("chosen: ")).split(": ", 1)[1]
    rows = list(csv.DictReader(open(out / "tune.csv")))
    return text, chosen, rows


def test_the_chosen_point_follows_the_printed_rule(tmp_path, capsys, monkeypatch):
    """Mean over seeds decides (not a seed's best); ties go to the smaller first key, then the next,
    whatever order the grid lists them in."""
    # beta=8,T=2 has the best single run (90) but beta=2,T=4 the best mean (70 vs 60)
    values = [
        {(2, 2): 10.0, (2, 4): 70.0, (8, 2): 90.0, (8, 4): 20.0},
        {(2, 2): 10.0, (2, 4): 70.0, (8, 2): 30.0, (8, 4): 20.0},
    ]
    text, chosen, rows = _run_choice(tmp_path, capsys, monkeypatch, "mean", "2,8", "2,4", values)
    assert chosen.startswith("method.beta=2 method.temperature=4")
    rule = "highest validation top-1 at the last epoch (epoch 10), mean over seeds 0, 1"
    assert f"rule: {rule}" in text and "ties: the smaller method.beta, then the smaller method.temperature" in text
    assert [(r["method.beta"], r["method.temperature"], r["val_top1_mean"], r["chosen"]) for r in rows] == [
        ("2", "2", "10", "0"),
        ("2", "4", "70", "1"),
        ("8", "2", "60", "0"),
        ("8", "4", "20", "0"),
    ]
    assert rows[2]["val_top1_seed0"] == "90" and rows[2]["val_top1_seed1"] == "30"
    record = json.loads((tmp_path / "mean" / "tune.json").read_text())
    assert record["chosen"] == {"method.beta": "2", "method.temperature": "4"} and record["status"] == "done"
    assert record["final"]["test_top1_mean"] == 50.5  # the final runs' last-epoch test top-1 (seeds 0, 1)
    # a tie of means (seeds differ, means equal), the grid listed in descending order: the smaller beta wins
    values = [
        {(8, 4): 60.0, (8, 2): 40.0, (2, 4): 40.0, (2, 2): 50.0},
        {(8, 4): 40.0, (8, 2): 60.0, (2, 4): 60.0, (2, 2): 50.0},
    ]
    _, chosen, _ = _run_choice(tmp_path, capsys, monkeypatch, "tie1", "8,2", "4,2", values)
    assert chosen.startswith("method.beta=2 method.temperature=2")  # four-way tie at 50: beta 2, then T 2
    values[0][(2, 2)] = values[1][(2, 2)] = 10.0  # now beta=2,T=4 and the beta=8 points tie at 50
    _, chosen, _ = _run_choice(tmp_path, capsys, monkeypatch, "tie2", "8,2", "4,2", values)
    assert chosen.startswith("method.beta=2 method.temperature=4")
    values[0][(2, 4)] = 0.0  # beta=8,T=2 and T=4 tie: the smaller temperature
    _, chosen, _ = _run_choice(tmp_path, capsys, monkeypatch, "tie3", "8,2", "4,2", values)
    assert chosen.startswith("method.beta=8 method.temperature=2")


def test_choose_orders_numbers_by_value_and_other_values_as_given():
    axes = [("method.mask", ["ge", "g"]), ("train.lr", ["0.1", "1e-2"])]
    points = [{"method.mask": m, "train.lr": lr} for m in ("ge", "g") for lr in ("0.1", "1e-2")]
    assert choose(axes, points, [5.0, 5.0, 5.0, 5.0]) == 1  # ge (listed first), then 1e-2 < 0.1
    assert choose(axes, points, [1.0, 2.0, 3.0, 3.0]) == 3
    # the mean is exactly rounded: the same values in any order give the same mean
    assert tuning.mean([0.1, 0.2, 0.3]) == tuning.mean([0.3, 0.1, 0.2])


def test_the_validation_score_is_the_last_epoch_of_a_finished_run(tmp_path):
    """The grid is scored by its runs' last epoch (not their best); an unfinished run is refused."""
    run = tmp_path / "run"
    run.mkdir()
    rows = ["epoch,train_loss,train_top1,test_loss,test_top1,test_top5", "1,2,10,2,55.5,90", "2,1,20,1,41.25,95"]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    assert tuning.validation_top1(run, 2) == 41.25
    with pytest.raises(UserError, match="has not finished its 3 epochs; continue the tune with --resume"):
        tuning.validation_top1(run, 3)


# ----------------------------------------------------------------------------- end to end


def test_tune_end_to_end_never_reads_the_test_split_before_the_final_run(tmp_path, capsys, monkeypatch, teacher_ckpt):
    """The issue's command on the CPU (with 10 digits per class at 16x16): no loader is built on the
    test split before the final run; tune.csv, the heat map, tune.json, val_split.json; the final run
    equals the rld train command it prints; rld report shows the tune; --resume trains nothing."""
    test_split = load_digits(16).test
    phases: list[tuple[str, bool]] = []
    reads = type("Phase", (), {"phase": "plan"})()

    class Recording(DeviceLoader):
        def __init__(self, split, *args, **kwargs):
            is_test = len(split) == len(test_split) and np.array_equal(split.x, test_split.x)
            phases.append((reads.phase, is_test))
            super().__init__(split, *args, **kwargs)

    monkeypatch.setattr(data_build, "DeviceLoader", Recording)
    _phases(monkeypatch, reads)
    out = tmp_path / "tune"
    grid = ["--grid", "method.beta=2,8", "method.temperature=2,4"]
    argv = ["tune", "demo/rld", *grid, "--epochs", "2", "--teacher", str(teacher_ckpt), *DIGITS, "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert {p for p, _ in phases} == {"plan", "grid", "final"}
    assert not [p for p, is_test in phases if is_test and p != "final"], phases
    assert ("final", True) in phases  # the instrument sees the test split when it is built
    # the grid: ordinary runs whose configuration says they evaluate held-out training images
    runs = sorted((out / "grid").glob("method.beta=*"))
    assert len(runs) == 4 and all(read_config(r).data.holdout == 0.1 for r in runs)
    assert read_config(out / "final" / "seed=0").data.holdout is None
    split = json.loads((out / "val_split.json").read_text())
    assert (split["fraction"], split["seed"], split["train_size"], split["val_size"]) == (0.1, 0, 100, 10)
    assert split["val_per_class"] == [1] * 10 and len(split["val_indices"]) == 10
    rows = list(csv.DictReader(open(out / "tune.csv")))
    assert len(rows) == 4 and sum(int(r["chosen"]) for r in rows) == 1
    for r in rows:  # each row holds its run's last-epoch validation top-1
        run = out / "grid" / f"method.beta={r['method.beta']},method.temperature={r['method.temperature']},seed=0"
        assert float(r["val_top1_seed0"]) == pytest.approx(float(metric_rows(run / "metrics.csv")[-1]["test_top1"]))
    assert (out / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out / "tune.json").read_text())
    assert record["status"] == "done" and "chosen: " + tuning.point_text(record["chosen"]) in text
    # the final run equals the plain `rld train` it names
    (command,) = record["final"]["commands"]
    args = shlex.split(command)
    assert args[:3] == ["rld", "train", "demo/rld"] and "--epochs" in args
    assert main(["train", *args[2:], "--out", str(tmp_path / "plain")]) == 0
    final = out / "final" / "seed=0"
    assert metric_rows(final / "metrics.csv") == metric_rows(tmp_path / "plain" / "metrics.csv")
    assert_same_run_state(load_last(tmp_path / "plain"), load_last(final))
    last_test = metric_rows(final / "metrics.csv")[-1]["test_top1"]  # the final run's last epoch, as written
    assert f"{record['final']['runs'][0]['test_top1']:.6g}" == last_test
    # rld report: the tune's section
    assert main(["report", str(out), "--out", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text()
    assert 'id="tune"' in page and "Hyper-parameter tuning" in page and "Final test top-1" in page
    assert "highest validation top-1 at the last epoch" in page and "val_top1_mean" in page
    # a second start refuses; --resume trains nothing again and chooses the same point
    capsys.readouterr()
    assert main(argv) == 2
    assert_user_error(2, capsys.readouterr().err, "already holds a tune; add --resume")
    kept = {r: metric_lines(r) for r in [*runs, final]}
    assert main([*argv, "--resume"]) == 0
    assert {r: metric_lines(r) for r in kept} == kept
    assert json.loads((out / "tune.json").read_text())["chosen"] == record["chosen"]


def test_a_single_folder_tune_shares_one_split_and_never_reads_its_test_images(tmp_path, capsys, monkeypatch):
    """A single image folder split by data.val_fraction, two seeds: every run of the tune uses the first
    seed's train/test split (split.json), and no test image is opened or listed before the final runs."""
    root = _images(tmp_path / "pets", 8)
    data = [
        "data.name=imagefolder",
        f"data.path={root}",
        "data.val_fraction=0.25",
        "data.image_size=16",
        "data.num_workers=0",
        "data.eval_batch_size=8",
        "train.batch_size=8",
    ]
    out = tmp_path / "tune"
    argv = ["tune", "demo/vanilla", *data, "--grid", "train.lr=0.01,0.05", "--seeds", "0,1", "--epochs", "1"]
    assert main([*argv, "--out", str(out), "--val-fraction", "0.25", "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "4 runs in 2 lockstep group(s)" in plan and "validation: 5 of the 18 training images held out" in plan
    assert not out.exists()  # a dry run writes nothing
    reads = Reads(monkeypatch)
    _phases(monkeypatch, reads)
    assert main([*argv, "--out", str(out), "--val-fraction", "0.25"]) == 0
    saved = (out / "split.json").read_text()
    test_files = [root / p for p, _ in json.loads(saved)["val"]]
    assert len(test_files) == 6
    early = [e for e in reads.under(test_files) if e[0] != "final"]
    assert not early, early
    assert reads.under(test_files) and reads.under([root / p for p, _ in json.loads(saved)["train"]])
    runs = [*sorted((out / "grid").glob("train.lr=*")), out / "final" / "seed=0", out / "final" / "seed=1"]
    assert len(runs) == 6 and all((r / "split.json").read_text() == saved for r in runs)
    assert json.loads((out / "val_split.json").read_text())["val_per_class"] == [2, 2, 1]  # 5 of the 18, stratified
    assert not (out / "tune.png").exists()  # a one-key grid has no heat map


def test_tune_mistakes_are_user_errors(tmp_path, capsys):
    cases = [
        (["--grid", "method.beta=4"], "--grid needs at least one KEY=V1,V2"),
        (["--grid", "seed=0,1"], "seed cannot be set in --grid: give the seeds with --seeds"),
        (["data.holdout=0.2", "--grid", "method.beta=2,8"], "data.holdout cannot be set in the overrides"),
        (["--grid", "method.beta=2,8", "--val-fraction", "1.5"], "--val-fraction must be in (0, 1)"),
        (["--grid", "method.beta=2,8", "--seeds", "0,0"], "--seeds must list distinct seeds"),
        (["--grid", "method.betta=2,8"], "did you mean method.beta"),
        (["method.alpha=1,2", "--grid", "method.beta=2,8"], "give it with --grid"),
    ]
    for extra, message in cases:
        code = main(["tune", "demo/rld", *extra, "--out", str(tmp_path / "t"), "--dry-run"])
        assert_user_error(code, capsys.readouterr().err, message)
    assert not (tmp_path / "t").exists()
