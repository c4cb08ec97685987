"""The losses where the easy cases agree and only an edge tells right from wrong: the precision the
CRLD masks are computed in (cases on the threshold, found once by search), CTKD's ramp outside
[0, R] and between whole epochs on the tensor path, the default epoch and defaults of the modules,
and refusals naming the argument."""

from __future__ import annotations

import math

import pytest
import torch

from rld.losses import (
    CTKDTemperature,
    DKDLoss,
    LossInputError,
    LRLoss,
    RLDLoss,
    crld_loss,
    crld_masks,
    ctkd_lambda,
    dist_loss,
    dist_terms,
    label_revision_loss,
    swap_teacher_logits,
)
from rld.losses.kd import standardize_logits


def test_crld_masks_are_computed_in_float32_from_half_precision_logits():
    # softmax([2.171875, 0]) = 0.89773 in float32 (< 0.9), but not below 0.9 when computed in bfloat16
    z = torch.tensor([[2.171875, 0.0]], dtype=torch.bfloat16)
    assert (torch.softmax(z, 1).amax(1) >= 0.9).item() and not (torch.softmax(z.float(), 1).amax(1) >= 0.9).item()
    mask_w, mask_s = crld_masks(z, z.clone(), tau_w=0.9, tau_s=0.9)
    assert mask_w.tolist() == [False] and mask_s.tolist() == [False]
    assert mask_w.dtype == torch.bool


def test_crld_masks_are_computed_in_float64_when_either_view_is():
    # p = 0.9 − 2e-17 in float64 (< 0.9), rounded to 0.9 in float32
    z64 = torch.tensor([[2.1972235443362194, 0.0]], dtype=torch.float64)
    z32 = torch.zeros(1, 2)
    assert (torch.softmax(z32.new_tensor(z64.tolist()), 1).amax() >= 0.9).item()
    assert not (torch.softmax(z64, 1).amax() >= 0.9).item()
    assert crld_masks(z64, z32, tau_w=0.9, tau_s=0.9)[0].tolist() == [False]
    assert crld_masks(z32, z64, tau_w=0.9, tau_s=0.9)[1].tolist() == [False]
    assert crld_masks(z32 + torch.tensor([[5.0, 0.0]]), z64, tau_w=0.9, tau_s=0.5)[0].tolist() == [True]


def test_ctkd_lambda_on_the_tensor_path_follows_the_float_path_everywhere():
    for ramp in (10.0, 4.0):
        for epoch in (-3.0, 0.0, 0.25, 0.5, 1.0, 2.5, 4.0, 7.5, 10.0, 15.0, 300.0):
            expected = -(1 - math.cos(math.pi * min(max(epoch, 0.0), ramp) / ramp)) / 2
            got = ctkd_lambda(torch.tensor(epoch, dtype=torch.float64), ramp)
            assert isinstance(got, torch.Tensor)
            assert got.item() == pytest.approx(expected, abs=1e-12), (ramp, epoch)
            assert ctkd_lambda(epoch, ramp) == pytest.approx(expected, abs=1e-15)
    assert ctkd_lambda(torch.tensor(0.5)).item() == pytest.approx(-(1 - math.cos(math.pi * 0.05)) / 2, abs=1e-7)


def test_ctkd_temperature_reverses_its_gradient_on_its_own_ramp():
    for ramp in (10.0, 2.0):
        tau = CTKDTemperature(ramp_epochs=ramp)
        out = tau(1.0)
        out.backward()
        sig = torch.sigmoid(torch.tensor(1.0)).item()
        # dτ/dθ = t_range·σ(θ)(1 − σ(θ)), scaled by λ(1, ramp)
        assert tau.theta.grad.item() == pytest.approx(20.0 * sig * (1 - sig) * ctkd_lambda(1.0, ramp), rel=1e-6)
        assert out.item() == pytest.approx(1.0 + 20.0 * sig, rel=1e-6)


def _logits(seed: int = 0, b: int = 6, c: int = 7, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, c, generator=g, dtype=dtype),
        torch.randn(b, c, generator=g, dtype=dtype) * 2,
        torch.arange(b) % c,
    )


@pytest.mark.parametrize("module", [DKDLoss, RLDLoss])
def test_the_warm_up_of_a_module_starts_at_epoch_1_by_default(module):
    s, t, y = _logits()
    loss = module()
    at_default, parts = loss(s, t, y)
    assert at_default.item() == loss(s, t, y, epoch=1)[0].item()
    assert at_default.item() != loss(s, t, y, epoch=2)[0].item()
    assert loss(s, t, y, epoch=torch.tensor(1.0, dtype=torch.float64))[0].item() == pytest.approx(at_default.item())


