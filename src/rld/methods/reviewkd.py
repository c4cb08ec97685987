"""ReviewKD (Chen et al. 2021): L = ce_weight·CE + feat_weight·min(epoch/warmup_epochs, 1)·HCL(ABF(s), t).

Levels: the stage features after the stem (``feats[1:]``, or ``preact_feats[1:]`` with
``stu_preact``) and the pooled feature as a 1×1 map, for the student; the teacher's *pre-activation*
stage features (``preact_feats[1:]``) and its pooled feature (mdistiller/distillers/ReviewKD.py,
forward_train; the published feature list also holds the stem, which its ``zip`` with the fusion
modules drops). When the two networks have different numbers of levels, the deepest ones are
paired (pooled with pooled) and the extra shallow levels of the deeper-staged network are left out.

Review by attention-based fusion (ABF), from the deepest level to the shallowest: level i's
student feature goes through a 1×1 convolution + BN to ``mid`` channels; except at the deepest
level, the fused map of the level below is upsampled (nearest) to its size, and a 1×1
convolution + sigmoid on the concatenation gives two attention maps that weight the sum of the
two; the result is resized (nearest) to the teacher's level-i size, passed on to the next level,
and turned by a 3×3 convolution + BN into the teacher's channels. ``hcl_loss`` compares each
output with the teacher's level (:func:`rld.losses.hcl_loss`). mid = min(max_mid_channels,
channels of the student's pooled feature) (mdistiller ReviewKD.__init__ and dvlab-research/ReviewKD
CIFAR-100/model/reviewkd.py, where the bound is the constant 512; the official ImageNet code uses
256 for MobileNet, ``ImageNet/models/reviewkd.py:83``, so here the bound is a key). The ImageNet
preset of ResNet50→MobileNetV1 sets 256 as the authors' code does; mdistiller builds 512 there
(its ``configs/imagenet/r50_mv1/reviewkd.yaml`` writes MAX_MID_CHANNEL 256, which its
``ReviewKD.py`` never reads).

The per-model channels and sizes that mdistiller's configs write out (REVIEWKD.IN_CHANNELS,
OUT_CHANNELS, SHAPES, OUT_SHAPES) are derived from the models' features (:func:`review_layout`).

Defaults (mdistiller mdistiller/engine/cfg.py, REVIEWKD section): CE 1.0, REVIEWKD_WEIGHT 1.0,
WARMUP_EPOCHS 20, MAX_MID_CHANNEL 512, STU_PREACT False. The presets set the published per-pair
weights (rld/configs/cifar100/reviewkd.yaml, rld/configs/imagenet/reviewkd.yaml).

The teacher: in eval mode, as mdistiller (``Distiller.train`` keeps it there) and the authors'
ImageNet code (``ImageNet/imagenet_amp.py:357-358``, ``teacher.eval()``) run it. The authors' CIFAR-100
script never switches its teacher to eval mode (``CIFAR-100/train.py`` calls ``train()``/``eval()``
on the student only, so the teacher's BatchNorms run on batch statistics); it also trains with
Nesterov momentum and a warm-up ``min(1, epoch/kd_warm_up)`` counted from epoch 0.
``teacher_train_mode=true`` (with ``train.nesterov=true``) runs the teacher as that script does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rld.losses import hcl_loss, warmup_factor
from rld.methods._stages import ce_term, check_flags, check_int, check_weights, no_stage_features
from rld.methods.base import Method, MethodConfig, MethodContext, MethodSpec, probe_features
from rld.models.features import Features


@dataclass
class ReviewKDConfig(MethodConfig):
    name: str = "reviewkd"
    ce_weight: float = 1.0
    feat_weight: float = field(default=1.0, metadata={"help": "weight of the review (HCL) term"})
    warmup_epochs: float = 20.0
    max_mid_channels: int = field(default=512, metadata={"help": "upper bound of the fusion modules' channels"})
    stu_preact: bool = field(default=False, metadata={"help": "fuse the student's pre-activation stage features"})
    teacher_train_mode: bool = field(
        default=False,
        metadata={"help": "the teacher's BatchNorms on batch statistics (the authors' CIFAR script)"},
    )


def review_levels(features: Features, preact: bool) -> list[Tensor]:
    """The levels ReviewKD reads: stage features after the stem, then the pooled feature as a
    (B, D, 1, 1) map. ``preact``: the pre-activation stage features."""
    maps = features.preact_feats if preact else features.feats
    return [*maps[1:], features.pooled[:, :, None, None]]


@dataclass(frozen=True)
class ReviewLayout:
    """Channels and sizes of the paired levels, shallowest first.

    ``in_channels``/``shapes``: the student's (mdistiller's IN_CHANNELS and, deepest first, SHAPES);
    ``out_channels``/``out_shapes``: the teacher's (OUT_CHANNELS, OUT_SHAPES); sizes are (H, W).
    """

    in_channels: tuple[int, ...]
    out_channels: tuple[int, ...]
    shapes: tuple[tuple[int, int], ...]
    out_shapes: tuple[tuple[int, int], ...]
    mid_channels: int


def review_layout(
    student: Features, teacher: Features, stu_preact: bool = False, max_mid_channels: int = 512
) -> ReviewLayout:
    """The fusion modules' layout from the student's and teacher's Features (of a probe batch)."""
    for role, f in (("student", student), ("teacher", teacher)):
        if len(f.feats) < 2 or len(f.preact_feats) < 2 or f.pooled is None:
            raise ValueError(f"ReviewKD needs stage features after the stem and the pooled feature of the {role}")
    s, t = review_levels(student, stu_preact), review_levels(teacher, True)
    n = min(len(s), len(t))
    s, t = s[-n:], t[-n:]
    return ReviewLayout(
        in_channels=tuple(f.shape[1] for f in s),
        out_channels=tuple(f.shape[1] for f in t),
        shapes=tuple((f.shape[2], f.shape[3]) for f in s),
        out_shapes=tuple((f.shape[2], f.shape[3]) for f in t),
        mid_channels=min(max_mid_channels, s[-1].shape[1]),
    )


