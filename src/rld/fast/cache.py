"""The exact teacher-logit cache: the frozen teacher's logits per (image, augmentation view).

The CIFAR augmentation has exactly ``NUM_VIEWS = 162`` views per image (9 x 9 crop offsets x 2
flips, see :mod:`rld.data.device_loader`), and a logit-based method needs nothing from the eval-mode
teacher but its logits. So they can be computed once per (image, view) and looked up by the
``(indices, views)`` the device-resident loader puts in every batch: the training step runs no
teacher forward at all.

Modes (``train.teacher_cache``):

* ``lazy`` — an entry is computed the first time a batch needs it (from that batch's own images)
  and reused afterwards; a filled mask (N, V) says which entries hold logits. For CPUs and short
  runs, where computing all 162 views up front would cost more than the run itself; an epoch visits
  N of the 162 x N entries, so early epochs still run the teacher for most samples.
* ``full`` — every view the loader can produce is computed up front (``rld cache`` does it ahead
  of training); the step is then one gather. On CUDA the whole table is loaded into device memory
  and the lookup involves no host synchronisation.

When it pays. Each entry costs one teacher forward of one image. Plain training runs E x N of them;
a table holds at most 162 x N, and it serves every student, method, hyper-parameter and seed that
distils from the same teacher on the same data (the key does not involve them). A single lazy run of
E epochs computes 162 x N x (1 - (161/162)^E) entries: 52 % of the plain forwards over 240 epochs,
99.7 % over 2 — lazy filling pays across runs and long schedules, not within a short one.

Storage. One folder per key under ``train.cache_dir`` (default :func:`default_cache_dir`)::

    <teacher>-<data>-<key[:16]>/logits.npy   (N, V, C) float16 (or float32), memory-mapped
    <teacher>-<data>-<key[:16]>/index.npz    filled (N, V) bool, and crc32 (K,): a checksum per chunk
    <teacher>-<data>-<key[:16]>/meta.json    the full key, what it covers, the chunk size

``logits.npy`` is created sparse at full size and memory-mapped with numpy, so its 1.6 GB (CIFAR-100,
float16) need not sit in RAM on the CPU. The folder is created complete under a temporary name and
renamed into place (a concurrent creator loses the rename and uses the winner's folder). Lookups
only ever read entries of the in-memory mask. Entries a process computes stay in its private
(copy-on-write) map of the file until a flush, at most every ``FLUSH_INTERVAL_S`` seconds and when
the provider is closed or collected: under an exclusive lock on ``flush.lock`` it writes the entries
the file does not hold yet (``msync``), then ``index.npz`` — the mask merged with the entries other
processes filled meanwhile, and the checksums — atomically (temporary file, fsync, rename). A crash
loses at most the entries filled since the last flush; they are computed again. Several processes may
share a folder (torchrun ranks, concurrent runs). A filled entry is never written again, so its
checksum holds for every reader.

Integrity. The table is checksummed in chunks of whole images (``CHUNK_BYTES`` of logits: 129
CIFAR-100 images): CRC-32 of a chunk's mask rows and of the logits of its filled entries. Opening
checks what is cheap — the files are there, readable, of the right shape and length (a truncated
``logits.npy`` is refused at once); the logits are checked lazily, a chunk before its first lookup
(or fill), and all of them before a table is copied to the GPU; ``full`` mode touches every chunk when
it opens, so it checks the whole table then (about a second per GB). A damaged cache is never used:
the error names the images whose checksum fails and says how to rebuild (delete the folder, then
``rld cache`` or a lazy run). A flush re-checks the chunks it rewrites, so damage is never laundered
into a new checksum.

Precision. float16 keeps 11 significant bits (relative rounding <= 2**-11 ~ 4.9e-4 on each logit);
the RLD, DKD and KD losses change by less than 1e-3 relative (``tests/test_fast.py``). The one
discontinuity: a class whose teacher logit ties the true class's within that rounding can cross
RLD's M_ge boundary, which changes that sample's gradient. float32 storage
(``train.cache_precision=float32``) gives exactly the logits of the teacher forward.

Exactness. A cached entry is the teacher's output for that view computed within some batch. On the
CPU that output does not depend on the other samples of the batch, except that a batch of one takes
another convolution path; the cache therefore never runs the teacher on a single image (it pads to
two). With float32 storage, cached logits are then bit-identical to a teacher forward of the same
views, whichever batches filled them; on CUDA they agree to the rounding of the convolution algorithms.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rld.data.device_loader import DeviceLoader
from rld.data.types import Batch
from rld.data.views import NUM_VIEWS
from rld.errors import UserError
from rld.fast.files import (
    CHUNK_BYTES,
    atomic_write,
    create_folder,
    default_cache_dir,
    exclusive_lock,
    free_bytes,
    human_size,
    npy_problem,
    safe_name,
)
from rld.fast.key import CACHE_FORMAT, VIEW_DEFINITION, cache_key

log = logging.getLogger("rld")

PRECISIONS = {"float16": torch.float16, "float32": torch.float32}
FLUSH_INTERVAL_S = 60.0
"""Lazy mode: the filled mask is written to disk at most this often (and on close)."""
LOGITS, INDEX, FLUSH_LOCK = "logits.npy", "index.npz", "flush.lock"
COPY_CHUNK = 1 << 26
"""Bytes per chunk when a complete table is copied to device memory."""
FILL_BATCH = {"cpu": 64, "cuda": 1024}
"""Views per teacher forward when filling: on the 2-core CPU, resnet32x4 takes 12.3 ms per image in
batches of 64 and 19.6 ms in batches of 256 (the activations of larger batches leave the caches)."""


def fill_batch_size(device: torch.device) -> int:
    return FILL_BATCH.get(device.type, FILL_BATCH["cuda"])


def usable_views(loader: DeviceLoader) -> torch.Tensor:
    """The views the loader's training augmentation can produce: all 162, or the 81 unflipped ones."""
    return torch.arange(NUM_VIEWS) if loader.flip else torch.arange(0, NUM_VIEWS, 2)


