"""The teacher-logit cache's and the teacher-output store's plumbing, pinned to exact values.

These pin behaviour the cache and the ``rld cache`` command rely on, each function called directly:

* the store key (rld.fast.key): the fields ``store_key`` covers and the SHA-256 over them, the file
  list's hash (paths relative to the files' common folder, as given; size, modification time, label)
  computed independently with hashlib, the refusal of an unreadable file, the training views in words
  for a CPU and a CUDA loader, and ``os.stat`` of many files spread over threads (when, how many);
* a run's store (rld.fast.store): the folder name and the whole meta.json ``open_run_store`` writes, the
  cache folder's default, what ``fill_store`` runs the teacher on (batch sizes, a single image in the
  loader's memory format) and the progress it reports, and ``open_teacher_store``'s refusals and the line
  it logs;
* ``rld cache`` (rld.fast.build, rld.fast.cli): ``build_store``'s and ``build_cache``'s refusals and whole
  results, the progress bar on a terminal (tqdm recorded) and the line printed, for image folders and
  array data; the fill batch per device type;
* the store's files: meta.json as written (generic format, layout, chunk size of huge records, its exact
  text) and every way it is refused (missing, unreadable, edited, incomplete, another key or layout, a
  folder that cannot be made); an epoch written from blocks with zero records between them and a CRC-32
  per chunk, the free space it needs (at the boundary), blocks refused for their order or length, a failed
  fill and a stale temporary file whose file is already gone; ``crc32`` continued and of any array;
* the storage forms (rld.fast.forms): k of the top-k form, top-k classes as int16 up to 32767 classes,
  and the message that refuses a form for a method;
* the teacher-logit cache (rld.fast.cache): ``to_device`` on a simulated GPU (the table made on the
  device, copied in blocks of whole images, once, read there and read-only afterwards; CPU devices keep
  the map); a CRC-32 per chunk of images computed independently, each chunk checked once before its first
  lookup and a damaged one refused naming its images; a lazy lookup from a simulated GPU (what moves where,
  ``Tensor.to`` recorded); logits that overflow float16 refused; flushes due after 60 s; images per chunk;
  a new cache's meta.json, index.npz and copy-on-write map, the free space it needs (new, partly filled,
  complete: none, and never written back), and the refusals of an unreadable meta.json or a folder that
  cannot be made.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import sys
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import tqdm

import rld.engine.sweep as engine_sweep
import rld.fast.build as build_module
import rld.fast.cache as cache_module
import rld.fast.cli as fast_cli
import rld.fast.store as store_module
from conftest import GpuIndices, folder_snapshot, write_class_folders, write_two_image_cifar
from rld.cli import main
from rld.config import resolve
from rld.data import ArraySplit, DeviceLoader
from rld.data.device_folder import DeviceFolderLoader
from rld.data.types import Batch
from rld.engine.teacher import TeacherForward
from rld.errors import UserError
from rld.fast import forms
from rld.fast.build import build_cache, build_store
from rld.fast.cache import CachedTeacher, LogitStore, chunk_images, fill_batch_size, open_teacher_cache
from rld.fast.files import crc32
from rld.fast.key import (
    VIEW_DEFINITION,
    _stat_all,
    cache_key,
    folder_view_definition,
    hash_file_list,
    hash_module,
    hash_rendered_view,
    hash_training_views,
    store_key,
)
from rld.fast.store import OutputStore, StoredTeacher, fill_store, open_run_store, open_teacher_store
from rld.models import create_model

CLASSES = ("a", "b")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """ROOT/train/{a,b}/0..5.png (12 training images, 12x12) and ROOT/val/{a,b}/0..5.png."""
    root = tmp_path_factory.mktemp("folders")
    write_class_folders(root / "train", CLASSES)
    write_class_folders(root / "val", CLASSES)
    return root


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A resnet8 teacher of two classes (random weights, seed 5)."""
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("teacher") / "resnet8.pt"
    torch.save({"model": create_model("resnet8", num_classes=len(CLASSES)).state_dict()}, path)
    return path


def _loader(data: Path, batch_size: int = 4, **kw) -> DeviceFolderLoader:
    files = sorted((data / "train").rglob("*.png"))
    labels = [CLASSES.index(f.parent.name) for f in files]
    kw = {"train": True, "device": "cpu", "seed": 0, "num_workers": 0, "image_size": 16, **kw}
    return DeviceFolderLoader([str(f) for f in files], labels, batch_size, **kw)


def _forward(teacher_ckpt: Path) -> TeacherForward:
    model = create_model("resnet8", num_classes=len(CLASSES))
    model.load_state_dict(torch.load(teacher_ckpt, weights_only=True)["model"])
    return TeacherForward(model.eval().requires_grad_(False), amp=False)


def _cfg(tmp_path: Path, data: Path | None, teacher_ckpt: Path | None, *, form="float16", k=20, epochs=2):
    """The settings of a run that open_run_store / open_teacher_store read."""
    return SimpleNamespace(
        train=SimpleNamespace(cache_precision=form, cache_topk=k, cache_dir=str(tmp_path / "cache"), epochs=epochs),
        model=SimpleNamespace(
            teacher="resnet8",
            teacher_checkpoint=None if teacher_ckpt is None else str(teacher_ckpt),
            teacher_weights=None,
        ),
        data=SimpleNamespace(name="imagefolder", path=None if data is None else str(data)),
    )


def _clock(*values: float) -> SimpleNamespace:
    """A stand-in for the ``time`` module whose perf_counter returns ``values`` in turn."""
    it = iter(values)
    return SimpleNamespace(perf_counter=lambda: next(it))


# ----------------------------------------------------------------------------- the store key


def _file_list_hash(entries: list[tuple[str, Path, int]]) -> str:
    """SHA-256 of ``files=N`` and, per file, ``relative path, size, mtime (ns), label`` (the documented fields)."""
    h = hashlib.sha256(f"files={len(entries)}\n".encode())
    for rel, path, label in entries:
        st = os.stat(path)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
    return h.hexdigest()


@pytest.fixture
def tree(tmp_path) -> Path:
    """tmp/r/{ab,ac}/{0,1}.bin: four files of 1..4 bytes."""
    root = tmp_path / "r"
    for i, rel in enumerate(("ab/0.bin", "ab/1.bin", "ac/0.bin", "ac/1.bin")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * (i + 1))
    return root


def test_a_file_list_hashes_paths_relative_to_the_files_common_folder(tree, tmp_path, monkeypatch):
    """The common folder of /r/ab/… and /r/ac/… is /r (not the common prefix /r/a); a single file's is its
    folder; an absolute path is hashed as given (``.`` kept), a relative one from the working folder; the
    empty list hashes ``files=0``."""
    ab0, ac1 = tree / "ab" / "0.bin", tree / "ac" / "1.bin"
    assert hash_file_list([str(ab0), str(ac1)], [1, 0]) == _file_list_hash([("ab/0.bin", ab0, 1), ("ac/1.bin", ac1, 0)])
    assert hash_file_list([ab0], [np.int64(3)]) == _file_list_hash([("0.bin", ab0, 3)])
    dotted = f"{tree}/ab/./0.bin"
    assert hash_file_list([dotted, str(ac1)], [0, 1]) == _file_list_hash([("ab/./0.bin", ab0, 0), ("ac/1.bin", ac1, 1)])
    monkeypatch.chdir(tree / "ab")
    assert hash_file_list(["1.bin"], [2]) == _file_list_hash([("1.bin", tree / "ab" / "1.bin", 2)])
    assert hash_file_list([], []) == hashlib.sha256(b"files=0\n").hexdigest()


def test_a_file_that_cannot_be_looked_at_is_refused_by_name(tree):
    """The UserError names the file and the system's reason."""
    missing = tree / "ab" / "gone.bin"
    with pytest.raises(UserError) as err:
        hash_file_list([str(tree / "ab" / "0.bin"), str(missing)], [0, 1])
    assert str(err.value) == f"cannot read image {missing} (No such file or directory)"


class _RecordingPool(concurrent.futures.ThreadPoolExecutor):
    made: list = []

    def __init__(self, max_workers=None, **kw):
        _RecordingPool.made.append(max_workers)
        super().__init__(max_workers, **kw)


@pytest.fixture
def pools(monkeypatch) -> list:
    """The ``max_workers`` of every thread pool _stat_all starts."""
    _RecordingPool.made = []
    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", _RecordingPool)
    return _RecordingPool.made


def test_files_are_looked_at_in_order_by_one_thread_per_chunk_up_to_16(tree, pools):
    """No pool for no files or one chunk; a pool of one worker per chunk (at most 16) otherwise; the stats
    come back in the order of the paths."""
    files = sorted(str(p) for p in tree.rglob("*.bin"))
    assert _stat_all([]) == [] and pools == []
    assert _stat_all(files, per_thread=4) == [os.stat(p) for p in files] and pools == []
    assert _stat_all(files[:3], per_thread=2) == [os.stat(p) for p in files[:3]] and pools == [2]
    many = (files * 5)[:17]
    assert _stat_all(many, per_thread=1) == [os.stat(p) for p in many] and pools == [2, 16]


def test_threads_start_above_8192_files_by_default(tree, pools):
    """8192 paths are looked at in this thread; 8193 by two threads."""
    one = str(tree / "ab" / "0.bin")
    assert len(_stat_all([one] * 8192)) == 8192 and pools == []
    assert len(_stat_all([one] * 8193)) == 8193 and pools == [2]