def test_label_revision_passes_logit_standardization_on():
    s, t, y = _logits(1)
    on = LRLoss(logit_standardization=True)(s, t, y)[0]
    assert on.item() == pytest.approx(
        label_revision_loss(standardize_logits(s), standardize_logits(t), y, 4.0, 1.0, 0.8).item()
    )
    assert on.item() != pytest.approx(LRLoss()(s, t, y)[0].item())


def test_dist_and_crld_defaults_are_the_published_values():
    s, t, _ = _logits(2)
    assert dist_terms(s, t) == dist_terms(s, t, temperature=4.0)
    assert dist_loss(s, t).item() == dist_loss(s, t, beta=1.0, gamma=1.0, temperature=4.0).item()
    assert dist_loss(s, t).item() != dist_loss(s, t, temperature=5.0).item()
    sw, tw, _ = _logits(3)
    ss, ts, _ = _logits(4)
    tw, ts = tw * 3, ts * 3  # confident teachers: both masks hold samples
    published = crld_loss(sw, tw, ss, ts, temperature=4.0, tau_w=0.9, tau_s=0.2, within_weight=2.0, cross_weight=0.5)
    assert crld_loss(sw, tw, ss, ts).item() == published.item()
    for changed in ({"temperature": 5.0}, {"within_weight": 3.0}, {"cross_weight": 1.5}):
        args = {"temperature": 4.0, "within_weight": 2.0, "cross_weight": 0.5, **changed}
        assert crld_loss(sw, tw, ss, ts, **args).item() != published.item(), changed


@pytest.mark.parametrize(
    "logits, message",
    [
        (torch.zeros(3), "teacher_logits must have shape (B, C), got (3,)"),
        (torch.zeros(2, 3, dtype=torch.long), "teacher_logits must be a floating-point tensor, got torch.int64"),
        (torch.zeros(2, 1), "teacher_logits needs at least 2 classes, got shape (2, 1)"),
    ],
)
def test_swapping_refuses_bad_teacher_logits_naming_them(logits, message):
    with pytest.raises(LossInputError) as err:
        swap_teacher_logits(logits, torch.zeros(logits.shape[0] if logits.dim() else 1, dtype=torch.long))
    assert str(err.value) == message


def test_label_revision_means_each_part_over_its_own_samples_even_one():
    import torch.nn.functional as F

    z_t = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [2.0, 1.0, 0.0]], dtype=torch.float64)
    z_s = torch.tensor([[1.0, 0.5, -1.0], [0.2, 0.1, 0.3], [-0.5, 0.0, 2.0], [0.3, 0.9, 0.1]], dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])  # the last sample alone is wrong (teacher's argmax 0)
    right = [0, 1, 2]
    ce = F.cross_entropy(z_s[right], y[right], reduction="none")
    right_part = (ce + 4.0 * (z_s[right] - z_t[right]).pow(2).mean(1)).mean()
    p_s, p_t = z_s[3].softmax(0), z_t[3].softmax(0)
    rho = 0.8 / (p_t.max() - p_t[1] + 1.0)
    revised = rho * p_t + (1 - rho) * torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    wrong_part = 1.0 * (p_s - revised).pow(2).mean()
    assert label_revision_loss(z_s, z_t, y).item() == pytest.approx((right_part + wrong_part).item(), rel=1e-12)


def test_mlkd_and_attention_defaults_are_the_published_values():
    from rld.losses import attention_map, mlkd_loss

    sw, tw, _ = _logits(5, b=8)
    ss, ts, _ = _logits(6, b=8)
    assert mlkd_loss(sw, tw, ss, ts).item() == mlkd_loss(sw, tw, ss, ts, temperature=4.0).item()
    assert mlkd_loss(sw, tw, ss, ts).item() != mlkd_loss(sw, tw, ss, ts, temperature=5.0).item()
    f = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q = f.pow(2).mean(1).flatten(1)
    assert torch.allclose(attention_map(f), q / q.norm(dim=1, keepdim=True), atol=1e-12)


def test_ctkd_reverses_the_temperatures_gradient_at_epoch_1_by_default():
    from rld.losses import CTKDLoss

    s, t, y = _logits(7)
    grads = []
    for kwargs in ({}, {"epoch": 1.0}, {"epoch": 2.0}):
        loss = CTKDLoss().double()
        loss(s, t, y, **kwargs)[0].backward()
        grads.append(loss.temperature.theta.grad.item())
    assert grads[0] == grads[1] != grads[2]


def _equal(a, b) -> bool:
    if isinstance(a, tuple):
        return all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return torch.equal(a, b)