def chunk_images(shape: tuple[int, int, int], itemsize: int) -> int:
    """Images per checksummed chunk of a table of ``shape``."""
    return max(1, CHUNK_BYTES // max(1, shape[1] * shape[2] * itemsize))


def corrupt(folder: Path, what: str) -> UserError:
    return UserError(
        f"the teacher-logit cache {folder} is corrupt ({what}); it is not used. Delete the folder "
        f"(rm -r '{folder}') and rebuild it with `rld cache PRESET …` (or let train.teacher_cache=lazy refill it)"
    )


def _crc(values: np.ndarray | None, filled: np.ndarray) -> int:
    """CRC-32 of a chunk: its mask (R, V) and the logits of its filled entries, in order."""
    crc = zlib.crc32(np.ascontiguousarray(filled).tobytes())
    if not filled.any():
        return crc
    rows = values if filled.all() else values[filled]
    return zlib.crc32(np.ascontiguousarray(rows).data, crc)


def _chunk_crcs(values: np.ndarray, filled: np.ndarray, rows: int, chunks) -> dict[int, int]:
    return {c: _crc(values[c * rows : (c + 1) * rows], filled[c * rows : (c + 1) * rows]) for c in chunks}


def _damaged(folder: Path, rows: slice, n: int) -> UserError:
    first, last = rows.start, min(rows.stop, n) - 1
    return corrupt(folder, f"the logits of images {first}-{last} do not match their checksum")


def _write_index(folder: Path, filled: np.ndarray, crcs: np.ndarray) -> None:
    """``index.npz`` (the mask and the chunks' checksums, which must agree) replaced atomically."""
    atomic_write(folder / INDEX, lambda f: np.savez(f, filled=filled, crc32=crcs))


def _read_index(folder: Path, shape: tuple[int, int, int], chunks: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(folder / INDEX, "rb") as f, np.load(f) as index:  # (np.load leaks a file it opens and refuses)
            filled, crcs = index["filled"], index["crc32"]
    except FileNotFoundError:
        raise corrupt(folder, f"{INDEX} is missing") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise corrupt(folder, f"{INDEX} is unreadable: {reason}") from err
    if not (isinstance(filled, np.ndarray) and isinstance(crcs, np.ndarray)):  # members not .npy: raw bytes
        raise corrupt(folder, f"{INDEX} holds no arrays")
    if filled.shape != tuple(shape[:2]) or filled.dtype != bool or crcs.shape != (chunks,):
        raise corrupt(folder, f"{INDEX} does not describe a table of {shape[0]} images")
    if crcs.dtype.kind not in "iu" or crcs.size and (crcs.min() < 0 or crcs.max() > 0xFFFFFFFF):
        raise corrupt(folder, f"{INDEX} holds no CRC-32 checksums")
    return filled, crcs.astype(np.uint32)


def _check_logits_file(folder: Path, shape: tuple[int, int, int], dtype: np.dtype) -> None:
    """Refuse a logits.npy whose header is unreadable, describes another array, or that is truncated."""
    problem = npy_problem(folder / LOGITS, shape, dtype)
    if problem is not None:
        raise corrupt(folder, problem)


@dataclass
class _Files:
    """The store's files and what this process knows of them; kept apart from the store so a
    finalizer can hold it (a last flush when the store is collected).

    ``values`` is a private (copy-on-write) map of logits.npy: entries this process fills live in its
    memory until a flush writes them to the file. A flush (serialised between processes by a lock
    on ``flush.lock``) writes only the entries the file does not hold yet — a filled entry is never
    rewritten, so its checksum stays valid for every reader — then the mask and the checksums.
    """

    folder: Path
    values: np.memmap  # (N, V, C), private map
    filled: np.ndarray  # (N, V) bool: the entries this process may read (the file's and its own)
    disk_filled: np.ndarray  # (N, V) bool: the mask of index.npz as last read or written
    crcs: np.ndarray  # (K,) uint32: the checksums of index.npz that go with disk_filled
    rows: int  # images per chunk
    writable: bool = True
    dirty: bool = False
    last_flush: float = field(default_factory=time.monotonic)
    verified: np.ndarray | None = None  # (K,) bool: chunks whose checksum this process checked

    def __post_init__(self):
        if self.verified is None:
            self.verified = np.zeros(len(self.crcs), dtype=bool)

    def verify(self, chunks) -> None:
        """Check the chunks not checked yet against index.npz; UserError (corrupt) on a mismatch."""
        for c in (int(c) for c in chunks if not self.verified[c]):
            rows = slice(c * self.rows, (c + 1) * self.rows)
            if _crc(self.values[rows], self.disk_filled[rows]) != int(self.crcs[c]):
                raise _damaged(self.folder, rows, len(self.filled))
            self.verified[c] = True

    def verify_images(self, indices: np.ndarray) -> None:
        chunks = np.unique(indices // self.rows)
        if not self.verified[chunks].all():
            self.verify(chunks)

    def flush(self) -> None:
        if not (self.dirty and self.writable):
            return
        n = self.values.shape[0]
        with exclusive_lock(self.folder / FLUSH_LOCK):  # one flush at a time, across processes
            disk, crcs = _read_index(self.folder, self.values.shape, len(self.crcs))
            new = self.filled & ~disk  # entries of this process the file lacks
            changed = np.unique(np.nonzero(new)[0] // self.rows)
            shared = np.load(self.folder / LOGITS, mmap_mode="r+")
            try:
                for c in changed:  # a damaged chunk is never laundered into a new checksum
                    rows = slice(c * self.rows, (c + 1) * self.rows)
                    if _crc(shared[rows], disk[rows]) != int(crcs[c]):
                        raise _damaged(self.folder, rows, n)
                i, v = np.nonzero(new)
                shared[i, v] = self.values[i, v]
                shared.flush()  # the logits first: a mask entry never reaches the disk before its logits
                merged = disk | self.filled
                for c, crc in _chunk_crcs(shared, merged, self.rows, changed).items():
                    crcs[c] = crc
            finally:
                del shared
            _write_index(self.folder, merged, crcs)
        # Entries other processes filled meanwhile are readable now: map the file afresh (which also
        # frees this process's private copies) and check their chunks before they are used.
        others = np.unique(np.nonzero(disk & ~self.disk_filled)[0] // self.rows)
        self.values = np.load(self.folder / LOGITS, mmap_mode="c")
        self.filled |= merged
        self.disk_filled, self.crcs = merged, crcs
        self.verified[others] = False
        self.verified[changed] = True
        self.dirty = False
        self.last_flush = time.monotonic()


class LogitStore:
    """Teacher logits per (image, view) — values (N, V, C), mask (N, V) — in a cache folder.

    Use :meth:`open`. ``get`` reads rows, ``put`` writes them, ``missing`` finds unfilled entries,
    ``flush`` persists. After :meth:`to_device` the values live on the device. Every chunk of images
    is checked against its checksum before its logits are first read (:meth:`verify`).
    """

    def __init__(self, files: _Files, key: str, dtype: torch.dtype):
        self.key, self.dtype, self.folder = key, dtype, files.folder
        self._files = files
        self._device_values: torch.Tensor | None = None  # see to_device
        self._finalizer = weakref.finalize(self, files.flush)

    @property
    def _values(self) -> torch.Tensor:
        """(N, V, C): the device table after :meth:`to_device`, else the map of logits.npy."""
        if self._device_values is not None:
            return self._device_values
        return torch.from_numpy(self._files.values)

    @property
    def _filled(self) -> torch.Tensor:
        return torch.from_numpy(self._files.filled)  # (N, V) bool, shares the mask

    # ------------------------------------------------------------------ creation

    @classmethod
    def open(
        cls, root: Path, name: str, *, key: str, shape: tuple[int, int, int], precision: str, meta: dict[str, Any]
    ) -> LogitStore:
        """Open the store ``root/name`` of ``key``, creating it (empty) if needed.

        Raises UserError when the folder holds another key or shape, is damaged (a truncated or
        unreadable file; the logits themselves are checked against their checksums lazily, before
        each chunk's first use), is unreadable, or when the file system lacks the space the unfilled
        entries will need.
        """
        dtype = PRECISIONS[precision]
        np_dtype = np.dtype(str(dtype).removeprefix("torch."))
        rows = chunk_images(shape, np_dtype.itemsize)
        folder = Path(root).expanduser() / name
        try:
            if not folder.is_dir():
                _check_space(folder.parent, shape, dtype, fraction=1.0)
                info = {**meta, "key": key, "shape": list(shape), "precision": precision, "chunk_images": rows}
                _create(folder, shape, dtype, info)
            try:
                on_disk = json.loads((folder / "meta.json").read_text())
            except ValueError as err:
                raise corrupt(folder, f"meta.json is unreadable: {err}") from err
            if not isinstance(on_disk, dict) or not isinstance(on_disk.get("shape", []), list):
                raise corrupt(folder, "meta.json does not describe a cache")
            if on_disk.get("key") != key or on_disk.get("shape") != list(shape):
                raise UserError(
                    f"the teacher-logit cache {folder} belongs to another teacher or data set; delete the folder"
                )
            rows = on_disk.get("chunk_images")  # as the folder was written
            if not isinstance(rows, int) or rows < 1:
                raise corrupt(folder, "meta.json gives no chunk size")
            _check_logits_file(folder, shape, np_dtype)
            filled, crcs = _read_index(folder, shape, -(-shape[0] // rows))
            complete = bool(filled.all())
            if not complete:
                _check_space(folder, shape, dtype, fraction=1.0 - float(filled.mean()))
                open(folder / FLUSH_LOCK, "a+b").close()  # flushes will write here: refuse a read-only folder now
            # a private map: reads come from the file, entries filled here stay in memory until a flush
            values = np.load(folder / LOGITS, mmap_mode="c")
        except UserError:
            raise
        except (OSError, ValueError) as err:
            reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
            raise UserError(
                f"cannot use the teacher-logit cache in {folder}: {reason}; set train.cache_dir to a writable "
                "folder or delete this one"
            ) from err
        files = _Files(folder, values, filled.copy(), filled, crcs, rows, writable=not complete)
        return cls(files, key, dtype)

    # ------------------------------------------------------------------ access

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self._values.shape)

    @property
    def nbytes(self) -> int:
        return self._values.numel() * self._values.element_size()

    def filled_count(self) -> int:
        return int(self._filled.sum())

    def verify(self, indices: torch.Tensor | None = None) -> None:
        """Check the checksums of the chunks holding ``indices`` (None: every chunk) not checked yet;
        UserError naming the damaged images when one does not match."""
        files = self._files
        if indices is None:
            files.verify(range(len(files.crcs)))
        else:
            files.verify_images(indices.cpu().numpy())

    def missing(self, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Positions (K,) int64 (CPU) of the entries ``(indices[k], views[k])`` not filled yet."""
        idx = indices.cpu()
        self.verify(idx)
        return (~self._filled[idx, views.cpu()]).nonzero().squeeze(1)

    def get(self, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Logits of entries ``(indices, views)`` (B,) -> (B, C) float32 on ``indices.device``."""
        if self._device_values is not None and self._device_values.device == indices.device:
            return self._device_values[indices, views].float()  # to_device checked every chunk
        idx = indices.cpu()
        self.verify(idx)
        rows = self._values[idx, views.cpu()]
        return rows.to(indices.device, non_blocking=True).float()

    def put(self, indices: torch.Tensor, views: torch.Tensor, logits: torch.Tensor) -> None:
        """Store ``logits`` (B, C) for entries ``(indices, views)`` (B,) and mark them filled."""
        if self._device_values is not None:
            raise RuntimeError("a store loaded into device memory is read-only")
        rows = logits.detach().to("cpu", self.dtype)
        if not torch.isfinite(rows).all():
            raise UserError(
                f"teacher logits do not fit {self.dtype} (non-finite after conversion); "
                "use train.cache_precision=float32"
            )
        i, v = indices.cpu(), views.cpu()
        self._values[i, v] = rows
        self._filled[i, v] = True
        self._files.dirty = True

    def flush(self) -> None:
        """Write the entries filled here, then the mask and checksums, to disk (no-op when nothing changed)."""
        self._files.flush()

    def flush_if_due(self) -> None:
        if self._files.dirty and time.monotonic() - self._files.last_flush > FLUSH_INTERVAL_S:
            self._files.flush()

    def to_device(self, device: torch.device) -> None:
        """Load the table into ``device`` memory, every chunk checked first: lookups then stay on the
        device (no host sync). Only for a table complete for every entry that will be looked up (no
        ``put`` afterwards)."""
        if device.type == "cpu" or self._values.device == device:
            return
        self.flush()
        self.verify()
        values = self._values
        table = torch.empty(values.shape, dtype=self.dtype, device=device)
        rows = max(1, COPY_CHUNK // max(1, values[0].numel() * values.element_size()))
        for start in range(0, values.shape[0], rows):
            table[start : start + rows].copy_(values[start : start + rows])
        self._device_values = table


def _check_space(folder: Path, shape: tuple[int, int, int], dtype: torch.dtype, fraction: float) -> None:
    """UserError unless the file system of ``folder`` has room for ``fraction`` of the table."""
    need = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size() * fraction
    free = free_bytes(folder)
    if need > free:
        raise UserError(
            f"the teacher-logit cache needs {need / 2**30:.2f} GiB more in {folder} but only "
            f"{free / 2**30:.2f} GiB are free; set train.cache_dir to another folder"
        )


def _create(folder: Path, shape: tuple[int, int, int], dtype: torch.dtype, meta: dict[str, Any]) -> None:
    """Create an empty store folder atomically (built under a temporary name, then renamed)."""

    def fill(tmp: Path) -> None:
        np_dtype = np.float16 if dtype == torch.float16 else np.float32
        table = np.lib.format.open_memmap(tmp / LOGITS, mode="w+", dtype=np_dtype, shape=shape)  # sparse
        table.flush()
        del table
        filled, rows = np.zeros(shape[:2], dtype=bool), meta["chunk_images"]
        crcs = [_crc(None, filled[c * rows : (c + 1) * rows]) for c in range(-(-shape[0] // rows))]
        _write_index(tmp, filled, np.array(crcs, dtype=np.uint32))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")

    create_folder(folder, fill)


def teacher_logits(forward: Callable[[Batch], torch.Tensor], images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``forward``'s logits (B, C) of images (B, 3, H, W), never computed on a batch of one: on the CPU a
    batch of one takes another convolution path than larger batches, whose per-sample outputs do not
    depend on the batch; a single image is run twice in a batch of two (in ``channels_last`` memory
    format when the loader delivers it)."""
    single = images.shape[0] == 1
    if single:
        images = images.expand(2, *images.shape[1:]).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
    logits = forward(Batch(images, None, None, None))
    return logits[:1] if single else logits


class CachedTeacher:
    """Teacher-logit provider that looks logits up in a :class:`LogitStore`.

    ``provider(batch) -> (B, C) float32`` for a batch of the device-resident loader (it needs
    ``batch.indices`` and ``batch.views``). With ``lazy``, entries not filled yet are computed by
    ``forward`` on the batch's own images and stored first (a host synchronisation per step on
    CUDA); otherwise the store must be complete and a call is one gather.
    """

    def __init__(
        self,
        store: LogitStore,
        forward: Callable[[Batch], torch.Tensor] | None,
        loader: DeviceLoader,
        *,
        lazy: bool,
    ):
        self.store, self.forward, self.loader, self.lazy = store, forward, loader, lazy
        self.computed = 0  # entries this provider computed with the teacher

    def __call__(self, batch: Batch) -> torch.Tensor:
        idx, views = batch.indices, batch.views
        if self.lazy:
            miss = self.store.missing(idx, views)
            if miss.numel():
                at = miss.to(idx.device)
                self.store.put(idx[at], views[at], self._teacher(batch.images[at]))
                self.computed += int(miss.numel())
                self.store.flush_if_due()
        return self.store.get(idx, views)

    def _teacher(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher logits (B, C) float32 of images (B, 3, H, W); never a batch of one (see module doc)."""
        if self.forward is None:
            raise RuntimeError("this provider has no teacher: its store is complete")
        return teacher_logits(self.forward, images, self.loader.channels_last)

    @torch.no_grad()
    def fill(
        self,
        indices: torch.Tensor,
        views: torch.Tensor,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Compute the missing entries among ``(indices, views)`` (M,) by rendering their views.

        ``batch_size`` views per teacher forward (default :func:`fill_batch_size`). Returns the
        number of entries computed; ``progress(done, total)`` is called per batch.
        """
        flat = torch.unique(indices.cpu().long() * NUM_VIEWS + views.cpu().long())  # sorted: image-major
        i, v = flat // NUM_VIEWS, flat % NUM_VIEWS
        miss = self.store.missing(i, v)
        i, v = i[miss], v[miss]
        total = int(i.numel())
        device = self.loader.device
        batch_size = batch_size or fill_batch_size(device)
        for start in range(0, total, batch_size):
            bi = i[start : start + batch_size].to(device)
            bv = v[start : start + batch_size].to(device)
            self.store.put(bi, bv, self._teacher(self.loader.render_views(bi, bv)))
            self.store.flush_if_due()
            if progress is not None:
                progress(min(start + batch_size, total), total)
        self.computed += total
        self.store.flush()
        return total

    def build(self, batch_size: int | None = None, progress: Callable[[int, int], None] | None = None) -> int:
        """Fill every entry the loader's augmentation can produce; returns the number computed."""
        views = usable_views(self.loader)
        indices = torch.arange(self.loader.n).repeat_interleave(views.numel())
        return self.fill(indices, views.repeat(self.loader.n), batch_size, progress)

    def close(self) -> None:
        self.store.flush()


def require_device_loader(mode: str, loader: Any) -> None:
    """UserError unless ``loader`` gives each sample's (image, view), as ``train.teacher_cache=MODE`` needs."""
    if not isinstance(loader, DeviceLoader):
        raise UserError(
            f"train.teacher_cache={mode} needs the device-resident loader (data.pipeline=device with digits or "
            "cifar100): only it gives each sample's (image, view); use train.teacher_cache=off here"
        )


def open_teacher_cache(
    cfg: Any,
    teacher_fn: Any,
    loader: Any,
    num_classes: int,
    progress: Callable[[int, int], None] | None = None,
) -> CachedTeacher:
    """The cached teacher-logit provider of a run (``cfg.train.teacher_cache`` lazy or full).

    Args:
        cfg: the run's RunConfig.
        teacher_fn: the teacher forward (:class:`rld.engine.teacher.TeacherForward`: ``.teacher``, ``.precision``).
        loader: the run's training loader; must be a :class:`DeviceLoader`.
        num_classes: C, the teacher's number of outputs.
        progress: ``progress(done, total)`` while a full build runs.
    """
    mode = cfg.train.teacher_cache
    require_device_loader(mode, loader)
    precision = cfg.train.cache_precision
    key = cache_key(
        teacher_name=cfg.model.teacher,
        teacher=teacher_fn.teacher,
        num_classes=num_classes,
        loader=loader,
        precision=precision,
        teacher_precision=teacher_fn.precision,
    )
    name = f"{safe_name(cfg.model.teacher)}-{safe_name(cfg.data.name)}-{key[:16]}"
    meta = {
        "format": CACHE_FORMAT,
        "teacher": cfg.model.teacher,
        "teacher_checkpoint": cfg.model.teacher_checkpoint,
        "data": cfg.data.name,
        "views": VIEW_DEFINITION,
        "teacher_precision": teacher_fn.precision,
    }
    root = Path(cfg.train.cache_dir).expanduser() if cfg.train.cache_dir else default_cache_dir()
    shape = (loader.n, NUM_VIEWS, num_classes)
    store = LogitStore.open(root, name, key=key, shape=shape, precision=precision, meta=meta)
    log.info(
        "teacher-logit cache %s: %s of %s entries filled (%s, %s)",
        store.folder,
        f"{store.filled_count():,}",
        f"{shape[0] * shape[1]:,}",
        precision,
        human_size(store.nbytes),
    )
    provider = CachedTeacher(store, teacher_fn, loader, lazy=mode == "lazy")
    if mode == "full":
        t0 = time.perf_counter()
        computed = provider.build(progress=progress)
        if computed:
            log.info("teacher-logit cache built: %s entries in %.1fs", f"{computed:,}", time.perf_counter() - t0)
        provider.forward = None  # every usable view is cached: the teacher is not needed any more
        store.to_device(loader.device)
    return provider
