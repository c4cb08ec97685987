"""CAT-KD (Guo et al. 2023): class attention transfer — match the class activation maps.

    CAM_k = Σ_c W_kc · A_c   at every position (the classifier applied before global pooling)
    L = ce_weight·CE + feat_weight·MSE(N(pool_r(CAM_s)), N(pool_r(B(CAM_t))))

``A`` is each network's final feature map, the one its classifier reads after global pooling
(``Features.pre_pool``), and ``W`` its own classifier's weight: the student's trained one, the
teacher's frozen one (:func:`~rld.losses.class_activation_maps`). ``pool_r`` is adaptive average
pooling to r × r (``cam_resolution``), ``N`` an optional L2 normalisation of each pooled map
(``normalize``), ``B`` an optional binarisation of the teacher's maps (``binarize_teacher``;
:func:`~rld.losses.cat_loss`). No warm-up.

As the published code does (GzyAftermath/CAT-KD ``tools/train.py`` with ``if_test: True`` and the
``*_test`` models in ``mdistiller/models/cifar/*.py``): both networks' classifiers become bias-free
1×1 convolutions applied before the global pooling — the teacher's takes its linear weight (its
bias is dropped; CAT-KD never reads the teacher's logits), the student is trained with one. So
building this method sets the student's classifier bias to 0 and freezes it: the student's logits
are then exactly the spatial means of its CAMs, as in the published student.

Keys and the published names (``mdistiller/distillers/CAT_KD.py``, ``mdistiller/engine/cfg.py``):

=================  ===========================  ===================================================
ce_weight          CAT_KD.LOSS.CE_WEIGHT         1.0; ``onlyCAT: True`` (CAT alone) is ce_weight 0
feat_weight        CAT_KD.LOSS.CAT_loss_weight   β, 400.0 in cfg.py; every config sets its own
cam_resolution     CAT_KD.LOSS.CAM_RESOLUTION    2
normalize          CAT_KD.IF_NORMALIZE           True in cfg.py; the configs set it per pair
binarize_teacher   CAT_KD.IF_BINARIZE            False
=================  ===========================  ===================================================

The ablation that transfers only some classes' maps (``IF_OnlyTransferPartialCAMs``, off in every
CAT-KD config) is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rld.losses import cat_loss, class_activation_maps
from rld.methods._stages import check_flags, check_int, check_weights, final_map
from rld.methods.base import Method, MethodConfig, MethodContext, MethodSpec, probe_features
from rld.models.features import Features


@dataclass
class CATKDConfig(MethodConfig):
    name: str = "catkd"
    ce_weight: float = 1.0  # CAT_KD.LOSS.CE_WEIGHT (mdistiller/engine/cfg.py of GzyAftermath/CAT-KD)
    feat_weight: float = field(
        default=400.0,  # CAT_KD.LOSS.CAT_loss_weight (cfg.py); the presets set each pair's value
        metadata={"help": "beta, weight of the CAT loss (CAT_loss_weight)"},
    )
    cam_resolution: int = field(
        default=2,  # CAT_KD.LOSS.CAM_RESOLUTION (cfg.py)
        metadata={"help": "side r of the r x r average-pooled class activation maps (CAM_RESOLUTION)"},
    )
    normalize: bool = field(
        default=True,  # CAT_KD.IF_NORMALIZE (cfg.py)
        metadata={"help": "L2-normalise each pooled class activation map (IF_NORMALIZE)"},
    )
    binarize_teacher: bool = field(
        default=False,  # CAT_KD.IF_BINARIZE (cfg.py)
        metadata={"help": "binarise the teacher's maps at their mean absolute activation (IF_BINARIZE)"},
    )


def _check(params: dict[str, Any]) -> None:
    check_weights(params, "ce_weight", "feat_weight")
    check_int(params, "cam_resolution", 1)
    check_flags(params, "normalize", "binarize_teacher")


class CATKD(Method):
    """The loss weights, the pooling and flags, the teacher classifier's weight and the student's classifier."""

    def __init__(self, spec: MethodSpec, params: dict[str, Any], ctx: MethodContext):
        super().__init__()
        self.spec = spec
        self.ce_weight = float(params["ce_weight"])
        self.feat_weight = float(params["feat_weight"])
        self.cam_resolution = int(params["cam_resolution"])
        self.normalize = bool(params["normalize"])
        self.binarize_teacher = bool(params["binarize_teacher"])
        k_s = final_map("CAT-KD", probe_features(ctx.student, ctx.input_shape), ctx.student, "student")
        k_t = final_map("CAT-KD", probe_features(ctx.teacher, ctx.input_shape), ctx.teacher, "teacher")
        if k_s != k_t:
            raise ValueError(
                f"the student classifies {k_s} classes and the teacher {k_t}: their CAMs cannot be matched"
            )
        # The teacher's 1×1 convolution: its classifier's weight, frozen (not saved: it is the teacher's).
        teacher_weight = ctx.teacher.get_classifier().weight.detach().clone().float()
        self.register_buffer("teacher_weight", teacher_weight, persistent=False)
        # The student's classifier, read at every step but owned (trained, saved) by the student: kept
        # out of this module's parameters. Its bias is fixed at 0 (the published bias-free classifier).
        classifier = ctx.student.get_classifier()
        if classifier.bias is not None:
            with torch.no_grad():
                classifier.bias.zero_()
            classifier.bias.requires_grad_(False)
        self._student_classifier = (classifier,)

    @property
    def student_classifier(self) -> nn.Linear:
        return self._student_classifier[0]

    def cams(self, student: Features, teacher: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's and the teacher's class activation maps, (B, K, H, W) each, float32."""
        cam_s = class_activation_maps(student.pre_pool.float(), self.student_classifier.weight)
        cam_t = class_activation_maps(teacher.pre_pool.float(), self.teacher_weight)
        return cam_s, cam_t

    def forward(self, student, teacher, target, epoch, index=None):
        cam_s, cam_t = self.cams(student, teacher)
        cat = cat_loss(cam_s, cam_t, self.cam_resolution, self.normalize, self.binarize_teacher)
        parts = {"cat": self.feat_weight * cat}
        if self.ce_weight:
            parts = {"ce": self.ce_weight * F.cross_entropy(student.logits.float(), target), **parts}
        return sum(parts.values()), parts


def _build(params: dict[str, Any], ctx: MethodContext) -> Method:
    return CATKD(SPEC, params, ctx)


SPEC = MethodSpec(
    "catkd",
    CATKDConfig,
    _build,
    _check,
    summary="CE + β·MSE of the 2×2-pooled class activation maps (Guo et al. 2023)",
    teacher_needs=("feats", "classifier"),
    student_features=True,
)