def test_the_terms_functions_default_to_the_published_temperatures():
    from rld.losses import crld_terms, dkd_terms, nkd_terms, rld_terms

    s, t, y = _logits(8)
    assert _equal(dkd_terms(s, t, y), dkd_terms(s, t, y, temperature=4.0))
    assert not _equal(dkd_terms(s, t, y), dkd_terms(s, t, y, temperature=5.0))
    assert _equal(rld_terms(s, t, y), rld_terms(s, t, y, temperature=4.0, scd_temperature=4.0, mask="ge"))
    assert not _equal(rld_terms(s, t, y), rld_terms(s, t, y, temperature=5.0))
    assert _equal(nkd_terms(s, t, y), nkd_terms(s, t, y, temperature=3.0))
    assert not _equal(nkd_terms(s, t, y), nkd_terms(s, t, y, temperature=4.0))
    ss, ts, _ = _logits(9)
    t3, ts3 = t * 3, ts * 3
    assert _equal(crld_terms(s, t3, ss, ts3), crld_terms(s, t3, ss, ts3, temperature=4.0))
    assert not _equal(crld_terms(s, t3, ss, ts3), crld_terms(s, t3, ss, ts3, temperature=5.0))


def test_the_kernel_weighs_both_parts_by_one_by_default_and_works_on_any_device():
    from rld.losses._fused import decoupled_kernel

    s, t, y = _logits(10)
    total, binary, masked, grads = decoupled_kernel(s, t, y, "ge", 4.0, 4.0)
    assert total.item() == pytest.approx((binary + masked).item(), rel=1e-15)
    assert torch.allclose(grads[2], grads[0] + grads[1], rtol=0, atol=1e-15)
    z, target = torch.zeros(4, 5, device="meta"), torch.zeros(4, dtype=torch.long, device="meta")
    out = decoupled_kernel(z, z, target, "ge", 4.0, 4.0)
    assert [o.device.type for o in out] == ["meta"] * 4
    assert tuple(out[3].shape) == (3, 4, 5)


@pytest.mark.parametrize("which", range(4))
def test_two_view_losses_compute_in_float64_when_any_view_is(which):
    from rld.losses import crld_terms, mlkd_loss

    views = [x.float() * 3 for x in (_logits(11)[0], _logits(12)[1], _logits(13)[0], _logits(14)[1])]
    views[which] = views[which].double()
    assert mlkd_loss(*views).dtype == torch.float64
    assert all(term.dtype == torch.float64 for term in crld_terms(*views))


def test_an_unknown_rld_mask_is_refused_naming_the_masks():
    with pytest.raises(LossInputError) as err:
        RLDLoss(mask="gt")
    assert str(err.value) == "mask must be one of 'ge', 'g', got 'gt'"


def test_the_decoupled_losses_warn_about_nothing():
    import warnings

    from rld.losses import dkd_loss, rld_loss

    s, t, y = _logits(15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. softmax's implicit-dimension deprecation
        for mask in ("ge", "g"):
            rld_loss(s, t, y, mask=mask).item()
            rld_loss(s, t, y, mask=mask, reduction="none").sum().item()
        dkd_loss(s, t, y).item()
        dkd_loss(s, t, y, reduction="none").sum().item()


def test_batch_means_take_the_fused_kernel_and_rows_the_reference_path(monkeypatch):
    import rld.losses.decoupled as decoupled
    from rld.losses import dkd_loss, rld_loss

    s, t, y = _logits(16)
    expected = {name: f(s, t, y).item() for name, f in (("rld", rld_loss), ("dkd", dkd_loss))}

    def refuse(*args, **kwargs):
        raise AssertionError("a batch mean of a teacher without gradient takes the fused kernel")

    monkeypatch.setattr(decoupled, "_binary_kl_rows", refuse)
    monkeypatch.setattr(decoupled, "_masked_kl_rows", refuse)
    assert rld_loss(s, t, y).item() == expected["rld"]
    assert dkd_loss(s, t, y).item() == expected["dkd"]
    with pytest.raises(AssertionError, match="fused kernel"):
        rld_loss(s, t, y, reduction="none")
    with pytest.raises(AssertionError, match="fused kernel"):  # a teacher that learns: the reference path
        rld_loss(s, t.clone().requires_grad_(), y)


def test_one_hot_is_made_on_the_targets_device():
    from rld.losses._common import one_hot

    target = torch.tensor([2, 0])
    assert one_hot(target, 3).tolist() == [[False, False, True], [True, False, False]]
    assert one_hot(target, 3, torch.float64).tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    meta = one_hot(torch.zeros(2, dtype=torch.long, device="meta"), 3, torch.float32)
    assert (meta.device.type, tuple(meta.shape)) == ("meta", (2, 3))
