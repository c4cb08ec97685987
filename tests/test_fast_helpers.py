"""Small helpers of rld.fast that the command-line tests reach only through a subprocess: the cache
folder's default, sizes and names, and a sweep row read as a run's outcome."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from rld.fast.files import default_cache_dir, human_size, safe_name, temporary_name


def test_the_cache_folder_follows_xdg_cache_home_or_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "rld" / "teacher-logits"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for unset in ("", None):
        if unset is None:
            monkeypatch.delenv("XDG_CACHE_HOME")
        else:
            monkeypatch.setenv("XDG_CACHE_HOME", unset)
        assert default_cache_dir() == tmp_path / "home" / ".cache" / "rld" / "teacher-logits"


@pytest.mark.parametrize(
    "nbytes, text",
    [
        (0, "0 B"),
        (812, "812 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1000 * 1024, "1000 KiB"),
        (26010, "25.4 KiB"),
        (1.5 * 2**20, "1.5 MiB"),
        (1.51 * 2**30, "1.51 GiB"),
        (3 * 2**40, "3 TiB"),
        (5 * 2**50, "5120 TiB"),
    ],
)
def test_sizes_are_written_in_binary_units(nbytes, text):
    assert human_size(nbytes) == text


def test_names_keep_letters_digits_dashes_underscores_and_dots():
    assert safe_name("cifar100/resnet32x4 (kd)-v1.2_é") == "cifar100_resnet32x4__kd_-v1.2_é"
    assert safe_name("a:b*c?") == "a_b_c_"


def test_temporary_names_are_hidden_beside_the_file_and_unique():
    path = Path("/data/cache/logits.npy")
    first, second = temporary_name(path), temporary_name(path)
    assert first.parent == path.parent and first != second
    assert re.fullmatch(rf"\.logits\.npy\.tmp-{os.getpid()}-[0-9a-f]{{8}}", first.name)


def test_a_sweep_row_becomes_the_runs_outcome():
    from rld import executor as ex
    from rld.fast.cli import _outcome

    done = _outcome({"run": "a"})
    assert (done.run, done.status, done.message) == ("a", ex.DONE, "")
    diverged = _outcome({"run": "b", "status": "diverged", "diverged_epoch": 3})
    assert (diverged.status, diverged.message) == ("diverged", "training diverged in epoch 3")
    failed = _outcome({"run": "c", "status": "failed", "error": "out of memory"})
    assert (failed.status, failed.message) == ("failed", "out of memory")
    both = _outcome({"run": "d", "status": "diverged", "diverged_epoch": 2, "error": "stopped by the guard"})
    assert both.message == "stopped by the guard"
    assert _outcome({"run": "e", "status": None}).status == ex.DONE


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    from rld.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_sweep_plan_lists_its_runs_groups_and_schedules(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(
        capsys, "sweep", "demo/kd", "method.temperature=2,4", "--seeds", "0,1", "--epochs", "2", "--dry-run"
    )
    assert code == 0
    assert out.splitlines() == [
        "sweep: 4 runs in 2 lockstep group(s) (seed 0: 2 runs; seed 1: 2 runs) -> runs/sweeps/demo/kd",
        "  method.temperature=2,seed=0  (epochs=2 lr_milestones=[1, 2])",
        "  method.temperature=4,seed=0  (epochs=2 lr_milestones=[1, 2])",
        "  method.temperature=2,seed=1  (epochs=2 lr_milestones=[1, 2])",
        "  method.temperature=4,seed=1  (epochs=2 lr_milestones=[1, 2])",
    ]
    assert not (tmp_path / "runs").exists()  # a plan writes nothing


def test_a_one_run_sweep_plan_shows_its_configuration_and_a_file_is_named_by_its_stem(capsys, monkeypatch, tmp_path):
    from rld.config import resolve, to_yaml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("preset: demo/kd\ntrain: {lr_step: 3}\n")
    code, out, _ = run_cli(capsys, "sweep", "mine.yaml", "method.temperature=3", "--dry-run")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "sweep: 1 runs in 1 lockstep group(s) (seed 0: 1 run) -> runs/sweeps/mine"
    assert lines[1] == "  seed=0  (epochs=10 lr_step=3)"  # a run is named by what varies
    assert "\n".join(lines[2:]) + "\n" == to_yaml(resolve("mine.yaml", ["method.temperature=3"]))


def test_a_sweep_refuses_epochs_given_twice(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "sweep", "demo/kd", "train.epochs=3,4", "--epochs", "2", "--dry-run")
    assert code == 2
    assert err == "rld: error: --epochs and train.epochs=… both set train.epochs; give one of them\n"


def test_epoch_spans_and_store_refusals_are_written_out():
    from rld.fast.store import _damaged, _span, _unusable

    assert _span([]) == "no epochs"
    assert _span([3]) == "epoch 3"
    assert _span([1, 2, 3, 5, 7, 8]) == "epochs 1-3, 5, 7-8"
    assert _span([0, 2]) == "epochs 0, 2"
    folder = Path("/x/store")
    assert str(_damaged(folder, "epoch 3: bad checksum")) == (
        "the teacher-output store /x/store is damaged (epoch 3: bad checksum); it is not used. Delete the folder "
        "(rm -r '/x/store') and fill it again with `rld cache PRESET … --epochs E`"
    )
    assert str(_unusable(folder, PermissionError(13, "Permission denied"))) == (
        "cannot use the teacher-output store /x/store: Permission denied; set train.cache_dir to a writable folder"
    )
    assert str(_unusable(folder, OSError("disk gone\nmore"))) == (
        "cannot use the teacher-output store /x/store: disk gone; set train.cache_dir to a writable folder"
    )


def test_a_damaged_chunk_of_the_logit_cache_names_its_images():
    from rld.fast.cache import _damaged, corrupt

    assert str(_damaged(Path("/c"), slice(64, 128), 100)) == (
        "the teacher-logit cache /c is corrupt (the logits of images 64-99 do not match their checksum); it is not "
        "used. Delete the folder (rm -r '/c') and rebuild it with `rld cache PRESET …` (or let "
        "train.teacher_cache=lazy refill it)"
    )
    assert str(corrupt(Path("/c"), "x")).startswith("the teacher-logit cache /c is corrupt (x); it is not used.")


def test_an_epochs_size_counts_every_record_in_decimal_gigabytes():
    from rld.fast.forms import per_epoch_gb, record_bytes

    assert record_bytes("topk", 1000, 100) == 4 * 100 + 6
    assert per_epoch_gb("topk", 1_000_000, 1000, 100) == 406 * 1_000_000 / 1e9
    assert per_epoch_gb("float16", 1_281_167, 1000) == 2_562_334_000 / 1e9
    assert per_epoch_gb("topk", 1_000_000, 1000) == record_bytes("topk", 1000) / 1000


SWEEP_ROWS = [
    {"run": "method.temperature=2", "best_epoch": 3, "best_top1": 41.5, "last_top1": 40.25, "status": "done"},
    {"run": "method.temperature=4", "best_epoch": 0, "best_top1": 0.0, "last_top1": None, "status": "done"},
    {
        "run": "method.temperature=8",
        "best_epoch": 1,
        "best_top1": 12.0,
        "last_top1": None,
        "status": "diverged",
        "diverged_epoch": 2,
    },
    {"run": "method.temperature=16", "status": "failed", "error": "worker died"},
]


def test_a_sweep_prints_a_table_of_its_runs_and_reports_the_diverged(capsys, monkeypatch, tmp_path):
    import rld.engine.sweep as engine_sweep

    monkeypatch.chdir(tmp_path)
    seen = {}

    def fake_sweep(preset, overrides, **kwargs):
        seen.update(preset=preset, overrides=overrides, **kwargs)
        return [dict(r) for r in SWEEP_ROWS]

    monkeypatch.setattr(engine_sweep, "sweep", fake_sweep)
    code, out, err = run_cli(capsys, "sweep", "demo/kd", "method.temperature=2,4,8,16", "--out", str(tmp_path / "s"))
    assert code == 3  # a diverged run: DivergedError's exit status
    assert out.splitlines() == [
        f"{'run':40s} {'best top-1':>10s} {'last top-1':>10s}",
        f"{'method.temperature=2':40s} {'    41.50%':>10s} {'    40.25%':>10s}",
        f"{'method.temperature=4':40s} {'—':>10s} {'—':>10s}",
        f"{'method.temperature=8':40s} {'    12.00%':>10s} {'diverged @ 2':>10s}",
        f"{'method.temperature=16':40s} {'—':>10s} {'failed':>10s}",
        f"summary → {tmp_path / 's' / 'sweep.csv'}",
    ]
    assert err == "rld: error: 1 of 4 runs diverged (method.temperature=8); the others finished\n"
    assert (seen["preset"], seen["overrides"], seen["out"], seen["seeds"], seen["resume"]) == (
        "demo/kd",
        ["method.temperature=2,4,8,16"],
        tmp_path / "s",
        None,
        False,
    )
    code, out, _ = run_cli(capsys, "sweep", "demo/kd", "method.temperature=2,4,8,16", "--json")
    import json

    assert code == 3 and json.loads(out) == SWEEP_ROWS


@pytest.mark.parametrize(
    "seeds, message",
    [
        ("0,x", "--seeds must be comma-separated integers (e.g. 0,1,2), got '0,x'"),
        ("1.5", "--seeds must be comma-separated integers (e.g. 0,1,2), got '1.5'"),
        (",", "--seeds must list at least one integer, got ','"),
    ],
)
def test_seed_lists_are_refused_in_one_line(capsys, monkeypatch, tmp_path, seeds, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "sweep", "demo/kd", "--seeds", seeds, "--dry-run")
    assert (code, out, err) == (2, "", f"rld: error: {message}\n")


def test_seed_lists_may_have_spaces_and_a_trailing_comma(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "sweep", "demo/kd", "--seeds", " 3, 5,", "--dry-run")
    assert code == 0
    assert (
        out.splitlines()[0]
        == "sweep: 2 runs in 2 lockstep group(s) (seed 3: 1 run; seed 5: 1 run) -> runs/sweeps/demo/kd"
    )


def test_a_topk_record_missing_one_class_gives_that_class_its_own_logit_back():
    from rld.fast.forms import decode, encode

    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, -2.0], [0.5, 3.0, 2.5, -1.0, 1.0]])
    targets = torch.tensor([3, 0])  # each outside the top 3: top-3 + the true class leave one class out
    decoded = decode(encode(logits, targets, "topk", 3), targets, 5, "topk")
    # the one class left gets all the remaining probability: exactly its own, so its own logit
    assert torch.allclose(decoded, logits, atol=1e-3)  # within the float16 the record keeps
    # the classes left share the remaining mass equally (top-2 of row 0: 0 and 1, the true class 0)
    three = decode(encode(logits, torch.tensor([0, 1]), "topk", 2), torch.tensor([0, 1]), 5, "topk").softmax(1)
    p = logits.softmax(1)
    assert torch.allclose(three[0, 2:], p[0, 2:].sum().expand(3) / 3, atol=1e-6)
    assert torch.allclose(three[0, :2], p[0, :2], atol=1e-6)
