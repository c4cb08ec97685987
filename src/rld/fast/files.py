"""File handling shared by the stores of teacher outputs (:mod:`rld.fast.cache`, :mod:`rld.fast.store`):
where they live, atomic writes and folder creation, checksums, locks, free space, ``.npy`` headers.

Every file a store writes is written under a temporary name in its own folder, flushed and fsynced,
then renamed over its final name (:func:`atomic_write`); a folder is created complete under a
temporary name and renamed into place (:func:`create_folder`). A reader therefore sees a file whole
or not at all, and a crash leaves at most a temporary file behind.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from rld.errors import first_line

CHUNK_BYTES = 1 << 22
"""Bytes per checksummed chunk (4 MiB)."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/rld/teacher-logits``, or ``~/.cache/rld/teacher-logits``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rld" / "teacher-logits"


def human_size(nbytes: float) -> str:
    """``1.51 GiB``, ``25.4 KiB``, ``812 B``."""
    units, k = ("B", "KiB", "MiB", "GiB", "TiB"), 0
    while nbytes >= 1024 and k < len(units) - 1:
        nbytes, k = nbytes / 1024, k + 1
    return f"{nbytes:.3g} {units[k]}" if nbytes < 1000 else f"{nbytes:.0f} {units[k]}"  # never 1.02e+03


def safe_name(name: str) -> str:
    """``name`` with every character but letters, digits, ``-``, ``_`` and ``.`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def temporary_name(path: Path) -> Path:
    """A name beside ``path`` for writing it: ``.NAME.tmp-PID-RANDOM`` (hidden, unique per process)."""
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (where the file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Replace ``path`` atomically by what ``write(file)`` writes: a temporary file in the same folder,
    flushed, fsynced, renamed over ``path``. The temporary file is removed when ``write`` fails."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def create_folder(folder: Path, fill: Callable[[Path], None]) -> None:
    """Create ``folder`` complete: ``fill(tmp)`` writes its files into a temporary folder beside it,
    which is then renamed into place. When another process created ``folder`` first, the temporary
    folder is removed and the winner's is kept (no error)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(folder)
    tmp.mkdir()
    try:
        fill(tmp)
        os.rename(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not folder.is_dir():  # not merely another process creating the same folder first
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_folder(folder.parent)


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) inside the block; waits for another
    holder. The kernel releases it when the process ends, however it ends."""
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system of ``folder`` (or of its nearest existing parent)."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def crc32(data, crc: int = 0) -> int:
    """CRC-32 of a bytes-like object or a C-contiguous numpy array, continuing ``crc``."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).view(np.uint8).data  # C order, any shape (zlib reads the whole buffer)
    return zlib.crc32(data, crc)


def npy_problem(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    """Why the ``.npy`` file ``path`` cannot hold an array of ``shape`` and ``dtype`` — missing, an
    unreadable header, another array, truncated — or None when it can. Reads only the header and the
    file's size."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            fmt = np.lib.format
            header = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
            offset = f.tell()
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path.name} is missing"
    except Exception as err:  # noqa: BLE001 - numpy's header parser raises many kinds for damaged bytes
        return f"{path.name} has no readable header: {first_line(err, 120)}"
    if tuple(header[0]) != tuple(shape) or np.dtype(header[2]) != np.dtype(dtype) or header[1]:
        return f"{path.name} holds another array"
    need = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
    if size < need:
        return f"{path.name} is truncated: {size:,} of {need:,} bytes"
    return None


__all__ = [
    "CHUNK_BYTES",
    "atomic_write",
    "crc32",
    "create_folder",
    "default_cache_dir",
    "exclusive_lock",
    "free_bytes",
    "fsync_folder",
    "human_size",
    "npy_problem",
    "safe_name",
    "temporary_name",
]