def test_the_views_of_a_folder_loader_in_words_name_the_resize_of_its_device():
    """The view definition of a CPU loader (uint8 resize kernel) and of a CUDA loader (float32, rounded)."""

    def loader(device, size, decoder):
        return SimpleNamespace(
            image_size=size,
            device=torch.device(device),
            mean=(0.5, 0.25, 0.125),
            std=(1.0, 2.0, 0.5),
            decoder=SimpleNamespace(name=decoder),
        )

    crop = (
        "crop_views v1: RandomResizedCrop scale=(0.08, 1.0) ratio=(0.75, 1.3333333333333333) attempts=10 draws=23 "
        "stream=0, flip p=0.5; "
    )
    norm = "normalize mean=(0.5, 0.25, 0.125) std=(1.0, 2.0, 0.5); "
    assert folder_view_definition(loader("cpu", 16, "pil")) == (
        f"{crop}size=16; resize=torchvision bilinear antialias (uint8 kernel); {norm}decoder=pil@cpu"
    )
    assert folder_view_definition(loader("cuda:1", 224, "nvjpeg")) == (
        f"{crop}size=224; resize=torchvision bilinear antialias (float32, rounded); {norm}decoder=nvjpeg@cuda"
    )


def test_the_store_key_is_the_sha256_of_the_fields_it_covers(data, teacher_ckpt):
    """``store_key`` returns the covered fields by name, in order, and the SHA-256 of their ``name=value``
    lines; ``k`` counts for the top-k form only."""
    loader, teacher = _loader(data), _forward(teacher_ckpt).teacher
    for form, k, covered_k in (("topk", 5, 5), ("float16", 5, None)):
        key, covers = store_key(
            teacher_name="resnet8",
            teacher=teacher,
            num_classes=2,
            loader=loader,
            teacher_precision="float32",
            form=form,
            k=k,
        )
        expected = {
            "format": "rld-teacher-outputs-1",
            "teacher": "resnet8",
            "classes": 2,
            "weights": hash_module(teacher),
            "samples": 12,
            "files": hash_file_list(loader.files, loader.labels.tolist()),
            "views": folder_view_definition(loader),
            "rendered": hash_rendered_view(loader),
            "seed": 0,
            "teacher_precision": "float32",
            "form": form,
            "k": covered_k,
        }
        assert covers == expected and list(covers) == list(expected)
        text = "\n".join(f"{name}={value}" for name, value in expected.items())
        assert key == hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------- a run's store


def test_the_cache_folder_is_train_cache_dir_or_the_default(tmp_path, monkeypatch):
    """``train.cache_dir`` (``~`` expanded) when set, the XDG cache folder when null or empty."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = tmp_path / "xdg" / "rld" / "teacher-logits"
    for value, root in ((None, default), ("", default), ("~/c", tmp_path / "home" / "c")):
        assert store_module._root(SimpleNamespace(train=SimpleNamespace(cache_dir=value))) == root


def _meta_body(path: Path) -> tuple[dict, int]:
    meta = json.loads(path.read_text())
    checksum = meta.pop("checksum")
    return meta, checksum


def _meta_fields(folder: Path) -> dict:
    """A store's meta.json without its checksum."""
    return _meta_body(folder / "meta.json")[0]


