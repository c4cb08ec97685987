"""SDD, scale decoupled distillation (Wei et al., CVPR 2024): a logit loss on local logits.

Each network's final feature map (``Features.pre_pool``, the map its classifier reads after global
pooling) is average-pooled into N regions at the ``scales`` (1×1, 2×2 and 4×4 by default: 21), and
its own classifier maps every region to logits: the student's live classifier (gradients flow into
it and the backbone from every region), a frozen copy of the teacher's (weight and bias). A base
logit loss ℓ compares the two region by region, each region weighted by the teacher alone
(:func:`~rld.losses.sdd_weights`): ``complementary_weight`` (2) where its prediction on the region
and on the 1×1 region disagree about the label, 1 elsewhere; the weighted losses are averaged over
the N·B rows (:func:`~rld.losses.sdd_loss`, :func:`~rld.losses.sdd_pool`):

    L = ce_weight·CE(z^S, y) + warm-up·Σ_i λ_i·(1/(N·B))·Σ_{j,b} w_{j,b}·ℓ_i(z^S_{j,b}, z^T_{j,b}, y_b)

with the CE on the student's own (global) logits, which it also predicts with. Four variants:

======  ===============================================  ==========================================
sd_kd   ℓ = T²·KL (weight kd_weight)                      published (``SDD_KD``, ``KD.py``)
sd_dkd  ℓ = α·TCKD + β·NCKD at T                          published (``SDD_DKD``, ``SDD_DKD.py``)
sd_nkd  ℓ = target term + γ·non-target term of NKD at T   published (``SDD_NKD``, ``SDD_nkd.py``)
sd_rld  ℓ = α·SCD + β·MCD of RLD at T (mask M_ge)         beyond the published code
======  ===============================================  ==========================================

Sources (shicaiwei123/SDD-CVPR2024, ``mdistiller/``): the pooling of class ``SPP``
(``models/cifar/utils.py:5-39``), the local logits of the ``*_SDD`` models (e.g.
``models/cifar/resnet.py:202-209``), the losses ``sdd_kd_loss`` (``distillers/KD.py:16-98``),
``multi_dkd`` (``distillers/SDD_DKD.py:39-124``) and ``multi_nkd_loss`` (``distillers/SDD_nkd.py:71-154``),
the totals in their ``forward_train``. What rld reproduces of that code, as it is:

* region 0 is the 1×1 pool of the map *pooled to the largest scale* (``SPP`` pools 2×2 and 1×1 from
  the 4×4 grid): the global average for 8×8 and 4×4 maps, a non-uniformly weighted mean of a 7×7
  ImageNet map, whose CE logits still come from the true global average;
* a map smaller than the largest scale (the CIFAR MobileNetV2's 2×2) is repeated into the 4×4 grid;
* the loss is a weighted *mean* over the N·B rows, so the global region weighs 1/N of plain KD;
* SD-KD has no warm-up (``KD.py:142`` leaves it commented out); SD-DKD's warm-up is the training
  script's ``--warmup`` (20 on CIFAR-100, ``train_origin.py:198``; 1.0 on ImageNet, ``train.py:195``);
  SD-NKD's is ``DKD.WARMUP`` (``SDD_nkd.py:163``);
* SD-NKD takes T = ``DKD.T`` and γ = ``DKD.BETA`` (``SDD_nkd.py:162-165``), and its non-target term
  keeps the target class (``SDD_nkd.py:53``: a mask that removes nothing):
  ``nkd_exclude_target=false``; ``true`` removes it, as NKD itself does (:func:`~rld.losses.nkd_terms`).

Not reproduced: the published code zeroes a non-finite loss and NaN entries of the KL
(``KD.py:34-35, 94-96``), a guard for its probability-space arithmetic; rld computes in log space,
where they do not arise, and a non-finite loss stops the run (``train.stop_on_nonfinite``). The
published trainer clips the gradient norm at 40 (``engine/trainer.py:189``), a setting of the
training protocol, not of this method.

SD-RLD is **beyond the published code**: rld's combination of SDD with RLD's loss (its SCD and MCD
per region), weighted and averaged as SD-DKD's DKD terms are.

Logit standardization is not defined for SDD by any published code: refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor

from rld.losses import dkd_terms, kd_loss, nkd_terms, rld_terms, sdd_local_logits, sdd_loss, warmup_factor
from rld.losses._common import check_positive
from rld.losses.decoupled import MASKS
from rld.losses.sdd import SDD_COMPLEMENTARY_WEIGHT, check_scales
from rld.methods._stages import ce_term, check_flags, check_weights, final_map
from rld.methods.base import Method, MethodConfig, MethodContext, MethodSpec, probe_features
from rld.models.features import Features


def _scales() -> list[int]:
    return [1, 2, 4]  # the published default --M '[1,2,4]' (SDD-CVPR2024 train.py:184)


@dataclass
class SDDConfig(MethodConfig):
    """What every SDD variant takes beside its base loss's parameters."""

    scales: list[int] = field(default_factory=_scales)  # the pooling grids (help: rld.config.KEY_HELP)
    complementary_weight: float = SDD_COMPLEMENTARY_WEIGHT  # hard-coded 2 in the published losses (KD.py:89-90)


