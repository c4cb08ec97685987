"""Small helpers of rld.fast that the command-line tests reach only through a subprocess: the cache
folder's default, sizes and names, and a sweep row read as a run's outcome."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    assert first.parent == path.parent and first.name.startswith(".logits.npy.tmp-") and first != second


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