@pytest.mark.parametrize("form", ["float16", "topk"])
def test_a_run_store_is_named_and_described_by_its_settings(data, teacher_ckpt, tmp_path, form):
    """The folder ``<teacher>-<data>-seed<S>-<form[k]>-<key[:16]>`` and the whole meta.json of a new
    store: the key of the run's settings, what it covers (with the teacher's checkpoint or weights and the
    data's name and path), the layout, no epochs, and the CRC-32 of the rest."""
    loader, forward = _loader(data), _forward(teacher_ckpt)
    if form == "topk":  # named weights, no data path, k above the number of classes
        cfg = _cfg(tmp_path, None, None, form="topk", k=5)
        cfg.model.teacher_weights = "IMAGENET1K_V1"
        label, source, described = "topk5", "IMAGENET1K_V1", "imagefolder"
        layout = {
            "k": 5,
            "record_dtype": [["values", "<f2", [2]], ["classes", "<i2", [2]], ["true", "<f2"], ["lse", "<f4"]],
        }
        record_bytes = 14
    else:
        cfg = _cfg(tmp_path, data, teacher_ckpt)
        label, source, described = "float16", str(teacher_ckpt), f"imagefolder {data}"
        layout, record_bytes = {"k": None, "record_dtype": [["logits", "<f2", [2]]]}, 4
    key, covers = store_key(
        teacher_name="resnet8",
        teacher=forward.teacher,
        num_classes=2,
        loader=loader,
        teacher_precision=forward.precision,
        form=form,
        k=cfg.train.cache_topk,
    )
    store, folder = open_run_store(cfg, forward.teacher, forward.precision, loader, 2, create=True)
    name = f"resnet8-imagefolder-seed0-{label}-{key[:16]}"
    assert folder == tmp_path / "cache" / name and store.folder == folder and store.key == key
    meta, checksum = _meta_body(folder / "meta.json")
    assert meta == {
        "format": "rld-teacher-outputs-1",
        "key": key,
        "covers": {**covers, "teacher_checkpoint": source, "data": described},
        "num_samples": 12,
        "num_classes": 2,
        "form": form,
        "k": layout["k"],
        "record_dtype": layout["record_dtype"],
        "record_bytes": record_bytes,
        "chunk_records": (4 << 20) // record_bytes,
        "epochs": {},
    }
    assert checksum == zlib.crc32(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    assert open_run_store(cfg, forward.teacher, forward.precision, loader, 2, create=False)[0].meta == meta


class _Recorder:
    """A teacher forward that records, per call, the batch size and whether the images are channels_last."""

    def __init__(self, forward: TeacherForward):
        self.forward, self.calls = forward, []

    def __call__(self, batch):
        images = batch.images
        self.calls.append((images.shape[0], images.is_contiguous(memory_format=torch.channels_last)))
        return self.forward(batch)


def test_fill_store_runs_the_teacher_in_batches_of_its_batch_size_and_reports_samples(data, teacher_ckpt, tmp_path):
    """Batches of the given size (not the loader's), of the CPU fill size by default; progress after every
    batch (samples of the epochs being written, through the batch's last index) and after every epoch."""
    loader, recorder = _loader(data), _Recorder(_forward(teacher_ckpt))
    store, _ = open_run_store(
        _cfg(tmp_path, data, teacher_ckpt), recorder.forward.teacher, "float32", loader, 2, create=True
    )
    progress = []
    assert fill_store(store, loader, recorder, [1, 2], batch_size=5, progress=lambda *a: progress.append(a)) == [1, 2]
    assert recorder.calls == [(5, False), (5, False), (2, False)] * 2
    assert progress == [(5, 24), (10, 24), (12, 24), (12, 24), (17, 24), (22, 24), (24, 24), (24, 24)]
    recorder.calls.clear()
    assert fill_store(store, loader, recorder, [2, 3]) == [3]
    assert recorder.calls == [(12, False)]


@pytest.mark.parametrize("channels_last", [True, False])
def test_fill_store_runs_a_single_image_twice_in_the_loaders_memory_format(data, teacher_ckpt, tmp_path, channels_last):
    """A loader's last batch of one image reaches the teacher as two images in the loader's memory format
    (channels_last or the default)."""
    loader, recorder = _loader(data, channels_last=channels_last), _Recorder(_forward(teacher_ckpt))
    store, _ = open_run_store(
        _cfg(tmp_path, data, teacher_ckpt), recorder.forward.teacher, "float32", loader, 2, create=True
    )
    assert fill_store(store, loader, recorder, [1], batch_size=11) == [1]
    assert recorder.calls == [(11, channels_last), (2, channels_last)]


def test_a_student_run_needs_the_device_pipelines_loader():
    """The refusal of any other loader, in full."""
    with pytest.raises(UserError) as err:
        open_teacher_store(SimpleNamespace(), SimpleNamespace(), object(), 2)
    assert str(err.value) == (
        "train.teacher_cache=full on image folders needs data.pipeline=device (auto means pil on a CPU): the pil "
        "pipeline's crops are not a function of (seed, epoch, sample), so no stored output matches them"
    )


def test_a_store_lacking_some_epochs_names_them_all(data, teacher_ckpt, tmp_path):
    """A store holding epoch 2 of the 3 a run needs: the refusal lists the missing epochs 1 and 3."""
    loader, forward = _loader(data), _forward(teacher_ckpt)
    cfg = _cfg(tmp_path, data, teacher_ckpt, epochs=3)
    store, folder = open_run_store(cfg, forward.teacher, forward.precision, loader, 2, create=True)
    assert fill_store(store, loader, forward, [2]) == [2]
    with pytest.raises(UserError) as err:
        open_teacher_store(cfg, forward, loader, 2)
    assert str(err.value) == (
        f"the teacher-output store {folder} holds epoch 2; this run needs epochs 1-3 (missing: 1, 3): run "
        "`rld cache PRESET … --epochs 3` with this run's settings first"
    )


@pytest.mark.parametrize(("form", "shown", "size"), [("float16", "float16", "48 B"), ("topk", "top-2", "168 B")])
def test_a_complete_store_opens_on_the_loaders_device_and_logs_one_line(
    data, teacher_ckpt, tmp_path, monkeypatch, caplog, form, shown, size
):
    """The provider reads the run's store, its first epoch loaded for the loader's device, and one line says
    which store, its epochs and samples, the form (top-k: the k kept) and the size of an epoch, and the
    time it took to open."""
    loader, forward = _loader(data), _forward(teacher_ckpt)
    cfg = _cfg(tmp_path, data, teacher_ckpt, form=form, k=5)
    store, folder = open_run_store(cfg, forward.teacher, forward.precision, loader, 2, create=True)
    fill_store(store, loader, forward, [1, 2])
    loads = []
    real = OutputStore.load_epoch
    monkeypatch.setattr(OutputStore, "load_epoch", lambda self, *a, **kw: loads.append((a, kw)) or real(self, *a, **kw))
    monkeypatch.setattr(store_module, "time", _clock(100.0, 102.5))
    with caplog.at_level(logging.INFO, logger="rld"):
        provider = open_teacher_store(cfg, forward, loader, 2)
    assert isinstance(provider, StoredTeacher) and provider.loader is loader and provider.store.folder == folder
    assert loads == [((1, loader.device), {})]
    assert [r.getMessage() for r in caplog.records] == [
        f"teacher-output store {folder}: epochs 1-2 of 12 samples, {shown} ({size} per epoch), opened in 2.5s"
    ]


# ----------------------------------------------------------------------------- rld cache


def _run_cfg(data: Path, teacher_ckpt: Path, tmp_path: Path, *extra: str):
    return resolve(
        "demo/rld",
        [
            "data.name=imagefolder",
            f"data.path={data}",
            "data.image_size=16",
            "data.num_workers=0",
            "train.batch_size=4",
            "train.epochs=2",
            "train.device=cpu",
            "model.teacher=resnet8",
            f"model.teacher_checkpoint={teacher_ckpt}",
            f"train.cache_dir={tmp_path / 'cache'}",
            *extra,
        ],
    )


@pytest.mark.parametrize(("epochs", "shown"), [(0, "0"), (-1, "-1"), (True, "True"), ("2", "'2'"), (1.0, "1.0")])
def test_build_store_refuses_epochs_that_are_not_a_positive_integer(data, teacher_ckpt, tmp_path, epochs, shown):
    """The message names the value as given."""
    with pytest.raises(UserError) as err:
        build_store(_run_cfg(data, teacher_ckpt, tmp_path), epochs)
    assert str(err.value) == f"--epochs must be a positive integer, got {shown}"
    assert not (tmp_path / "cache").exists()


def test_build_store_refuses_the_pil_pipeline(data, teacher_ckpt, tmp_path):
    """The store holds the device pipeline's views: data.pipeline=pil is refused, in full."""
    with pytest.raises(UserError) as err:
        build_store(_run_cfg(data, teacher_ckpt, tmp_path, "data.pipeline=pil"), 1)
    assert str(err.value) == (
        "the teacher-output store holds the views of the device pipeline; data.pipeline=pil draws other crops: "
        "drop it (rld cache renders with data.pipeline=device) and train with data.pipeline=device"
    )
    assert not (tmp_path / "cache").exists()


def test_build_store_fills_on_the_device_pipeline_and_reports_what_it_did(data, teacher_ckpt, tmp_path, monkeypatch):
    """With data.pipeline=auto (pil on a CPU) it renders with the device pipeline anyway, builds the teacher
    on the run's device, reports progress, and returns the store's path, the epochs, samples, epochs
    written now, the seconds, the bytes of an epoch, the form and the epochs verified (none unless asked)."""
    cfg = _run_cfg(data, teacher_ckpt, tmp_path, "data.pipeline=auto", "train.cache_precision=float16")
    devices = []
    real = build_module.build_teacher_fn
    monkeypatch.setattr(
        build_module, "build_teacher_fn", lambda c, n, device, *a: devices.append(device) or real(c, n, device, *a)
    )
    progress = []
    monkeypatch.setattr(build_module, "time", _clock(10.0, 12.5))
    first = build_store(cfg, 2, lambda *a: progress.append(a))
    (folder,) = (tmp_path / "cache").iterdir()
    result = {"path": str(folder), "epochs": 2, "samples": 12, "seconds": 2.5, "bytes": 48, "form": "float16"}
    assert first == {**result, "computed": 2, "verified": 0}
    assert devices == [torch.device("cpu")]
    assert progress == [(12, 24), (12, 24), (24, 24), (24, 24)]
    monkeypatch.setattr(build_module, "time", _clock(20.0, 20.5))
    assert build_store(cfg, 2, verify=True) == {**result, "computed": 0, "seconds": 0.5, "verified": 2}
    monkeypatch.setattr(build_module, "time", _clock(30.0, 31.0))
    assert build_store(cfg, 3) == {**result, "epochs": 3, "computed": 1, "seconds": 1.0, "verified": 0}


def _two_image_cfg(tmp_path: Path, teacher: Path):
    two = write_two_image_cifar(tmp_path / "two.npz")
    over = ["data.name=cifar100", f"data.path={two}", "model.teacher=resnet8", f"model.teacher_checkpoint={teacher}"]
    return resolve("demo/rld", [*over, f"train.cache_dir={tmp_path / 'cache'}"]), over


def test_build_cache_of_array_data_fills_every_view_and_refuses_the_folder_options(tmp_path, teacher, monkeypatch):
    """--epochs and --verify are refused for array data (naming the flag); by default the cache of every
    view is built (the teacher on the run's device), progress reported per batch of 64 views, and the result
    says where, how many entries, how many computed now, the seconds and the bytes."""
    cfg, _ = _two_image_cfg(tmp_path, teacher)
    tail = (
        "applies to image-folder data; the teacher-logit cache of cifar100 holds every view of every image, "
        "whatever the epoch"
    )
    for kw, flag in (
        ({"epochs": 3}, "--epochs"),
        ({"verify": True}, "--verify"),
        ({"epochs": 1, "verify": True}, "--epochs"),
    ):
        with pytest.raises(UserError) as err:
            build_cache(cfg, **kw)
        assert str(err.value) == f"{flag} {tail}"
    assert not (tmp_path / "cache").exists()
    progress, devices = [], []
    real = build_module.build_teacher_fn
    monkeypatch.setattr(
        build_module, "build_teacher_fn", lambda c, n, device, *a: devices.append(device) or real(c, n, device, *a)
    )
    monkeypatch.setattr(build_module, "time", _clock(1.0, 3.0))
    result = build_cache(cfg, lambda *a: progress.append(a))
    assert devices == [torch.device("cpu")]
    (folder,) = (tmp_path / "cache").iterdir()
    assert result == {"path": str(folder), "entries": 324, "computed": 324, "seconds": 2.0, "bytes": 324 * 10 * 2}
    assert progress == [(64, 324), (128, 324), (192, 324), (256, 324), (320, 324), (324, 324)]


class _Bar:
    """tqdm's stand-in: its arguments, what it showed at each refresh, whether it was closed."""

    made: list = []

    def __init__(self, **kw):
        self.kw, self.total, self.n, self.shown, self.closed = kw, None, 0, [], False
        _Bar.made.append(self)

    def refresh(self):
        self.shown.append((self.n, self.total))

    def close(self):
        self.closed = True


class _Terminal:
    """rld.fast.cli's ``sys``, whose stderr is a terminal."""

    stderr = SimpleNamespace(isatty=lambda: True)

    def __getattr__(self, name):
        return getattr(sys, name)


@pytest.fixture
def terminal(monkeypatch):
    """stderr is a terminal; the progress bars rld cache makes (tqdm recorded)."""
    _Bar.made = []
    monkeypatch.setattr(fast_cli, "sys", _Terminal())
    monkeypatch.setattr(tqdm, "tqdm", _Bar)
    return _Bar.made


def test_rld_cache_on_a_terminal_shows_views_filled_and_prints_one_line(
    tmp_path, teacher, terminal, capsys, monkeypatch
):
    """Array data: a bar of teacher logits in views, updated per batch and closed; the line names the
    entries, the ones computed now, the seconds, the size and the folder."""
    _, over = _two_image_cfg(tmp_path, teacher)
    monkeypatch.setattr(build_module, "time", _clock(1.0, 3.0))
    assert main(["cache", "demo/rld", *over, "--cache-dir", str(tmp_path / "cache")]) == 0
    (folder,) = (tmp_path / "cache").iterdir()
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"teacher-logit cache: 324 entries (324 computed now in 2.0s, 6.33 KiB) → {folder}"
    )
    (bar,) = terminal
    assert bar.kw == {"desc": "teacher logits", "unit": " views", "dynamic_ncols": True, "leave": False}
    assert bar.shown == [(64, 324), (128, 324), (192, 324), (256, 324), (320, 324), (324, 324)] and bar.closed


def test_rld_cache_of_an_image_folder_shows_images_and_the_epochs_checked(
    data, teacher_ckpt, tmp_path, terminal, capsys, monkeypatch
):
    """Image folders (given by --data and --teacher): a bar of teacher outputs in images; --precision sets
    the form; the line names the epochs, samples, epochs computed now, seconds, epochs checked with
    --verify, the form, the size of an epoch and the folder."""
    over = [
        "data.name=imagefolder",
        "data.image_size=16",
        "data.num_workers=0",
        "train.batch_size=4",
        "train.epochs=2",
        "model.teacher=resnet8",
        "--data",
        str(data),
        "--teacher",
        str(teacher_ckpt),
        "--device",
        "cpu",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--precision",
        "float32",
    ]
    monkeypatch.setattr(build_module, "time", _clock(1.0, 3.5))
    assert main(["cache", "demo/rld", *over]) == 0
    (folder,) = (tmp_path / "cache").iterdir()
    line = "teacher-output store: epochs 1-2 of 12 samples ({}; float32, 96 B per epoch) → " + str(folder) + "\n"
    assert capsys.readouterr().out == line.format("2 computed now in 2.5s")
    (bar,) = terminal
    assert bar.kw == {"desc": "teacher outputs", "unit": " images", "dynamic_ncols": True, "leave": False}
    assert bar.shown == [(12, 24), (12, 24), (24, 24), (24, 24)] and bar.closed
    monkeypatch.setattr(build_module, "time", _clock(5.0, 5.5))
    assert main(["cache", "demo/rld", *over, "--verify"]) == 0
    assert capsys.readouterr().out == line.format("0 computed now in 0.5s, 2 checked")


def test_build_cache_opens_the_cache_lazily_on_the_device_pipeline_only(tmp_path, teacher):
    """Array data on the pil pipeline: refused as train.teacher_cache=lazy would be (the mode rld cache opens
    the cache in, to build it with progress)."""
    cfg, _ = _two_image_cfg(tmp_path, teacher)
    with pytest.raises(UserError) as err:
        build_cache(replace(cfg, data=replace(cfg.data, pipeline="pil", num_workers=0)))
    assert str(err.value) == (
        "train.teacher_cache=lazy needs the device-resident loader (data.pipeline=device with digits or cifar100): "
        "only it gives each sample's (image, view); use train.teacher_cache=off here"
    )


