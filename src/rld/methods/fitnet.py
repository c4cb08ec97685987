"""FitNet (Romero et al. 2015): L = ce_weight·CE + feat_weight·mean((r(f_s) − f_t)²).

f_s, f_t: the hint layer's feature map of the student and of the teacher, ``Features.feats[hint_layer]``
(post-activation; index 0 is the stem, then one entry per stage, as in mdistiller's ``feats``
lists, so the default 2 is the output of the second stage of both networks). r: a trainable
regressor, convolution + BatchNorm + ReLU, whose convolution follows from the two shapes
(ConvReg in mdistiller ``mdistiller/distillers/_common.py``):

* the student's map is twice the teacher's side: 3×3 convolution, stride 2, padding 1;
* half the teacher's side: 4×4 transposed convolution, stride 2, padding 1;
* otherwise at least the teacher's side: a convolution with kernel (1 + H_s − H_t, 1 + W_s − W_t),
  1×1 for equal sizes; a student map smaller than that is refused.

The mean of squares is :func:`rld.losses.hint_loss` (``F.mse_loss`` in mdistiller
``mdistiller/distillers/FitNet.py``). Defaults CE 1, feat 100, hint layer 2: mdistiller
``mdistiller/engine/cfg.py`` (CFG.FITNET); its ``configs/cifar100/fitnet.yaml`` sets only the
solver. The regressor trains with the student and is the method's extra parameters
(``extra_parameters``). mdistiller sizes it from a 32×32 probe (FITNET.INPUT_SIZE); here it is
sized from the run's input shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from rld.losses import hint_loss
from rld.methods._stages import ce_term, check_int, check_weights, model_label, stage_shapes
from rld.methods.base import Method, MethodConfig, MethodContext, MethodSpec


@dataclass
class FitNetConfig(MethodConfig):
    name: str = "fitnet"
    ce_weight: float = 1.0
    feat_weight: float = field(default=100.0, metadata={"help": "weight of the hint (MSE) term"})
    hint_layer: int = field(
        default=2, metadata={"help": "index in Features.feats (0 = the stem) of the hint and guided layers"}
    )


class HintRegressor(nn.Module):
    """Convolution + BatchNorm + ReLU from the student's hint map ``(B, C_s, H_s, W_s)`` to the
    teacher's shape ``(B, C_t, H_t, W_t)``; the convolution is chosen by the sizes (module docstring).
    PyTorch's default initialisation, as the published ConvReg."""

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> None:
        super().__init__()
        (c_s, h_s, w_s), (c_t, h_t, w_t) = student_shape, teacher_shape
        if (h_s, w_s) == (2 * h_t, 2 * w_t):
            self.conv: nn.Module = nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
        elif (2 * h_s, 2 * w_s) == (h_t, w_t):
            self.conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
        elif h_s >= h_t and w_s >= w_t:
            self.conv = nn.Conv2d(c_s, c_t, kernel_size=(1 + h_s - h_t, 1 + w_s - w_t))
        else:
            raise ValueError(
                f"no regressor maps the student's {h_s}x{w_s} hint map to the teacher's {h_t}x{w_t} (the student's "
                "side must be twice, half, or at least the teacher's); choose another method.hint_layer"
            )
        self.bn = nn.BatchNorm2d(c_t)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class FitNet(Method):
    """``(total, {"ce", "feat"})``: the weighted CE and hint terms; reads ``feats[hint_layer]`` of both."""

    def __init__(
        self, spec: MethodSpec, regressor: HintRegressor, ce_weight: float, feat_weight: float, hint_layer: int
    ):
        super().__init__()
        self.spec = spec
        self.regressor = regressor
        self.ce_weight, self.feat_weight, self.hint_layer = ce_weight, feat_weight, hint_layer

    def forward(self, student, teacher, target, epoch, index=None):
        f_s = student.feats[self.hint_layer].float()
        f_t = teacher.feats[self.hint_layer].float()
        ce = ce_term(student.logits, target, self.ce_weight)
        feat = self.feat_weight * hint_loss(self.regressor(f_s), f_t)
        return ce + feat, {"ce": ce, "feat": feat}


def _check(params: dict[str, Any]) -> None:
    check_weights(params, "ce_weight", "feat_weight")
    check_int(params, "hint_layer", 0)  # an index in Features.feats


def _build(params: dict[str, Any], ctx: MethodContext) -> Method:
    layer = params["hint_layer"]
    shapes = {}
    for role, model in (("student", ctx.student), ("teacher", ctx.teacher)):
        shapes[role] = stage_shapes(model, ctx.input_shape, "feats", "FitNet", role)
        if layer >= len(shapes[role]):
            raise ValueError(
                f"hint_layer {layer} is past the {role}'s last feature map: {model_label(model)} has "
                f"{len(shapes[role])} (Features.feats, 0 = the stem)"
            )
    regressor = HintRegressor(shapes["student"][layer], shapes["teacher"][layer])
    return FitNet(SPEC, regressor, params["ce_weight"], params["feat_weight"], layer)


SPEC = MethodSpec(
    "fitnet",
    FitNetConfig,
    _build,
    _check,
    summary="CE + 100·MSE(regressor(student hint), teacher guided layer), hint layer 2 (Romero et al. 2015)",
    teacher_needs=("feats",),
    student_features=True,
)
