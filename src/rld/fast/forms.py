"""Storage forms of stored teacher logits: what each keeps, what it costs, what it changes.

A stored teacher output is one record per (epoch, sample) view. Four forms, for ``C`` classes:

=========  ===========================================  ==================  =======================
form       record                                        bytes per sample    decoded logits
=========  ===========================================  ==================  =======================
float32    every logit                                   4·C (4000)          exact
float16    every logit, rounded to float16                2·C (2000)          relative error ≤ 2⁻¹¹
int8       every logit as a uint8 step above the row's    C + 8 (1008)        error ≤ step/2 per logit,
           minimum, step = (max − min)/255 (two float32)                      step = row range/255
topk       the k largest logits (float16) and their       4·k + 6 (86 at     the kept logits to float16;
           classes (int16), the true class's logit        k = 20)            every other class filled
           (float16) and the row's log-sum-exp (float32)                     (see below)
=========  ===========================================  ==================  =======================

(Bytes for C = 1000; ImageNet's 1.28 M training images make float16 2.6 GB per epoch, int8 1.3 GB,
top-20 110 MB.)

Top-k decoding fills every class it did not keep — neither among the k largest nor the true class —
with one logit: the one that gives those classes, at temperature 1, exactly the softmax mass the kept
classes leave over, spread evenly (the row's log-sum-exp is stored for that). The teacher's
probabilities of the kept classes at temperature 1 are then those of the full row, up to float16, and
the mass of the rest is right in total but flat: the FKD / ReLabel way of storing a soft label. A
method that reads how the teacher ranks the classes it did not keep — DKD's and RLD's non-target terms
(RLD's masked term reads every class below the true one), DIST's correlations, NKD's normalised
non-target distribution — sees a flat tail instead. Which form is exact enough for which method is
measured (``benchmarks/logit_forms.py``, benchmarks/RESULTS.md) and enforced by :func:`check_form`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rld.errors import UserError

FORMS = ("float32", "float16", "int8", "topk")
TOPK_DEFAULT = 20
INT8_LEVELS = 255

# The methods each form is exact enough for without an explicit opt-in (``train.cache_inexact``): the
# largest relative error of the loss and of its gradient that the form introduces, measured on
# 1000-class logits by benchmarks/logit_forms.py, is at most INEXACT_LOSS and INEXACT_GRAD.
INEXACT_LOSS = 1e-3
INEXACT_GRAD = 1e-2
EXACT_ENOUGH: dict[str, frozenset[str] | None] = {
    "float32": None,  # every method
    "float16": None,  # every logit method: loss ≤ 4e-5, gradient ≤ 9e-4 relative
    # int8: loss ≤ 1e-4, gradient ≤ 5e-3 for these; LR's right/wrong split turns on the teacher's argmax
    # and its margin, which the rounding moves (gradient up to 0.1 relative)
    "int8": frozenset({"kd", "dkd", "rld", "la", "rc", "ctkd", "dist", "nkd", "wttm", "abkd"}),
    # top-k, k ≤ 100: even KD at temperature 1 moves by 1e-2 (loss); the non-target terms far more
    "topk": frozenset(),
}


def check_form(form: str, k: int | None = None) -> None:
    """UserError unless ``form`` is a storage form (and ``k``, for top-k, a positive integer)."""
    if form not in FORMS:
        raise UserError(f"unknown storage form {form!r}: choose one of {', '.join(FORMS)}")
    if form == "topk" and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise UserError(f"the top-k form needs k >= 1, got {k!r}")


def check_method(form: str, method: str, opt_in: bool) -> None:
    """UserError when ``form`` distorts ``method``'s loss beyond the stated tolerance and the user
    did not opt in (``train.cache_inexact=true``)."""
    allowed = EXACT_ENOUGH[form]
    if allowed is None or method in allowed or opt_in:
        return
    raise UserError(
        f"teacher outputs stored as {form} change the loss or gradient of method {method!r} by more than "
        f"{INEXACT_LOSS:g} / {INEXACT_GRAD:g} relative (benchmarks/logit_forms.py): store them as float16, or "
        "set train.cache_inexact=true to train on them anyway"
    )


def record_bytes(form: str, num_classes: int, k: int = TOPK_DEFAULT) -> int:
    """Bytes one sample's record takes in ``form``."""
    check_form(form, k)
    return {
        "float32": 4 * num_classes,
        "float16": 2 * num_classes,
        "int8": num_classes + 8,
        "topk": 4 * min(k, num_classes) + 6,
    }[form]