def test_the_fill_batch_is_64_views_on_a_cpu_and_1024_elsewhere():
    """CPU: 64; CUDA and any other device type: 1024."""
    sizes = [fill_batch_size(torch.device(d)) for d in ("cpu", "cuda", "mps", "meta")]
    assert sizes == [64, 1024, 1024, 1024]


def test_the_refusal_of_an_inexact_form_says_how_to_opt_in():
    """The whole message of a form a method does not allow without ``train.cache_inexact``."""
    with pytest.raises(UserError) as err:
        forms.check_method("int8", "lr", opt_in=False)
    assert str(err.value) == (
        "teacher outputs stored as int8 change the loss or gradient of method 'lr' by more than 0.001 / 0.01 "
        "relative (benchmarks/logit_forms.py): store them as float16, or set train.cache_inexact=true to train on "
        "them anyway"
    )


# ----------------------------------------------------------------------------- the store's files


def test_a_store_opened_without_covers_is_of_the_generic_format(tmp_path):
    """meta.json of a top-k store opened by hand: the generic format name, no covers, the record layout of
    its k (below the number of classes); a ``format`` among the covers names the format."""
    store = OutputStore.open(tmp_path, "s", key="k1", num_samples=3, num_classes=30, form="topk", k=5)
    assert _meta_fields(store.folder) == {
        "format": "rld-teacher-outputs",
        "key": "k1",
        "covers": {},
        "num_samples": 3,
        "num_classes": 30,
        "form": "topk",
        "k": 5,
        "record_dtype": [["values", "<f2", [5]], ["classes", "<i2", [5]], ["true", "<f2"], ["lse", "<f4"]],
        "record_bytes": 26,
        "chunk_records": (4 << 20) // 26,
        "epochs": {},
    }
    assert store.dtype.itemsize == 26 and store.k == 5 and store.key == "k1"
    for covers, shown in (({"format": "x-1", "a": 1}, "x-1"), ({"a": 1}, "rld-teacher-outputs")):
        folder = OutputStore.open(
            tmp_path, shown + "-c", key="k", num_samples=1, num_classes=2, form="float16", covers=covers
        ).folder
        assert _meta_fields(folder)["format"] == shown and _meta_fields(folder)["covers"] == covers


def test_a_record_larger_than_a_chunk_is_a_chunk_of_its_own(tmp_path):
    """float32 records of 2^20 classes (4 MiB, the chunk size): one record per checksummed chunk."""
    store = OutputStore.open(tmp_path, "big", key="k", num_samples=1, num_classes=1 << 20, form="float32")
    assert _meta_fields(store.folder)["chunk_records"] == 1 and store.chunk == 1


def test_a_store_of_another_key_or_layout_is_refused(tmp_path):
    """The same key and layout open the folder again; another key, or another number of samples, classes or
    form with the same key, is refused in full."""
    kw = dict(key="k1", num_samples=3, num_classes=4, form="float16")
    folder = OutputStore.open(tmp_path, "s", **kw).folder
    assert OutputStore.open(tmp_path, "s", **kw, create=False).folder == folder
    message = f"the teacher-output store {folder} belongs to another teacher, data set, seed or form; delete the folder"
    for change in ({"key": "k2"}, {"num_samples": 4}, {"num_classes": 5}, {"form": "float32"}):
        with pytest.raises(UserError) as err:
            OutputStore.open(tmp_path, "s", **{**kw, **change})
        assert str(err.value) == message


def test_a_store_that_cannot_be_created_is_refused_with_the_reason(tmp_path):
    """train.cache_dir naming a file: the folder cannot be made, and the message says why."""
    root = tmp_path / "file"
    root.write_text("")
    with pytest.raises(UserError) as err:
        OutputStore.open(root, "s", key="k", num_samples=1, num_classes=2, form="float16")
    assert str(err.value) == (
        f"cannot use the teacher-output store {root / 's'}: File exists; set train.cache_dir to a writable folder"
    )


def _records(store: OutputStore, indices: list[int]) -> np.ndarray:
    """float32 records whose logits are (index + 1, -(index + 1), 0.5)."""
    out = np.zeros(len(indices), dtype=store.dtype)
    out["logits"] = np.array([[i + 1, -(i + 1), 0.5] for i in indices], dtype=np.float32)
    return out


@pytest.fixture
def small_chunks(tmp_path, monkeypatch) -> OutputStore:
    """A float32 store of 8 samples of three classes (12 B each) checksummed in chunks of two records."""
    monkeypatch.setattr(store_module, "CHUNK_BYTES", 24)
    return OutputStore.open(tmp_path, "s", key="k", num_samples=8, num_classes=3, form="float32")


def test_an_epoch_is_written_with_zero_records_between_blocks_and_a_checksum_per_chunk(small_chunks):
    """Blocks of samples 1-3, 5 and 6: samples 0, 4 and 7 get zero records; meta.json lists a CRC-32 per
    chunk of two records, each computed over the chunk's bytes however the blocks cut it."""
    store = small_chunks
    assert store.chunk == 2
    store.write_epoch(1, [(np.array([1, 2, 3, 5]), _records(store, [1, 2, 3, 5])), ([6], _records(store, [6]))])
    expected = np.zeros(8, dtype=store.dtype)
    expected[[1, 2, 3, 5, 6]] = _records(store, [1, 2, 3, 5, 6])
    table = np.load(store.path(1))
    assert table.dtype == store.dtype and table.tobytes() == expected.tobytes()
    raw = expected.tobytes()
    crcs = "".join(f"{zlib.crc32(raw[i : i + 24]):08x}" for i in range(0, len(raw), 24))
    assert _meta_fields(store.folder)["epochs"] == {"1": crcs} and store.meta["epochs"] == {"1": crcs}
    store.verify(1)


def test_an_epoch_needs_its_bytes_and_4_kib_free(small_chunks, monkeypatch):
    """Free space of exactly the epoch's 96 B plus 4096 is enough; a byte less is refused, naming both."""
    store = small_chunks
    free = {}
    monkeypatch.setattr(store_module, "free_bytes", lambda folder: free[Path(folder)])
    free[store.folder] = 96 + 4096 - 1
    with pytest.raises(UserError) as err:
        store.write_epoch(1, [])
    assert str(err.value) == (
        f"an epoch of the teacher-output store needs 4.09 KiB in {store.folder} but only 4.09 KiB are free; set "
        "train.cache_dir to another folder"
    )
    free[store.folder] = 1000
    with pytest.raises(UserError, match="needs 4.09 KiB in .* but only 1000 B are free"):
        store.write_epoch(1, [])
    assert store.missing([1]) == [1]
    free[store.folder] = 96 + 4096
    store.write_epoch(1, [])
    assert np.load(store.path(1)).tobytes() == bytes(96)


def test_indices_of_an_unsigned_type_must_ascend_too(small_chunks):
    """Descending unsigned indices are refused as signed ones are; nothing is written."""
    store = small_chunks
    with pytest.raises(ValueError, match="^records must come in ascending index order, each once$"):
        store.write_epoch(1, [(np.array([3, 1], dtype=np.uint64), _records(store, [3, 1]))])
    assert sorted(p.name for p in store.folder.iterdir()) == ["meta.json"]


def test_a_failed_epoch_reports_its_own_error_when_its_temporary_file_is_already_gone(small_chunks):
    """The error of the blocks is the one raised, even when the temporary file vanished before it."""
    store = small_chunks

    def blocks():
        yield [0], _records(store, [0])
        for tmp in store.folder.glob(".epoch-0001.npy.tmp-*"):
            tmp.unlink()
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="^disk gone$"):
        store.write_epoch(1, blocks())
    assert store.missing([1]) == [1]


def test_a_stale_temporary_file_removed_meanwhile_is_no_error(small_chunks, monkeypatch):
    """Taking the fill lock removes stale temporary files; one another process removed first is skipped."""
    store = small_chunks
    stale = store.folder / ".epoch-0002.npy.tmp-1-aaaaaaaa"
    stale.write_bytes(b"x")
    gone = store.folder / ".epoch-0003.npy.tmp-2-bbbbbbbb"
    real = type(store.folder).glob
    monkeypatch.setattr(
        type(store.folder), "glob", lambda self, pattern: [gone, stale] if self == store.folder else real(self, pattern)
    )
    with store.filling() as same:
        assert same is store
    assert not stale.exists()


def test_crc32_continues_a_checksum_and_reads_any_array_as_its_bytes():
    """A CRC continued over pieces is the whole's; an array's is that of its C-order bytes (a transposed
    view, a 0-d array, a 2-d array of records: value then class, little-endian)."""
    assert crc32(b"b", crc32(b"a")) == zlib.crc32(b"ab") == crc32(b"ab")
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert crc32(a.T) == zlib.crc32(np.ascontiguousarray(a.T).tobytes())
    assert crc32(a[1], crc32(a[0])) == zlib.crc32(a.tobytes())
    scalar = np.array(1.5, dtype=np.float32)
    assert crc32(scalar) == zlib.crc32(scalar.tobytes())
    records = np.zeros((2, 3), dtype=[("v", "<f2"), ("c", "<i2")])
    records["c"] = np.arange(6).reshape(2, 3)
    written = b"".join(b"\0\0" + bytes([c, 0]) for c in range(6))
    assert crc32(records) == zlib.crc32(records.tobytes()) == zlib.crc32(written)


def test_top_k_records_store_classes_as_int16_up_to_32767_classes():
    """32767 classes fit (the last class's index kept as int16); 32768 are refused in full."""
    z = torch.zeros(1, 32767)
    z[0, 32766] = 5.0
    record = forms.encode(z, torch.tensor([0]), "topk", 1)
    assert record["classes"].dtype == torch.int16 and record["classes"].tolist() == [[32766]]
    with pytest.raises(UserError) as err:
        forms.encode(torch.zeros(1, 32768), torch.tensor([0]), "topk", 1)
    assert str(err.value) == "the top-k form stores classes as int16: 32768 classes are too many"


