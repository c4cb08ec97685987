"""Reproducing the paper's tables: planning, the paper's numbers, aggregation, and a tiny end-to-end run."""

from __future__ import annotations

import csv
import itertools
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_same_run_state, assert_user_error, load_last, run_rld
from rld.cli import main
from rld.config import to_yaml
from rld.data import CIFAR100_CLASSES
from rld.engine import train
from rld.engine.faults import FAULT_EXIT_STATUS
from rld.errors import UserError
from rld.experiments import collect, get_table, paper_tables, paper_value, plan_table, reproduce, to_markdown
from rld.experiments.aggregate import to_csv
from rld.experiments.plan import DONE, MISSING, PARTIAL, refresh_status
from rld.experiments.reproduce import evaluate_teacher_checkpoint

TABLE3_PAIRS = [
    ("resnet32x4", "resnet8x4"),
    ("vgg13", "vgg8"),
    ("wrn_40_2", "wrn_40_1"),
    ("wrn_40_2", "wrn_16_2"),
    ("resnet56", "resnet20"),
    ("resnet110", "resnet32"),
    ("resnet110", "resnet20"),
]
LOGIT_METHODS = ["kd", "ctkd", "dkd", "la", "rc", "lr", "rld"]
FEATURE_METHODS = ["fitnet", "at", "rkd", "crd", "ofd", "reviewkd", "simkd", "catkd"]


# ----------------------------------------------------------------------------- planning


def test_table3_dry_run_lists_every_run(tmp_path, capsys):
    out, plan_file = tmp_path / "repro", tmp_path / "plan.json"
    assert main(["reproduce", "table3", "--dry-run", "--json", str(plan_file), "--out", str(out)]) == 0
    assert "338 runs" in capsys.readouterr().out
    runs = json.loads(plan_file.read_text())["runs"]
    assert len(runs) == 5 + 6 * 3 + 7 * 15 * 3
    teachers = [r for r in runs if "teacher" in r["roles"]]
    students = [r for r in runs if r["roles"] == ["student"]]
    distilled = [r for r in runs if r["roles"] == ["distill"]]
    assert runs[: len(teachers)] == teachers  # teachers come first
    assert sorted(r["student"] for r in teachers) == ["resnet110", "resnet32x4", "resnet56", "vgg13", "wrn_40_2"]
    assert {r["seed"] for r in teachers} == {0}
    assert len(students) == 6 * 3
    assert {(r["student"], r["seed"]) for r in students} == set(
        itertools.product(["resnet8x4", "vgg8", "wrn_40_1", "wrn_16_2", "resnet20", "resnet32"], [0, 1, 2])
    )
    assert len(distilled) == 7 * (8 + 7) * 3  # the feature and the logit methods
    assert {(r["teacher"], r["student"], r["method"], r["seed"]) for r in distilled} == {
        (t, s, m, seed)
        for (t, s), m, seed in itertools.product(TABLE3_PAIRS, FEATURE_METHODS + LOGIT_METHODS, [0, 1, 2])
    }
    by_name = {r["name"]: r for r in runs}
    root = out.resolve()
    expected = {
        "roles": ["teacher"],
        "teacher": None,
        "student": "resnet32x4",
        "method": "vanilla",
        "seed": 0,
        "preset": "cifar100/resnet32x4/vanilla",
        "overrides": ["seed=0"],
        "out": str(root / "cifar100/resnet32x4/vanilla/seed0"),
        "status": "missing",
    }
    teacher = by_name["cifar100/resnet32x4/vanilla/seed0"]
    assert {k: teacher[k] for k in expected} == expected
    dkd = by_name["cifar100/resnet110-resnet20/dkd/seed2"]
    assert (dkd["teacher"], dkd["student"], dkd["method"], dkd["seed"]) == ("resnet110", "resnet20", "dkd", 2)
    assert dkd["preset"] == "cifar100/resnet110-resnet20/dkd"
    teacher_ckpt = root / "cifar100/resnet110/vanilla/seed0/checkpoints/last.pt"  # the teacher's last epoch
    assert dkd["overrides"] == ["seed=2", f"model.teacher_checkpoint={teacher_ckpt}"]
    assert dkd["depends_on"] == "cifar100/resnet110/vanilla/seed0"
    assert dkd["out"] == str(root / "cifar100/resnet110-resnet20/dkd/seed2")
    assert not out.exists()  # a dry run trains and writes nothing but the plan


