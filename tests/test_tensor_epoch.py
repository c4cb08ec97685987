"""The epoch as the whole-step path hands it to a method: a 0-d float32 tensor (rld.engine.trainer's
device scalars), inside the warm-up and after it.

Every method with a schedule over epochs (the warm-up of DKD, RLD, the SDD variants and ReviewKD,
CTKD's reversal ramp) gives with a tensor epoch what it gives with the Python float the plain loop
passes, at epochs inside, at the end of and long after the warm-up; after it, the distillation
terms stay at their full weight.
"""

from __future__ import annotations

import pytest
import torch

from rld.losses import kd_loss
from rld.methods import MethodContext, build_method
from rld.models import create_model

WARMUP = 4.0
# the method sections: every part but the CE term follows the schedule
SCHEDULED = {
    "dkd": {"name": "dkd", "warmup_epochs": WARMUP},
    "rld": {"name": "rld", "warmup_epochs": WARMUP},
    "sd_dkd": {"name": "sd_dkd", "warmup_epochs": WARMUP},
    "sd_rld": {"name": "sd_rld", "warmup_epochs": WARMUP},
    "sd_nkd": {"name": "sd_nkd", "warmup_epochs": WARMUP},
    "reviewkd": {"name": "reviewkd", "warmup_epochs": WARMUP, "feat_weight": 3.0},
}
EPOCHS = (1.0, 2.5, WARMUP, WARMUP + 0.5, 3 * WARMUP, 240.0)


def _setup(section: dict):
    torch.manual_seed(0)
    ctx = MethodContext(
        student=create_model("resnet8", num_classes=10),
        teacher=create_model("resnet8", num_classes=10),
        num_classes=10,
        input_shape=(3, 16, 16),
        num_samples=6,
        train_targets=torch.arange(6) % 10,
    )
    method = build_method(section, ctx)
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        student, teacher = ctx.student.forward_features(x), ctx.teacher.forward_features(x)
    return method, student, teacher, torch.tensor([0, 3, 5, 7, 9, 1])


@pytest.mark.parametrize("name", list(SCHEDULED))
def test_a_tensor_epoch_gives_the_float_epochs_losses_inside_and_after_the_warm_up(name):
    method, s, t, y = _setup(SCHEDULED[name])
    with torch.no_grad():
        full = method(s, t, y, WARMUP, None)[1]  # the end of the warm-up: full weight
        scheduled = [k for k in full if k != "ce"]
        assert scheduled and "ce" in full
        for epoch in EPOCHS:
            _, want = method(s, t, y, epoch, None)
            _, got = method(s, t, y, torch.tensor(epoch, dtype=torch.float32), None)
            assert set(got) == set(want)
            for k in want:
                torch.testing.assert_close(torch.as_tensor(got[k]), torch.as_tensor(want[k]), msg=f"{k} at {epoch}")
            factor = min(epoch / WARMUP, 1.0)
            for k in scheduled:
                torch.testing.assert_close(got[k], factor * full[k], msg=f"{k} at {epoch}")
            assert got["ce"].item() == full["ce"].item()  # the CE term is never scaled
        assert all(full[k].item() > 0 for k in scheduled)


@pytest.mark.parametrize("epoch", [2.0, 5.0, 10.0, 11.0, 30.0, 240.0])
def test_ctkd_reversal_with_a_tensor_epoch_inside_and_after_its_ramp(epoch):
    """λ(epoch) = −(1 − cos(π·min(epoch, R)/R))/2 scales θ's gradient; −1 from epoch R = 10 on."""
    g = torch.Generator().manual_seed(1)
    zs, zt, y = (
        torch.randn(8, 10, generator=g),
        torch.randn(8, 10, generator=g),
        torch.randint(0, 10, (8,), generator=g),
    )
    grads = []
    for e in (epoch, torch.tensor(epoch, dtype=torch.float32)):
        method = build_method({"name": "ctkd"})
        theta = next(iter(method.parameters()))
        total, _ = method.loss(zs, zt, y, e)
        (grad,) = torch.autograd.grad(total, theta)
        grads.append(grad.item())
    theta_plain = torch.tensor(1.0, requires_grad=True)
    (plain,) = torch.autograd.grad(0.9 * kd_loss(zs, zt, 1 + 20 * torch.sigmoid(theta_plain)), theta_plain)
    lam = -(1 - torch.cos(torch.tensor(torch.pi * min(epoch, 10.0) / 10.0))).item() / 2
    assert grads[0] == pytest.approx(lam * plain.item(), rel=1e-5, abs=1e-12)
    assert grads[1] == pytest.approx(grads[0], rel=1e-5, abs=1e-12)
