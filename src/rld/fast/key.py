"""The key of a teacher-logit cache: a SHA-256 of everything the cached logits are a function of.

A cached entry is ``teacher(render(image i, view v))`` of the frozen, eval-mode teacher, so the key
covers

* the teacher: its architecture name, number of classes and every tensor of its state dict
  (weights *and* BatchNorm running statistics, which an eval-mode forward uses);
* the data: the normalised float32 training images at the centre view (the exact tensors the teacher
  sees, so pixel values, image order and the normalisation mean/std all count);
* the view definition: the view encoding and padding constants, and the rendering of every view of
  the first image (so a change in the crop/flip implementation counts too);
* the storage precision and how the teacher computed its logits (float32, or a bf16-autocast body
  with a float32 classifier: :data:`rld.config.TEACHER_PRECISIONS`).

Labels are not part of the key: teacher logits do not depend on them. Things that change the logits
only by floating-point rounding (device, memory format, batch composition) are not part of it either.

The store of image-folder outputs (:mod:`rld.fast.store`) is keyed by :func:`store_key`: a record is
``teacher(view of sample i in epoch e of seed s)``, so its key covers the teacher as above; the data by
its training file list — every file's path relative to the files' common folder, its size, its
modification time (ns) and its label (the top-k form keeps the true class's logit), in index order
(:func:`hash_file_list`) — not by the images' bytes: hashing 1.28 M files (about 140 GB) would take
longer than many epochs, while a ``stat`` per file takes seconds (longer on network file systems); an
image rewritten in place with its size and modification time kept is not noticed; the view definition
(:mod:`rld.data.crop_views`' version and constants, the image size, the resize and normalisation, the
decoder and the device type that decode and resize, and the pixels of one rendered view, so a change in
the implementation counts too); the seed; how the teacher computed its logits; and the storage form.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rld.data import crop_views
from rld.data.device_loader import DeviceLoader
from rld.data.views import CENTER_VIEW, NUM_VIEWS, OFFSETS, PAD

CACHE_FORMAT = "rld-teacher-logits-3"
STORE_FORMAT = "rld-teacher-outputs-1"
VIEW_DEFINITION = f"view=(dy*{OFFSETS}+dx)*2+flip; pad={PAD} zeros; crop HxW at (dy,dx); flip=horizontal"
HASH_CHUNK = 1024
"""Images rendered per chunk while hashing the training data."""


def _update_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())


def hash_module(model: nn.Module) -> str:
    """SHA-256 (hex) over the names, dtypes, shapes and values of ``model.state_dict()``."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        _update_tensor(h, tensor)
    return h.hexdigest()


@torch.no_grad()
def hash_training_views(loader: DeviceLoader) -> str:
    """SHA-256 (hex) of the centre views of all ``loader.n`` images and every view of image 0."""
    h = hashlib.sha256()
    h.update(f"{VIEW_DEFINITION}; views={NUM_VIEWS}; n={loader.n}; hw={loader.height}x{loader.width}".encode())
    device = loader.device
    for start in range(0, loader.n, HASH_CHUNK):
        idx = torch.arange(start, min(start + HASH_CHUNK, loader.n), device=device)
        _update_tensor(h, loader.render_views(idx, torch.full_like(idx, CENTER_VIEW)))
    views = torch.arange(NUM_VIEWS, device=device)
    _update_tensor(h, loader.render_views(torch.zeros_like(views), views))
    return h.hexdigest()