def test_tables_share_runs_and_set_the_papers_variants(tmp_path):
    t1 = {r.name: r for r in plan_table("table1", tmp_path).runs}
    t5 = {r.name: r for r in plan_table("table5", tmp_path).runs}
    pair = "cifar100/resnet32x4-resnet8x4"
    assert set(t1) == {"cifar100/resnet32x4/vanilla/seed0"} | {
        f"{pair}/{v}/seed{s}" for v in ("rld", "rld_no-scd", "rld_mask-g", "rld_mask-g_no-scd") for s in (0, 1, 2)
    }
    assert t1[f"{pair}/rld_mask-g_no-scd/seed1"].overrides[:3] == ["seed=1", "method.mask=g", "method.alpha=0"]
    assert t1[f"{pair}/rld_mask-g_no-scd/seed1"].config().method.mask == "g"
    assert t5[f"{pair}/rld_no-mcd/seed0"].config().method.beta == 0
    assert t5[f"{pair}/rld_no-scd/seed0"].overrides == t1[f"{pair}/rld_no-scd/seed0"].overrides  # shared runs
    assert "cifar100/resnet8x4/vanilla/seed2" in t5  # Table 5's CE row is the plain student

    t2 = {r.name: r for r in plan_table("table2", tmp_path).runs}
    assert len(t2) == 4 + 5 * 3 - 1 + 7 * (8 + 7) * 3  # wrn_40_2 seed 0 is a teacher and a plain student
    assert t2["cifar100/wrn_40_2/vanilla/seed0"].roles == ["teacher", "student"]
    assert t2["cifar100/ResNet50-MobileNetV2/rld/seed0"].config().train.lr == 0.01

    t6 = plan_table("table6", tmp_path)
    ls = {r.name: r for r in t6.runs if r.method != "vanilla"}
    assert len(ls) == 4 * 3 * 3 and all("method.logit_standardization=true" in r.overrides for r in ls.values())
    kd_ls = ls["cifar100/vgg13-MobileNetV2/kd_ls/seed0"].config().method
    assert (kd_ls.logit_standardization, kd_ls.temperature, kd_ls.kd_weight) == (True, 3.0, 9.0)

    t4 = plan_table("table4", tmp_path)
    assert t4.table.columns == (
        "ResNet34 → ResNet18 top-1",
        "ResNet34 → ResNet18 top-5",
        "ResNet50 → MobileNetV1 top-1",
        "ResNet50 → MobileNetV1 top-5",
    )
    assert {r.preset for r in t4.runs if "teacher" in r.roles} == {
        "imagenet/ResNet34/vanilla",
        "imagenet/ResNet50/vanilla",
    }
    assert t4.table.rows[:3] == ("Teacher", "Student", "AT")
    feature = {
        (r.method, r.teacher, r.seed) for r in t4.runs if r.method in ("at", "ofd", "crd", "reviewkd", "simkd", "catkd")
    }
    assert feature == set(
        itertools.product(["at", "ofd", "crd", "reviewkd", "simkd", "catkd"], ["ResNet34", "ResNet50"], [0, 1, 2])
    )
    assert t4.run("imagenet/ResNet50-MobileNetV1/simkd/seed0").config().train.epochs == 120  # SimKD's protocol