def _damaged_message(folder: Path, what: str) -> str:
    return (
        f"the teacher-output store {folder} is damaged ({what}); it is not used. Delete the folder (rm -r '{folder}') "
        "and fill it again with `rld cache PRESET … --epochs E`"
    )


def _write_checked(folder: Path, body) -> None:
    """meta.json of ``body`` with a valid checksum (when a dict)."""
    meta = {**body, "checksum": zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())}
    (folder / "meta.json").write_text(json.dumps(meta))


GOOD = {"key": "k", "num_samples": 3, "num_classes": 4, "form": "float16", "k": None, "chunk_records": 8, "epochs": {}}


EDITS = {
    "missing": None,
    "garbled": "{",
    "a list": "[]",
    "no checksum": '{"key": "k"}',
    "edited": "edited",
    "topk without k": {**GOOD, "form": "topk"},
    "wrong types": {**GOOD, "form": "topk", "k": "5", "num_samples": "3"},
    "unknown form": {**GOOD, "form": "bf16"},
    "no chunk": {**GOOD, "chunk_records": 0},
}


@pytest.mark.parametrize(
    ("case", "what"),
    [
        ("missing", "meta.json is missing"),
        (
            "garbled",
            "meta.json is unreadable: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        ("a list", "meta.json has no checksum"),
        ("no checksum", "meta.json has no checksum"),
        ("edited", "meta.json does not match its checksum: it was edited"),
        ("topk without k", "meta.json does not describe a store (k)"),
        ("wrong types", "meta.json does not describe a store (num_samples, k)"),
        ("unknown form", "meta.json does not describe a store (form)"),
        ("no chunk", "meta.json does not describe a store (form)"),
    ],
)
def test_a_meta_json_that_is_missing_unreadable_edited_or_incomplete_is_refused(tmp_path, case, what):
    """Each problem of meta.json, named in the one refusal that says to delete and refill the folder."""
    folder = tmp_path / "s"
    folder.mkdir()
    edit = EDITS[case]
    if edit == "edited":  # a field changed after the checksum was written
        _write_checked(folder, GOOD)
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, "num_samples": 4}))
    elif isinstance(edit, str):
        (folder / "meta.json").write_text(edit)
    elif edit is not None:
        _write_checked(folder, edit)
    with pytest.raises(UserError) as err:
        OutputStore.open(tmp_path, "s", key="k", num_samples=3, num_classes=4, form="float16")
    assert str(err.value) == _damaged_message(folder, what)


def test_meta_json_is_written_indented_by_one_space(tmp_path):
    """The file is the JSON of the fields and their checksum, one space per level, and a newline."""
    store = OutputStore.open(tmp_path, "s", key="k", num_samples=1, num_classes=2, form="float16")
    meta = json.loads((store.folder / "meta.json").read_text())
    assert (store.folder / "meta.json").read_text() == json.dumps(meta, indent=1) + "\n"
    assert list(meta)[-1] == "checksum"


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        ("mismatch", "one record per index"),
        ("beyond", "records must come in ascending index order, each once"),
        ("twice", "records must come in ascending index order, each once"),
        ("overlap", "records must come in ascending index order, each once"),
    ],
)
def test_blocks_out_of_order_or_of_unequal_length_are_refused(small_chunks, blocks, message):
    """Blocks must give one record per index, ascending, each once, within the samples; nothing is written."""
    store = small_chunks
    cases = {
        "mismatch": [([1, 2], _records(store, [1]))],
        "beyond": [([5, 6, 8], _records(store, [5, 6, 7]))],
        "twice": [([2, 2], _records(store, [2, 2]))],
        "overlap": [([1, 2, 3], _records(store, [1, 2, 3])), ([3, 4], _records(store, [3, 4]))],
    }
    with pytest.raises(ValueError) as err:
        store.write_epoch(1, cases[blocks])
    assert str(err.value) == message
    assert sorted(p.name for p in store.folder.iterdir()) == ["meta.json"]


@pytest.mark.parametrize(("k", "shown"), [(True, "True"), (2.5, "2.5"), ("2", "'2'"), (0, "0"), (None, "None")])
def test_the_top_k_form_needs_a_positive_integer_k(k, shown):
    """Booleans, floats, strings, 0 and None are refused, naming the value."""
    with pytest.raises(UserError) as err:
        forms.check_form("topk", k)
    assert str(err.value) == f"the top-k form needs k >= 1, got {shown}"


# ----------------------------------------------------------------------------- the logit cache on a GPU


class _DeviceTable:
    """A table "on" a simulated device: CPU memory, the device's name, the blocks copied into it."""

    def __init__(self, data: torch.Tensor, device: torch.device):
        self.data, self.device, self.copies = data, device, []

    @property
    def shape(self):
        return self.data.shape

    def numel(self) -> int:
        return self.data.numel()

    def element_size(self) -> int:
        return self.data.element_size()

    def __getitem__(self, key):
        if isinstance(key, slice):
            return _Block(self, key)
        return self.data[tuple(k.values if isinstance(k, GpuIndices) else k for k in key)]


class _Block:
    def __init__(self, table: _DeviceTable, rows: slice):
        self.table, self.rows = table, rows

    def copy_(self, src: torch.Tensor) -> None:
        self.table.copies.append((self.rows.start, self.rows.stop, tuple(src.shape)))
        self.table.data[self.rows].copy_(src)


class _SimulatedTorch:
    """rld.fast.cache's ``torch``, with ``empty`` making :class:`_DeviceTable` s (recorded with its arguments)."""

    def __init__(self):
        self.made: list[tuple[tuple, dict, _DeviceTable]] = []

    def __getattr__(self, name):
        return getattr(torch, name)

    def empty(self, *args, **kwargs):
        table = _DeviceTable(torch.empty(args[0], dtype=kwargs["dtype"]), torch.device(kwargs["device"]))
        self.made.append((args, kwargs, table))
        return table


def _full_logit_store(tmp_path: Path, n: int) -> tuple[LogitStore, torch.Tensor]:
    """A complete float16 LogitStore of ``n`` images, 162 views, 3 classes, and its values."""
    store = LogitStore.open(tmp_path, "t", key="k", shape=(n, 162, 3), precision="float16", meta={})
    values = torch.randn(n, 162, 3, generator=torch.Generator().manual_seed(n)).half()
    store.put(torch.arange(n).repeat_interleave(162), torch.arange(162).repeat(n), values.reshape(-1, 3))
    store.flush()
    return store, values


