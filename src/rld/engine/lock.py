"""One writer per run folder: an exclusive ``flock`` on ``RUN/rld.lock`` while a process trains the run.

The lock is taken when the run starts writing its folder (after every check that could refuse the
command, so that a refused command writes nothing) and held until training ends. The kernel releases
it when the holder's file descriptor closes — on exit, on a crash, even after SIGKILL — so a stale
lock (its holder gone) is simply taken over by the next process. The file's content names the
holder (host, pid, since when), for the message of a process that is refused; it stays behind after
the run, naming the last holder.

The lock dies with the process that took it, not with its children. A ``flock`` belongs to the open
file description, which a child made by ``fork`` shares (``O_CLOEXEC`` closes it only on ``exec``):
DataLoader worker processes, forked without ``exec``, would otherwise hold the lock until they notice
that their parent is gone, seconds after it was killed, and refuse an immediate ``--resume``. So every
child forked by this process closes its copies of the lock descriptors at once
(``os.register_at_fork``); closing a copy drops only the child's reference, the parent keeps its lock
(unlocking with ``LOCK_UN`` in the child would release the parent's lock too). The alternatives do not
fit: an OFD lock (``F_OFD_SETLK``) also belongs to the open file description and is shared with the
children; a classic POSIX record lock (``F_SETLK``) is not inherited, but it does not exclude another
lock of the same process (a held folder would not refuse a second ``RunLock``) and is dropped when
the process closes *any* descriptor of the file (reading the lock file would release it).

Checks and lock are two steps, so a process re-checks the folder once it holds the lock: another
process may have trained the run in between (:func:`folder_state`).

Whether a process trains a run now (``rld runs``) is :func:`holder`: it tries a shared lock and
gives it back at once, without creating the lock file.

On NFS, Linux emulates ``flock`` with POSIX byte-range locks, which the server arbitrates between
machines (NFSv4, or NFSv3 with the lock manager): one writer per run folder across a cluster's shared
file system.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from rld.errors import RunFolderLocked, UserError

LOCK_FILE = "rld.lock"
# the files whose change means that another process trained the run (see folder_state)
WATCHED = ("checkpoints/last.pt", "checkpoints/step.pt", "metrics.csv")

_held: dict[Path, RunLock] = {}
"""The run folders this process holds, by resolved path (a sweep takes them up front, its runs reuse them)."""

_fds: dict[int, RunLock | None] = {}
"""Every open descriptor of a lock file, with the RunLock it belongs to (None while acquire decides):
what a forked child closes. Guarded by ``_fds_guard``, which ``fork`` waits for (an open, close or
registration in another thread is never half done in the child)."""
_fds_guard = threading.Lock()


def _open_fd(path: Path) -> int:
    with _fds_guard:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        _fds[fd] = None
        return fd


def _close_fd(fd: int) -> None:
    with _fds_guard:
        _fds.pop(fd, None)
        os.close(fd)


def _in_forked_child() -> None:
    """A child made by ``fork`` holds no run folder: close its copies of the lock descriptors (the
    parent's locks stay) and forget the locks."""
    global _fds_guard
    _fds_guard = threading.Lock()  # the parent's was held across the fork
    for fd, owner in _fds.items():
        try:
            os.close(fd)
        except OSError:
            pass
        if owner is not None:
            owner.fd = None  # its release() in the child does nothing (not even remove the lock file)
    _fds.clear()
    _held.clear()


def _before_fork() -> None:
    _fds_guard.acquire()


def _after_fork_in_parent() -> None:
    _fds_guard.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_in_forked_child)