@dataclass
class SDKDConfig(SDDConfig):
    name: str = "sd_kd"
    temperature: float = 4.0  # KD.TEMPERATURE (mdistiller/engine/cfg.py:61 of SDD-CVPR2024)
    ce_weight: float = 0.1  # KD.LOSS.CE_WEIGHT (cfg.py:63)
    kd_weight: float = 0.9  # KD.LOSS.KD_WEIGHT (cfg.py:64)


@dataclass
class SDDKDConfig(SDDConfig):
    name: str = "sd_dkd"
    alpha: float = 1.0  # DKD.ALPHA (cfg.py:164)
    beta: float = 8.0  # DKD.BETA (cfg.py:165); the presets set each pair's
    temperature: float = 4.0  # DKD.T (cfg.py:166)
    warmup_epochs: float = 20.0  # --warmup (train_origin.py:198), not DKD.WARMUP; ImageNet 1.0 (train.py:195)
    ce_weight: float = 1.0  # DKD.CE_WEIGHT (cfg.py:163)


@dataclass
class SDNKDConfig(SDDConfig):
    name: str = "sd_nkd"
    gamma: float = field(
        default=8.0,  # DKD.BETA (cfg.py:165; SDD_nkd.py:165); the presets set each pair's
        metadata={"help": "weight of the non-target term (the published DKD.BETA)"},
    )
    temperature: float = 4.0  # DKD.T (cfg.py:166; SDD_nkd.py:164)
    warmup_epochs: float = 20.0  # DKD.WARMUP (cfg.py:167; SDD_nkd.py:163)
    ce_weight: float = 1.0  # DKD.CE_WEIGHT (cfg.py:163; SDD_nkd.py:162)
    nkd_exclude_target: bool = field(
        default=False,  # SDD_nkd.py:53 keeps the target class in the non-target term
        metadata={
            "help": "remove the target class from the non-target term as NKD does (false: the published SDD code, "
            "which keeps it)"
        },
    )


@dataclass
class SDRLDConfig(SDDConfig):
    name: str = "sd_rld"
    alpha: float = 1.0  # RLD's defaults (rld.methods.rld): SD-RLD is beyond the published code
    beta: float = 8.0
    temperature: float = 4.0
    scd_temperature: float | None = None
    warmup_epochs: float = 20.0
    mask: str = "ge"
    ce_weight: float = 1.0


def _kd_rows(s: Tensor, t: Tensor, y: Tensor, temperature: float) -> tuple[Tensor]:
    return (kd_loss(s, t, temperature, reduction="none"),)


