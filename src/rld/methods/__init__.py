"""Training methods: what a run optimises, registered by name.

A method is a small module that turns the student's (and, if it needs one, the frozen
teacher's) outputs into ``(total_loss, parts)``. It declares what it needs from the teacher
(``teacher_outputs``; logits for every method here) and may own trainable modules (CTKD's
temperature), which the engine hands to the optimizer with the student's parameters. The engine
never branches on a method's name.

Methods and their defaults (the CIFAR-100 values of the papers; presets set the rest):

=========  =====================================================================================
vanilla    CE only (teachers and student baselines)
kd         0.1·CE + 0.9·KD, T = 4 (Hinton et al. 2015)
dkd        CE + warm-up·(α·TCKD + β·NCKD), α = 1, β = 8, T = 4, 20 warm-up epochs (Zhao et al. 2022)
rld        CE + warm-up·(α·SCD + β·MCD), α = 1, β = 8, T = 4, M_ge, 20 warm-up epochs (Sun et al.)
la         KD towards the teacher logits with max and true class swapped, T = 4, no CE (Wen et al.)
rc         1·CE + 1·KD + 0.1·RC, T = 4 (Cao et al. 2023)
lr         label revision: CE + 4·MSE on right samples, 1·MSE to revised targets on wrong ones
ctkd       0.1·CE + 0.9·KD at a learned temperature with gradient reversal (Li et al. 2023)
=========  =====================================================================================

``logit_standardization`` (every method): the logits entering the distillation terms are
z-scored per sample (Sun et al. 2024). As in the published code of that paper, switching it on
also sets the base temperature to 2 and multiplies the distillation weights by 9 — applied to
the preset's values, while values you set explicitly are kept (see :func:`ls_adjustments`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from rld.errors import UserError
from rld.losses import CTKDLoss, DistillationLoss, DKDLoss, KDLoss, LALoss, LRLoss, RCLoss, RLDLoss


class CELoss(DistillationLoss):
    """Cross-entropy only; the same call signature as the distillation losses."""

    def forward(self, student_logits: Tensor, teacher_logits: Tensor | None, target: Tensor, epoch=1):
        return self.total({"ce": self.ce(student_logits, target)})


@dataclass(frozen=True)
class MethodSpec:
    name: str
    loss: type[DistillationLoss]
    params: dict[str, Any]  # accepted parameters and their defaults
    needs_teacher: bool = True
    distill_weights: tuple[str, ...] = ()  # scaled by 9 under logit standardization
    teacher_outputs: tuple[str, ...] = ("logits",)


LS_TEMPERATURE = 2.0
LS_WEIGHT_SCALE = 9.0

_T = {"temperature": 4.0}
METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        MethodSpec("vanilla", CELoss, {"ce_weight": 1.0}, needs_teacher=False),
        MethodSpec("kd", KDLoss, {**_T, "ce_weight": 0.1, "kd_weight": 0.9}, distill_weights=("kd_weight",)),
        MethodSpec(
            "dkd",
            DKDLoss,
            {"alpha": 1.0, "beta": 8.0, **_T, "warmup_epochs": 20.0, "ce_weight": 1.0},
            distill_weights=("alpha", "beta"),
        ),
        MethodSpec(
            "rld",
            RLDLoss,
            {
                "alpha": 1.0,
                "beta": 8.0,
                **_T,
                "scd_temperature": None,
                "warmup_epochs": 20.0,
                "mask": "ge",
                "ce_weight": 1.0,
            },
            distill_weights=("alpha", "beta"),
        ),
        MethodSpec("la", LALoss, {**_T, "kd_weight": 1.0, "ce_weight": 0.0}, distill_weights=("kd_weight",)),
        MethodSpec(
            "rc",
            RCLoss,
            {**_T, "ce_weight": 1.0, "kd_weight": 1.0, "rc_weight": 0.1},
            distill_weights=("kd_weight", "rc_weight"),
        ),
        MethodSpec("lr", LRLoss, {"lambda1": 4.0, "lambda2": 1.0, "eta": 0.8}, distill_weights=("lambda1", "lambda2")),
        MethodSpec("ctkd", CTKDLoss, {"ce_weight": 0.1, "kd_weight": 0.9}, distill_weights=("kd_weight",)),
    ]
}


def list_methods() -> list[str]:
    return list(METHODS)


def get_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


def method_params(cfg) -> dict[str, Any]:
    """The keyword arguments of the method's loss from a ``MethodConfig`` (or a dict).

    Raises UserError for an unknown method, a parameter the method does not take, or a bad value.
    """
    values = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    spec = get_spec(values.pop("name"))
    standardize = bool(values.pop("logit_standardization") or False)
    given = {k: v for k, v in values.items() if v is not None}
    foreign = sorted(set(given) - set(spec.params))
    if foreign:
        takes = ", ".join([*spec.params, "logit_standardization"])
        raise UserError(f"method {spec.name!r} does not take {', '.join(foreign)} (it takes: {takes})")
    params = {**spec.params, **given, "logit_standardization": standardize}
    try:
        spec.loss(**params)  # the loss validates its own values
    except ValueError as err:
        raise UserError(f"method {spec.name!r}: {err}") from err
    return params


def ls_adjustments(method: dict) -> dict:
    """The published logit-standardization setting for ``method`` (a MethodConfig dict):
    base temperature 2 and the distillation weights ×9, relative to the values in ``method``
    (or the method's defaults where ``method`` has none)."""
    spec = get_spec(method["name"])
    out: dict[str, float] = {}
    if "temperature" in spec.params:
        out["temperature"] = LS_TEMPERATURE
    for key in spec.distill_weights:
        value = method.get(key)
        out[key] = (spec.params[key] if value is None else value) * LS_WEIGHT_SCALE
    return out


class Method(nn.Module):
    """A configured method: ``method(student_logits, teacher_logits, target, epoch) → (total, parts)``."""

    def __init__(self, spec: MethodSpec, params: dict[str, Any]):
        super().__init__()
        self.spec = spec
        self.params = params
        self.loss = spec.loss(**params)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def needs_teacher(self) -> bool:
        return self.spec.needs_teacher

    @property
    def teacher_outputs(self) -> tuple[str, ...]:
        return self.spec.teacher_outputs

    def forward(self, student_logits: Tensor, teacher_logits: Tensor | None, target: Tensor, epoch: float):
        return self.loss(student_logits, teacher_logits, target, epoch)


def build_method(cfg) -> Method:
    """A :class:`Method` from a ``MethodConfig``."""
    params = method_params(cfg)
    name = cfg.name if hasattr(cfg, "name") else cfg["name"]
    return Method(get_spec(name), params)


__all__ = ["METHODS", "Method", "MethodSpec", "build_method", "get_spec", "list_methods", "ls_adjustments"]