class ABF(nn.Module):
    """Attention-based fusion of one level (ABF in mdistiller/distillers/ReviewKD.py)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)  # as published
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(output in the teacher's channels, fused map passed to the next shallower level)."""
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
            z = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * z[:, 0:1] + residual * z[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


class ReviewKD(Method):
    """The fusion modules (trained with the student) and the weighted HCL term."""

    def __init__(self, spec: MethodSpec, params: dict[str, Any], ctx: MethodContext):
        super().__init__()
        self.spec = spec
        self.ce_weight, self.feat_weight = float(params["ce_weight"]), float(params["feat_weight"])
        self.warmup_epochs, self.stu_preact = float(params["warmup_epochs"]), bool(params["stu_preact"])
        self.teacher_training = bool(params["teacher_train_mode"])
        features = {}
        for role, model, kind in (
            ("student", ctx.student, "preact_feats" if self.stu_preact else "feats"),
            ("teacher", ctx.teacher, "preact_feats"),
        ):
            features[role] = probe_features(model, ctx.input_shape)
            if not getattr(features[role], kind):
                raise no_stage_features("ReviewKD", role, model, kind)
        self.layout = review_layout(
            features["student"], features["teacher"], self.stu_preact, int(params["max_mid_channels"])
        )
        lay = self.layout
        n = len(lay.in_channels)
        self.abfs = nn.ModuleList(
            ABF(c_in, lay.mid_channels, c_out, fuse=i < n - 1)
            for i, (c_in, c_out) in enumerate(zip(lay.in_channels, lay.out_channels))
        )

    def fuse(self, levels: list[Tensor], out_sizes: list[tuple[int, int]]) -> list[Tensor]:
        """The review chain, deepest level first; returns the outputs shallowest first."""
        out, residual = self.abfs[-1](levels[-1], None, out_sizes[-1])
        results = [out]
        for i in range(len(levels) - 2, -1, -1):
            out, residual = self.abfs[i](levels[i], residual, out_sizes[i])
            results.insert(0, out)
        return results

    def forward(
        self, student: Features, teacher: Features | None, target: Tensor, epoch: float | Tensor, index=None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        n = len(self.abfs)
        s = [f.float() for f in review_levels(student, self.stu_preact)[-n:]]
        t = [f.float() for f in review_levels(teacher, True)[-n:]]
        fused = self.fuse(s, [tuple(f.shape[-2:]) for f in t])
        review = hcl_loss(fused, t)
        parts = {
            "ce": ce_term(student.logits, target, self.ce_weight),
            "review": self.feat_weight * warmup_factor(epoch, self.warmup_epochs) * review,
        }
        return parts["ce"] + parts["review"], parts


def check(params: dict[str, Any]) -> None:
    check_weights(params, "ce_weight", "feat_weight", "warmup_epochs")
    check_int(params, "max_mid_channels", 1)
    check_flags(params, "stu_preact", "teacher_train_mode")


def build(params: dict[str, Any], ctx: MethodContext) -> ReviewKD:
    return ReviewKD(SPEC, params, ctx)


SPEC = MethodSpec(
    "reviewkd",
    ReviewKDConfig,
    build,
    check,
    summary="CE + warm-up·HCL between the attention-fused student stages and the teacher's (Chen et al. 2021)",
    teacher_needs=("preact_feats", "pooled"),
    student_features=True,
)