def test_shrunk_reproduction_options(tmp_path):
    plan = plan_table(
        "table3",
        tmp_path,
        seeds=[1],
        epochs=24,
        pairs=["resnet56->resnet20"],
        methods=["vanilla", "rld", "kd"],
        overrides=["train.batch_size=256", "method.temperature=2"],
    )
    runs = {r.name: r for r in plan.runs}
    assert set(runs) == {
        "cifar100/resnet56/vanilla/seed0",
        "cifar100/resnet20/vanilla/seed1",
        "cifar100/resnet56-resnet20/kd/seed1",
        "cifar100/resnet56-resnet20/rld/seed1",
    }
    assert plan.table.rows == ("Teacher", "Student", "KD", "RLD")
    rld = runs["cifar100/resnet56-resnet20/rld/seed1"]
    assert rld.overrides[2:] == [
        "train.epochs=24",
        "train.lr_milestones=[15,18,21]",
        "method.warmup_epochs=2",
        "train.batch_size=256",
        "method.temperature=2",
    ]
    cfg = rld.config()
    assert (cfg.train.epochs, cfg.train.lr_milestones, cfg.method.warmup_epochs) == (24, [15, 18, 21], 2.0)
    assert (cfg.method.temperature, cfg.train.batch_size) == (2.0, 256)
    teacher = runs["cifar100/resnet56/vanilla/seed0"]
    assert "method.temperature=2" not in teacher.overrides and "train.batch_size=256" in teacher.overrides


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"table": "table7"}, "unknown table 'table7'"),
        ({"pairs": ["resnet56-resnet8"]}, "has no pair 'resnet56-resnet8'"),
        ({"methods": ["crd", "mlkd"]}, "table3 has no 'mlkd' rows"),
        ({"methods": ["kd", "nope"]}, "table3 has no 'nope' rows"),
        ({"overrides": ["seed=4"]}, "use --seeds"),
        ({"overrides": ["model.teacher_checkpoint=x.pt"]}, "--teacher MODEL=CKPT"),
        ({"overrides": ["method.mask=g"], "methods": ["kd"]}, "applies to no run"),
        ({"overrides": ["train.nope=1"]}, "unknown config key 'train.nope'"),
        ({"seeds": []}, "--seeds"),
        ({"teachers": {"resnet20": "x.pt"}}, "not a teacher of table3"),
    ],
)
def test_planning_mistakes_are_user_errors(tmp_path, kwargs, message):
    kwargs = {"table": "table3", **kwargs}
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_table(kwargs.pop("table"), tmp_path, **kwargs)


def test_cli_mistakes_exit_2_with_one_line(tmp_path, capsys):
    for argv, message in [
        (["reproduce", "table0", "--dry-run"], "unknown table"),
        (["reproduce", "table3", "--seeds", "0,x", "--dry-run"], "--seeds takes"),
        (["reproduce", "table3", "--teacher", "resnet56", "--dry-run"], "--teacher takes MODEL=CKPT"),
        (["reproduce", "table3", "--out", str(tmp_path), "--pairs", "resnet56-resnet20"], "--data PATH"),
    ]:
        code = main(argv)
        assert_user_error(code, capsys.readouterr().err.strip(), message)


def test_paper_numbers_are_the_published_ones():
    assert "2408.07703v2" in paper_tables()["source"]
    assert paper_value("table3", "RLD", "resnet56->resnet20") == 72.00
    assert paper_value("table2", "teacher", "ResNet50->MobileNetV2") == 79.34
    assert paper_value("table4", "RLD", "ResNet50->MobileNetV1 top5") == 91.18
    assert paper_value("table1", "M_ge with SCD") == 76.64
    assert paper_value("table5", "CE+SCD") == 73.55
    assert paper_value("table6", "RLD+LS", "vgg13->MobileNetV2") == 70.63
    assert paper_value("table3", "FitNet", "vgg13->vgg8") == 71.02
    spec = get_table("table3")
    assert all(
        paper_value("table3", c.paper_row, c.paper_column) is not None for c in spec.cells.values()
    )  # every cell has its paper number


# ----------------------------------------------------------------------------- aggregation


def _fake_run(run, rows: list[tuple[float, float]], epochs_done: int) -> None:
    """A run folder as the engine writes it, with the given (test_top1, test_top5) per epoch."""
    out = Path(run.out)
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.yaml").write_text(to_yaml(run.config()))
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", "test_top1", "test_top5", "epoch_time", "train_time", "steps"])
        for epoch, (top1, top5) in enumerate(rows[:epochs_done], 1):
            w.writerow([epoch, 1.0, top1, top5, 2.0, 1.5, 3])
    torch.save({"epoch": epochs_done}, out / "checkpoints" / "last.pt")