@pytest.mark.parametrize(
    ("n", "copy_chunk", "blocks"),
    [
        (5, 2 * 972 + 1, [(0, 2), (2, 4), (4, 6)]),  # 972 B per image: two images a block
        (3, 971, [(0, 1), (1, 2), (2, 3)]),  # an image larger than a block: one image a block
        (1, 1 << 26, [(0, (1 << 26) // 972)]),  # the default block, one image
    ],
)
def test_a_complete_logit_table_is_copied_to_a_gpu_in_blocks_of_whole_images(
    tmp_path, monkeypatch, n, copy_chunk, blocks
):
    """to_device makes one table of the store's shape and dtype on the device, copies every image once in
    blocks of at most COPY_CHUNK bytes (at least one image), reads from it afterwards (a store on the device
    is read-only), and does nothing when called again for the same device."""
    store, values = _full_logit_store(tmp_path, n)
    fake = _SimulatedTorch()
    monkeypatch.setattr(cache_module, "torch", fake)
    monkeypatch.setattr(cache_module, "COPY_CHUNK", copy_chunk)
    device = torch.device("cuda", 1)
    store.to_device(device)
    ((args, kwargs, table),) = fake.made
    assert args == ((n, 162, 3),) and kwargs == {"dtype": torch.float16, "device": device}
    sizes = [min(stop, n) - start for start, stop in blocks]
    assert table.copies == [(start, stop, (size, 162, 3)) for (start, stop), size in zip(blocks, sizes)]
    assert torch.equal(table.data, values)
    store.to_device(device)
    assert len(fake.made) == 1
    i, v = torch.tensor([n - 1, 0]), torch.tensor([161, 7])
    assert torch.equal(store.get(i, v), values[i, v].float())
    with pytest.raises(RuntimeError, match="a store loaded into device memory is read-only"):
        store.put(i, v, torch.zeros(2, 3))


@pytest.mark.parametrize("device", [torch.device("cpu"), torch.device("cpu", 0)])
def test_a_logit_table_stays_in_its_map_for_any_cpu_device(tmp_path, monkeypatch, device):
    """to_device on a CPU device makes no table and leaves the store writable."""
    store, values = _full_logit_store(tmp_path, 2)
    fake = _SimulatedTorch()
    monkeypatch.setattr(cache_module, "torch", fake)
    store.to_device(device)
    assert fake.made == []
    store.put(torch.tensor([1]), torch.tensor([3]), torch.ones(1, 3))
    assert torch.equal(
        store.get(torch.tensor([1, 0]), torch.tensor([3, 3])), torch.stack([torch.ones(3), values[0, 3].float()])
    )


# ----------------------------------------------------------------------------- the logit cache: checksums, GPU lookups


@pytest.fixture
def chunked(tmp_path, monkeypatch) -> LogitStore:
    """A float16 LogitStore of 5 images, 162 views, 3 classes, checksummed in chunks of two images (the last
    chunk one image)."""
    monkeypatch.setattr(cache_module, "CHUNK_BYTES", 2 * 162 * 3 * 2)
    return LogitStore.open(tmp_path, "t", key="k", shape=(5, 162, 3), precision="float16", meta={})


def _fill_some(store: LogitStore) -> None:
    """Images 0 and 1 (chunk 0) completely, views 0 and 5 of image 2 (chunk 1); flushed."""
    i = torch.cat([torch.arange(2).repeat_interleave(162), torch.tensor([2, 2])])
    v = torch.cat([torch.arange(162).repeat(2), torch.tensor([0, 5])])
    store.put(i, v, torch.randn(len(i), 3, generator=torch.Generator().manual_seed(1)))
    store.flush()


def _corrupt_message(folder: Path, first: int, last: int) -> str:
    return (
        f"the teacher-logit cache {folder} is corrupt (the logits of images {first}-{last} do not match their "
        f"checksum); it is not used. Delete the folder (rm -r '{folder}') and rebuild it with `rld cache PRESET …` "
        "(or let train.teacher_cache=lazy refill it)"
    )


def test_a_flush_writes_a_crc32_per_chunk_of_its_mask_and_filled_logits(chunked, tmp_path):
    """index.npz: per chunk of two images, the CRC-32 of its mask rows, continued over the logits of its
    filled entries in order (a complete chunk, a partial one, an empty one)."""
    _fill_some(chunked)
    values = np.load(tmp_path / "t" / "logits.npy")
    with np.load(tmp_path / "t" / "index.npz") as index:
        filled, crcs = index["filled"], index["crc32"]
    assert filled.sum() == 2 * 162 + 2
    expected = []
    for rows in (slice(0, 2), slice(2, 4), slice(4, 5)):
        crc = zlib.crc32(filled[rows].tobytes())
        if filled[rows].any():
            crc = zlib.crc32(values[rows][filled[rows]].tobytes(), crc)
        expected.append(crc)
    assert crcs.tolist() == expected


def test_each_chunk_is_checked_once_before_its_first_lookup(chunked, tmp_path, monkeypatch):
    """A lookup checks the chunks of its images only, once; verify() checks the others; a damaged chunk is
    refused naming its images while the others stay readable."""
    _fill_some(chunked)
    store = LogitStore.open(tmp_path, "t", key="k", shape=(5, 162, 3), precision="float16", meta={})
    checked = []
    real = cache_module._crc
    monkeypatch.setattr(
        cache_module, "_crc", lambda values, filled: checked.append(len(filled)) or real(values, filled)
    )
    first = store.get(torch.tensor([1, 0]), torch.tensor([7, 161]))
    store.get(torch.tensor([0]), torch.tensor([3]))
    assert checked == [2]
    assert store.missing(torch.tensor([2, 2]), torch.tensor([5, 6])).tolist() == [1] and checked == [2, 2]
    store.verify()
    store.verify()
    assert checked == [2, 2, 1]
    # a byte of image 2's logits flipped on disk: its chunk (images 2-3) is refused, chunk 0 still read
    raw = bytearray((tmp_path / "t" / "logits.npy").read_bytes())
    offset = len(raw) - 5 * 162 * 3 * 2 + (2 * 162 + 5) * 3 * 2
    raw[offset] ^= 0x10
    (tmp_path / "t" / "logits.npy").write_bytes(bytes(raw))
    damaged = LogitStore.open(tmp_path, "t", key="k", shape=(5, 162, 3), precision="float16", meta={})
    assert torch.equal(damaged.get(torch.tensor([1, 0]), torch.tensor([7, 161])), first)
    with pytest.raises(UserError) as err:
        damaged.get(torch.tensor([3]), torch.tensor([0]))
    assert str(err.value) == _corrupt_message(tmp_path / "t", 2, 3)


def test_entries_put_after_a_flush_stay_this_process_s_own_until_the_next(chunked, tmp_path):
    """After a flush the process's mask and the mask it last wrote are two arrays: an entry put afterwards into a
    chunk not checked yet (image 4, empty on disk) is not taken for a disk entry, so that chunk still matches its
    checksum when first read; the mask tensor handed out before the flush follows the new entries."""
    mask = chunked._filled
    _fill_some(chunked)
    logits = torch.tensor([[1.5, -2.0, 0.25]])
    chunked.put(torch.tensor([4]), torch.tensor([9]), logits)
    assert torch.equal(chunked.get(torch.tensor([4]), torch.tensor([9])), logits)
    assert int(mask.sum()) == 2 * 162 + 2 + 1 and bool(mask[4, 9])
    chunked.flush()
    reopened = LogitStore.open(tmp_path, "t", key="k", shape=(5, 162, 3), precision="float16", meta={})
    assert torch.equal(reopened.get(torch.tensor([4]), torch.tensor([9])), logits)
    assert reopened.filled_count() == 2 * 162 + 3


@pytest.fixture
def moves(monkeypatch) -> list:
    """Every ``Tensor.to`` call (its arguments); a move to a CUDA device stays on the CPU (a copy)."""
    calls = []
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        calls.append((args, kwargs))
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, torch.device) and target.type == "cuda":
            return self.clone()
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    return calls


def test_a_lazy_lookup_from_a_gpu_computes_the_missing_entries_and_moves_the_batch(chunked, moves):
    """The positions of the missing entries go to the batch's device, the teacher (never on one image) gives
    their logits, which go to the host in the storage precision, and the batch's rows, gathered on the host,
    go to the device without waiting."""
    _fill_some(chunked)
    images = torch.arange(3 * 3 * 2 * 2, dtype=torch.float32).reshape(3, 3, 2, 2)
    seen = []

    def forward(batch):
        seen.append((batch.images.shape[0], batch.images.is_contiguous(memory_format=torch.channels_last)))
        return batch.images.flatten(1)[:, :3] * 2

    provider = CachedTeacher(chunked, forward, SimpleNamespace(channels_last=True), lazy=True)
    moves.clear()
    batch = Batch(images, None, GpuIndices(torch.tensor([2, 3, 0])), GpuIndices(torch.tensor([5, 9, 4])))
    got = provider(batch)
    cuda = torch.device("cuda", 0)
    assert moves == [((cuda,), {}), (("cpu", torch.float16), {}), ((cuda,), {"non_blocking": True})]
    assert seen == [(2, True)]  # the one missing image, twice, in the loader's channels_last format
    assert provider.computed == 1
    assert torch.equal(got[1], (images[1].flatten()[:3] * 2).half().float())
    assert torch.equal(got[0], chunked.get(torch.tensor([2]), torch.tensor([5]))[0])


def test_a_logit_table_on_the_gpu_serves_its_device_there_and_refuses_writes(tmp_path, monkeypatch, moves):
    """After to_device, a batch on that device is gathered there (nothing moved) and a write is refused."""
    store, values = _full_logit_store(tmp_path, 3)
    fake = _SimulatedTorch()
    monkeypatch.setattr(cache_module, "torch", fake)
    store.to_device(torch.device("cuda", 0))
    moves.clear()
    got = store.get(GpuIndices(torch.tensor([2, 0])), GpuIndices(torch.tensor([1, 161])))
    assert moves == [] and torch.equal(got, values[[2, 0], [1, 161]].float())
    with pytest.raises(RuntimeError) as err:
        store.put(torch.tensor([0]), torch.tensor([0]), torch.zeros(1, 3))
    assert str(err.value) == "a store loaded into device memory is read-only"


def test_logits_that_overflow_the_storage_precision_are_refused(chunked):
    """A logit beyond float16's range: the message names the precision and the remedy; nothing is filled."""
    with pytest.raises(UserError) as err:
        chunked.put(torch.tensor([0]), torch.tensor([0]), torch.tensor([[1.0, 7e4, 0.0]]))
    assert str(err.value) == (
        "teacher logits do not fit torch.float16 (non-finite after conversion); use train.cache_precision=float32"
    )
    assert chunked.filled_count() == 0


def test_a_complete_store_has_no_teacher_to_compute_a_missing_entry(chunked):
    """A provider without a teacher asked for an entry not filled: the RuntimeError says why."""
    provider = CachedTeacher(chunked, None, SimpleNamespace(channels_last=False), lazy=True)
    with pytest.raises(RuntimeError) as err:
        provider(Batch(torch.zeros(1, 3, 2, 2), None, torch.tensor([4]), torch.tensor([0])))
    assert str(err.value) == "this provider has no teacher: its store is complete"


def test_filled_entries_are_flushed_once_more_than_60_seconds_passed(chunked, tmp_path, monkeypatch):
    """flush_if_due writes nothing 60 s after the last flush, and the entries filled since after 60.5 s."""
    now = [1000.0]
    monkeypatch.setattr(cache_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    chunked._files.last_flush = 1000.0  # the time of the last flush, on the stand-in clock

    def on_disk() -> int:
        with np.load(tmp_path / "t" / "index.npz") as index:
            return int(index["filled"].sum())

    chunked.put(torch.tensor([1]), torch.tensor([2]), torch.ones(1, 3))
    for t in (1000.0, 1060.0):
        now[0] = t
        chunked.flush_if_due()
        assert on_disk() == 0
    now[0] = 1060.5
    chunked.flush_if_due()
    assert on_disk() == 1


def test_a_checksummed_chunk_holds_whole_images_at_least_one():
    """Images per chunk of 4 MiB: 129 of 162 x 100 float16 logits; one when an image alone exceeds it; an
    image of no bytes counts as one byte."""
    assert chunk_images((9, 162, 100), 2) == 129
    assert chunk_images((9, 162, 12945), 2) == 1  # 4,194,180 B: just below 4 MiB
    assert chunk_images((9, 162, 12946), 2) == 1  # 4,194,504 B: just above
    assert chunk_images((9, 162, 0), 2) == 4 << 20


# ----------------------------------------------------------------------------- the logit cache's folder


def _open_logits(root: Path, shape=(5, 162, 3)) -> LogitStore:
    return LogitStore.open(root, "t", key="k", shape=shape, precision="float16", meta={"teacher": "resnet8"})


def test_a_new_logit_cache_describes_itself_and_checksums_its_empty_chunks(chunked, tmp_path):
    """meta.json (indented by one space): the given fields, the key, shape, precision and chunk size;
    index.npz: an empty mask and per chunk the CRC-32 (uint32) of its empty mask rows; logits.npy mapped
    copy-on-write."""
    folder = tmp_path / "t"
    assert chunked.key == "k" and chunked.folder == folder
    meta = json.loads((folder / "meta.json").read_text())
    assert meta == {"key": "k", "shape": [5, 162, 3], "precision": "float16", "chunk_images": 2}
    assert (folder / "meta.json").read_text() == json.dumps(meta, indent=1) + "\n"
    with np.load(folder / "index.npz") as index:
        assert not index["filled"].any() and index["filled"].shape == (5, 162)
        assert index["crc32"].dtype == np.uint32
        assert index["crc32"].tolist() == [
            zlib.crc32(bytes(2 * 162)),
            zlib.crc32(bytes(2 * 162)),
            zlib.crc32(bytes(162)),
        ]
    values = chunked._files.values
    assert isinstance(values, np.memmap) and values.mode == "c" and values.dtype == np.float16


@pytest.fixture
def free_space(monkeypatch) -> dict:
    """The free bytes each folder reports (set them); the folders asked, in order, under ``"asked"``."""
    state = {"asked": []}

    def free_bytes(folder):
        state["asked"].append(Path(folder))
        return state[Path(folder)]

    monkeypatch.setattr(cache_module, "free_bytes", free_bytes)
    return state


def test_a_new_logit_cache_needs_room_for_its_whole_table(tmp_path, free_space):
    """Free space is asked of the parent folder: exactly the table's bytes (3.02 GiB here, checked before
    anything is written) are enough; less is refused naming both sizes in GiB."""
    shape = (1000, 162, 10000)  # 3,240,000,000 B in float16
    free_space[tmp_path] = 2**30
    with pytest.raises(UserError) as err:
        _open_logits(tmp_path, shape)
    assert str(err.value) == (
        f"the teacher-logit cache needs 3.02 GiB more in {tmp_path} but only 1.00 GiB are free; set "
        "train.cache_dir to another folder"
    )
    assert free_space["asked"] == [tmp_path] and not (tmp_path / "t").exists()
    free_space[tmp_path] = 5 * 162 * 3 * 2
    free_space[tmp_path / "t"] = 1 << 40  # opening it then: the room its unfilled entries need
    _open_logits(tmp_path)
    free_space[tmp_path / "other"] = 5 * 162 * 3 * 2 - 1
    with pytest.raises(UserError, match="needs 0.00 GiB more"):
        _open_logits(tmp_path / "other")


def test_an_incomplete_logit_cache_needs_room_for_its_unfilled_part_and_a_complete_one_none(tmp_path, free_space):
    """Reopening: half the entries filled need half the table's bytes free in the folder itself; a complete
    cache asks for no space, creates no flush lock and never writes back what is put into it."""
    folder = tmp_path / "t"
    free_space[tmp_path] = free_space[folder] = 1 << 40
    store = _open_logits(tmp_path, (2, 162, 3))
    store.put(torch.zeros(162, dtype=torch.long), torch.arange(162), torch.ones(162, 3))
    store.flush()
    free_space[folder] = 162 * 3 * 2
    free_space["asked"].clear()
    _open_logits(tmp_path, (2, 162, 3))
    assert free_space["asked"] == [folder]
    free_space[folder] -= 1
    with pytest.raises(UserError) as err:
        _open_logits(tmp_path, (2, 162, 3))
    assert str(err.value).startswith(f"the teacher-logit cache needs 0.00 GiB more in {folder} but only 0.00 GiB")
    free_space[folder] += 1
    store = _open_logits(tmp_path, (2, 162, 3))
    store.put(torch.ones(162, dtype=torch.long), torch.arange(162), torch.ones(162, 3))
    store.flush()
    (folder / "flush.lock").unlink()
    free_space[folder] = 0
    free_space["asked"].clear()
    complete = _open_logits(tmp_path, (2, 162, 3))
    assert free_space["asked"] == [] and not (folder / "flush.lock").exists()
    before = folder_snapshot(folder)
    complete.put(torch.tensor([0]), torch.tensor([0]), torch.full((1, 3), 5.0))
    complete.flush()
    assert folder_snapshot(folder) == before


def _cache_message(folder: Path, what: str) -> str:
    return (
        f"the teacher-logit cache {folder} is corrupt ({what}); it is not used. Delete the folder (rm -r '{folder}') "
        "and rebuild it with `rld cache PRESET …` (or let train.teacher_cache=lazy refill it)"
    )


@pytest.mark.parametrize(
    ("meta", "what"),
    [
        ("", "meta.json is unreadable: Expecting value: line 1 column 1 (char 0)"),
        ("[]", "meta.json does not describe a cache"),
        ('{"key": "k", "shape": "5x162x3"}', "meta.json does not describe a cache"),
        ({"chunk_images": 0}, "meta.json gives no chunk size"),
        ({"chunk_images": "2"}, "meta.json gives no chunk size"),
        ({"chunk_images": None}, "meta.json gives no chunk size"),
    ],
)
def test_a_logit_cache_whose_meta_json_is_unreadable_or_incomplete_is_refused(tmp_path, meta, what):
    """The one refusal names what is wrong with meta.json and says to delete the folder."""
    folder = _open_logits(tmp_path).folder
    if isinstance(meta, dict):
        meta = json.dumps({**json.loads((folder / "meta.json").read_text()), **meta})
    (folder / "meta.json").write_text(meta)
    with pytest.raises(UserError) as err:
        _open_logits(tmp_path)
    assert str(err.value) == _cache_message(folder, what)


def test_a_logit_cache_of_one_image_per_chunk_opens_again(tmp_path, monkeypatch):
    """A chunk size of one image (images larger than a chunk) is a valid chunk size."""
    monkeypatch.setattr(cache_module, "CHUNK_BYTES", 100)
    assert json.loads((_open_logits(tmp_path).folder / "meta.json").read_text())["chunk_images"] == 1
    monkeypatch.undo()
    store = _open_logits(tmp_path)
    store.verify()
    assert store.filled_count() == 0


@pytest.mark.parametrize(
    ("root", "fail", "reason"),
    [
        ("file", None, "File exists"),
        ("nul", None, "embedded null byte"),
        ("dir", OSError("quota service unreachable\nsee the logs"), "quota service unreachable"),
    ],
)
def test_a_logit_cache_that_cannot_be_made_is_refused_with_the_reason(tmp_path, monkeypatch, root, fail, reason):
    """train.cache_dir naming a file, a path with a NUL byte, a file system that fails to say its free space:
    the first line of the system's reason."""
    base = tmp_path / "file"
    if root == "file":
        base.write_text("")
    elif root == "nul":
        base = tmp_path / "a\0b"
    else:
        base = tmp_path / "dir"
        monkeypatch.setattr(cache_module, "free_bytes", lambda folder: (_ for _ in ()).throw(fail))
    with pytest.raises(UserError) as err:
        _open_logits(base)
    assert str(err.value) == (
        f"cannot use the teacher-logit cache in {base / 't'}: {reason}; set train.cache_dir to a writable folder or "
        "delete this one"
    )


def test_a_flush_never_launders_a_damaged_chunk_into_a_new_checksum(chunked, tmp_path):
    """Entries of the last chunk (image 4) flushed, a byte of them damaged on disk, another entry of that
    chunk put: the flush refuses, naming the chunk's images."""
    chunked.put(torch.tensor([4]), torch.tensor([0]), torch.ones(1, 3))
    chunked.flush()
    path = tmp_path / "t" / "logits.npy"
    intact = path.read_bytes()
    raw = bytearray(intact)
    raw[len(raw) - 5 * 162 * 3 * 2 + 4 * 162 * 3 * 2] ^= 0x10
    path.write_bytes(bytes(raw))
    chunked.put(torch.tensor([4]), torch.tensor([1]), torch.ones(1, 3))
    with pytest.raises(UserError) as err:
        chunked.flush()
    assert str(err.value) == _corrupt_message(tmp_path / "t", 4, 4)
    path.write_bytes(intact)  # (the store's last flush, when it is collected, then succeeds)


def _array_loader() -> DeviceLoader:
    """The device-resident loader of two random 32x32 images (labels 0, 1), flips on."""
    rng = np.random.default_rng(0)
    split = ArraySplit(rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8), np.arange(2))
    return DeviceLoader(split, 4, device="cpu", mean=(0.5,) * 3, std=(0.25,) * 3, train=True, flip=True)


def test_the_cache_key_is_the_sha256_of_its_documented_lines():
    """cache_key: SHA-256 of the format, teacher, classes, weights, data, precision and teacher precision
    lines."""
    loader = _array_loader()
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10)
    lines = [
        "rld-teacher-logits-3",
        "teacher=resnet8",
        "classes=10",
        f"weights={hash_module(model)}",
        f"data={hash_training_views(loader)}",
        "precision=float16",
        "teacher_precision=float32",
    ]
    key = cache_key(
        teacher_name="resnet8",
        teacher=model,
        num_classes=10,
        loader=loader,
        precision="float16",
        teacher_precision="float32",
    )
    assert key == hashlib.sha256("\n".join(lines).encode()).hexdigest()


class _OnGpu(torch.Tensor):
    """A tensor as a GPU holds it, simulated: numpy cannot read it; ``.to("cpu")`` gives the plain tensor."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.numpy:
            raise TypeError("can't convert cuda:0 device type tensor to numpy")
        if func is torch.Tensor.to and ("cpu" in args[1:] or kwargs.get("device") == "cpu"):
            with torch._C.DisableTorchFunctionSubclass():
                return args[0].clone()
        return super().__torch_function__(func, types, args, kwargs)


def test_the_weights_key_hashes_names_dtypes_shapes_and_bytes_wherever_the_weights_are():
    """hash_module: SHA-256 over each state-dict entry in name order (name, dtype and shape, then its bytes;
    an empty tensor adds no bytes); a teacher whose weights are on a GPU has the key of the same teacher on
    the CPU."""
    weights = {"b_w": torch.arange(6.0).reshape(2, 3), "a_n": torch.tensor(7), "c_e": torch.zeros(0, 2)}
    on_cpu, on_gpu = torch.nn.Module(), torch.nn.Module()
    for name, t in weights.items():
        on_cpu.register_buffer(name, t)
        on_gpu.register_buffer(name, t.as_subclass(_OnGpu))
    expected = hashlib.sha256()
    for name in ("a_n", "b_w", "c_e"):
        t = weights[name]
        expected.update(name.encode() + f"{t.dtype}{tuple(t.shape)}".encode() + t.numpy().tobytes())
    assert hash_module(on_cpu) == expected.hexdigest()
    assert hash_module(on_gpu) == expected.hexdigest()


def test_a_flush_takes_in_the_entries_another_process_flushed_and_checks_them_before_use(
    chunked, tmp_path, monkeypatch
):
    """Two stores on one folder (two processes): B's flush writes its own chunk only (one check of the
    chunk on disk, one new checksum), then B reads A's entries, its map renewed copy-on-write, checking A's
    chunk again before its first read there (B had checked it while empty) and no other chunk."""
    a = chunked
    b = LogitStore.open(tmp_path, "t", key="k", shape=(5, 162, 3), precision="float16", meta={})
    checks = []
    real = cache_module._crc
    monkeypatch.setattr(cache_module, "_crc", lambda values, filled: checks.append(len(filled)) or real(values, filled))
    b.get(torch.tensor([0, 4]), torch.tensor([5, 5]))  # chunks 0 and 2 checked (empty)
    from_a = torch.randn(162, 3, generator=torch.Generator().manual_seed(3))
    a.put(torch.zeros(162, dtype=torch.long), torch.arange(162), from_a)
    a.flush()
    checks.clear()
    b.put(torch.tensor([2]), torch.tensor([0]), torch.ones(1, 3))
    b.flush()
    assert checks == [2, 2]  # chunk 1: on disk before, then its new checksum
    checks.clear()
    got = b.get(torch.tensor([0, 4, 2]), torch.tensor([7, 5, 0]))
    assert checks == [2]  # chunk 0 (A's entries), once
    assert torch.equal(got, torch.stack([from_a[7].half().float(), torch.zeros(3), torch.ones(3)]))
    assert b.missing(torch.tensor([0, 0, 1]), torch.tensor([0, 161, 0])).tolist() == [2]
    assert isinstance(b._files.values, np.memmap) and b._files.values.mode == "c"


def test_a_flush_with_nothing_new_writes_nothing(chunked, tmp_path):
    """A second flush after the entries were written leaves the folder as it is."""
    chunked.put(torch.tensor([3]), torch.tensor([3]), torch.ones(1, 3))
    chunked.flush()
    before = folder_snapshot(tmp_path / "t")
    chunked.flush()
    assert folder_snapshot(tmp_path / "t") == before


def _array_forward() -> TeacherForward:
    torch.manual_seed(0)
    return TeacherForward(create_model("resnet8", num_classes=10).eval().requires_grad_(False), amp=False)


def test_a_runs_logit_cache_is_named_and_described_by_its_key(tmp_path, caplog):
    """open_teacher_cache: the folder ``<teacher>-<data>-<key[:16]>`` of the key of the run's teacher, classes,
    data, precision and teacher precision; meta.json says what it covers; one line says how full it is."""
    loader, forward = _array_loader(), _array_forward()
    over = ["train.teacher_cache=lazy", f"train.cache_dir={tmp_path}", "model.teacher=resnet8"]
    cfg = resolve("demo/rld", [*over, "model.teacher_checkpoint=/ckpt/t.pt"])
    with caplog.at_level(logging.INFO, logger="rld"):
        provider = open_teacher_cache(cfg, forward, loader, 10)
    key = cache_key(
        teacher_name="resnet8",
        teacher=forward.teacher,
        num_classes=10,
        loader=loader,
        precision="float16",
        teacher_precision="float32",
    )
    folder = tmp_path / f"resnet8-digits-{key[:16]}"
    assert provider.store.folder == folder and provider.store.key == key and provider.lazy
    assert json.loads((folder / "meta.json").read_text()) == {
        "format": "rld-teacher-logits-3",
        "teacher": "resnet8",
        "teacher_checkpoint": "/ckpt/t.pt",
        "data": "digits",
        "views": VIEW_DEFINITION,
        "teacher_precision": "float32",
        "key": key,
        "shape": [2, 162, 10],
        "precision": "float16",
        "chunk_images": (4 << 20) // (162 * 10 * 2),
    }
    assert [r.getMessage() for r in caplog.records] == [
        f"teacher-logit cache {folder}: 0 of 324 entries filled (float16, 6.33 KiB)"
    ]


def test_a_full_logit_cache_is_built_in_the_default_folder_with_progress(tmp_path, monkeypatch, caplog):
    """train.teacher_cache=full with no cache_dir: built in the XDG cache folder, progress per batch, a line
    with the entries computed and the seconds; the provider then has no teacher."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    clock = SimpleNamespace(perf_counter=_clock(10.0, 12.5).perf_counter, monotonic=lambda: 0.0)
    monkeypatch.setattr(cache_module, "time", clock)
    cfg = resolve("demo/rld", ["train.teacher_cache=full", "model.teacher=resnet8", "train.cache_precision=float32"])
    progress = []
    with caplog.at_level(logging.INFO, logger="rld"):
        provider = open_teacher_cache(cfg, _array_forward(), _array_loader(), 10, lambda *a: progress.append(a))
    (folder,) = (tmp_path / "xdg" / "rld" / "teacher-logits").iterdir()
    assert provider.store.folder == folder and provider.forward is None and not provider.lazy
    assert progress == [(64, 324), (128, 324), (192, 324), (256, 324), (320, 324), (324, 324)]
    assert [r.getMessage() for r in caplog.records] == [
        f"teacher-logit cache {folder}: 0 of 324 entries filled (float32, 12.7 KiB)",
        "teacher-logit cache built: 324 entries in 2.5s",
    ]