def encode(logits: Tensor, targets: Tensor, form: str, k: int = TOPK_DEFAULT) -> dict[str, Tensor]:
    """The record of each row of ``logits`` (B, C) in ``form`` (named tensors with leading dim B).
    ``targets`` (B,): the true classes (the top-k form keeps their logits)."""
    check_form(form, k)
    z = logits.detach().float()
    if form == "float32":
        return {"logits": z.clone()}
    if form == "float16":
        return {"logits": z.half()}
    if form == "int8":
        lo, hi = z.amin(dim=1), z.amax(dim=1)
        step = ((hi - lo) / INT8_LEVELS).clamp_min(torch.finfo(torch.float32).tiny)
        q = torch.round((z - lo[:, None]) / step[:, None]).clamp_(0, INT8_LEVELS).to(torch.uint8)
        return {"q": q, "lo": lo, "step": step}
    k = min(k, z.shape[1])
    values, classes = z.topk(k, dim=1)
    if z.shape[1] > torch.iinfo(torch.int16).max:
        raise UserError(f"the top-k form stores classes as int16: {z.shape[1]} classes are too many")
    return {
        "values": values.half(),
        "classes": classes.to(torch.int16),
        "true": z.gather(1, targets.long()[:, None])[:, 0].half(),
        "lse": torch.logsumexp(z, dim=1),
    }


def decode(record: dict[str, Tensor], targets: Tensor, num_classes: int, form: str) -> Tensor:
    """(B, C) float32 logits from the records of ``form`` (see the module docstring)."""
    check_form(form, 1)
    if form in ("float32", "float16"):
        return record["logits"].float()
    if form == "int8":
        return record["lo"][:, None] + record["q"].float() * record["step"][:, None]
    values, classes = record["values"].float(), record["classes"].long()
    targets = targets.long()
    kept = torch.zeros(values.shape[0], num_classes, dtype=torch.bool, device=values.device)
    kept.scatter_(1, classes, True)
    true_kept = kept.gather(1, targets[:, None])[:, 0]
    kept.scatter_(1, targets[:, None], True)
    lse = record["lse"].float()
    # the softmax mass (temperature 1) of the kept classes, and the rest spread over the others
    mass = torch.exp(values - lse[:, None]).sum(dim=1) + torch.where(
        true_kept, 0.0, torch.exp(record["true"].float() - lse)
    )
    others = (num_classes - kept.sum(dim=1)).clamp_min(1)
    rest = (1.0 - mass).clamp_min(torch.finfo(torch.float32).tiny)
    fill = lse + torch.log(rest) - torch.log(others.float())
    out = fill[:, None].expand(-1, num_classes).clone()
    out.scatter_(1, targets[:, None], record["true"].float()[:, None])
    out.scatter_(1, classes, values)
    return out


def roundtrip(logits: Tensor, targets: Tensor, form: str, k: int = TOPK_DEFAULT) -> Tensor:
    """``decode(encode(logits))``: the logits a method trains on when they are stored in ``form``."""
    return decode(encode(logits, targets, form, k), targets, logits.shape[1], form)


def per_epoch_gb(form: str, num_samples: int, num_classes: int, k: int = TOPK_DEFAULT) -> float:
    """Gigabytes (10⁹ bytes) of one epoch's records."""
    return record_bytes(form, num_classes, k) * num_samples / 1e9


__all__ = [
    "EXACT_ENOUGH",
    "FORMS",
    "INEXACT_GRAD",
    "INEXACT_LOSS",
    "TOPK_DEFAULT",
    "check_form",
    "check_method",
    "decode",
    "encode",
    "per_epoch_gb",
    "record_bytes",
    "roundtrip",
]