def test_table_aggregates_seeds_beside_the_paper(tmp_path):
    plan = plan_table("table5", tmp_path, seeds=[0, 1], epochs=2)
    # best epoch first (70 + seed + row), then a worse last epoch; one run is unfinished.
    offsets = {"resnet8x4/vanilla": 0.0, "rld_no-mcd": 1.0, "rld_no-scd": 2.0, "rld/": 3.0}
    for run in plan.runs:
        off = next((v for k, v in offsets.items() if k in run.name + "/"), -10.0)
        top1 = 70.0 + run.seed + off
        unfinished = run.name.endswith("rld_no-mcd/seed1")
        _fake_run(run, [(top1, top1 + 20), (top1 - 1.0, top1 + 19)], epochs_done=1 if unfinished else 2)
    statuses = {r.name: refresh_status(r) for r in plan.runs}
    assert statuses["cifar100/resnet32x4-resnet8x4/rld_no-mcd/seed1"] == PARTIAL
    assert list(statuses.values()).count(DONE) == len(plan.runs) - 1

    best, last = collect(plan, "best"), collect(plan, "last")
    column = "resnet32x4 → resnet8x4"
    full = best.cell("CE+SCD+MCD", column)
    assert full.mean_std("best") == pytest.approx((73.5, 0.5**0.5))
    assert full.paper == 76.64 and full.diff("best") == pytest.approx(73.5 - 76.64)
    assert full.text("best") == "73.50 ± 0.71 (paper 76.64, Δ -3.14)"
    assert last.cell("CE+SCD+MCD", column).text("last") == "72.50 ± 0.71 (paper 76.64, Δ -4.14)"
    assert best.cell("CE", column).text("best") == "70.50 ± 0.71 (paper 72.50, Δ -2.00)"
    assert best.cell("CE+SCD", column).text("best") == "71.00 [1/2] (paper 73.55, Δ -2.55)"

    markdown = to_markdown(best)
    assert "| CE+MCD | 72.50 ± 0.71 (paper 75.64, Δ -3.14) |" in markdown
    assert "at the best epoch" in markdown and "## The same runs at the last epoch" in markdown
    assert "| CE+MCD | 71.50 ± 0.71 |" in markdown
    rows = list(csv.reader(to_csv(best).splitlines()))
    assert rows[0][:3] == ["Losses", f"{column} mean", f"{column} std"]
    assert rows[4] == ["CE+SCD+MCD", "73.5000", "0.7071", "2", "76.6400", "-3.1400"]


# ----------------------------------------------------------------------------- end to end