def test_rld_sweep_passes_epochs_on(monkeypatch, tmp_path):
    """``rld sweep --epochs E`` gives the sweep E (each run's schedule scaled); without it, None."""
    calls = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(engine_sweep, "sweep", lambda preset, overrides, **kw: calls.append(kw["epochs"]) or [])
    assert main(["sweep", "demo/kd", "--epochs", "3"]) == 0
    assert main(["sweep", "demo/kd"]) == 0
    assert calls == [3, None]


INDEX_CASES = {
    "missing": "index.npz is missing",
    "empty": "index.npz is unreadable: No data left in file",
    "not a zip": "index.npz is unreadable: File is not a zip file",
    "no message": "index.npz is unreadable: EOFError",
    "members that are not arrays": "index.npz holds no arrays",
    "a mask that is not an array": "index.npz holds no arrays",
    "checksums that are not an array": "index.npz holds no arrays",
    "mask of bytes": "index.npz does not describe a table of 5 images",
    "mask of 4 images": "index.npz does not describe a table of 5 images",
    "2 checksums": "index.npz does not describe a table of 5 images",
    "float checksums": "index.npz holds no CRC-32 checksums",
    "a negative checksum": "index.npz holds no CRC-32 checksums",
    "a checksum of 33 bits": "index.npz holds no CRC-32 checksums",
    "checksums 0 and 2^32 - 1": None,
}


