"""Stored teacher outputs of image-folder data: one record per (epoch, sample), computed once per
(teacher, data, seed) by ``rld cache`` and read by every student run of that pair and seed.

On the device pipeline (:mod:`rld.data.device_folder`) the view of a sample is a pure function of
``(seed, epoch, index)`` (:mod:`rld.data.crop_views`), so the eval-mode teacher's output for every view
a run will see can be computed ahead of it: ``rld cache PRESET … --epochs E`` renders every sample's view
of epochs 1..E in index order with the loader's own rendering (same decoding, crop, resize, flip and
normalisation as training), runs the teacher (float32 logits, as :class:`~rld.engine.teacher.TeacherForward`
gives them), encodes them in the chosen storage form (:mod:`rld.fast.forms`) and writes them. A student
run with ``train.teacher_cache=full`` then looks its batches up by ``(loader.epoch, batch.indices)`` and
forwards no teacher.

Storage. One folder per key (:func:`rld.fast.key.store_key`) under ``train.cache_dir``::

    <teacher>-<data>-seed<S>-<form>-<key[:16]>/meta.json         the key and what it covers, N, C, the form
                                                                   and k, the record layout, the chunk size,
                                                                   and per complete epoch its chunks' CRC-32
                                                                   (8 hex digits each)
    <teacher>-<data>-seed<S>-<form>-<key[:16]>/epoch-0001.npy    (N,) records of epoch 1, a structured dtype
    …                                                             (:func:`record_dtype`), in index order

A record holds one sample's encoded output in fixed size (:func:`rld.fast.forms.record_bytes`: for 1000
classes 4000 B in float32, 2000 in float16, 1008 in int8, 86 in top-20). An epoch is written streamed to
a temporary file beside its final name, a CRC-32 per chunk of ``CHUNK_BYTES`` (4 MiB) of records computed
as it goes, fsynced and renamed into place when complete; then ``meta.json`` is rewritten atomically with
the epoch and its checksums. A crash loses at most the epoch being written (its temporary file is removed
by the next fill); epochs already complete are skipped. Fills of one folder take turns epoch by epoch
(an exclusive lock on ``fill.lock``), so concurrent ``rld cache`` commands never write an epoch twice.
``meta.json`` carries a CRC-32 of its own content: an edited meta.json is refused.

Integrity. Opening a store for training checks what is cheap for every epoch the run needs: listed in
meta.json, its file present, of the right header and length (a truncated file is refused before anything
is written). The records of an epoch are checked against their checksums when the epoch is first read
(one pass over the file: under a second per GB) — epoch 1 when the store is opened, so a fresh run
writes nothing when it is damaged, the others as they begin (a run stops before any step of the damaged
epoch, its last.pt holding the epoch before). A mismatch stops the run with one
line naming the epoch and its samples; deleting that epoch's file and running ``rld cache`` again
recomputes only that epoch (``rld cache --verify`` checks every epoch).

Reading. An epoch's file is memory-mapped; a lookup gathers the batch's records (on the host, then copied
to the device), and the form is decoded on the device into (B, C) float32 logits. On CUDA an epoch whose
records fit in a quarter of the free device memory (ImageNet float16: 2.6 GB) is copied to the device when
it begins, and lookups are then a gather there with no host synchronisation.

Exactness. float32 records are the teacher's logits computed in the fill's batches (index order); a live
teacher computes them in the training batches. Where a sample's forward does not depend on the other
samples of its batch — the tests' small models on the CPU, as long as no batch holds one image (another
convolution path: the fill never runs the teacher on one image alone, :func:`rld.fast.cache.teacher_logits`)
— they are equal bit for bit and a run on float32 records trains exactly as with the live teacher.
A convolution library may choose another algorithm for another batch size (ResNet34 at 224 px on a CPU:
up to 1e-4 apart between batches of 8 and 3; CUDA likewise): then they agree to that rounding. Other
forms: :mod:`rld.fast.forms`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rld.errors import UserError
from rld.fast import forms
from rld.fast.files import (
    CHUNK_BYTES,
    atomic_write,
    crc32,
    create_folder,
    default_cache_dir,
    exclusive_lock,
    free_bytes,
    human_size,
    npy_problem,
    safe_name,
    temporary_name,
)

log = logging.getLogger("rld")

META, FILL_LOCK = "meta.json", "fill.lock"
DEVICE_FRACTION = 0.25
"""On CUDA an epoch's records are copied to the device when they take at most this part of its free memory."""

