"""Training methods: what a run optimises, registered by name — one file per method.

Each file holds a method's typed parameters (a :class:`~rld.methods.base.MethodConfig` subclass
with the published defaults), its module and its :class:`~rld.methods.base.MethodSpec`; this
registry is the single list of them. A method declares what it reads from the teacher and the
student (:mod:`rld.methods.base`), and the engine supplies exactly that; it never branches on a
method's name.

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
fitnet     CE + 100·MSE(regressor(student hint layer), teacher guided layer), layer 2 (Romero et al.)
at         CE + 1000·attention-map MSE over the stages, p = 2 (Zagoruyko & Komodakis 2017)
rkd        CE + 25·distance + 50·angle relations of the pooled features (Park et al. 2019)
crd        CE + 0.8·contrastive NCE of 128-d embeddings against 16,384 other-class negatives (Tian et al.)
ofd        CE + 0.001·partial L2 of connected student pre-ReLU stages to the margin-clipped teacher
reviewkd   CE + warm-up·HCL of the attention-fused student stages to the teacher's (Chen et al. 2021)
simkd      projector P to the teacher's final feature map, MSE weight 1, no CE; predicts with the
           teacher's classifier on the pooled P(f_s) (Chen et al. 2022)
catkd      CE + β·MSE of the class activation maps pooled to 2×2 (Guo et al. 2023)
dist       CE + 2·(β·inter + γ·intra), Pearson relations of the softmaxes, β = γ = 1, T = 4 (Huang et al.)
nkd        CE + t_y-weighted target term + γ·normalized non-target term, γ = 3.5, T = 3 (Yang et al. 2023)
wttm       CE + β·U_γ(p_t)·KL(power-transformed teacher ‖ student), γ = 0.2, β = 4 (a documented choice:
           the published per-pair values are in the paper's appendix only; Zheng & Yang 2024)
mlkd       0.1·(CE(weak) + CE(strong)) + 0.9·(KD at T, 3, 5, 2, 6 + class- and batch-level Gram
           alignment), T = 4, on a weak and a strong (RandAugment + Cutout) view of every image: its
           own augmentation (``views=("weak", "strong")``; Jin et al. 2023)
abkd       CE + 32·D_AB(p_t ‖ p_s), the α-β divergence of the tempered softmaxes, α = 0.8, β = 0.3,
           T = 4, no T² factor (the published resnet56→resnet20 setting, for every pair; Wang et al. 2025)
sd_kd      SDD (Wei et al. 2024) on KD: the final maps pooled over 1x1, 2x2, 4x4 regions (scales
           [1, 2, 4]), each region's logits from the network's own classifier, region weights 2
           where the teacher's region and global predictions disagree about the label, else 1;
           0.1·CE + 0.9·weighted mean T²·KL over the N·B regions, T = 4, no warm-up
sd_dkd     SDD on DKD: CE + warm-up·weighted mean (α·TCKD + β·NCKD), α = 1, β = 8, T = 4, 20 epochs
sd_nkd     SDD on NKD: CE + warm-up·weighted mean (target + γ·non-target term), γ = 8, T = 4, 20
           epochs; the published code's non-target term keeps the target class (an option removes it)
sd_rld     SDD on RLD (beyond the published code): CE + warm-up·weighted mean (α·SCD + β·MCD),
           RLD's α = 1, β = 8, T = 4, M_ge, 20 epochs
crld       CE(weak) + CE(strong) + 2·within-view KD (each view's student to its teacher) + 0.5·cross-view
           KD (each view's student to the other view's teacher), T = 4, per sample, gated by the
           teacher's confidence (weak view ≥ 0.9 for the within-view terms, strong view ≥ 0.2 for the
           cross-view ones), on MLKD's two views (Zhang et al. 2024)
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
mlkd       kd_weight = w (set), temperature = b; CE weight unchanged; only its KD terms standardized
abkd       the published AB-LSD: kd_weight = w (set), temperature = b, ce_weight 0.1, α 0.9, β 0.3
           (set), and the divergence ×T²
lr         not defined by the published code: refused
others     not defined by the published code (the feature methods, DIST, NKD, WTTM, CRLD, the SDD variants): refused
=========  ===================================================================================
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rld.errors import UserError
from rld.methods import (
    abkd,
    at,
    catkd,
    crd,
    crld,
    ctkd,
    dist,
    dkd,
    fitnet,
    kd,
    la,
    lr,
    mlkd,
    nkd,
    ofd,
    rc,
    reviewkd,
    rkd,
    rld,
    sdd,
    simkd,
    vanilla,
    wttm,
)
from rld.methods.base import (
    LS_KEYS,
    TEACHER_OUTPUTS,
    LSRule,
    Method,
    MethodConfig,
    MethodContext,
    MethodSpec,
    StrongView,
    TwoViewLogitMethod,
    logits_only,
)

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        *(
            module.SPEC
            for module in (
                vanilla,
                kd,
                dkd,
                rld,
                la,
                rc,
                lr,
                ctkd,
                fitnet,
                at,
                rkd,
                crd,
                ofd,
                reviewkd,
                simkd,
                catkd,
                dist,
                nkd,
                wttm,
                mlkd,
                crld,
                abkd,
            )
        ),
        *sdd.SPECS,  # sd_kd, sd_dkd, sd_nkd, sd_rld: one method over four base losses
    )
}

LS_TEMPERATURE = 2.0  # b, the base temperature of logit standardization
LS_WEIGHT = 9.0  # w, its distillation weight


def list_methods() -> list[str]:
    return list(METHODS)


def get_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


def method_config(name: str) -> type[MethodConfig]:
    """The typed ``method`` section of method ``name`` (its fields are the ``method.*`` keys it takes)."""
    return get_spec(name).config


def _refuse_ls(spec: MethodSpec) -> UserError:
    if not spec.needs_teacher:
        return UserError(f"method {spec.name!r} has no distillation term: method.logit_standardization does not apply")
    return UserError(
        f"method {spec.name!r} with method.logit_standardization=true is not defined by the published code of logit "
        "standardization; switch it off (methods that take it: "
        + ", ".join(n for n, s in METHODS.items() if s.ls is not None)
        + ")"
    )


def _values(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def method_params(cfg) -> dict[str, Any]:
    """The parameters a method is built with, from its ``method`` section (a config or a dict).

    Raises UserError for an unknown method, a parameter the method does not take, or a bad value.
    ``ls_temperature`` and ``ls_weight`` are used when the configuration is resolved
    (:func:`ls_adjustments`) and are not passed on.
    """
    values = _values(cfg)
    spec = get_spec(values.pop("name"))
    standardize = bool(values.pop("logit_standardization", False) or False)
    ls_given = sorted(k for k in LS_KEYS[1:] if values.pop(k, None) is not None)
    if standardize and spec.ls is None:
        raise _refuse_ls(spec)
    if ls_given and not standardize:
        raise UserError(
            f"method.{ls_given[0]} applies only with method.logit_standardization=true (it is ignored otherwise)"
        )
    foreign = sorted(k for k, v in values.items() if k not in spec.params and v is not None)
    if foreign:
        takes = ", ".join([*spec.params, *(LS_KEYS if spec.ls is not None else ())])
        raise UserError(f"method {spec.name!r} does not take {', '.join(foreign)} (it takes: {takes})")
    given = {k: v for k, v in values.items() if k in spec.params}
    params = {**spec.params, **given, "logit_standardization": standardize}
    try:
        spec.check(params)  # the method validates its own values
    except ValueError as err:
        raise UserError(f"method {spec.name!r}: {err}") from err
    return params


def resolved_params(cfg) -> dict[str, Any]:
    """Every parameter the method runs with, for display: its parameters plus, under logit
    standardization, its base temperature and weight."""
    params = method_params(cfg)
    values = _values(cfg)
    if params.get("logit_standardization"):
        for key in LS_KEYS[1:]:
            params[key] = values.get(key)
    return params


def ls_adjustments(method: dict, temperature: float | None = None, weight: float | None = None) -> dict:
    """The published logit-standardization setting for ``method`` (a ``method`` section as a dict):
    each value the method's :class:`LSRule` names, from the values in ``method`` (or the method's
    defaults where ``method`` has none), base temperature ``temperature`` (b, default 2), weight
    ``weight`` (w, default 9) and the values the rule sets outright. Raises UserError for a method
    without a rule (LR)."""
    spec = get_spec(method["name"])
    if spec.ls is None:
        raise _refuse_ls(spec)
    b = LS_TEMPERATURE if temperature is None else float(temperature)
    w = LS_WEIGHT if weight is None else float(weight)
    out: dict[str, float] = {key: b for key in spec.ls.temperatures}
    out.update({key: w for key in spec.ls.set_weights})
    out.update(dict(spec.ls.set_values))
    for key in spec.ls.scaled_weights:
        value = method.get(key)
        out[key] = (spec.params[key] if value is None else value) * w
    return out


def build_method(cfg, ctx: MethodContext | None = None) -> Method:
    """A :class:`Method` from its ``method`` section (a config or a dict) and, for methods that read
    features, a :class:`MethodContext`. A method's own modules are initialised from a random stream
    of their own (seeded by ``ctx.seed``): building them leaves the global random state as it was."""
    import torch

    params = method_params(cfg)
    spec = get_spec(_values(cfg)["name"])
    if not spec.reads_features:
        return spec.build(params, ctx)
    if ctx is None or (ctx.teacher is None and spec.needs_teacher):
        raise UserError(f"method {spec.name!r} reads features: it is built with the student and teacher models")
    # the CPU generator only (modules are made on the host): torch.manual_seed would also reseed
    # every GPU's generator, which fork_rng(devices=[]) does not put back
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(ctx.seed)
        try:
            return spec.build(params, ctx)
        except ValueError as err:
            raise UserError(f"method {spec.name!r}: {err}") from err


__all__ = [
    "LS_KEYS",
    "LS_TEMPERATURE",
    "LS_WEIGHT",
    "METHODS",
    "TEACHER_OUTPUTS",
    "LSRule",
    "Method",
    "MethodConfig",
    "MethodContext",
    "MethodSpec",
    "StrongView",
    "TwoViewLogitMethod",
    "build_method",
    "get_spec",
    "list_methods",
    "logits_only",
    "ls_adjustments",
    "method_config",
    "method_params",
    "resolved_params",
]
