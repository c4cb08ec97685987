"""Building a run's teacher-logit cache up front (``rld cache``): the run's data and teacher as
``rld train`` sets them up, every usable view computed once (:mod:`rld.fast.cache`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from rld.engine.distributed import World
from rld.engine.teacher import build_teacher_fn
from rld.engine.trainer import build_run_data, setup
from rld.errors import UserError
from rld.fast.cache import usable_views
from rld.methods import get_spec


def build_cache(cfg: Any, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Build the complete teacher-logit cache of run configuration ``cfg`` (what ``rld cache`` does).

    Returns ``{"path", "entries", "computed", "seconds", "bytes"}``. Raises UserError when the
    method needs no teacher or the data pipeline has no views.
    """
    if not get_spec(cfg.method.name).needs_teacher:
        raise UserError(f"method {cfg.method.name!r} trains without a teacher: there are no teacher logits to cache")
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
