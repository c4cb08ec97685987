"""OFD (Heo et al. 2019): L = ce_weight·CE + feat_weight·Σ_i d_p(r_i(F_s^i), max(F_t^i, m_i)) / 2^(n−1−i).

F^i: the pre-ReLU feature of stage i (``Features.preact_feats[1:]``, the stem left out, as
mdistiller ``mdistiller/distillers/OFD.py`` passes ``preact_feats[1:]``); of the two lists and the
teacher's margins the last n are paired, n the shortest length (``_align_list`` there). r_i: a
trainable connector on the student side, a ``connector_kernel``² convolution (stride 1, padding
(k−1)/2, no bias, weights N(0, 2/(k²·C_t))) and a BatchNorm (1, 0), as ConnectorConvBN there.
m_i: the margin of each teacher channel, E[x | x < 0] for x ~ N(β, γ²) of the teacher's BatchNorm
before that stage's ReLU (:func:`rld.losses.ofd_margin`; the BatchNorms come from the teacher's
``bn_before_relu()``, mdistiller's ``get_bn_before_relu``), computed once when the method is built
and kept as buffers (``margin0``, ``margin1``, ...: saved and restored with the run). d_p: the
partial L2 distance, :func:`rld.losses.ofd_loss` (summed over C, H, W, averaged over the batch,
the teacher's map average-pooled to the student's size); stage i of n weighs 1/2^(n−1−i), the last 1.

Defaults CE 1, feat 0.001, kernel 1: mdistiller ``mdistiller/engine/cfg.py`` (CFG.OFD), the
authors' CIFAR-100 division by 1000 (clovaai/overhaul-distillation ``CIFAR-100/train_with_distillation.py``).
ImageNet: feat 0.0001 (mdistiller ``configs/imagenet/r50_mv1/ofd.yaml``; the authors' ImageNet script
divides by 10000), CE unchanged.

Teachers: the models that define ``bn_before_relu()`` (the CIFAR ResNets and WRNs, VGG,
MobileNetV2, ResNet18/50, the ImageNet ResNets and MobileNetV1). The ShuffleNets are refused, as
mdistiller refuses them; so are external models. Students: any model with stage features.

Stages (``stages``): by default every stage the teacher's ``bn_before_relu()`` names, as far as the
student has stages to pair; ``stages=k`` distils the last k only. On ImageNet that is the four
stages of the authors' code (clovaai/overhaul-distillation ``ImageNet/models/ResNet.py``
``get_bn_before_relu`` lists layer1-4; ``ImageNet/distiller.py`` pairs them with MobileNet's
``model[3]``, ``[5]``, ``[11]``, ``[13]``; weights 1/8, 1/4, 1/2, 1), the code behind the OFD number
Table 4 quotes; mdistiller distils three there (its ``get_bn_before_relu`` leaves stage 1 out):
``method.stages=3``. The authors' ImageNet code has no ResNet34→ResNet18 setting (it ships
ResNet152→ResNet50 and ResNet50→MobileNet); that pair takes the same rule.

The teacher in training mode (``teacher_train_mode``, default true): the published code runs the
teacher's BatchNorms on the batch's statistics during distillation — the authors' script calls
``t_net.train()`` every epoch (``CIFAR-100/train_with_distillation.py:73-75``,
``ImageNet/train_with_distillation.py:165-167``; their Table 8 found it better than eval mode), and
mdistiller's OFD overrides ``Distiller.train`` without the line that keeps the teacher in eval
mode (``mdistiller/distillers/OFD.py:114-121``). The margins come from the BatchNorms' weights and
biases, which never change. Its running statistics move as the published code's do; they take no
part in training (a BatchNorm in training mode reads the batch's), so a resumed run is exact with
the teacher reloaded from its checkpoint. ``teacher_train_mode=false`` keeps the teacher in eval
mode, as every other method does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from rld.losses import ofd_loss, ofd_margin
from rld.methods._stages import ce_term, check_flags, check_int, check_weights, model_label, stage_shapes
from rld.methods.base import Method, MethodConfig, MethodContext, MethodSpec


@dataclass
class OFDConfig(MethodConfig):
    name: str = "ofd"
    ce_weight: float = 1.0
    feat_weight: float = field(default=0.001, metadata={"help": "weight of the margin-clipped partial L2 term"})
    connector_kernel: int = field(
        default=1, metadata={"help": "kernel size of the student-side connectors (convolution + BatchNorm)"}
    )
    stages: int | None = field(
        default=None,
        metadata={"help": "distil the last N stages (empty: every stage the teacher names; mdistiller: 3)"},
    )
    teacher_train_mode: bool = field(
        default=True,
        metadata={"help": "the teacher's BatchNorms on batch statistics, as the published code (false: eval)"},
    )


def connector(student_channels: int, teacher_channels: int, kernel: int) -> nn.Sequential:
    """Convolution (``kernel``², stride 1, padding (kernel−1)//2, no bias) + BatchNorm from the
    student's channels to the teacher's, initialised as mdistiller's ConnectorConvBN."""
    conv = nn.Conv2d(student_channels, teacher_channels, kernel, stride=1, padding=(kernel - 1) // 2, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel * kernel * teacher_channels)))
    bn = nn.BatchNorm2d(teacher_channels)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)


class OFD(Method):
    """``(total, {"ce", "feat"})``: the weighted CE and the stage-weighted OFD distances over the
    last ``len(connectors)`` maps of ``preact_feats`` of both networks."""

    def __init__(
        self,
        spec: MethodSpec,
        connectors: nn.ModuleList,
        margins,
        ce_weight: float,
        feat_weight: float,
        teacher_training: bool = True,
    ):
        super().__init__()
        self.spec = spec
        self.teacher_training = bool(teacher_training)
        self.connectors = connectors
        for i, margin in enumerate(margins):
            self.register_buffer(f"margin{i}", margin)
        self.ce_weight, self.feat_weight = ce_weight, feat_weight

    def margins(self) -> list:
        """The teacher's per-channel margins of the distilled stages, (C_t,) each."""
        return [getattr(self, f"margin{i}") for i in range(len(self.connectors))]

    def forward(self, student, teacher, target, epoch, index=None):
        n = len(self.connectors)
        f_s, f_t = student.preact_feats[-n:], teacher.preact_feats[-n:]
        distances = [
            ofd_loss(r(s.float()), t.float(), m) / 2 ** (n - 1 - i)
            for i, (r, s, t, m) in enumerate(zip(self.connectors, f_s, f_t, self.margins()))
        ]
        ce = ce_term(student.logits, target, self.ce_weight)
        feat = self.feat_weight * sum(distances)
        return ce + feat, {"ce": ce, "feat": feat}


def _check(params: dict[str, Any]) -> None:
    check_weights(params, "ce_weight", "feat_weight")
    check_int(params, "connector_kernel", 1)
    if params["stages"] is not None:
        check_int(params, "stages", 1)
    check_flags(params, "teacher_train_mode")


def teacher_bns(teacher: nn.Module, stages: list[tuple[int, ...]]) -> list[nn.BatchNorm2d]:
    """``teacher.bn_before_relu()``, checked against the teacher's stage shapes ``stages``
    (``preact_feats[1:]``): the j-th of k BatchNorms has the channels of ``stages[-k + j]``."""
    get = getattr(teacher, "bn_before_relu", None)
    if not callable(get):
        raise ValueError(
            f"OFD takes its margins from the teacher's BatchNorm before each stage's ReLU, and the teacher "
            f"{model_label(teacher)!r} does not name them (no bn_before_relu(); the published code refuses "
            "ShuffleNet teachers too). Use a ResNet, WRN, VGG, MobileNetV2 or MobileNetV1 teacher"
        )
    bns = list(get())
    if not bns or len(bns) > len(stages):
        raise ValueError(
            f"the teacher {model_label(teacher)}'s bn_before_relu() gives {len(bns)} BatchNorms for "
            f"{len(stages)} stages (Features.preact_feats[1:])"
        )
    for bn, shape in zip(bns, stages[-len(bns) :]):
        if bn.num_features != shape[0]:
            raise ValueError(
                f"the teacher {model_label(teacher)}'s bn_before_relu() does not match its stages: a BatchNorm of "
                f"{bn.num_features} channels for a stage of {shape[0]}"
            )
    return bns


def _build(params: dict[str, Any], ctx: MethodContext) -> Method:
    stages = {}
    for role, model in (("student", ctx.student), ("teacher", ctx.teacher)):
        stages[role] = stage_shapes(model, ctx.input_shape, "preact_feats", "OFD", role)[1:]
        if not stages[role]:
            raise ValueError(
                f"OFD distils the stages after the stem (Features.preact_feats[1:]), and the {role} "
                f"{model_label(model)} lists only one feature map"
            )
    bns = teacher_bns(ctx.teacher, stages["teacher"])
    n = min(len(stages["student"]), len(bns))
    if params["stages"] is not None:
        if params["stages"] > n:
            raise ValueError(
                f"stages={params['stages']}, but the teacher {model_label(ctx.teacher)} and the student "
                f"{model_label(ctx.student)} pair {n} stages; use stages <= {n}"
            )
        n = params["stages"]
    pairs = zip(stages["student"][-n:], stages["teacher"][-n:])
    kernel = params["connector_kernel"]
    connectors = nn.ModuleList(connector(s[0], t[0], kernel) for s, t in pairs)
    margins = [ofd_margin(bn.weight, bn.bias).cpu() for bn in bns[-n:]]
    return OFD(SPEC, connectors, margins, params["ce_weight"], params["feat_weight"], params["teacher_train_mode"])


SPEC = MethodSpec(
    "ofd",
    OFDConfig,
    _build,
    _check,
    summary="CE + 0.001·partial L2 to the margin-clipped teacher pre-ReLU features (Heo et al. 2019)",
    teacher_needs=("preact_feats",),
    student_features=True,
)
