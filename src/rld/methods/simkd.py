"""SimKD (Chen et al. 2022): align the student's last feature map to the teacher's with a projector,
and classify it with the teacher's own classifier.

    L = ce_weight·CE(z_s, y) + feat_weight·MSE(P(f_s), f_t)
    prediction = W_t · GAP(P(f_s)) + b_t

``f_s`` is the student's last stage feature (``Features.feats[-1]``), adaptive-average-pooled to
the teacher's spatial size when it is larger; ``f_t`` the teacher's final feature map, the input of
its classifier before pooling (``Features.pre_pool``: ``feats[-1]`` for post-activation networks,
the ReLU of the final BatchNorm for pre-activation WRN), pooled to the student's size when it is
larger (:func:`~rld.losses.simkd_loss`). ``P`` is the projector of DefangChen/SimKD
``models/util.py`` (class ``SimKD``), channels s_n → t_n/factor → t_n/factor → t_n::

    conv1×1 → BN → ReLU → conv3×3 (groups 1; the depthwise variant is commented out there)
    → BN → ReLU → conv1×1 → BN → ReLU              (every convolution without bias)

``(W_t, b_t)`` is a frozen copy of the teacher's classifier, kept as buffers of the method: it is
saved with the run, so the run predicts without the teacher's checkpoint, and it is neither
trained nor counted among the method's parameters. The student's own classifier is not used for
prediction.

Published setting (DefangChen/SimKD ``scripts/run_distill.sh`` and ``README.md``, CIFAR-100 and
ImageNet alike: ``--distill simkd -c 0 -d 0 -b 1``; ``-f/--factor`` default 2 in
``train_student.py``): no CE, no KD, feature weight 1, factor 2. The CE term, when switched on,
reads the student's own logits, as ``helper/loops.py`` computes ``loss_cls`` before the
prediction replaces them; the published KD term (``-d``) is 0 and is not offered. Without the CE
term nothing trains the student's own classifier: building the method freezes it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rld.losses import simkd_loss
from rld.methods._stages import check_int, check_weights
from rld.methods.base import Method, MethodConfig, MethodContext, MethodSpec, probe_features
from rld.models.features import Features


@dataclass
class SimKDConfig(MethodConfig):
    name: str = "simkd"
    ce_weight: float = 0.0  # -c 0 (scripts/run_distill.sh)
    feat_weight: float = field(
        default=1.0,  # -b 1
        metadata={"help": "weight of the MSE between the projected student feature and the teacher's"},
    )
    factor: int = field(
        default=2,  # -f/--factor, train_student.py
        metadata={"help": "projector bottleneck: t_n/factor middle channels"},
    )


def _check(params: dict[str, Any]) -> None:
    check_weights(params, "ce_weight", "feat_weight")
    check_int(params, "factor", 1)


def projector(s_n: int, t_n: int, factor: int = 2) -> nn.Sequential:
    """SimKD's projector (models/util.py, SimKD.transfer): (B, s_n, H, W) → (B, t_n, H, W)."""
    mid = t_n // factor
    return nn.Sequential(
        nn.Conv2d(s_n, mid, kernel_size=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(),
        nn.Conv2d(mid, mid, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(),
        nn.Conv2d(mid, t_n, kernel_size=1, bias=False),
        nn.BatchNorm2d(t_n),
        nn.ReLU(),
    )


def _last_map(features: Features, model: nn.Module, which: str) -> Tensor:
    if not features.feats:
        name = getattr(model, "model_name", "") or type(model).__name__
        raise ValueError(
            f"SimKD reads the {which}'s stage features, which model {name!r} does not provide (torchvision: and "
            "timm: models give logits and the pooled feature only); use a model of the rld zoo"
        )
    return features.feats[-1]


def _channels_last(model: nn.Module) -> bool:
    """Whether ``model``'s convolutions hold channels-last weights (then so do its feature maps)."""
    for p in model.parameters():
        if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


class SimKD(Method):
    """The projector, the teacher classifier's frozen copy and the loss weights."""

    def __init__(self, spec: MethodSpec, params: dict[str, Any], ctx: MethodContext):
        super().__init__()
        self.spec = spec
        self.ce_weight = float(params["ce_weight"])
        self.feat_weight = float(params["feat_weight"])
        student = probe_features(ctx.student, ctx.input_shape)
        teacher = probe_features(ctx.teacher, ctx.input_shape)
        f_s = _last_map(student, ctx.student, "student")
        _last_map(teacher, ctx.teacher, "teacher")
        f_t = teacher.pre_pool
        classifier = ctx.teacher.get_classifier()
        if f_t is None or f_t.shape[1] != classifier.in_features:
            raise ValueError(
                f"the teacher's classifier reads {classifier.in_features} features, but its final feature map has "
                f"{None if f_t is None else f_t.shape[1]} channels: SimKD cannot reuse it"
            )
        factor = int(params["factor"])
        t_n = f_t.shape[1]
        if t_n // factor < 1:
            raise ValueError(f"factor {factor} leaves no middle channels for a teacher feature of {t_n} channels")
        # the student's map is pooled to the teacher's size when larger (SimKD.forward, models/util.py,
        # compares heights and pools to a square; here each side, the same for square maps)
        (hs, ws), (ht, wt) = f_s.shape[-2:], f_t.shape[-2:]
        self.student_size = (min(hs, ht), min(ws, wt))
        self.projector = projector(f_s.shape[1], t_n, factor)
        if _channels_last(ctx.student):  # the layout of the features it reads (train.channels_last)
            self.projector.to(memory_format=torch.channels_last)
        weight = classifier.weight.detach().clone().float()
        bias = classifier.bias.detach().clone().float() if classifier.bias is not None else torch.zeros(len(weight))
        self.register_buffer("teacher_weight", weight)
        self.register_buffer("teacher_bias", bias)
        if not self.ce_weight:
            # Nothing trains the student's own classifier (the published SGD skips a parameter
            # without a gradient): frozen, so that DistributedDataParallel finds no unused parameter.
            ctx.student.get_classifier().requires_grad_(False)

    def project(self, student: Features, update_stats: bool = True) -> Tensor:
        """P(f_s): (B, t_n, H, W), float32. ``update_stats=False`` runs the projector's BatchNorms
        on the batch statistics without moving their running averages (a second pass of a step)."""
        x = student.feats[-1].float()
        if tuple(x.shape[-2:]) != self.student_size:
            x = F.adaptive_avg_pool2d(x, self.student_size)
        for layer in self.projector:
            if isinstance(layer, nn.BatchNorm2d) and self.training and not update_stats:
                x = F.batch_norm(x, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)
            else:
                x = layer(x)
        return x

    def forward(self, student, teacher, target, epoch, index=None):
        projected = self.project(student)
        parts = {"simkd": self.feat_weight * simkd_loss(projected, teacher.pre_pool.float())}
        if self.ce_weight:
            parts = {"ce": self.ce_weight * F.cross_entropy(student.logits.float(), target), **parts}
        return sum(parts.values()), parts

    def predict(self, student: Features) -> Features:
        """The teacher's classifier on the pooled projection; ``pooled``: that pooled projection.
        In training mode the projector's BatchNorms use the batch statistics (as the training step
        does) and leave their running averages alone."""
        projected = self.project(student, update_stats=False)
        pooled = F.adaptive_avg_pool2d(projected, 1).flatten(1)
        logits = F.linear(pooled, self.teacher_weight, self.teacher_bias)
        return dataclasses.replace(student, logits=logits, pooled=pooled, pre_pool=projected)

    def extra_parameters(self) -> int:
        """The projector's parameters (the teacher classifier's copy is a frozen buffer)."""
        return sum(p.numel() for p in self.projector.parameters())


def _build(params: dict[str, Any], ctx: MethodContext) -> Method:
    return SimKD(SPEC, params, ctx)


SPEC = MethodSpec(
    "simkd",
    SimKDConfig,
    _build,
    _check,
    summary="projector to the teacher's last feature, MSE weight 1, no CE; predicts with the teacher's classifier "
    "(Chen et al. 2022)",
    teacher_needs=("feats", "classifier"),
    student_features=True,
    own_prediction=True,
)
