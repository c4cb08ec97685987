"""ABKD, α-β divergence knowledge distillation (Wang et al., ICML 2025):
L = ce_weight·CE + kd_weight·mean_b D_AB(p_t ‖ p_s).

p_t = softmax(z_t/T), p_s = softmax(z_s/T), and for α, β, α + β ≠ 0
D_AB(p ‖ q) = −1/(αβ) Σ_k [p_k^α q_k^β − α/(α+β) p_k^(α+β) − β/(α+β) q_k^(α+β)], with no T² factor
(see :func:`rld.losses.ab_divergence`). (α, β) = (1, 0) is forward KL, (0, 1) reverse KL: ABKD at
(1, 0) with weight 32 is KD at T = 4 with weight 2 (32 = 2·T²). Source: ghwang-s/abkd,
``standard_classification/distiller_zoo/abkl.py`` (ABKL, ``--distill ab``); ``helper/loops.py:94``
trains on r·CE + a·KL + b·ABKL with ``-r``, ``-a`` and ``-b``, and ``train_ab.sh:25`` passes
``-r 1 -b $b -a 0``.

Defaults, the one per-pair setting the repository publishes (resnet56→resnet20), taken for every pair:

* α = 0.8, β = 0.3: ``README.md:166-174`` (the ``train_ab.sh`` example: α + β from 1.1 to 1.1,
  α from 0.8 to 0.8), the same in the comment at ``standard_classification/train_ab.sh:14``;
* T = 4: ``train_student.py:66`` (``--kd_T`` default; ``train_ab.sh`` does not pass it);
* CE weight 1: ``train_ab.sh:25`` (``-r 1``);
* KD weight 32: ``README.md:174`` (``b``). The comment at ``train_ab.sh:14`` gives 64 for the same
  pair; rld takes the README's 32, the value its instructions run and the one that makes
  (α, β) = (1, 0) the repository's own KD baseline (``train_kd.sh``: ``-b 2`` at T = 4, ×T² = 32);
* no warm-up (only the repository's AB-DKD variant has one).

At α = 0, β = 0 or α + β = 0 rld takes the limits of the general formula (continuous in (α, β));
the published branches there (``abkl.py:25-60``) normalise by 1/α or 1/β instead of 1/α², 1/β²,
and so differ by that factor except at (1, 0) and (0, 1). The published settings use the general
case, where rld computes what the published code computes.

Logit standardization is the published AB-LSD (``--distill ls``, ``distiller_zoo/ls.py``; its
``normalize`` is :func:`rld.losses.standardize_logits`): the divergence reads z-scored logits and
is multiplied by T² (``ls.py:49``), the CE term reads the raw logits, and ``train_ls.sh:12, 27-31``
train it with CE weight 0.1, weight b = 9 and T = 2; the README's AB-LSD example for resnet56→resnet20
(``README.md:183-186``: ``train_ls.sh 1.2 1.2 0.9 0.9``) sets α = 0.9, β = 0.3. Switching it on sets
all of these (temperature = b, kd_weight = w, ce_weight 0.1, α 0.9, β 0.3); values you set
explicitly are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from rld.losses import ABKDLoss
from rld.methods.base import LSRule, MethodConfig, logit_spec


@dataclass
class ABKDConfig(MethodConfig):
    name: str = "abkd"
    alpha: float = 0.8  # exponent α of the α-β divergence (README.md:166-174)
    beta: float = 0.3  # exponent β (README.md:166-174)
    temperature: float = 4.0  # train_student.py:66
    kd_weight: float = 32.0  # b, README.md:174 (train_ab.sh:14's comment says 64)
    ce_weight: float = 1.0  # -r 1, train_ab.sh:25


# AB-LSD as published: train_ls.sh:27 (-r 0.1) and README.md:183-186 (α 0.9, β 0.3 for resnet56→resnet20).
AB_LSD_VALUES = (("ce_weight", 0.1), ("alpha", 0.9), ("beta", 0.3))

SPEC = logit_spec(
    "abkd",
    ABKDConfig,
    ABKDLoss,
    summary="CE + 32·D_AB(p_t ‖ p_s), the α-β divergence, α = 0.8, β = 0.3, T = 4, no T² (Wang et al. 2025)",
    ls=LSRule(temperatures=("temperature",), set_weights=("kd_weight",), set_values=AB_LSD_VALUES),
)