def cache_key(
    *,
    teacher_name: str,
    teacher: nn.Module,
    num_classes: int,
    loader: DeviceLoader,
    precision: str,
    teacher_precision: str,
) -> str:
    """The cache key (64 hex digits); equal keys mean interchangeable cached logits."""
    parts = [
        CACHE_FORMAT,
        f"teacher={teacher_name}",
        f"classes={num_classes}",
        f"weights={hash_module(teacher)}",
        f"data={hash_training_views(loader)}",
        f"precision={precision}",
        f"teacher_precision={teacher_precision}",
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def hash_file_list(files: Sequence[str], labels: Sequence[int]) -> str:
    """SHA-256 (hex) of a training file list in index order: each file's path relative to the files'
    common folder, its size and modification time (ns, from ``stat``) and its label. UserError when a
    file cannot be looked at."""
    from rld.errors import UserError

    paths = [f if os.path.isabs(f) else os.path.abspath(f) for f in map(str, files)]
    root = os.path.dirname(os.path.commonprefix([min(paths), max(paths)]) + "x") if paths else ""
    try:
        stats = _stat_all(paths)
    except OSError as err:
        raise UserError(f"cannot read image {err.filename} ({err.strerror or err})") from None
    h = hashlib.sha256()
    h.update(f"files={len(paths)}\n".encode())
    cut = len(root.rstrip(os.sep)) + 1
    for path, st, label in zip(paths, stats, labels):
        h.update(f"{path[cut:]}\0{st.st_size}\0{st.st_mtime_ns}\0{int(label)}\n".encode())
    return h.hexdigest()


def _stat_all(paths: list[str], per_thread: int = 8192) -> list[os.stat_result]:
    """``os.stat`` of every path, by up to 16 threads (a network file system answers them in parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = [paths[i : i + per_thread] for i in range(0, len(paths), per_thread)]
    if len(chunks) <= 1:
        return [os.stat(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(16, len(chunks))) as pool:
        return [st for part in pool.map(lambda chunk: [os.stat(p) for p in chunk], chunks) for st in part]


def folder_view_definition(loader: Any) -> str:
    """The training views of a :class:`~rld.data.device_folder.DeviceFolderLoader` in words: the crop
    rule's version and constants, the size, the resize and normalisation, the decoder and the device type."""
    return (
        f"crop_views v{crop_views.VERSION}: RandomResizedCrop scale={crop_views.SCALE} ratio={crop_views.RATIO} "
        f"attempts={crop_views.ATTEMPTS} draws={crop_views.DRAWS} stream={crop_views.TRAIN_STREAM}, flip p=0.5; "
        f"size={loader.image_size}; resize=torchvision bilinear antialias "
        f"({'uint8 kernel' if loader.device.type == 'cpu' else 'float32, rounded'}); "
        f"normalize mean={loader.mean} std={loader.std}; decoder={loader.decoder.name}@{loader.device.type}"
    )


@torch.no_grad()
def hash_rendered_view(loader: Any, epoch: int = 1) -> str:
    """SHA-256 (hex) of the training view of sample 0 in ``epoch`` as the loader renders it (an image
    file is read and decoded): a change of decoding, cropping or resizing changes it."""
    h = hashlib.sha256()
    if loader.n:
        _update_tensor(h, loader.views_of([0], epoch).images)
    return h.hexdigest()


def store_key(
    *,
    teacher_name: str,
    teacher: nn.Module,
    num_classes: int,
    loader: Any,
    teacher_precision: str,
    form: str,
    k: int | None,
) -> tuple[str, dict[str, Any]]:
    """The key (64 hex digits) of a store of per-(epoch, sample) teacher outputs of the image-folder
    ``loader`` (a DeviceFolderLoader: its files, labels, seed and views), and what it covers in words
    (for the store's meta.json). Equal keys mean interchangeable records."""
    covers = {
        "format": STORE_FORMAT,
        "teacher": teacher_name,
        "classes": num_classes,
        "weights": hash_module(teacher),
        "samples": loader.n,
        "files": hash_file_list(loader.files, loader.labels.tolist()),
        "views": folder_view_definition(loader),
        "rendered": hash_rendered_view(loader),
        "seed": loader.seed,
        "teacher_precision": teacher_precision,
        "form": form,
        "k": k if form == "topk" else None,
    }
    text = "\n".join(f"{name}={value}" for name, value in covers.items())
    return hashlib.sha256(text.encode()).hexdigest(), covers
