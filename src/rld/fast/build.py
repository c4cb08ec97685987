"""Building a run's teacher-logit cache up front (``rld cache``): the run's data and teacher as
``rld train`` sets them up, every usable view computed once (:mod:`rld.fast.cache`); for image folders
every sample's view of epochs 1..E (:mod:`rld.fast.store`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from rld.config import FOLDER_DATA
from rld.engine.distributed import World
from rld.engine.teacher import build_teacher_fn
from rld.engine.trainer import build_run_data, setup
from rld.errors import UserError
from rld.fast.cache import usable_views
from rld.methods import get_spec


def build_cache(
    cfg: Any,
    progress: Callable[[int, int], None] | None = None,
    *,
    epochs: int | None = None,
    verify: bool = False,
) -> dict[str, Any]:
    """Build the complete teacher-logit cache of run configuration ``cfg`` (what ``rld cache`` does).

    Returns ``{"path", "entries", "computed", "seconds", "bytes"}``. Raises UserError when the
    method needs no teacher or the data pipeline has no views. Image-folder data: the store of epochs
    1..``epochs`` (default ``train.epochs``; :func:`build_store`); ``verify`` checks every stored epoch.
    """
    if not get_spec(cfg.method.name).needs_teacher:
        raise UserError(f"method {cfg.method.name!r} trains without a teacher: there are no teacher logits to cache")
    if cfg.data.name.lower() in FOLDER_DATA:
        return build_store(cfg, epochs or cfg.train.epochs, progress, verify=verify)
    if epochs is not None or verify:
        flag = "--epochs" if epochs is not None else "--verify"
        raise UserError(
            f"{flag} applies to image-folder data; the teacher-logit cache of {cfg.data.name} holds every view of "
            "every image, whatever the epoch"
        )
    cfg = replace(cfg, train=replace(cfg.train, teacher_cache="lazy"))  # opened lazily, built below with progress
    world = World()
    device = setup(cfg, world)
    data = build_run_data(cfg, device, world)
    provider = build_teacher_fn(cfg, data.num_classes, device, data.train)
    t0 = time.perf_counter()
    computed = provider.build(progress=progress)
    seconds = time.perf_counter() - t0
    provider.close()
    views = usable_views(provider.loader)
    return {
        "path": str(provider.store.folder),
        "entries": provider.loader.n * int(views.numel()),
        "computed": computed,
        "seconds": seconds,
        "bytes": provider.store.nbytes,
    }


def build_store(
    cfg: Any, epochs: int, progress: Callable[[int, int], None] | None = None, *, verify: bool = False
) -> dict[str, Any]:
    """Fill the store of teacher outputs of image-folder run ``cfg`` for epochs 1..``epochs`` (the device
    pipeline's views of the run's seed); ``verify``: also check the records of every stored epoch.

    Returns ``{"path", "epochs", "samples", "computed" (epochs written now), "seconds", "bytes" (per epoch),
    "form"}``."""
    from rld.fast.store import fill_store, open_run_store

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise UserError(f"--epochs must be a positive integer, got {epochs!r}")
    if cfg.data.pipeline == "pil":
        raise UserError(
            "the teacher-output store holds the views of the device pipeline; data.pipeline=pil draws other crops: "
            "drop it (rld cache renders with data.pipeline=device) and train with data.pipeline=device"
        )
    cfg = replace(cfg, data=replace(cfg.data, pipeline="device"), train=replace(cfg.train, teacher_cache="off"))
    world = World()
    device = setup(cfg, world)
    data = build_run_data(cfg, device, world)
    forward = build_teacher_fn(cfg, data.num_classes, device)  # teacher_cache off: the plain forward
    store, _ = open_run_store(cfg, forward.teacher, forward.precision, data.train, data.num_classes, create=True)
    wanted = range(1, epochs + 1)
    present = [e for e in wanted if e not in store.missing(wanted)]
    store.check_files(present)
    if verify:
        for epoch in present:
            store.verify(epoch)
    t0 = time.perf_counter()
    written = fill_store(store, data.train, forward, wanted, progress=progress)
    return {
        "path": str(store.folder),
        "epochs": epochs,
        "samples": store.n,
        "computed": len(written),
        "seconds": time.perf_counter() - t0,
        "bytes": store.epoch_bytes,
        "form": store.form if store.form != "topk" else f"top-{min(store.k, store.num_classes)}",
        "verified": len(present) if verify else 0,
    }
