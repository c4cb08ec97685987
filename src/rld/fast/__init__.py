"""The fast paths: the exact teacher-logit cache, lockstep sweeps and the throughput benchmark.

* :mod:`rld.fast.cache` — the eval-mode teacher's logits for every (image, augmentation view) of the
  device-resident loader, stored once (float16 by default) and looked up in the training step
  instead of a teacher forward (``train.teacher_cache=lazy|full``, ``rld cache``).
* :mod:`rld.fast.key` — what a cache is keyed by, so that a stale cache is never used.
* :mod:`rld.engine.sweep` — several students trained in one process on one data stream
  (``rld sweep``).
* :mod:`rld.fast.bench` — ms/step of the conventional, default and cached paths (``rld bench``).

Not here yet: the whole-step CUDA graph (the step of a sweep group, :func:`rld.engine.sweep.group_step`,
is the unit meant to be captured; it needs a GPU to build and measure).
"""

_EXPORTS = {
    "CachedTeacher": "rld.fast.cache",
    "LogitStore": "rld.fast.cache",
    "default_cache_dir": "rld.fast.cache",
    "open_teacher_cache": "rld.fast.cache",
    "cache_key": "rld.fast.key",
}


def __getattr__(name: str):
    """Import on first use (PEP 562): ``rld --help`` must not pay for torch."""
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CachedTeacher", "LogitStore", "cache_key", "default_cache_dir", "open_teacher_cache"]
