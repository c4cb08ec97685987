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
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from rld.data.device_loader import DeviceLoader
from rld.data.views import CENTER_VIEW, NUM_VIEWS, OFFSETS, PAD

CACHE_FORMAT = "rld-teacher-logits-3"
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