def _fake_cifar100(root: Path) -> Path:
    """The official cifar-100-python layout: 1 training and 1 test image per class (one step per epoch)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 1), ("test", 1)):
        labels = np.repeat(np.arange(100), per_class)
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        entry = {b"data": data, b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist()}
        (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {b"fine_label_names": [c.encode() for c in CIFAR100_CLASSES]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def test_reproduce_end_to_end_on_fake_cifar100(tmp_path, capsys):
    """Table 3, one pair, KD and RLD, 2 epochs: interrupted inside KD's epoch-2 checkpoint (the 4th
    last.pt write: the teacher's two, then KD's), started again, it resumes KD exactly where it
    stopped and trains RLD; every measured cell is the run's best test top-1 from its metrics.csv."""
    data = _fake_cifar100(tmp_path / "data")
    out = tmp_path / "repro"
    argv = [
        "reproduce", "table3", "--data", str(data), "--out", str(out), "--seeds", "0", "--epochs", "2",
        "--pairs", "resnet56-resnet20", "--methods", "kd,rld", "train.batch_size=128",
    ]  # fmt: skip
    plan_args = dict(seeds=[0], epochs=2, pairs=["resnet56-resnet20"], methods=["kd", "rld"], data=str(data),
                     overrides=["train.batch_size=128"])  # fmt: skip
    crashed = run_rld(*argv, fault="before_rename:4")
    assert crashed.returncode == FAULT_EXIT_STATUS, crashed.stderr[-2000:]
    plan = plan_table("table3", out, **plan_args)
    assert [(r.status, r.epochs_done) for r in plan.runs] == [(DONE, 2), (PARTIAL, 1), (MISSING, 0)]
    kd_metrics = out / plan.runs[1].name / "metrics.csv"
    epoch1 = kd_metrics.read_text().splitlines()[:2]  # header and epoch 1, wall times included

    assert main(argv) == 0
    assert kd_metrics.read_text().splitlines()[:2] == epoch1  # continued, not trained again from epoch 1
    printed = capsys.readouterr().out
    assert "| Logit | RLD |" in printed
    names = [
        "cifar100/resnet56/vanilla/seed0",
        "cifar100/resnet56-resnet20/kd/seed0",
        "cifar100/resnet56-resnet20/rld/seed0",
    ]
    kd = plan.run(names[1])
    train(kd.config(), tmp_path / "kd-uninterrupted")  # the same run, never stopped
    assert_same_run_state(load_last(tmp_path / "kd-uninterrupted"), load_last(out / names[1]))
    best = {
        name: max(float(r["test_top1"]) for r in csv.DictReader(open(out / name / "metrics.csv"))) for name in names
    }
    markdown = (out / "tables" / "table3.md").read_text()
    table_lines = [line.split("|") for line in markdown.splitlines() if line.startswith("|") and "paper" in line]
    lines = {cells[2].strip(): cells[3].strip() for cells in table_lines}
    for row, name, paper in (("Teacher", names[0], 72.34), ("KD", names[1], 70.66), ("RLD", names[2], 72.00)):
        assert lines[row] == f"{best[name]:.2f} (paper {paper:.2f}, Δ {best[name] - paper:+.2f})", lines[row]
    rows = {r[0]: r for r in csv.reader((out / "tables" / "table3.csv").read_text().splitlines())}
    for row, name, paper in (("Teacher", names[0], 72.34), ("KD", names[1], 70.66), ("RLD", names[2], 72.00)):
        mean, _, n, paper_cell, diff = rows[row][1:]
        assert (n, float(paper_cell), float(mean)) == ("1", paper, pytest.approx(best[name], abs=5e-5))
        assert float(diff) == pytest.approx(best[name] - paper, abs=5e-5)
    runs_csv = list(csv.DictReader((out / "tables" / "table3-runs.csv").read_text().splitlines()))
    assert [r["status"] for r in runs_csv] == ["done"] * 3
    assert [float(r["best_top1"]) for r in runs_csv] == [pytest.approx(best[n], abs=5e-5) for n in names]

    # A second call finds every run finished and trains nothing.
    last = out / names[1] / "checkpoints" / "last.pt"
    stamp = last.stat().st_mtime_ns
    plan = plan_table("table3", out, **plan_args)
    assert [r.status for r in plan.runs] == [DONE] * 3
    assert reproduce(plan).trained == [] and last.stat().st_mtime_ns == stamp

    # Other settings in the same folder are refused before anything runs.
    other = plan_table("table3", out, **{**plan_args, "methods": ["kd"], "overrides": ["train.batch_size=64"]})
    with pytest.raises(UserError, match="trained with another configuration .*train.batch_size"):
        reproduce(other)

    # A given teacher checkpoint is evaluated, not trained.
    ckpt = out / names[0] / "checkpoints" / "best.pt"
    given = plan_table("table3", tmp_path / "given", seeds=[0], epochs=1, pairs=["resnet56-resnet20"],
                       methods=["kd"], data=str(data), teachers={"resnet56": str(ckpt)})  # fmt: skip
    teacher = given.runs[0]
    assert (teacher.name, teacher.status, teacher.checkpoint) == ("cifar100/resnet56/external", MISSING, str(ckpt))
    assert given.run("cifar100/resnet56-resnet20/kd/seed0").overrides[1] == f"model.teacher_checkpoint={ckpt}"
    result = evaluate_teacher_checkpoint(teacher)
    assert refresh_status(teacher) == DONE
    best_epoch_row = torch.load(ckpt, weights_only=True)["epoch"]
    teacher_rows = list(csv.DictReader(open(out / names[0] / "metrics.csv")))
    assert f"{result['test_top1']:.6g}" == teacher_rows[best_epoch_row - 1]["test_top1"]  # same weights, same data
    cell = collect(given).cell("Teacher", "resnet56 → resnet20")
    assert cell.mean_std("best")[0] == pytest.approx(result["test_top1"])
