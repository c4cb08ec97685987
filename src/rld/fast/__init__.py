"""The fast paths: the exact teacher-logit cache, lockstep sweeps and the throughput benchmark.

* :mod:`rld.fast.cache` — the eval-mode teacher's logits for every (image, augmentation view) of the
  device-resident loader, stored once (float16 by default) and looked up in the training step
  instead of a teacher forward (``train.teacher_cache=lazy|full``, ``rld cache``).
* :mod:`rld.fast.store` — for image folders, the teacher's outputs for every (epoch, sample) view of a
  seed, filled once by ``rld cache --epochs E`` and read by every student run
  (``train.teacher_cache=full``), in a storage form of :mod:`rld.fast.forms`.
* :mod:`rld.fast.key` — what a cache or store is keyed by, so that a stale one is never used.
* :mod:`rld.engine.sweep` — several students trained in one process on one data stream
  (``rld sweep``).
* :mod:`rld.fast.bench` — ms/step of the conventional, default and cached paths (``rld bench``).

The whole-step CUDA graph is :mod:`rld.engine.static`; ``benchmarks/gpu_check.py`` checks it on a GPU.
"""

from rld._lazy import lazy_exports

_EXPORTS = {
    "CachedTeacher": "rld.fast.cache",
    "LogitStore": "rld.fast.cache",
    "default_cache_dir": "rld.fast.cache",
    "open_teacher_cache": "rld.fast.cache",
    "cache_key": "rld.fast.key",
    "OutputStore": "rld.fast.store",
    "StoredTeacher": "rld.fast.store",
    "open_teacher_store": "rld.fast.store",
    "store_key": "rld.fast.key",
}


__getattr__ = lazy_exports(__name__, globals(), _EXPORTS)

__all__ = [
    "CachedTeacher",
    "LogitStore",
    "OutputStore",
    "StoredTeacher",
    "cache_key",
    "default_cache_dir",
    "open_teacher_cache",
    "open_teacher_store",
    "store_key",
]
