"""What every method is made of: its typed configuration, its spec, its module.

A method is a :class:`MethodSpec` in the registry (:mod:`rld.methods`) plus a :class:`Method`
module. The spec declares what the method reads (``teacher_needs``: a subset of
:data:`TEACHER_OUTPUTS`; ``student_features``: whether it reads more of the student than its
logits), its typed parameters (a :class:`MethodConfig` subclass, one field per ``method.*`` key,
with the published defaults) and how logit standardization changes them. The engine supplies
exactly what the spec asks for and never branches on a method's name:

* a method that reads only the teacher's logits gets them from a teacher forward or from the
  teacher-logit cache, and its student runs ``model(x)``;
* a method that reads features gets :class:`~rld.models.features.Features` of one forward pass of
  the student and of the teacher (``forward_features``);
* a method whose ``views`` include ``"strong"`` (MLKD, CRLD) trains on a strongly augmented view of every
  image too: the loaders yield it (``Batch.strong``, :mod:`rld.data.strong`), the student and the
  teacher run on it as well, and the method gets both as a :class:`StrongView` (its ``strong``
  keyword). The teacher-logit cache cannot hold random views, so such a method runs without it.

The module owns its trainable parts (regressors, connectors, embeddings, CTKD's temperature) and
buffers (CRD's memory); the engine trains them with the student, as one module under DDP, and
saves and restores them with the run. :meth:`Method.predict` is what the student predicts with
(SimKD reuses the teacher's classifier); evaluation, ``rld eval``, export and the figures call it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rld.losses import DistillationLoss
from rld.method_config import MethodConfig
from rld.models.features import Features

TEACHER_OUTPUTS = ("logits", "feats", "preact_feats", "pooled", "classifier")
"""What a method may read from the teacher: its logits, its stage features (``Features.feats``),
their pre-activation versions, the pooled feature, and its classifier (the module itself, read
once when the method is built)."""


BASE_KEYS = tuple(f.name for f in dataclasses.fields(MethodConfig))
LS_KEYS = ("logit_standardization", "ls_temperature", "ls_weight")


@dataclass(frozen=True)
class LSRule:
    """What logit standardization does to a method's hyper-parameters, as the published training
    script of Sun et al. 2024 (``train.py`` of sunshangquan/logit-standardization-KD) sets them, or,
    for a method whose own published code has a standardized variant (ABKD's AB-LSD), as that code
    sets them."""

    temperatures: tuple[str, ...] = ()  # set to the base temperature b
    set_weights: tuple[str, ...] = ()  # set to the weight w
    scaled_weights: tuple[str, ...] = ()  # multiplied by the weight w
    set_values: tuple[tuple[str, float], ...] = ()  # (key, value): set to a published value (ABKD's AB-LSD)


@dataclass
class MethodContext:
    """What building a method may look at: the student and teacher models (a feature method reads
    their feature shapes, OFD the teacher's BatchNorm, SimKD the teacher's classifier), the input
    shape ``(3, H, W)``, and the training set (its size and labels, for CRD's memory and negatives).

    At evaluation time the teacher is a freshly built model of the teacher's architecture: what a
    method copied from the real teacher is restored from the run's checkpoint.
    """

    student: nn.Module
    teacher: nn.Module | None
    num_classes: int
    input_shape: tuple[int, ...] = (3, 32, 32)
    num_samples: int = 0
    train_targets: Tensor | None = None
    seed: int = 0


VIEWS = ("weak", "strong")
"""The views of a batch a method may train on: the protocol's augmentation (every method) and a
strong one (RandAugment and Cutout, :mod:`rld.data.strong`)."""


@dataclass
class StrongView:
    """What the student and the teacher output on the strongly augmented view of the batch:
    :class:`~rld.models.features.Features` of the same kind as those of the weak view."""

    student: Features
    teacher: Features | None


class Method(nn.Module):
    """A configured method: ``method(student, teacher, target, epoch, index) → (total, parts)``.

    ``student`` and ``teacher`` are :class:`~rld.models.features.Features` (the teacher's is None
    for methods without one); ``target`` (B,) the labels; ``epoch`` counts from 1 and may be a 0-d
    tensor (warm-ups); ``index`` (B,) the samples' positions in the training set, or None where the
    loader does not track them. A method whose spec's ``views`` include ``"strong"`` is also called
    with ``strong=``:class:`StrongView` (the others never are). ``parts`` are the named, weighted
    terms that sum to ``total`` (plus, for display, detached values such as CTKD's temperature).
    """

    spec: MethodSpec
    teacher_training: bool = False
    """Whether the teacher runs in training mode (BatchNorm on the batch's statistics) for this
    method's steps, as OFD's published code does; the teacher is frozen either way."""

    def forward(
        self, student: Features, teacher: Features | None, target: Tensor, epoch: float | Tensor, index: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def predict(self, student: Features) -> Features:
        """What the student predicts with: ``student`` itself, unless the method classifies otherwise
        (then ``logits`` are its prediction and ``pooled`` the input of the classifier it uses).
        Only methods whose spec sets ``own_prediction`` override it."""
        return student

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def needs_teacher(self) -> bool:
        return self.spec.needs_teacher

    @property
    def teacher_outputs(self) -> tuple[str, ...]:
        return self.spec.teacher_needs

    def extra_parameters(self) -> int:
        """Trainable parameters the method adds to the student (Figure 6's bubble size)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class LogitMethod(Method):
    """A method made of one logit loss module of :mod:`rld.losses` (the ``(total, parts)`` family)."""

    def __init__(self, spec: MethodSpec, loss: DistillationLoss):
        super().__init__()
        self.spec = spec
        self.loss = loss

    def forward(self, student, teacher, target, epoch, index=None):
        return self.loss(student.logits, teacher.logits if teacher is not None else None, target, epoch)


class TwoViewLogitMethod(Method):
    """A method made of one logit loss module that reads both views (MLKD, CRLD): called with
    ``strong=``:class:`StrongView`, its loss gets the weak view's logits positionally and the strong
    view's as ``student_strong_logits`` and ``teacher_strong_logits``."""

    def __init__(self, spec: MethodSpec, loss: DistillationLoss):
        super().__init__()
        self.spec, self.loss = spec, loss

    def forward(self, student, teacher, target, epoch, index=None, strong: StrongView | None = None):
        if strong is None or strong.teacher is None:
            raise ValueError(
                f"method {self.name!r} trains on the strong view too: call it with strong=StrongView(student, teacher)"
            )
        return self.loss(
            student.logits,
            teacher.logits,
            target,
            epoch,
            student_strong_logits=strong.student.logits,
            teacher_strong_logits=strong.teacher.logits,
        )


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    ``build(params, ctx)`` makes its :class:`Method` from its parameters (the fields of ``config``
    but ``name`` and the logit-standardization keys, plus ``logit_standardization``) and a
    :class:`MethodContext` (None for methods that read logits only). ``check(params)`` raises
    ValueError for a bad value without building anything. :func:`rld.methods.build_method` runs the
    check and supplies the context before ``build`` is called, so a build only constructs.
    """

    name: str
    config: type[MethodConfig]
    build: Callable[[dict[str, Any], MethodContext | None], Method]
    check: Callable[[dict[str, Any]], None]
    summary: str = ""
    teacher_needs: tuple[str, ...] = ("logits",)
    student_features: bool = False  # reads more of the student than its logits
    ls: LSRule | None = None  # None: logit standardization is not defined for the method (refused)
    uses_rng: bool = False  # draws random numbers in its step (CRD's negatives)
    own_prediction: bool = False  # predicts with more than the student (Method.predict; SimKD)
    views: tuple[str, ...] = ("weak",)  # the views of a batch it trains on (VIEWS; MLKD and CRLD add "strong")

    @property
    def strong_view(self) -> bool:
        """Whether a step also runs the student and teacher on the strongly augmented view."""
        return "strong" in self.views

    @property
    def needs_teacher(self) -> bool:
        return bool(self.teacher_needs)

    @property
    def teacher_features(self) -> bool:
        """Whether a step reads the teacher's :class:`Features` (more than its logits): no logit cache."""
        return any(need in ("feats", "preact_feats", "pooled") for need in self.teacher_needs)

    @property
    def reads_features(self) -> bool:
        """Whether the method is built from the models (their feature shapes, the teacher's classifier)."""
        return self.student_features or any(need != "logits" for need in self.teacher_needs)

    @property
    def params(self) -> dict[str, Any]:
        """The method's parameters and their defaults."""
        return {
            f.name: (f.default_factory() if f.default is dataclasses.MISSING else f.default)  # type: ignore[misc]
            for f in dataclasses.fields(self.config)
            if f.name not in BASE_KEYS
        }


def logit_spec(
    name: str,
    config: type[MethodConfig],
    loss: type[DistillationLoss],
    *,
    summary: str,
    ls: LSRule | None = None,
    needs_teacher: bool = True,
) -> MethodSpec:
    """The spec of a method made of one logit loss module: building it is building the loss."""

    def build(params: dict[str, Any], ctx: MethodContext | None = None) -> Method:
        return LogitMethod(spec, loss(**params))

    def check(params: dict[str, Any]) -> None:
        loss(**params)

    spec = MethodSpec(
        name,
        config,
        build,
        check,
        summary=summary,
        teacher_needs=("logits",) if needs_teacher else (),
        ls=ls,
    )
    return spec


def logits_only(logits: Tensor) -> Features:
    """Features of a pass that produced only logits (a logit method's student, a cached teacher)."""
    return Features(logits=logits, feats=[], preact_feats=[], pooled=None)


@torch.no_grad()
def probe_features(model: nn.Module, input_shape: tuple[int, ...], batch: int = 2) -> Features:
    """Features of ``model`` on a zero batch of ``input_shape``, in eval mode (no BatchNorm statistic
    changes) and without gradients: for the shapes of stage features when a method is built."""
    was_training = model.training
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    model.eval()
    try:
        with torch.autocast(device.type, enabled=False):
            return model.forward_features(torch.zeros(batch, *input_shape, device=device))
    finally:
        model.train(was_training)