_TORCH = {
    np.dtype("<f4"): torch.float32,
    np.dtype("<f2"): torch.float16,
    np.dtype("u1"): torch.uint8,
    np.dtype("<i2"): torch.int16,
}


def epoch_file(epoch: int) -> str:
    """``epoch-0007.npy``."""
    return f"epoch-{epoch:04d}.npy"


def record_dtype(form: str, num_classes: int, k: int = forms.TOPK_DEFAULT) -> np.dtype:
    """The packed structured dtype of one record of ``form``: the fields of :func:`rld.fast.forms.encode`,
    little-endian, no padding (its itemsize is :func:`rld.fast.forms.record_bytes`)."""
    forms.check_form(form, k)
    c = num_classes
    fields = {
        "float32": [("logits", "<f4", (c,))],
        "float16": [("logits", "<f2", (c,))],
        "int8": [("q", "u1", (c,)), ("lo", "<f4"), ("step", "<f4")],
        "topk": [("values", "<f2", (min(k, c),)), ("classes", "<i2", (min(k, c),)), ("true", "<f2"), ("lse", "<f4")],
    }[form]
    dtype = np.dtype(fields)
    assert dtype.itemsize == forms.record_bytes(form, c, k)
    return dtype


def pack(record: dict[str, torch.Tensor], dtype: np.dtype) -> np.ndarray:
    """(B,) records of ``dtype`` from :func:`rld.fast.forms.encode`'s named tensors (leading dim B)."""
    n = next(iter(record.values())).shape[0]
    out = np.empty(n, dtype=dtype)
    for name in dtype.names:
        out[name] = record[name].detach().cpu().numpy()
    return out


def unpack(rows: torch.Tensor, dtype: np.dtype) -> dict[str, torch.Tensor]:
    """:func:`rld.fast.forms.decode`'s named tensors from records as bytes ``rows`` (B, itemsize) uint8, on
    ``rows``' device."""
    out = {}
    for name in dtype.names:
        field, offset = dtype.fields[name][:2]
        base, shape = field.base, field.shape
        part = rows[:, offset : offset + field.itemsize].contiguous().view(_TORCH[base])
        out[name] = part.reshape(rows.shape[0], *shape)
    return out


def _meta_checksum(body: dict[str, Any]) -> int:
    return crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _damaged(folder: Path, what: str) -> UserError:
    return UserError(
        f"the teacher-output store {folder} is damaged ({what}); it is not used. Delete the folder (rm -r '{folder}') "
        "and fill it again with `rld cache PRESET … --epochs E`"
    )


