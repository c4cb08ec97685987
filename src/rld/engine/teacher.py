"""The teacher provider: what every method reads from the frozen teacher, computed once per batch.

:func:`build_teacher_fn` makes a run's provider — a forward of the eval-mode teacher
(:class:`TeacherForward`, float32 logits) or lookups in the teacher-logit cache
(:mod:`rld.fast.cache`) or, for image folders, the store of per-epoch outputs (:mod:`rld.fast.store`)
— and :func:`teacher_outputs` gives every data stream's methods what they declare (logits, features,
both views), for one stream or several.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import nn

from rld.config import FOLDER_DATA, TEACHER_PRECISIONS, RunConfig
from rld.data.types import concat_batches
from rld.errors import UserError
from rld.fast.cache import open_teacher_cache
from rld.models import create_model, load_checkpoint
from rld.models.features import Features
from rld.models.sources import resolve_checkpoint
from rld.models.weights import create_pretrained


def _build_teacher(cfg: RunConfig, num_classes: int, device: torch.device) -> nn.Module:
    m = cfg.model
    if not m.teacher:
        raise UserError(f"method {cfg.method.name!r} needs a teacher: set model.teacher (or use a preset)")
    if m.teacher_weights:
        teacher = create_pretrained(m.teacher, m.teacher_weights, num_classes, m.dataset, replace_head=False)
        teacher.checkpoint_metadata = {}
        return teacher.eval().requires_grad_(False).to(device)
    if not m.teacher_checkpoint:
        raise UserError(
            f"method {cfg.method.name!r} needs a trained {m.teacher} teacher: pass --teacher CKPT "
            f"(train one with `rld train` and a vanilla preset, then use its checkpoints/last.pt)"
        )
    teacher = create_model(m.teacher, num_classes=num_classes, dataset=m.dataset)
    teacher.checkpoint_metadata = load_checkpoint(teacher, resolve_checkpoint(m.teacher_checkpoint))
    teacher.eval().requires_grad_(False)
    return teacher.to(device)


class TeacherForward:
    """Teacher logits of a batch from the frozen, eval-mode teacher, always float32.

    The logits are never bf16-rounded: bf16 spacing is 0.0625 for |z| in [8, 16), which creates
    ties that change RLD's mask M_ge, the teacher argmax of SCD, LA's swap and LR's right/wrong
    split. With ``amp`` on CUDA the teacher's body runs under bf16 autocast and its final linear
    layer in float32 on the float32-cast pooled feature; on the CPU the whole teacher runs in
    float32, which costs less there (``benchmarks/teacher_precision.py``: on a CPU without bf16
    units the bf16 body is several times slower). ``bf16_body`` forces either way; ``precision``
    names the computation (it is part of the teacher-logit cache key).
    """

    def __init__(self, teacher: nn.Module, amp: bool, *, bf16_body: bool | None = None):
        if bf16_body is None:
            device_type = next(iter(teacher.parameters())).device.type
            bf16_body = bool(amp) and device_type == "cuda"
        self.teacher, self.amp, self.bf16_body = teacher, bool(amp), bool(bf16_body)
        self.precision = TEACHER_PRECISIONS[self.bf16_body]

    @torch.no_grad()
    def __call__(self, batch, features: bool = False, train: bool = False) -> torch.Tensor | Features:
        """The teacher's float32 logits ``(B, C)``; with ``features`` its :class:`Features` of the
        same pass (stage features in the body's precision, logits float32 as above). ``train``: the
        pass runs in training mode (BatchNorm on the batch's statistics, updating the running ones;
        a method's :attr:`~rld.methods.base.Method.teacher_training`); the teacher is back in eval
        mode after it."""
        if not train:
            return self._forward(batch, features)
        self.teacher.train()
        try:
            return self._forward(batch, features)
        finally:
            self.teacher.eval()

    def _forward(self, batch, features: bool) -> torch.Tensor | Features:
        x = batch.images
        if not self.bf16_body:
            with torch.autocast(x.device.type, enabled=False):
                if not features:
                    return self.teacher(x).float()
                out = self.teacher.forward_features(x)
                return dataclasses.replace(out, logits=out.logits.float())
        # no autocast weight cache: it cannot live across CUDA-graph replays (rld.engine.static)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False):
            out = self.teacher.forward_features(x)
        logits = self.teacher.get_classifier()(out.pooled.float())
        return dataclasses.replace(out, logits=logits) if features else logits


class TeacherViews(NamedTuple):
    """The teacher's outputs on both views of a batch (for methods that train on the strong view)."""

    weak: torch.Tensor | Features
    strong: torch.Tensor | Features


def _one_stream(teacher_fn, batch, methods) -> torch.Tensor | Features | TeacherViews | None:
    """What ``methods`` (stepped on the same batch) read from the teacher, computed once: None when
    none needs the teacher, its logits when they read only those, else its :class:`Features`; and
    when one of them trains on the strong view (``batch.strong``), those of both views as
    :class:`TeacherViews`."""
    readers = [m for m in methods if m.needs_teacher]
    if teacher_fn is None or not readers:
        return None
    specs = [m.spec for m in readers]
    kw = {"features": True} if any(spec.teacher_features for spec in specs) else {}
    modes = {m.teacher_training for m in readers}
    if len(modes) > 1:  # rld.engine.sweep.stream_signature keeps such methods apart
        raise ValueError("methods stepped on one batch read the teacher in different modes (train and eval)")
    if modes == {True}:
        kw["train"] = True
    weak = teacher_fn(batch, **kw)
    if batch.strong is None or not any(spec.strong_view for spec in specs):
        return weak
    strong = batch._replace(images=batch.strong, views=None, strong=None)
    return TeacherViews(weak, teacher_fn(strong, **kw))


def teacher_outputs(teacher_fn, batches, methods) -> list:
    """What the methods read from the teacher, per data stream: ``batches[s]`` the stream's batch,
    ``methods[s]`` the methods stepped on it. Per stream: None when none needs the teacher, its
    logits when they read only those, else its :class:`Features`; :class:`TeacherViews` of both views
    when one trains on the strong view (``batch.strong``). When every method reads only the teacher's
    logits, the teacher runs once on the batches together (one forward, or one cache lookup, of all
    their samples), split back per stream. ``teacher_fn``: the run's provider (:func:`build_teacher_fn`)."""
    readers = [m for ms in methods for m in ms if m.needs_teacher]
    specs = [m.spec for m in readers]
    separate = any(s.teacher_features or s.strong_view for s in specs) or any(m.teacher_training for m in readers)
    if len(batches) == 1 or teacher_fn is None or not specs or separate:
        return [_one_stream(teacher_fn, b, ms) for b, ms in zip(batches, methods)]
    return list(teacher_fn(concat_batches(batches)).split([len(b.targets) for b in batches]))


def build_teacher_fn(cfg: RunConfig, num_classes: int, device: torch.device, train_loader=None):
    """The teacher-logit provider of a run: ``provider(batch) -> (B, C)`` float32 teacher logits.

    A forward pass of the frozen teacher, or, with ``train.teacher_cache`` lazy/full, lookups in the
    teacher-logit cache of ``train_loader`` (:mod:`rld.fast.cache`; device-resident loader only), or for
    image folders (``full``) in the store of per-(epoch, sample) outputs that ``rld cache`` filled
    (:mod:`rld.fast.store`; device pipeline only): then the teacher is loaded for its key, never run.
    """
    teacher = _build_teacher(cfg, num_classes, device)
    if cfg.train.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    forward = TeacherForward(teacher, cfg.train.amp)
    if cfg.train.teacher_cache == "off":
        return forward
    if cfg.data.name.lower() in FOLDER_DATA:  # outputs per (epoch, sample), filled by `rld cache`
        from rld.fast.store import open_teacher_store

        return open_teacher_store(cfg, forward, train_loader, num_classes)
    return open_teacher_cache(cfg, forward, train_loader, num_classes)