@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_an_index_npz_missing_unreadable_or_of_another_table_is_refused(chunked, tmp_path, monkeypatch, case):
    """Each problem of index.npz named in the one refusal (an error without a message by its type); checksums
    from 0 to 2^32 - 1 of any integer type are checksums."""
    folder = tmp_path / "t"
    index, mask = folder / "index.npz", np.zeros((5, 162), dtype=bool)
    if case == "missing":
        index.unlink()
    elif case == "empty":
        index.write_bytes(b"")
    elif case == "not a zip":
        index.write_bytes(index.read_bytes()[:7])
    elif case == "no message":
        real_load = np.load

        def load(file, *args, **kwargs):
            if getattr(file, "name", "").endswith("index.npz"):
                raise EOFError()
            return real_load(file, *args, **kwargs)

        monkeypatch.setattr(np, "load", load)
    elif case == "members that are not arrays":  # a valid zip whose members np.load returns as bytes
        with zipfile.ZipFile(index, "w") as z:
            z.writestr("filled", b"")
            z.writestr("crc32", b"")
    elif case in ("a mask that is not an array", "checksums that are not an array"):  # the other one is
        raw = "filled" if case.startswith("a mask") else "crc32"
        np.savez(index, **{"filled": mask, "crc32": np.zeros(3, np.uint32)})
        with zipfile.ZipFile(index) as z:
            members = {name: z.read(name) for name in z.namelist()}
        with zipfile.ZipFile(index, "w") as z:
            for name, data in members.items():
                z.writestr(name if not name.startswith(raw) else raw, b"" if name.startswith(raw) else data)
    else:
        crcs = {
            "mask of bytes": np.zeros(3, np.uint32),
            "mask of 4 images": np.zeros(3, np.uint32),
            "2 checksums": np.zeros(2, np.uint32),
            "float checksums": np.zeros(3, np.float64),
            "a negative checksum": np.array([-1, 0, 0], np.int64),
            "a checksum of 33 bits": np.array([0, 2**32, 0], np.int64),
            "checksums 0 and 2^32 - 1": np.array([0, 2**32 - 1, 5], np.int64),
        }[case]
        filled = {"mask of bytes": mask.astype(np.uint8), "mask of 4 images": mask[:4]}.get(case, mask)
        np.savez(index, filled=filled, crc32=crcs)
    what = INDEX_CASES[case]
    if what is None:
        assert _open_logits(tmp_path).filled_count() == 0
        return
    with pytest.raises(UserError) as err:
        _open_logits(tmp_path)
    assert str(err.value) == _cache_message(folder, what)


def test_a_truncated_logits_npy_is_refused_when_the_cache_opens(chunked, tmp_path):
    """logits.npy seven bytes short: refused at once, with its size and the size it should have."""
    path = tmp_path / "t" / "logits.npy"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(UserError) as err:
        _open_logits(tmp_path)
    assert str(err.value) == _cache_message(tmp_path / "t", f"logits.npy is truncated: {size - 7:,} of {size:,} bytes")
