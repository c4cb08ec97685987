"""The file handling under the teacher-output stores (rld.fast.files): atomic writes and folder creation
that leave nothing half-written behind and never hide the error that stopped them, durable renames, free
space, ``.npy`` headers."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from rld.fast.files import atomic_write, create_folder, free_bytes, fsync_folder, npy_problem

# ----------------------------------------------------------------------------- atomic_write


def test_an_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "meta.json"
    path.write_bytes(b"old")
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["meta.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "meta.json"
    path.write_bytes(b"old")

    def write(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, write)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["meta.json"]


def test_an_atomic_write_into_a_missing_folder_raises_its_own_error_alone(tmp_path):
    """The temporary file was never created: the error is the open's, not one of removing it after."""
    with pytest.raises(FileNotFoundError) as err:
        atomic_write(tmp_path / "absent" / "meta.json", lambda f: f.write(b"x"))
    assert Path(err.value.filename).parent == tmp_path / "absent"
    assert err.value.__context__ is None and err.value.__cause__ is None


# ----------------------------------------------------------------------------- create_folder


def _fill(tmp: Path) -> None:
    (tmp / "a.npy").write_bytes(b"a")
    (tmp / "index.npz").write_bytes(b"i")


def test_a_folder_is_created_complete_and_its_temporary_is_gone(tmp_path):
    folder = tmp_path / "cache" / "run"
    create_folder(folder, _fill)
    assert sorted(os.listdir(folder)) == ["a.npy", "index.npz"]
    assert os.listdir(folder.parent) == ["run"]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), ValueError("bad table")])
def test_a_failed_fill_raises_its_error_and_leaves_nothing(tmp_path, error):
    """An OSError (the file system) and any other error alike: the folder does not exist afterwards and no
    temporary folder is left beside it."""

    def fill(tmp):
        _fill(tmp)
        raise error

    with pytest.raises(type(error)) as err:
        create_folder(tmp_path / "run", fill)
    assert err.value is error
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("error", [OSError(5, "Input/output error"), ValueError("bad table")])
def test_a_fill_that_lost_its_temporary_folder_raises_its_own_error(tmp_path, error):
    """Removing a temporary folder that is already gone does not replace the fill's error."""

    def fill(tmp):
        shutil.rmtree(tmp)
        raise error

    with pytest.raises(type(error)) as err:
        create_folder(tmp_path / "run", fill)
    assert err.value is error
    assert os.listdir(tmp_path) == []


def test_a_folder_another_process_created_first_is_kept_without_an_error(tmp_path):
    """The rename fails because the folder now exists (another process won): its folder stays, whole, and this
    process's temporary folder is removed."""
    folder = tmp_path / "run"

    def fill(tmp):
        _fill(tmp)
        folder.mkdir()
        (folder / "theirs").write_bytes(b"w")

    create_folder(folder, fill)
    assert os.listdir(folder) == ["theirs"] and os.listdir(tmp_path) == ["run"]


# ----------------------------------------------------------------------------- fsync_folder, free_bytes


def _fsyncs(monkeypatch) -> list[int]:
    """The st_mode of every file descriptor fsynced."""
    modes = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: modes.append(os.fstat(fd).st_mode) or real(fd))
    return modes


def test_a_folder_is_fsynced_as_a_directory(tmp_path, monkeypatch):
    modes = _fsyncs(monkeypatch)
    fsync_folder(tmp_path)
    assert len(modes) == 1 and stat.S_ISDIR(modes[0])


def test_fsyncing_a_path_that_is_no_folder_does_nothing(tmp_path, monkeypatch):
    """A regular file is not opened as a folder (nothing fsynced), nor is a missing path; no error either way."""
    (tmp_path / "file").write_bytes(b"x")
    modes = _fsyncs(monkeypatch)
    fsync_folder(tmp_path / "file")
    fsync_folder(tmp_path / "absent")
    assert modes == []


def test_free_space_is_that_of_the_nearest_existing_folder(tmp_path, monkeypatch):
    asked = []
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: asked.append(Path(path)) or usage._replace(free=12345))
    assert free_bytes(tmp_path / "not" / "yet") == 12345
    assert free_bytes(tmp_path) == 12345
    assert asked == [tmp_path, tmp_path]


# ----------------------------------------------------------------------------- npy_problem


def _npy(path: Path, array: np.ndarray, version=None) -> Path:
    with open(path, "wb") as f:
        np.lib.format.write_array(f, array, version=version)
    return path


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_a_whole_npy_file_of_the_array_has_no_problem_in_any_header_version(tmp_path, version):
    path = _npy(tmp_path / "logits.npy", np.zeros((4, 3), np.float16), version)
    assert npy_problem(path, (4, 3), np.float16) is None
    assert npy_problem(path, (4, 3), np.dtype("<f2")) is None


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 2), np.float16),  # another shape only
        np.zeros((4, 3), np.float32),  # another dtype only
        np.asfortranarray(np.arange(12, dtype=np.float16).reshape(4, 3)),  # Fortran order only
    ],
    ids=["shape", "dtype", "fortran order"],
)
def test_a_npy_file_differing_in_shape_dtype_or_order_holds_another_array(tmp_path, array):
    path = _npy(tmp_path / "logits.npy", array)
    assert npy_problem(path, (4, 3), np.float16) == "logits.npy holds another array"


def test_a_short_npy_file_is_truncated_and_a_missing_one_missing(tmp_path):
    path = _npy(tmp_path / "logits.npy", np.zeros((400, 3), np.float16))
    size = path.stat().st_size  # a 128-byte header and 2,400 bytes of values
    path.write_bytes(path.read_bytes()[:-1])
    assert npy_problem(path, (400, 3), np.float16) == f"logits.npy is truncated: {size - 1:,} of {size:,} bytes"
    assert size - 1 == 2_527
    assert npy_problem(tmp_path / "absent.npy", (1,), np.float16) == "absent.npy is missing"


@pytest.mark.parametrize(
    "error, reason",
    [
        (ValueError("  the magic string is not correct\nexpected b'\\x93NUMPY'"), "the magic string is not correct"),
        (ValueError("m" * 130), "m" * 120),
        (EOFError(), "EOFError"),
        (ValueError(" \n "), "ValueError"),
    ],
    ids=["first line", "120 characters", "no message", "blank message"],
)
def test_an_unreadable_header_is_named_by_the_first_line_of_its_error(tmp_path, monkeypatch, error, reason):
    path = _npy(tmp_path / "logits.npy", np.zeros(3, np.float16))

    def read_magic(f):
        raise error

    monkeypatch.setattr(np.lib.format, "read_magic", read_magic)
    assert npy_problem(path, (3,), np.float16) == f"logits.npy has no readable header: {reason}"


def test_a_header_of_garbage_bytes_has_no_readable_header(tmp_path):
    path = tmp_path / "logits.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + b"\xff" * 40)
    problem = npy_problem(path, (3,), np.float16)
    assert problem is not None and problem.startswith("logits.npy has no readable header: ")
    assert len(problem) <= len("logits.npy has no readable header: ") + 120
