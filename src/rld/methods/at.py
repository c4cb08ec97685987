"""AT (Zagoruyko & Komodakis 2017): L = ce_weight·CE + feat_weight·Σ_i mean_{b,j}(Q_s^i − Q_t^i)².

Q^i = vec(mean_c f_c^p) / ‖·‖₂: the attention map of stage i (:func:`rld.losses.at_loss`, with
the larger map of a pair pooled to the smaller). The stages are ``Features.feats[1:]`` of both
networks (the stem is left out: mdistiller ``mdistiller/distillers/AT.py`` passes ``feats[1:]``),
paired in order from the first stage up to the shorter list (``zip`` there). No trainable modules.

Defaults p = 2, CE 1, feat 1000: mdistiller ``mdistiller/engine/cfg.py`` (CFG.AT). Its
``configs/cifar100/at.yaml`` and ``configs/imagenet/{r34_r18,r50_mv1}/at.yaml`` set only the
solver, so ImageNet runs with the same values.

Where rld's feature lists differ from mdistiller's: mdistiller's ImageNet MobileNetV1 lists no stem,
so its ``feats[1:]`` start at the second stage and ResNet50→MobileNetV1 pairs teacher stage i with
student stage i + 1 (maps of twice the size, pooled); rld's MobileNetV1 lists its 112×112 block
first (``Features``' stem), so each pair has one resolution, as the method intends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rld.losses import at_loss
from rld.losses._common import check_positive
from rld.methods._stages import ce_term, check_weights, model_label, stage_shapes
from rld.methods.base import Method, MethodConfig, MethodContext, MethodSpec


@dataclass
class ATConfig(MethodConfig):
    name: str = "at"
    ce_weight: float = 1.0
    feat_weight: float = field(default=1000.0, metadata={"help": "weight of the attention-map term"})
    p: float = field(default=2.0, metadata={"help": "exponent of the attention maps (mean_c f^p)"})


class AT(Method):
    """``(total, {"ce", "feat"})``: the weighted CE and attention terms over the first ``stages``
    maps of ``feats[1:]`` of both networks."""

    def __init__(self, spec: MethodSpec, ce_weight: float, feat_weight: float, p: float, stages: int):
        super().__init__()
        self.spec = spec
        self.ce_weight, self.feat_weight, self.p, self.stages = ce_weight, feat_weight, p, stages

    def forward(self, student, teacher, target, epoch, index=None):
        end = 1 + self.stages
        g_s = [f.float() for f in student.feats[1:end]]
        g_t = [f.float() for f in teacher.feats[1:end]]
        ce = ce_term(student.logits, target, self.ce_weight)
        feat = self.feat_weight * at_loss(g_s, g_t, self.p)
        return ce + feat, {"ce": ce, "feat": feat}


def _check(params: dict[str, Any]) -> None:
    check_weights(params, "ce_weight", "feat_weight")
    check_positive("p", params["p"])


def _build(params: dict[str, Any], ctx: MethodContext) -> Method:
    counts = []
    for role, model in (("student", ctx.student), ("teacher", ctx.teacher)):
        shapes = stage_shapes(model, ctx.input_shape, "feats", "AT", role)
        if len(shapes) < 2:
            raise ValueError(
                f"AT compares the stages after the stem (Features.feats[1:]), and the {role} "
                f"{model_label(model)} lists only one feature map"
            )
        counts.append(len(shapes) - 1)
    return AT(SPEC, params["ce_weight"], params["feat_weight"], params["p"], min(counts))


SPEC = MethodSpec(
    "at",
    ATConfig,
    _build,
    _check,
    summary="CE + 1000·attention-map MSE over the stages, p = 2 (Zagoruyko & Komodakis 2017)",
    teacher_needs=("feats",),
    student_features=True,
)