class RunLock:
    """The exclusive lock of one run folder (``acquire`` / ``release``)."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out / LOCK_FILE
        self.fd: int | None = None
        self.created: list[Path] = []  # what acquire created (folders, the lock file), for undo()
        self.previous: bytes | None = None  # the lock file's content before acquire wrote its own
        # (atime, mtime) in ns of the lock file before acquire wrote it, and of the deepest folder that
        # existed before acquire (its time changes when a file or folder is created in it): undo() and
        # an unused release() put them back, so the folder is left exactly as it was
        self.previous_times: tuple[int, int] | None = None
        self.anchor: tuple[Path, tuple[int, int]] | None = None

    def acquire(self) -> None:
        """Take the lock and write this process's name into it; UserError when another process holds it."""
        try:
            missing = [p for p in (self.out, *self.out.parents) if not p.exists()]
            anchor = next(p for p in (self.out, *self.out.parents) if p.exists())
            self.anchor = (anchor, _times(anchor.stat()))
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(
                f"cannot write to the output folder {self.out}: {err.strerror}; choose another --out"
            ) from err
        self.created = sorted(missing, key=lambda p: len(p.parts))
        for _ in range(100):  # a lock file removed by its holder meanwhile (release) is opened again
            existed, fd = self._open()
            try:
                _lock_exclusive(fd)
            except OSError as err:
                holder = _read(fd)
                _close_fd(fd)
                if err.errno not in _BUSY:
                    raise UserError(f"cannot lock the run folder {self.out}: {err.strerror}") from err
                raise RunFolderLocked(
                    f"{self.out} is being trained by another process ({describe(holder)}); wait for it to "
                    "finish or stop it (its run continues with --resume), or choose another --out",
                    holder=describe(holder),
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except OSError:
                same = False
            if same:
                break
            _close_fd(fd)
        else:
            raise UserError(f"cannot lock the run folder {self.out}: its lock file keeps changing")
        self.fd = fd
        with _fds_guard:
            _fds[fd] = self
        if not existed:
            self.created.append(self.path)
        self.previous = _read(fd) if existed else None
        self.previous_times = _times(os.fstat(fd)) if existed else None
        record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        data = (json.dumps(record) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def _open(self) -> tuple[bool, int]:
        existed = self.path.exists()
        try:
            return existed, _open_fd(self.path)
        except OSError as err:
            raise UserError(
                f"cannot write to the output folder {self.out}: {err.strerror}; choose another --out"
            ) from err

    def release(self) -> None:
        """Give the lock back. A folder that never held more than the lock this process created (a
        command stopped before its run started) is removed again, as if nothing had happened."""
        if self.fd is None:
            return
        unused = self.path in self.created and {p.name for p in self.out.iterdir()} <= {LOCK_FILE}
        if unused:
            _remove(self.path)  # while still holding the lock; see acquire
        fd, self.fd = self.fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)  # released even if a child forked by other means holds a copy
        except OSError:
            pass  # closing releases it
        _close_fd(fd)
        if unused:
            for path in reversed(self.created[:-1]):
                try:
                    path.rmdir()
                except OSError:
                    break
            self._restore_anchor()

    def _restore_anchor(self) -> None:
        if self.anchor is not None:
            try:
                os.utime(self.anchor[0], ns=self.anchor[1])
            except OSError:
                pass

    def undo(self) -> None:
        """Release and leave the folder as it was before :meth:`acquire` (a command refused after all)."""
        if self.fd is not None and self.previous is not None:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, self.previous, 0)
            if self.previous_times is not None:
                os.utime(self.fd, ns=self.previous_times)
        elif self.fd is not None and self.path in self.created:
            _remove(self.path)
        self.release()
        self._restore_anchor()


_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
PROBE_WAIT_S = 2.0
"""How long taking the lock waits while it is held shared only (by probes, which hold it for an instant)."""


def _lock_exclusive(fd: int) -> None:
    """``flock(LOCK_EX | LOCK_NB)``, retried while the lock is only shared: :func:`holder` (``rld
    runs``) takes a shared lock for an instant, which must not refuse a run. Where a shared lock
    cannot be taken either, a process trains the run: the OSError is raised at once."""
    deadline = time.monotonic() + PROBE_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in _BUSY or time.monotonic() > deadline:
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # succeeds only when nobody holds it exclusively
            except OSError:
                raise err from None
            fcntl.flock(fd, fcntl.LOCK_UN)
            time.sleep(0.001)


def holder(out: Path) -> str | None:
    """Who trains the run in ``out`` now: ``pid N on host H, since T`` while a process holds its lock
    (this one included), else None. It only reads: it creates no file and holds a shared lock for an
    instant (:func:`_lock_exclusive` waits that out); a lock that cannot be probed counts as free."""
    path = Path(out) / LOCK_FILE
    with _fds_guard:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        _fds[fd] = None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            return describe(_read(fd)) if err.errno in _BUSY else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        _close_fd(fd)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _times(st: os.stat_result) -> tuple[int, int]:
    return st.st_atime_ns, st.st_mtime_ns


def _read(fd: int) -> bytes:
    try:
        return os.pread(fd, 4096, 0)
    except OSError:
        return b""


def describe(content: bytes) -> str:
    """``pid 123 on host h, since 2025-01-01 12:00:00 UTC`` from a lock file's content."""
    try:
        record = json.loads(content.decode())
        return f"pid {record['pid']} on host {record['host']}, since {record['since']}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "a process that has not written its name yet"


def hold(out: Path, expected: tuple | None = None) -> RunLock:
    """Lock the run folder ``out`` for this process (or return the lock it holds already).

    ``expected``: :func:`folder_state` when the command checked the folder; if another process has
    changed the run since, the lock is given back (the folder as it was) and the command refused.
    """
    key = Path(out).resolve()
    if key in _held:
        return _held[key]
    lock = RunLock(out)
    lock.acquire()
    if expected is not None and folder_state(out) != expected:
        lock.undo()
        raise UserError(
            f"{out} changed while this command was starting: another process trained the run meanwhile; "
            "run the command again (with --resume to continue the run)"
        )
    _held[key] = lock
    return lock


def hold_all(outs: Iterable[Path], expected: dict[Path, tuple] | None = None) -> list[RunLock]:
    """Lock every folder of ``outs`` (as :func:`hold`); if one is refused, none stays locked or created."""
    taken: list[RunLock] = []
    try:
        for out in outs:
            key = Path(out).resolve()
            fresh = key not in _held
            lock = hold(out, (expected or {}).get(Path(out)))
            if fresh:
                taken.append(lock)
    except BaseException:
        for lock in reversed(taken):
            _held.pop(lock.out.resolve(), None)
            lock.undo()
        raise
    return taken


def release(out: Path) -> None:
    """Give back the lock of ``out`` if this process holds it."""
    lock = _held.pop(Path(out).resolve(), None)
    if lock is not None:
        lock.release()


def folder_state(out: Path) -> tuple:
    """What identifies the state of a run folder: identity, size and time of its checkpoints and metrics."""
    state = []
    for name in WATCHED:
        try:
            st = (Path(out) / name).stat()
            state.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            state.append((name, None))
    return tuple(state)