def _dkd_rows(s: Tensor, t: Tensor, y: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    return dkd_terms(s, t, y, temperature, reduction="none")


def _nkd_rows(s: Tensor, t: Tensor, y: Tensor, temperature: float, nkd_exclude_target: bool) -> tuple[Tensor, Tensor]:
    return nkd_terms(s, t, y, temperature, reduction="none", exclude_target=nkd_exclude_target)


def _rld_rows(
    s: Tensor, t: Tensor, y: Tensor, temperature: float, scd_temperature: float | None, mask: str
) -> tuple[Tensor, Tensor]:
    return rld_terms(s, t, y, temperature, scd_temperature, mask, reduction="none")


@dataclass(frozen=True)
class Base:
    """A base loss: its per-row terms ``rows(student_rows, teacher_rows, target_rows, **keys)``, the
    method parameters it takes, the terms' names in the step's parts, the parameter (None: 1) each
    term is multiplied by, and whether a warm-up scales them."""

    rows: Callable[..., tuple[Tensor, ...]]
    keys: tuple[str, ...]
    parts: tuple[str, ...]
    weights: tuple[str | None, ...]
    warmup: bool


BASES = {
    "sd_kd": Base(_kd_rows, ("temperature",), ("kd",), ("kd_weight",), warmup=False),
    "sd_dkd": Base(_dkd_rows, ("temperature",), ("tckd", "nckd"), ("alpha", "beta"), warmup=True),
    "sd_nkd": Base(
        _nkd_rows, ("temperature", "nkd_exclude_target"), ("target", "non_target"), (None, "gamma"), warmup=True
    ),
    "sd_rld": Base(_rld_rows, ("temperature", "scd_temperature", "mask"), ("scd", "mcd"), ("alpha", "beta"), True),
}


def _check(params: dict[str, Any]) -> None:
    check_scales(params["scales"])
    check_weights(params, "complementary_weight", "ce_weight")
    check_weights(params, *(k for k in ("kd_weight", "alpha", "beta", "gamma", "warmup_epochs") if k in params))
    check_positive("temperature", params["temperature"])
    if params.get("scd_temperature") is not None:
        check_positive("scd_temperature", params["scd_temperature"])
    if "mask" in params and params["mask"] not in MASKS:
        raise ValueError(f"mask must be one of {', '.join(repr(m) for m in MASKS)}, got {params['mask']!r}")
    if "nkd_exclude_target" in params:
        check_flags(params, "nkd_exclude_target")


class SDD(Method):
    """The scales, the base loss's per-row terms and weights, the teacher classifier's frozen copy
    and the student's own classifier."""

    def __init__(self, spec: MethodSpec, params: dict[str, Any], ctx: MethodContext):
        super().__init__()
        self.spec = spec
        self.base = BASES[spec.name]
        self.scales = check_scales(params["scales"])
        self.complementary_weight = float(params["complementary_weight"])
        self.ce_weight = float(params["ce_weight"])
        self.term_weights = tuple(1.0 if k is None else float(params[k]) for k in self.base.weights)
        self.warmup_epochs = float(params["warmup_epochs"]) if self.base.warmup else 0.0
        self.row_terms = partial(self.base.rows, **{key: params[key] for key in self.base.keys})
        label = spec.name.upper().replace("_", "-")
        k_s = final_map(label, probe_features(ctx.student, ctx.input_shape), ctx.student, "student")
        k_t = final_map(label, probe_features(ctx.teacher, ctx.input_shape), ctx.teacher, "teacher")
        if k_s != k_t:
            raise ValueError(
                f"the student classifies {k_s} classes and the teacher {k_t}: their local logits cannot be compared"
            )
        # The teacher's classifier, frozen (not saved: it is the teacher's, rebuilt with it on resume).
        classifier = ctx.teacher.get_classifier()
        self.register_buffer("teacher_weight", classifier.weight.detach().clone().float(), persistent=False)
        bias = None if classifier.bias is None else classifier.bias.detach().clone().float()
        self.register_buffer("teacher_bias", bias, persistent=False)
        # The student's classifier: read at every step, owned (trained, saved) by the student.
        self._student_classifier = (ctx.student.get_classifier(),)

    def local_logits(self, student: Features, teacher: Features) -> tuple[Tensor, Tensor]:
        """The student's and the teacher's local logits, (B, K, N) each, float32."""
        classifier = self._student_classifier[0]
        z_s = sdd_local_logits(student.pre_pool.float(), classifier.weight, classifier.bias, self.scales)
        with torch.no_grad():
            z_t = sdd_local_logits(teacher.pre_pool.float(), self.teacher_weight, self.teacher_bias, self.scales)
        return z_s, z_t

    def forward(self, student, teacher, target, epoch, index=None):
        z_s, z_t = self.local_logits(student, teacher)
        terms = sdd_loss(z_s, z_t, target, self.row_terms, self.complementary_weight)
        w = warmup_factor(epoch, self.warmup_epochs)
        parts = {"ce": ce_term(student.logits, target, self.ce_weight)} if self.ce_weight else {}
        for name, weight, term in zip(self.base.parts, self.term_weights, terms, strict=True):
            parts[name] = w * weight * term
        return sum(parts.values()), parts


def _spec(name: str, config: type[MethodConfig], summary: str) -> MethodSpec:
    def build(params: dict[str, Any], ctx: MethodContext | None) -> Method:
        return SDD(spec, params, ctx)

    spec = MethodSpec(
        name,
        config,
        build,
        _check,
        summary=summary,
        teacher_needs=("feats", "classifier"),
        student_features=True,
    )
    return spec


SD_KD = _spec("sd_kd", SDKDConfig, "SDD on KD: 0.1·CE + 0.9·weighted mean KD over 1, 2x2, 4x4 regions, T = 4")
SD_DKD = _spec("sd_dkd", SDDKDConfig, "SDD on DKD: CE + warm-up·weighted mean (α·TCKD + β·NCKD) over the regions")
SD_NKD = _spec("sd_nkd", SDNKDConfig, "SDD on NKD: CE + warm-up·weighted mean NKD (γ = 8, T = 4) over the regions")
SD_RLD = _spec(
    "sd_rld", SDRLDConfig, "SDD on RLD (beyond the published code): CE + warm-up·weighted mean (α·SCD + β·MCD)"
)
SPECS = (SD_KD, SD_DKD, SD_NKD, SD_RLD)
