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

``logit_standardization``: the logits entering the distillation terms are z-scored per sample
(Sun et al. 2024). Switching it on also changes the method's hyper-parameters exactly as the
published training script of that paper does, with a base temperature b (``ls_temperature``,
default 2) and a weight w (``ls_weight``, default 9); values you set explicitly are kept (see
:func:`ls_adjustments` and each method's :class:`LSRule`):

=========  ===================================================================================
kd         kd_weight = w (set, not scaled), temperature = b; CE weight unchanged
ctkd       kd_weight = w; CE weight unchanged; the learned temperature keeps its range
la         temperature = b; its weight is unchanged (the published LA loss never reads it)
dkd        alpha·w, beta·w, temperature = b
rld        alpha·w, beta·w, temperature = b, scd_temperature = b
rc         kd_weight·w, rc_weight·w, temperature = b
lr         not defined by the published code: refused
=========  ===================================================================================
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
class LSRule:
    """What logit standardization does to a method's hyper-parameters, as the published training
    script of Sun et al. 2024 (``train.py`` of sunshangquan/logit-standardization-KD) sets them."""

    temperatures: tuple[str, ...] = ()  # set to the base temperature b
    set_weights: tuple[str, ...] = ()  # set to the weight w
    scaled_weights: tuple[str, ...] = ()  # multiplied by the weight w


@dataclass(frozen=True)
class MethodSpec:
    name: str
    loss: type[DistillationLoss]
    params: dict[str, Any]  # accepted parameters and their defaults
    needs_teacher: bool = True
    ls: LSRule | None = None  # None: logit standardization is not defined for the method (refused)
    teacher_outputs: tuple[str, ...] = ("logits",)


LS_TEMPERATURE = 2.0  # b, the base temperature of logit standardization
LS_WEIGHT = 9.0  # w, its distillation weight
LS_KEYS = ("logit_standardization", "ls_temperature", "ls_weight")  # taken by the config, not by the loss

_T = {"temperature": 4.0}
_T_ONLY = LSRule(temperatures=("temperature",))
METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        MethodSpec("vanilla", CELoss, {"ce_weight": 1.0}, needs_teacher=False),
        MethodSpec(
            "kd",
            KDLoss,
            {**_T, "ce_weight": 0.1, "kd_weight": 0.9},
            ls=LSRule(temperatures=("temperature",), set_weights=("kd_weight",)),
        ),
        MethodSpec(
            "dkd",
            DKDLoss,
            {"alpha": 1.0, "beta": 8.0, **_T, "warmup_epochs": 20.0, "ce_weight": 1.0},
            ls=LSRule(temperatures=("temperature",), scaled_weights=("alpha", "beta")),
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
            ls=LSRule(temperatures=("temperature", "scd_temperature"), scaled_weights=("alpha", "beta")),
        ),
        MethodSpec("la", LALoss, {**_T, "kd_weight": 1.0, "ce_weight": 0.0}, ls=_T_ONLY),
        MethodSpec(
            "rc",
            RCLoss,
            {**_T, "ce_weight": 1.0, "kd_weight": 1.0, "rc_weight": 0.1},
            ls=LSRule(temperatures=("temperature",), scaled_weights=("kd_weight", "rc_weight")),
        ),
        MethodSpec("lr", LRLoss, {"lambda1": 4.0, "lambda2": 1.0, "eta": 0.8}),
        # CTKD's curriculum (zhengli97/CTKD, train_student.py: --t_start 1 --t_end 20, cosine decay over 10 loops)
        MethodSpec(
            "ctkd",
            CTKDLoss,
            {"ce_weight": 0.1, "kd_weight": 0.9, "t_min": 1.0, "t_range": 20.0, "ramp_epochs": 10.0},
            ls=LSRule(set_weights=("kd_weight",)),
        ),
    ]
}


def list_methods() -> list[str]:
    return list(METHODS)


def get_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


def _refuse_ls(spec: MethodSpec) -> UserError:
    if not spec.needs_teacher:
        return UserError(f"method {spec.name!r} has no distillation term: method.logit_standardization does not apply")
    return UserError(
        f"method {spec.name!r} with method.logit_standardization=true is not defined by the published code of logit "
        "standardization; switch it off (methods that take it: "
        + ", ".join(n for n, s in METHODS.items() if s.ls is not None)
        + ")"
    )


def method_params(cfg) -> dict[str, Any]:
    """The keyword arguments of the method's loss from a ``MethodConfig`` (or a dict).

    Raises UserError for an unknown method, a parameter the method does not take, or a bad value.
    ``ls_temperature`` and ``ls_weight`` are used when the configuration is resolved
    (:func:`ls_adjustments`) and are not passed to the loss.
    """
    values = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    spec = get_spec(values.pop("name"))
    standardize = bool(values.pop("logit_standardization") or False)
    ls_given = sorted(k for k in LS_KEYS[1:] if values.pop(k, None) is not None)
    if standardize and spec.ls is None:
        raise _refuse_ls(spec)
    if ls_given and not standardize:
        raise UserError(
            f"method.{ls_given[0]} applies only with method.logit_standardization=true (it is ignored otherwise)"
        )
    given = {k: v for k, v in values.items() if v is not None}
    foreign = sorted(set(given) - set(spec.params))
    if foreign:
        takes = ", ".join([*spec.params, *(LS_KEYS if spec.ls is not None else ())])
        raise UserError(f"method {spec.name!r} does not take {', '.join(foreign)} (it takes: {takes})")
    params = {**spec.params, **given, "logit_standardization": standardize}
    try:
        spec.loss(**params)  # the loss validates its own values
    except ValueError as err:
        raise UserError(f"method {spec.name!r}: {err}") from err
    return params


def resolved_params(cfg) -> dict[str, Any]:
    """Every parameter the method runs with, for display: the loss's keyword arguments plus, under
    logit standardization, its base temperature and weight."""
    params = method_params(cfg)
    values = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    if params.get("logit_standardization"):
        for key in LS_KEYS[1:]:
            params[key] = values.get(key)
    return params


def ls_adjustments(method: dict, temperature: float | None = None, weight: float | None = None) -> dict:
    """The published logit-standardization setting for ``method`` (a MethodConfig dict): each
    value the method's :class:`LSRule` names, from the values in ``method`` (or the method's
    defaults where ``method`` has none), base temperature ``temperature`` (b, default 2) and
    weight ``weight`` (w, default 9). Raises UserError for a method without a rule (LR)."""
    spec = get_spec(method["name"])
    if spec.ls is None:
        raise _refuse_ls(spec)
    b = LS_TEMPERATURE if temperature is None else float(temperature)
    w = LS_WEIGHT if weight is None else float(weight)
    out: dict[str, float] = {key: b for key in spec.ls.temperatures}
    out.update({key: w for key in spec.ls.set_weights})
    for key in spec.ls.scaled_weights:
        value = method.get(key)
        out[key] = (spec.params[key] if value is None else value) * w
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


__all__ = [
    "LS_TEMPERATURE",
    "LS_WEIGHT",
    "METHODS",
    "LSRule",
    "Method",
    "MethodSpec",
    "build_method",
    "get_spec",
    "list_methods",
    "ls_adjustments",
    "method_params",
    "resolved_params",
]