class OutputStore:
    """A folder of per-epoch teacher-output records (see the module docstring). Use :meth:`open`."""

    def __init__(self, folder: Path, meta: dict[str, Any]):
        self.folder, self.meta = folder, meta
        self.key: str = meta["key"]
        self.n: int = meta["num_samples"]
        self.num_classes: int = meta["num_classes"]
        self.form: str = meta["form"]
        self.k: int = meta["k"] or forms.TOPK_DEFAULT
        self.dtype = record_dtype(self.form, self.num_classes, self.k)
        self.chunk: int = meta["chunk_records"]
        self._epoch: tuple[int, torch.Tensor] | None = None  # the epoch being read and its records (N, itemsize)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        root: str | Path,
        name: str,
        *,
        key: str,
        num_samples: int,
        num_classes: int,
        form: str,
        k: int = forms.TOPK_DEFAULT,
        covers: dict[str, Any] | None = None,
        create: bool = True,
    ) -> OutputStore | None:
        """The store ``root/name`` of ``key``; created empty if absent and ``create`` (else None).

        UserError when the folder holds another key or layout, or its meta.json is unreadable or edited."""
        folder = Path(root).expanduser() / name
        dtype = record_dtype(form, num_classes, k)
        if not folder.is_dir():
            if not create:
                return None
            body = {
                "format": (covers or {}).get("format", "rld-teacher-outputs"),
                "key": key,
                "covers": covers or {},
                "num_samples": num_samples,
                "num_classes": num_classes,
                "form": form,
                "k": k if form == "topk" else None,
                "record_dtype": np.lib.format.dtype_to_descr(dtype),
                "record_bytes": dtype.itemsize,
                "chunk_records": max(1, CHUNK_BYTES // dtype.itemsize),
                "epochs": {},
            }
            try:
                create_folder(folder, lambda tmp: _write_meta(tmp, body))
            except OSError as err:
                raise _unusable(folder, err) from err
        meta = _read_meta(folder)
        layout = tuple(meta.get(f) for f in ("num_samples", "num_classes", "form", "record_bytes"))
        if meta.get("key") != key or layout != (num_samples, num_classes, form, dtype.itemsize):
            raise UserError(
                f"the teacher-output store {folder} belongs to another teacher, data set, seed or form; delete the "
                "folder"
            )
        return cls(folder, meta)

    def reload(self) -> None:
        """Read meta.json again (epochs another process completed)."""
        self.meta = _read_meta(self.folder)

    # ------------------------------------------------------------------ state

    @property
    def epochs(self) -> list[int]:
        """The complete epochs meta.json lists, in order."""
        return sorted(int(e) for e in self.meta["epochs"])

    @property
    def epoch_bytes(self) -> int:
        """Bytes of one epoch's records."""
        return self.n * self.dtype.itemsize

    def path(self, epoch: int) -> Path:
        return self.folder / epoch_file(epoch)

    def missing(self, epochs: Iterable[int]) -> list[int]:
        """Those of ``epochs`` that are not complete: not listed in meta.json, or their file deleted."""
        listed = set(self.meta["epochs"])
        return [e for e in epochs if str(e) not in listed or not self.path(e).exists()]

    def check_files(self, epochs: Iterable[int]) -> None:
        """UserError unless each of the (complete) ``epochs`` has a file of the right header and length."""
        for epoch in epochs:
            problem = npy_problem(self.path(epoch), (self.n,), self.dtype)
            if problem is not None:
                raise self._epoch_damaged(epoch, problem)

    def _epoch_damaged(self, epoch: int, what: str) -> UserError:
        path = self.path(epoch)
        return UserError(
            f"the teacher-output store {self.folder} is damaged: epoch {epoch}: {what}; it is not used. Delete "
            f"{path.name} (rm '{path}') and run `rld cache PRESET … --epochs E` again: it recomputes only that epoch"
        )

    def verify(self, epoch: int, table: np.ndarray | None = None) -> None:
        """Check every chunk of ``epoch``'s records against meta.json; UserError naming the epoch and the
        samples of the chunks that do not match."""
        self.check_files([epoch])
        crcs = _crcs_from_text(self.meta["epochs"][str(epoch)])
        if crcs is None or len(crcs) != -(-self.n // self.chunk):
            raise _damaged(self.folder, f"meta.json gives no valid checksums for epoch {epoch}")
        table = self._map(epoch) if table is None else table
        bad = [
            c
            for c, want in enumerate(crcs)
            if crc32(np.ascontiguousarray(table[c * self.chunk : (c + 1) * self.chunk])) != want
        ]
        if bad:
            ranges = ", ".join(f"{c * self.chunk}-{min((c + 1) * self.chunk, self.n) - 1}" for c in bad[:3])
            more = f" and {len(bad) - 3} more chunks" if len(bad) > 3 else ""
            raise self._epoch_damaged(epoch, f"the records of samples {ranges}{more} do not match their checksum")

    def _map(self, epoch: int) -> np.ndarray:
        """(N, itemsize) uint8: the records of ``epoch``, memory-mapped (private: never written back)."""
        try:
            table = np.load(self.path(epoch), mmap_mode="c")
        except (OSError, ValueError) as err:
            raise self._epoch_damaged(epoch, f"unreadable: {str(err).splitlines()[0]}") from err
        if table.dtype != self.dtype or table.shape != (self.n,):
            raise self._epoch_damaged(epoch, "it holds another array")
        return table.view(np.uint8).reshape(self.n, self.dtype.itemsize)

    # ------------------------------------------------------------------ reading

    def load_epoch(self, epoch: int, device: torch.device | str = "cpu") -> None:
        """Check ``epoch``'s records and make them the ones :meth:`lookup` reads: memory-mapped, or on CUDA
        copied to the device when they take at most :data:`DEVICE_FRACTION` of its free memory."""
        if self._epoch is not None and self._epoch[0] == epoch:
            return
        if str(epoch) not in self.meta["epochs"]:
            raise UserError(
                f"the teacher-output store {self.folder} holds no epoch {epoch} (it holds {_span(self.epochs)}): "
                f"run `rld cache PRESET … --epochs {epoch}`"
            )
        self._epoch = None  # the last epoch's records are released first
        table = self._map(epoch)
        self.verify(epoch, table)
        records = torch.from_numpy(table)
        device = torch.device(device)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if self.epoch_bytes <= DEVICE_FRACTION * free:
                on_device = torch.empty(records.shape, dtype=torch.uint8, device=device)
                rows = max(1, (64 << 20) // self.dtype.itemsize)
                for start in range(0, self.n, rows):
                    on_device[start : start + rows].copy_(records[start : start + rows])
                records = on_device
        self._epoch = (epoch, records)

    def lookup(self, epoch: int, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """The records (named tensors, :func:`rld.fast.forms.decode`'s input) of samples ``indices`` (B,) in
        ``epoch``, on ``indices``' device."""
        self.load_epoch(epoch, indices.device)
        records = self._epoch[1]
        if records.device == indices.device:
            rows = records[indices]
        else:
            rows = records[indices.cpu()].to(indices.device, non_blocking=True)
        return unpack(rows, self.dtype)

    def release(self) -> None:
        """Drop the epoch being read (its map or device copy)."""
        self._epoch = None

    # ------------------------------------------------------------------ writing

    def write_epoch(self, epoch: int, blocks: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Write ``epoch`` from ``blocks`` of ``(indices (M,) ascending, records (M,) of record_dtype)`` in index
        order (samples left out — unreadable files skipped — get zero records): streamed to a temporary file
        with a CRC-32 per chunk, fsynced, renamed into place, then listed in meta.json. The caller holds
        the fill lock (:meth:`filling`)."""
        path = self.path(epoch)
        need = self.epoch_bytes + 4096
        if free_bytes(self.folder) < need:
            raise UserError(
                f"an epoch of the teacher-output store needs {human_size(need)} in {self.folder} but only "
                f"{human_size(free_bytes(self.folder))} are free; set train.cache_dir to another folder"
            )
        tmp = temporary_name(path)
        writer = _EpochWriter(self.n, self.dtype, self.chunk)
        try:
            with open(tmp, "wb") as f:
                header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.n,)}
                np.lib.format.write_array_header_1_0(f, header)
                for indices, records in blocks:
                    writer.write(f, np.asarray(indices, dtype=np.int64), records)
                crcs = writer.finish(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.reload()
        self.meta["epochs"][str(epoch)] = "".join(f"{c:08x}" for c in crcs)
        _write_meta(self.folder, self.meta)  # meta.json's body: _read_meta leaves its checksum out

    def filling(self):
        """The fill lock of this folder (``with store.filling(): …``): fills take turns epoch by epoch.
        Temporary files left by a fill that died are removed when it is taken."""
        return _FillLock(self)


class _FillLock:
    def __init__(self, store: OutputStore):
        self.store = store
        self._lock = exclusive_lock(store.folder / FILL_LOCK)

    def __enter__(self):
        self._lock.__enter__()
        for stale in self.store.folder.glob(".epoch-*.tmp-*"):  # only a lock holder writes them
            stale.unlink(missing_ok=True)
        self.store.reload()
        return self.store

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)


class _EpochWriter:
    """Records written in index order, a CRC-32 per chunk of ``chunk`` records computed on the way."""

    def __init__(self, n: int, dtype: np.dtype, chunk: int):
        self.n, self.dtype, self.chunk = n, dtype, chunk
        self.pos, self.crc, self.crcs = 0, 0, []

    def _put(self, f, records: np.ndarray) -> None:
        i = 0
        while i < len(records):
            part = records[i : i + self.chunk - self.pos % self.chunk]
            data = np.ascontiguousarray(part)
            self.crc = crc32(data, self.crc)
            f.write(data.tobytes())
            self.pos += len(part)
            i += len(part)
            if self.pos % self.chunk == 0:
                self.crcs.append(self.crc)
                self.crc = 0

    def _zeros(self, f, count: int) -> None:
        while count > 0:
            m = min(count, self.chunk)
            self._put(f, np.zeros(m, dtype=self.dtype))
            count -= m

    def write(self, f, indices: np.ndarray, records: np.ndarray) -> None:
        if len(indices) != len(records):
            raise ValueError("one record per index")
        if len(indices) and (indices[0] < self.pos or (np.diff(indices) <= 0).any() or indices[-1] >= self.n):
            raise ValueError("records must come in ascending index order, each once")
        start = 0
        for j in range(len(indices)):  # runs of consecutive indices, zeros between them
            if j + 1 == len(indices) or indices[j + 1] != indices[j] + 1:
                self._zeros(f, int(indices[start]) - self.pos)
                self._put(f, records[start : j + 1])
                start = j + 1

    def finish(self, f) -> list[int]:
        self._zeros(f, self.n - self.pos)
        if self.pos % self.chunk:
            self.crcs.append(self.crc)
        return self.crcs


def _crcs_from_text(text: Any) -> list[int] | None:
    """The checksums of an epoch as meta.json lists them (8 hex digits each), or None when malformed."""
    if not isinstance(text, str) or len(text) % 8:
        return None
    try:
        return [int(text[i : i + 8], 16) for i in range(0, len(text), 8)]
    except ValueError:
        return None


def _write_meta(folder: Path, body: dict[str, Any]) -> None:
    meta = {**body, "checksum": _meta_checksum(body)}
    atomic_write(folder / META, lambda f: f.write((json.dumps(meta, indent=1) + "\n").encode()))


def _read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / META).read_text())
    except FileNotFoundError:
        raise _damaged(folder, f"{META} is missing") from None
    except (OSError, ValueError) as err:
        raise _damaged(folder, f"{META} is unreadable: {str(err).splitlines()[0]}") from err
    if not isinstance(meta, dict) or "checksum" not in meta:
        raise _damaged(folder, f"{META} has no checksum")
    body = {k: v for k, v in meta.items() if k != "checksum"}
    if _meta_checksum(body) != meta["checksum"]:
        raise _damaged(folder, f"{META} does not match its checksum: it was edited")
    fields = {"key": str, "num_samples": int, "num_classes": int, "form": str, "chunk_records": int, "epochs": dict}
    wrong = [name for name, kind in fields.items() if not isinstance(body.get(name), kind)]
    if body.get("form") == "topk" and not isinstance(body.get("k"), int):
        wrong.append("k")
    if wrong or body["form"] not in forms.FORMS or body["chunk_records"] < 1:
        raise _damaged(folder, f"{META} does not describe a store ({', '.join(wrong) or 'form'})")
    return body


def _unusable(folder: Path, err: OSError) -> UserError:
    reason = err.strerror or str(err).splitlines()[0]
    return UserError(
        f"cannot use the teacher-output store {folder}: {reason}; set train.cache_dir to a writable folder"
    )


def _span(epochs: list[int]) -> str:
    """``epochs 1-3, 5`` / ``no epochs``."""
    if not epochs:
        return "no epochs"
    parts, start = [], epochs[0]
    for a, b in zip(epochs, [*epochs[1:], None]):
        if b != a + 1:
            parts.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ("epoch " if len(epochs) == 1 else "epochs ") + ", ".join(parts)


# ----------------------------------------------------------------------------- a run's store


def _root(cfg: Any) -> Path:
    return Path(cfg.train.cache_dir).expanduser() if cfg.train.cache_dir else default_cache_dir()


def open_run_store(
    cfg: Any, teacher: torch.nn.Module, teacher_precision: str, loader: Any, num_classes: int, *, create: bool
) -> tuple[OutputStore | None, Path]:
    """The store of run configuration ``cfg``'s teacher, training data (``loader``, a DeviceFolderLoader),
    seed and storage form (``train.cache_precision``, ``train.cache_topk``), and its folder; None (not
    created) when it does not exist and ``create`` is False."""
    from rld.fast.key import store_key

    form, k = cfg.train.cache_precision, cfg.train.cache_topk
    key, covers = store_key(
        teacher_name=cfg.model.teacher,
        teacher=teacher,
        num_classes=num_classes,
        loader=loader,
        teacher_precision=teacher_precision,
        form=form,
        k=k,
    )
    covers = {**covers, "teacher_checkpoint": cfg.model.teacher_checkpoint or cfg.model.teacher_weights}
    covers["data"] = f"{cfg.data.name} {cfg.data.path or ''}".strip()
    label = f"{form}{k}" if form == "topk" else form
    name = f"{safe_name(cfg.model.teacher)}-{safe_name(cfg.data.name)}-seed{loader.seed}-{label}-{key[:16]}"
    root = _root(cfg)
    store = OutputStore.open(
        root, name, key=key, num_samples=loader.n, num_classes=num_classes, form=form, k=k, covers=covers, create=create
    )
    return store, root / name


def fill_store(
    store: OutputStore,
    loader: Any,
    forward: Callable[..., torch.Tensor],
    epochs: Iterable[int],
    *,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[int]:
    """Compute and write every epoch of ``epochs`` the store lacks; returns those written.

    Each epoch: every sample's view in index order (``loader.in_order``: the training rendering), the
    teacher ``forward`` (float32 logits; never a batch of one), :func:`rld.fast.forms.encode`, written
    streamed (:meth:`OutputStore.write_epoch`), under the fill lock. ``progress(done, total)`` counts
    samples over the epochs to write."""
    from rld.fast.cache import fill_batch_size, teacher_logits

    todo = store.missing(list(epochs))
    total, written = len(todo) * store.n, []
    batch_size = batch_size or fill_batch_size(loader.device)

    def records(epoch: int, before: int):
        with torch.no_grad():
            for batch in loader.in_order(epoch, batch_size):
                logits = teacher_logits(forward, batch.images, loader.channels_last)
                record = forms.encode(logits, batch.targets, store.form, store.k)
                yield batch.indices.cpu().numpy(), pack(record, store.dtype)
                if progress is not None:
                    progress(before + int(batch.indices[-1]) + 1, total)

    for i, epoch in enumerate(todo):
        with store.filling():
            if store.missing([epoch]):  # (another process may have written it meanwhile)
                store.write_epoch(epoch, records(epoch, i * store.n))
                written.append(epoch)
        if progress is not None:
            progress((i + 1) * store.n, total)
    return written


class StoredTeacher:
    """Teacher-logit provider reading an :class:`OutputStore`: ``provider(batch) -> (B, C) float32`` for
    a batch of ``loader`` (a DeviceFolderLoader), the records of ``(loader.epoch, batch.indices)``
    decoded on the batch's device. The loader's epoch names the batch's views; a group of one data
    stream only (image folders never share a step between seeds)."""

    lazy = False

    def __init__(self, store: OutputStore, loader: Any):
        self.store, self.loader = store, loader

    def __call__(self, batch: Any) -> torch.Tensor:
        record = self.store.lookup(self.loader.epoch, batch.indices)
        return forms.decode(record, batch.targets, self.store.num_classes, self.store.form)

    def close(self) -> None:
        self.store.release()


def open_teacher_store(cfg: Any, teacher_fn: Any, loader: Any, num_classes: int) -> StoredTeacher:
    """The stored-output provider of a run on image-folder data (``train.teacher_cache=full``).

    UserError (nothing written) when the loader is not the device pipeline's, the store lacks epochs
    1..``train.epochs``, an epoch file is missing, truncated or unreadable, meta.json was edited, or the
    records of the run's first epoch do not match their checksums.

    Args:
        cfg: the run's RunConfig.
        teacher_fn: the teacher forward (:class:`rld.engine.teacher.TeacherForward`): its weights and
            precision are part of the key; it is not run.
        loader: the run's training loader.
        num_classes: C.
    """
    from rld.data.device_folder import DeviceFolderLoader

    if not isinstance(loader, DeviceFolderLoader):
        raise UserError(
            "train.teacher_cache=full on image folders needs data.pipeline=device (auto means pil on a CPU): the pil "
            "pipeline's crops are not a function of (seed, epoch, sample), so no stored output matches them"
        )
    t0 = time.perf_counter()
    store, folder = open_run_store(cfg, teacher_fn.teacher, teacher_fn.precision, loader, num_classes, create=False)
    need = range(1, cfg.train.epochs + 1)
    lacking = list(need) if store is None else store.missing(need)
    if lacking:
        has = "does not exist" if store is None else f"holds {_span(store.epochs)}"
        raise UserError(
            f"the teacher-output store {folder} {has}; this run needs epochs 1-{cfg.train.epochs} "
            f"(missing: {_span(lacking).split(' ', 1)[1]}): run `rld cache PRESET … --epochs {cfg.train.epochs}` "
            "with this run's settings first"
        )
    store.check_files(need)
    store.load_epoch(1, loader.device)  # checked now: a damaged first epoch is refused before anything is written
    log.info(
        "teacher-output store %s: %s of %s samples, %s (%s per epoch), opened in %.1fs",
        store.folder,
        _span(store.epochs),
        f"{store.n:,}",
        store.form if store.form != "topk" else f"top-{min(store.k, store.num_classes)}",
        human_size(store.epoch_bytes),
        time.perf_counter() - t0,
    )
    return StoredTeacher(store, loader)
