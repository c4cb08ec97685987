"""RKD (Park et al. 2019): L = ce_weight·CE + feat_weight·(w_d·L_RKD-D + w_a·L_RKD-A).

The relational terms compare the pairwise distances and triplet angles of the pooled features
(``Features.pooled``, the input of each network's classifier), taken as they are: mdistiller
``mdistiller/distillers/RKD.py`` passes ``pooled_feat`` to its ``rkd_loss`` with no projection or
normalisation (the distances are normalised by their mean inside the loss, :func:`rld.losses.rkd_loss`,
with Euclidean, not squared, distances floored at ε = 1e-12 before the root: CFG.RKD.PDIST). No
trainable modules.

Defaults w_d = 25, w_a = 50, CE 1, feat 1: mdistiller ``mdistiller/engine/cfg.py`` (CFG.RKD); its
``configs/cifar100/rkd.yaml`` sets only the solver. RKD reads no stage features, so it also works
with ``torchvision:`` and ``timm:`` models. A batch of one sample has no pairs: its relational
term is 0 (the published code would give NaN).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rld.losses import rkd_loss
from rld.methods._stages import ce_term, check_weights
from rld.methods.base import Method, MethodConfig, MethodContext, MethodSpec

RKD_SQUARED = False  # mdistiller/engine/cfg.py, CFG.RKD.PDIST.SQUARED
RKD_EPS = 1e-12  # mdistiller/engine/cfg.py, CFG.RKD.PDIST.EPSILON


@dataclass
class RKDConfig(MethodConfig):
    name: str = "rkd"
    ce_weight: float = 1.0
    feat_weight: float = field(default=1.0, metadata={"help": "weight of the relational term"})
    distance_weight: float = field(default=25.0, metadata={"help": "weight w_d of the distance loss"})
    angle_weight: float = field(default=50.0, metadata={"help": "weight w_a of the angle loss"})


class RKD(Method):
    """``(total, {"ce", "feat"})``: the weighted CE and relational terms on ``pooled`` of both networks."""

    def __init__(
        self, spec: MethodSpec, ce_weight: float, feat_weight: float, distance_weight: float, angle_weight: float
    ):
        super().__init__()
        self.spec = spec
        self.ce_weight, self.feat_weight = ce_weight, feat_weight
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    def forward(self, student, teacher, target, epoch, index=None):
        e_s, e_t = student.pooled.float(), teacher.pooled.float()
        ce = ce_term(student.logits, target, self.ce_weight)
        if e_s.shape[0] < 2:  # (a shape, not a value: no host read)
            feat = e_s.sum() * 0.0
        else:
            relational = rkd_loss(e_s, e_t, self.distance_weight, self.angle_weight, RKD_SQUARED, RKD_EPS)
            feat = self.feat_weight * relational
        return ce + feat, {"ce": ce, "feat": feat}


def _check(params: dict[str, Any]) -> None:
    check_weights(params, "ce_weight", "feat_weight", "distance_weight", "angle_weight")


def _build(params: dict[str, Any], ctx: MethodContext) -> Method:
    keys = ("ce_weight", "feat_weight", "distance_weight", "angle_weight")
    return RKD(SPEC, *(params[k] for k in keys))


SPEC = MethodSpec(
    "rkd",
    RKDConfig,
    _build,
    _check,
    summary="CE + 25·distance + 50·angle relations of the pooled features (Park et al. 2019)",
    teacher_needs=("pooled",),
    student_features=True,
)
