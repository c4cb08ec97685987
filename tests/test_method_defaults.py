"""Every method's published defaults, pinned to literal values.

The presets set every value explicitly, so a changed default of a method's parameter dataclass
would pass every preset test; users who build a method from Python (``build_method``, ``method_params``,
the loss modules of :mod:`rld.losses`) get the dataclass's and the loss module's defaults. The table
below is written out from the published sources, independently of the method files; each entry
names where its values come from.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from rld import losses
from rld.losses import _fused
from rld.methods import METHODS, get_spec, method_params

# mdistiller = megvii-research/mdistiller, mdistiller/engine/cfg.py (the CFG.<METHOD> sections);
# RLD code = zju-SWJ/RLD (mdistiller fork), mdistiller/engine/cfg.py and mdistiller/distillers/*.py.
PUBLISHED: dict[str, dict] = {
    "vanilla": {"ce_weight": 1.0},  # the teachers' and students' cross-entropy training
    # mdistiller CFG.KD: TEMPERATURE 4, LOSS.CE_WEIGHT 0.1, LOSS.KD_WEIGHT 0.9
    "kd": {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9},
    # mdistiller CFG.DKD: ALPHA 1.0, BETA 8.0, T 4.0, WARMUP 20, CE_WEIGHT 1.0
    "dkd": {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 20.0, "ce_weight": 1.0},
    # RLD code cfg.py CFG.MY (RLD's section): ALPHA 1.0, BETA 8.0, T 4.0, WARMUP 20, CE_WEIGHT 1.0; the
    # paper's mask M_ge (Eq. 7); the SCD term at T unless scd_temperature is set
    "rld": {
        "alpha": 1.0,
        "beta": 8.0,
        "temperature": 4.0,
        "scd_temperature": None,
        "warmup_epochs": 20.0,
        "mask": "ge",
        "ce_weight": 1.0,
    },
    # RLD code distillers/SWAP.py: KD towards the swapped logits at CFG.KD.TEMPERATURE 4, unweighted, no CE
    "la": {"temperature": 4.0, "kd_weight": 1.0, "ce_weight": 0.0},
    # RLD code cfg.py CFG.RC: CE_WEIGHT 1.0, KD_WEIGHT 1.0, RC_WEIGHT 0.1, T 4.0
    "rc": {"temperature": 4.0, "ce_weight": 1.0, "kd_weight": 1.0, "rc_weight": 0.1},
    # RLD code distillers/REVISION.py __init__: lambda1 4., lambda2 1., eta 0.8
    "lr": {"lambda1": 4.0, "lambda2": 1.0, "eta": 0.8},
    # zhengli97/CTKD scripts/run_cifar_distill.sh: -r 0.1 -a 0.9 --t_start 1 --t_end 20 --decay_loops 10
    "ctkd": {"ce_weight": 0.1, "kd_weight": 0.9, "t_min": 1.0, "t_range": 20.0, "ramp_epochs": 10.0},
    # mdistiller CFG.FITNET: HINT_LAYER 2, LOSS.CE_WEIGHT 1.0, LOSS.FEAT_WEIGHT 100.0
    "fitnet": {"ce_weight": 1.0, "feat_weight": 100.0, "hint_layer": 2},
    # mdistiller CFG.AT: P 2, LOSS.CE_WEIGHT 1.0, LOSS.FEAT_WEIGHT 1000.0
    "at": {"ce_weight": 1.0, "feat_weight": 1000.0, "p": 2.0},
    # mdistiller CFG.RKD: DISTANCE_WEIGHT 25, ANGLE_WEIGHT 50, LOSS.CE_WEIGHT 1.0, LOSS.FEAT_WEIGHT 1.0
    "rkd": {"ce_weight": 1.0, "feat_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0},
    # mdistiller CFG.CRD: FEAT.DIM 128, LOSS.CE_WEIGHT 1.0, LOSS.FEAT_WEIGHT 0.8, NCE.K 16384,
    # NCE.MOMENTUM 0.5, NCE.TEMPERATURE 0.07
    "crd": {
        "ce_weight": 1.0,
        "feat_weight": 0.8,
        "feat_dim": 128,
        "nce_k": 16384,
        "nce_t": 0.07,
        "nce_momentum": 0.5,
    },
    # mdistiller CFG.OFD: LOSS.CE_WEIGHT 1.0, LOSS.FEAT_WEIGHT 0.001, CONNECTOR.KERNEL_SIZE 1; every stage
    # the teacher names, teacher in train mode (clovaai/overhaul-distillation train_with_distillation.py)
    "ofd": {"ce_weight": 1.0, "feat_weight": 0.001, "connector_kernel": 1, "stages": None, "teacher_train_mode": True},
    # mdistiller CFG.REVIEWKD: CE_WEIGHT 1.0, REVIEWKD_WEIGHT 1.0, WARMUP_EPOCHS 20, MAX_MID_CHANNEL 512,
    # STU_PREACT False; teacher in eval mode (mdistiller Distiller.train)
    "reviewkd": {
        "ce_weight": 1.0,
        "feat_weight": 1.0,
        "warmup_epochs": 20.0,
        "max_mid_channels": 512,
        "stu_preact": False,
        "teacher_train_mode": False,
    },
    # DefangChen/SimKD scripts/run_distill.sh: -c 0 -b 1; train_student.py: -f/--factor 2
    "simkd": {"ce_weight": 0.0, "feat_weight": 1.0, "factor": 2},
    # GzyAftermath/CAT-KD mdistiller/engine/cfg.py CFG.CAT_KD: LOSS.CE_WEIGHT 1.0, LOSS.CAT_loss_weight 400.0,
    # LOSS.CAM_RESOLUTION 2, IF_NORMALIZE True, IF_BINARIZE False
    "catkd": {
        "ce_weight": 1.0,
        "feat_weight": 400.0,
        "cam_resolution": 2,
        "normalize": True,
        "binarize_teacher": False,
    },
    # hunto/image_classification_sota configs/strategies/distill/dist_cifar.yaml: ori_loss_weight 1.,
    # kd_loss_weight 2., kd dist_t4 (DIST(beta=1, gamma=1, tau=4))
    "dist": {"beta": 1.0, "gamma": 1.0, "temperature": 4.0, "kd_weight": 2.0, "ce_weight": 1.0},
    # yzd-v/cls_KD configs/distillers/cifar100/res34_distill_res18_cifar.py: temp=3.0, gamma=3.5; CE 1
    "nkd": {"gamma": 3.5, "temperature": 3.0, "ce_weight": 1.0},
    # zkxufo/TTM README example: --ttm_l 0.2 ... -a 4 (a documented choice); helper/loops.py: -r 1
    "wttm": {"gamma": 0.2, "beta": 4.0, "ce_weight": 1.0},
    # Jin-Ying/Multi-Level-Logit-Distillation cfg.py CFG.KD: TEMPERATURE 4, LOSS.CE_WEIGHT 0.1,
    # LOSS.KD_WEIGHT 0.9; KD_ours.py: np.percentile(..., 50)
    "mlkd": {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9, "percentile": 50.0},
    # Weijia-Zhang/CRLD cfg.py CFG.CRLD: TEMPERATURE 4, TAU_W 0.9, TAU_S 0.2, WV_WEIGHT 2.0, CV_WEIGHT 0.5,
    # CE_WEIGHT 1.0 (tests/test_crld.py pins them beside the presets)
    "crld": {
        "temperature": 4.0,
        "tau_w": 0.9,
        "tau_s": 0.2,
        "within_weight": 2.0,
        "cross_weight": 0.5,
        "ce_weight": 1.0,
    },
    # ABKD README.md:166-174 (alpha 0.8, beta 0.3, b 32), train_student.py:66 (T 4), train_ab.sh:25 (-r 1)
    "abkd": {"alpha": 0.8, "beta": 0.3, "temperature": 4.0, "kd_weight": 32.0, "ce_weight": 1.0},
    # shicaiwei123/SDD-CVPR2024: train.py:184 --M [1,2,4]; the hard-coded region weight 2 (KD.py:89-90);
    # cfg.py:61-64 (KD), 163-167 (DKD); SDD_nkd.py:53, 162-165; SD-RLD takes RLD's (tests/test_sdd.py)
    "sd_kd": {"scales": [1, 2, 4], "complementary_weight": 2.0, "temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9},
    "sd_dkd": {
        "scales": [1, 2, 4],
        "complementary_weight": 2.0,
        "alpha": 1.0,
        "beta": 8.0,
        "temperature": 4.0,
        "warmup_epochs": 20.0,
        "ce_weight": 1.0,
    },
    "sd_nkd": {
        "scales": [1, 2, 4],
        "complementary_weight": 2.0,
        "gamma": 8.0,
        "temperature": 4.0,
        "warmup_epochs": 20.0,
        "ce_weight": 1.0,
        "nkd_exclude_target": False,
    },
    "sd_rld": {
        "scales": [1, 2, 4],
        "complementary_weight": 2.0,
        "alpha": 1.0,
        "beta": 8.0,
        "temperature": 4.0,
        "scd_temperature": None,
        "warmup_epochs": 20.0,
        "mask": "ge",
        "ce_weight": 1.0,
    },
}
# logit standardization (sunshangquan/logit-standardization-KD): off, with its b and w unset (2 and 9)
BASE = {"logit_standardization": False, "ls_temperature": None, "ls_weight": None}

# The loss modules of rld.losses that take a method's parameters, built with no arguments: the same
# published values. (WTTMLoss has no defaults: the published code sets gamma per pair.)
LOSS_MODULES = {
    "kd": losses.KDLoss,
    "dkd": losses.DKDLoss,
    "rld": losses.RLDLoss,
    "la": losses.LALoss,
    "rc": losses.RCLoss,
    "lr": losses.LRLoss,
    "ctkd": losses.CTKDLoss,
    "dist": losses.DISTLoss,
    "nkd": losses.NKDLoss,
    "mlkd": losses.MLKDLoss,
    "abkd": losses.ABKDLoss,
    "crld": losses.CRLDLoss,
}


def test_the_table_names_every_registered_method():
    assert set(PUBLISHED) == set(METHODS)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_the_parameter_dataclass_holds_the_published_defaults(name):
    spec = get_spec(name)
    assert dataclasses.asdict(spec.config()) == {"name": name, **BASE, **PUBLISHED[name]}
    # what build_method is given for a method section naming nothing but the method
    assert method_params({"name": name}) == {**PUBLISHED[name], "logit_standardization": False}


@pytest.mark.parametrize("name", list(LOSS_MODULES))
def test_a_loss_module_built_without_arguments_holds_the_published_defaults(name):
    module = LOSS_MODULES[name]()
    held = {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training"}
    if name == "ctkd":  # the learned temperature's range and ramp live in its own module
        t = module.temperature
        held.update(t_min=t.t_min, t_range=t.t_range, ramp_epochs=t.ramp_epochs)
        assert t.theta.item() == 1.0  # θ starts at 1 (CTKD train_student.py)
    want = {**PUBLISHED[name], "logit_standardization": False}
    if name == "lr":  # LR's loss has its own CE on the right samples: no separate CE weight
        want["ce_weight"] = 0.0
    assert held == want


# The keyword defaults of rld.losses' functions (users call them in their own loops), written out:
# the same published values as above where a method's parameter, else the published constant named.
FUNCTION_DEFAULTS: dict[str, dict] = {
    "kd_loss": {"temperature": 4.0, "reduction": "mean"},  # CFG.KD.TEMPERATURE
    "dkd_loss": {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "reduction": "mean"},  # CFG.DKD
    "dkd_terms": {"temperature": 4.0, "reduction": "mean"},
    "rld_loss": {
        "alpha": 1.0,
        "beta": 8.0,
        "temperature": 4.0,
        "scd_temperature": None,
        "mask": "ge",
        "reduction": "mean",
    },
    "rld_terms": {"temperature": 4.0, "scd_temperature": None, "mask": "ge", "reduction": "mean"},
    "mask_ge": {"mask": "ge"},
    "rc_loss": {"temperature": 4.0},  # CFG.RC.T
    "label_revision_loss": {"lambda1": 4.0, "lambda2": 1.0, "eta": 0.8},  # REVISION.py
    "ctkd_lambda": {"ramp_epochs": 10},  # CTKD --decay_loops 10
    # logit standardization: (z - mean) / (1e-7 + std) (logit-standardization-KD's normalize)
    "standardize_logits": {"eps": 1e-7},
    "at_loss": {"p": 2.0},  # CFG.AT.P
    "attention_map": {"p": 2.0},
    "cat_loss": {"resolution": 2, "normalize": False, "binarize_teacher": False},  # CAM_RESOLUTION 2
    "crd_scores": {"temperature": 0.07},  # CFG.CRD.NCE.TEMPERATURE
    "crd_nce_loss": {"eps": 1e-7},  # RepDistiller crd/criterion.py: eps = 1e-7
    "rkd_loss": {"distance_weight": 25.0, "angle_weight": 50.0, "squared": False, "eps": 1e-12},  # CFG.RKD
    "dist_loss": {"beta": 1.0, "gamma": 1.0, "temperature": 4.0, "eps": 1e-8},  # DIST(beta=1, gamma=1, tau=4)
    "dist_terms": {"temperature": 4.0, "eps": 1e-8},
    "nkd_loss": {"gamma": 3.5, "temperature": 3.0, "reduction": "mean"},  # cls_KD temp=3.0, gamma=3.5
    "nkd_terms": {"temperature": 3.0, "reduction": "mean", "exclude_target": True},  # NKD drops the target
    "mlkd_loss": {"temperature": 4.0, "percentile": 50.0, "standardize_kd": False},
    "mlkd_terms": {"temperature": 4.0, "percentile": 50.0, "standardize_kd": False},
    "mlkd_mask_fractions": {"percentile": 50.0},
    "ab_divergence": {"alpha": 0.8, "beta": 0.3, "temperature": 4.0},
    "crld_loss": {"temperature": 4.0, "tau_w": 0.9, "tau_s": 0.2, "within_weight": 2.0, "cross_weight": 0.5},
    "crld_terms": {"temperature": 4.0, "tau_w": 0.9, "tau_s": 0.2},
    "crld_masks": {"tau_w": 0.9, "tau_s": 0.2},
    "sdd_local_logits": {"bias": None, "scales": (1, 2, 4)},
    "sdd_pool": {"scales": (1, 2, 4)},
    "sdd_loss": {"complementary_weight": 2.0},
    "sdd_weights": {"complementary_weight": 2.0},
}
# classes and internal functions users reach
CLASS_DEFAULTS: dict[str, dict] = {
    "CTKDTemperature": {"t_min": 1.0, "t_range": 20.0, "init": 1.0, "ramp_epochs": 10},  # CTKD: θ starts at 1
}


def _defaults(fn) -> dict:
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty and p.kind != p.VAR_KEYWORD}


def test_the_loss_functions_keyword_defaults_are_the_published_values():
    public = {n: getattr(losses, n) for n in losses.__all__}
    with_defaults = {n for n, f in public.items() if not inspect.isclass(f) and callable(f) and _defaults(f)}
    assert with_defaults == set(FUNCTION_DEFAULTS)
    for name, want in FUNCTION_DEFAULTS.items():
        assert _defaults(public[name]) == want, name
    for name, want in CLASS_DEFAULTS.items():
        assert _defaults(public[name]) == want, name
    # the kernel of DKD and RLD: the plain sum of its two terms unless weighted
    assert _defaults(_fused.decoupled_kernel) == {"alpha": 1.0, "beta": 1.0}
