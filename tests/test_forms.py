"""Storage forms of teacher logits (rld.fast.forms): what each keeps, its size, and which methods it is
exact enough for — the policy checked against a fresh measurement."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from rld.errors import UserError
from rld.fast import forms

ROOT = Path(__file__).resolve().parents[1]


def _logits(b=64, c=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(b, c, generator=g)
    y = torch.randint(0, c, (b,), generator=g)
    z[torch.arange(b), y] += 6.0
    return z, y


def test_record_sizes_for_imagenet():
    assert [forms.record_bytes(f, 1000) for f in forms.FORMS] == [4000, 2000, 1008, 86]
    assert forms.record_bytes("topk", 1000, k=5) == 26
    assert forms.record_bytes("topk", 10, k=50) == 46  # k is capped at the classes
    assert forms.per_epoch_gb("float16", 1_281_167, 1000) == pytest.approx(2.562334)


def test_float_forms_round_as_their_dtypes():
    z, y = _logits()
    assert torch.equal(forms.roundtrip(z, y, "float32"), z)
    assert torch.equal(forms.roundtrip(z, y, "float16"), z.half().float())


def test_int8_keeps_every_logit_within_half_a_step_and_the_row_extremes():
    z, y = _logits()
    rec = forms.encode(z, y, "int8")
    assert rec["q"].dtype == torch.uint8 and rec["lo"].dtype == rec["step"].dtype == torch.float32
    step = (z.amax(1) - z.amin(1)) / 255
    torch.testing.assert_close(rec["step"], step)
    back = forms.decode(rec, y, 1000, "int8")
    assert ((back - z).abs() <= step[:, None] / 2 * (1 + 1e-5) + 1e-6).all()
    torch.testing.assert_close(back.amin(1), z.amin(1))
    torch.testing.assert_close(back.amax(1), z.amax(1), rtol=0, atol=1e-5)
    flat = torch.full((2, 5), 3.0)  # a constant row: no division by a zero range
    assert torch.equal(forms.roundtrip(flat, torch.zeros(2, dtype=torch.long), "int8"), flat)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_topk_keeps_the_largest_and_the_true_class_and_spreads_the_rest_of_the_mass(k):
    z, y = _logits(c=50)
    y[0] = z[0].argmin()  # a sample whose true class is not among the k largest
    back = forms.roundtrip(z, y, "topk", k)
    top = z.topk(k, dim=1).indices
    torch.testing.assert_close(back.gather(1, top), z.gather(1, top).half().float())
    torch.testing.assert_close(back.gather(1, y[:, None]), z.gather(1, y[:, None]).half().float())
    kept = torch.zeros_like(z, dtype=torch.bool).scatter_(1, top, True).scatter_(1, y[:, None], True)
    p, q = z.softmax(1), back.softmax(1)
    # the decoded row keeps the true log-sum-exp: each kept class has exp(its float16 logit − lse) at
    # temperature 1, and the others share what the kept ones leave over
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    torch.testing.assert_close(q[kept], torch.exp(back - lse)[kept], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close((q * ~kept).sum(1), 1 - (torch.exp(back - lse) * kept).sum(1), rtol=1e-4, atol=1e-6)
    # and so, up to the float16 rounding of the logits (|z| ≤ 16: 2**-7 absolute), the original's
    torch.testing.assert_close(q[kept], p[kept], rtol=1e-2, atol=1e-6)
    torch.testing.assert_close((q * ~kept).sum(1), (p * ~kept).sum(1), rtol=0, atol=1e-2)
    for row in range(z.shape[0]):  # flat: every other class gets one logit
        rest = back[row][~kept[row]]
        assert torch.equal(rest, rest[:1].expand_as(rest))


def test_bad_forms_and_methods_are_refused_in_one_line():
    with pytest.raises(UserError, match="unknown storage form 'bf16': choose one of float32, float16, int8, topk"):
        forms.check_form("bf16")
    with pytest.raises(UserError, match="the top-k form needs k >= 1, got 0"):
        forms.check_form("topk", 0)
    for method in ("kd", "dkd", "rld", "lr", "abkd"):
        forms.check_method("float16", method, opt_in=False)
    forms.check_method("int8", "rld", opt_in=False)
    with pytest.raises(
        UserError, match=r"stored as int8 change the loss or gradient of method 'lr'.*cache_inexact=true"
    ):
        forms.check_method("int8", "lr", opt_in=False)
    forms.check_method("int8", "lr", opt_in=True)
    with pytest.raises(UserError, match=r"stored as topk change the loss or gradient of method 'kd'"):
        forms.check_method("topk", "kd", opt_in=False)


def test_the_policy_allows_no_form_the_measurement_finds_inexact():
    """benchmarks/logit_forms.py on a fresh batch: every method EXACT_ENOUGH allows a form for stays
    within the stated tolerance, and the forms it refuses do exceed it for some method."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import logit_forms
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    report = logit_forms.measure(256, [20], [3])
    measured = {form: set(methods) for form, methods in report["exact_enough"].items()}
    assert forms.EXACT_ENOUGH["int8"] <= measured["int8"]
    assert forms.EXACT_ENOUGH["topk"] <= measured["top20"]
    assert set(report["errors"]) <= measured["float16"]  # float16: every logit method
    assert "lr" not in measured["top20"] and "rld" not in measured["top20"]
