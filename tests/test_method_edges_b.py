"""Edges of SimKD, ReviewKD, OFD and SDD as built methods: their refusals compared whole (models
without stage features, a teacher whose classifier does not read its final map, BatchNorms that do
not match the stages, too many stages), the layouts read from the right feature lists and sizes,
the fusion and projector modules' biases and initialisation, the channels-last detection, the
training-mode prediction of SimKD with its BatchNorms' own affine and eps, the parameter checks,
and SDD's terms at temperatures, masks and complementary weights other than the defaults."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import method_refusal
from rld.losses import dkd_terms, nkd_terms, rld_terms, sdd_loss, sdd_weights
from rld.methods import MethodContext, build_method
from rld.methods import ofd as ofd_module
from rld.methods import reviewkd as reviewkd_module
from rld.methods import sdd as sdd_module
from rld.methods.ofd import OFD, connector, teacher_bns
from rld.methods.reviewkd import ABF, ReviewKDConfig, review_layout
from rld.methods.simkd import _channels_last, projector
from rld.models import create_model
from rld.models.features import FeatureModel, Features

NO_FEATURES = "(torchvision: and timm: models give logits and the pooled feature only); use a model of the rld zoo"


class _Toy(FeatureModel):
    """A model whose Features have the given (C, H, W) maps (ones), whatever the input."""

    def __init__(self, feats, preact=None, pooled=8, pre_pool="last", classes=10, name="toy"):
        super().__init__()
        self.feat_shapes = list(feats)
        self.preact_shapes = self.feat_shapes if preact is None else list(preact)
        self.pre_pool_shape = self.feat_shapes[-1] if pre_pool == "last" else pre_pool
        self.fc = nn.Linear(pooled, classes)
        self.model_name = name

    def forward_features(self, x):
        b = x.shape[0]
        pooled = x.new_ones(b, self.fc.in_features)
        pre_pool = None if self.pre_pool_shape is None else x.new_ones(b, *self.pre_pool_shape)
        return Features(
            logits=self.fc(pooled),
            feats=[x.new_ones(b, *s) for s in self.feat_shapes],
            preact_feats=[x.new_ones(b, *s) for s in self.preact_shapes],
            pooled=pooled,
            pre_pool=pre_pool,
        )


class _Logits(nn.Module):
    """No model_name attribute and no stage features: logits and the pooled feature only."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 10)

    def forward_features(self, x):
        pooled = x.new_ones(x.shape[0], 4)
        return Features(logits=self.fc(pooled), feats=[], preact_feats=[], pooled=pooled)

    def get_classifier(self):
        return self.fc


def _ctx(student: nn.Module, teacher: nn.Module) -> MethodContext:
    return MethodContext(student=student, teacher=teacher, num_classes=10)


def _zoo(name: str = "resnet8", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=10)


def _maps(*shapes) -> list[torch.Tensor]:
    return [torch.zeros(2, *s) for s in shapes]


def _features(feats, preact=None, pooled: int | None = 8) -> Features:
    return Features(
        logits=torch.zeros(2, 10),
        feats=_maps(*feats),
        preact_feats=_maps(*(feats if preact is None else preact)),
        pooled=None if pooled is None else torch.zeros(2, pooled),
    )


# ----------------------------------------------------------------------------- SimKD


def test_simkd_projector_halves_the_teacher_channels_by_default():
    convs = [m for m in projector(6, 12) if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(6, 6), (6, 6), (6, 12)]


def test_simkd_refuses_a_student_without_stage_features_by_its_class_name():
    message = method_refusal({"name": "simkd"}, _ctx(_Logits(), _zoo()))
    assert message == (
        "method 'simkd': SimKD reads the student's stage features, which model '_Logits' does not provide "
        + NO_FEATURES
    )


def test_simkd_refuses_a_teacher_without_stage_features_by_its_name():
    teacher = _Logits()
    teacher.model_name = "torchvision:tiny"
    message = method_refusal({"name": "simkd"}, _ctx(_zoo(), teacher))
    assert message == (
        "method 'simkd': SimKD reads the teacher's stage features, which model 'torchvision:tiny' does not provide "
        + NO_FEATURES
    )


def test_simkd_refuses_a_teacher_without_a_final_map():
    teacher = _Toy([(8, 4, 4), (8, 2, 2)], pre_pool=None)
    assert method_refusal({"name": "simkd"}, _ctx(_zoo(), teacher)) == (
        "method 'simkd': the teacher's classifier reads 8 features, but its final feature map has None channels: "
        "SimKD cannot reuse it"
    )


def test_simkd_refuses_a_teacher_whose_classifier_does_not_read_its_final_map():
    teacher = _Toy([(8, 4, 4), (6, 3, 5)], pre_pool=(6, 3, 5))
    assert method_refusal({"name": "simkd"}, _ctx(_zoo(), teacher)) == (
        "method 'simkd': the teacher's classifier reads 8 features, but its final feature map has 6 channels: "
        "SimKD cannot reuse it"
    )


def test_simkd_factor_may_leave_one_middle_channel_but_not_none():
    method = build_method({"name": "simkd", "factor": 64}, _ctx(_zoo(), _zoo(seed=1)))  # resnet8: 64 channels
    assert [m.out_channels for m in method.projector if isinstance(m, nn.Conv2d)] == [1, 1, 64]
    method = build_method({"name": "simkd", "factor": 4}, _ctx(_zoo(), _zoo(seed=1)))
    assert [m.out_channels for m in method.projector if isinstance(m, nn.Conv2d)] == [16, 16, 64]
    assert method_refusal({"name": "simkd", "factor": 65}, _ctx(_zoo(), _zoo(seed=1))) == (
        "method 'simkd': factor 65 leaves no middle channels for a teacher feature of 64 channels"
    )


def test_simkd_projector_follows_a_channels_last_student():
    student = _zoo().to(memory_format=torch.channels_last)
    method = build_method({"name": "simkd"}, _ctx(student, _zoo(seed=1)))
    w = method.projector[3].weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    plain = build_method({"name": "simkd"}, _ctx(_zoo(), _zoo(seed=1)))
    assert plain.projector[3].weight.is_contiguous()


def test_simkd_copies_a_teacher_classifier_without_bias_as_zeros():
    teacher = _zoo(seed=1)
    teacher.fc = nn.Linear(64, 10, bias=False)
    method = build_method({"name": "simkd"}, _ctx(_zoo(), teacher))
    assert torch.equal(method.teacher_bias, torch.zeros(10)) and torch.equal(method.teacher_weight, teacher.fc.weight)


def _conv(c_in: int, c_out: int, kernel) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel)


@pytest.mark.parametrize(
    "layers,expected",
    [
        ([_conv(4, 4, 3)], True),
        ([_conv(4, 4, (2, 1))], True),  # a kernel of two taps is a spatial kernel
        ([_conv(2, 4, 3)], True),  # two input channels are enough
        ([nn.Linear(3, 4), _conv(4, 4, 3)], True),  # what is not a 4-d weight is passed over
        ([_conv(1, 4, 3), _conv(4, 4, 3)], True),  # one input channel: the layout is undecidable
        ([_conv(4, 4, 1), _conv(4, 4, 3)], True),  # a 1x1 kernel: the same
        ([nn.Linear(3, 4)], False),
    ],
)
def test_channels_last_is_read_from_the_first_decisive_convolution(layers, expected):
    model = nn.Sequential(*layers)
    assert _channels_last(model) is False
    assert _channels_last(model.to(memory_format=torch.channels_last)) is expected


def test_channels_last_is_false_for_a_weight_in_neither_layout():
    model = nn.Sequential(_conv(4, 4, 3))
    model[0].weight = nn.Parameter(torch.randn(4, 4, 3, 3).transpose(2, 3))
    assert not model[0].weight.is_contiguous() and _channels_last(model) is False


def test_simkd_training_prediction_uses_each_batchnorm_affine_and_eps_on_the_batch():
    s, t = _zoo(), _zoo(seed=1)
    method = build_method({"name": "simkd"}, _ctx(s, t))
    torch.manual_seed(5)
    for bn in method.projector:
        if isinstance(bn, nn.BatchNorm2d):
            with torch.no_grad():
                bn.weight.copy_(torch.randn(bn.num_features))
                bn.bias.copy_(torch.randn(bn.num_features))
            bn.eps = 0.25
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        student = s.eval().forward_features(x)
        ref = copy.deepcopy(method.projector).train()
        expected = ref(student.feats[-1])
        running = method.projector[1].running_mean.clone()
        pred = method.train().predict(student)
    assert torch.equal(method.projector[1].running_mean, running)
    torch.testing.assert_close(pred.pre_pool, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pred.pooled, expected.mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)
    expected_logits = pred.pooled @ t.fc.weight.T + t.fc.bias
    torch.testing.assert_close(pred.logits, expected_logits, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        pred = method.eval().predict(student)
        torch.testing.assert_close(pred.pre_pool, method.projector(student.feats[-1]), rtol=0, atol=0)
    assert pred.pre_pool.shape == (4, 64, 8, 8) and student.pre_pool.shape == (4, 64, 8, 8)
    assert not torch.equal(pred.pre_pool, student.pre_pool)


# ----------------------------------------------------------------------------- ReviewKD


def test_review_layout_reads_the_student_post_activation_maps_by_default():
    student = _features([(3, 8, 8), (4, 6, 5), (5, 3, 2)], preact=[(3, 8, 8), (14, 6, 5), (15, 3, 2)], pooled=9)
    teacher = _features([(3, 8, 8), (6, 7, 4), (7, 4, 3)], preact=[(3, 8, 8), (16, 5, 4), (17, 4, 1)], pooled=11)
    layout = review_layout(student, teacher)
    assert dataclasses.astuple(layout) == (
        (4, 5, 9),
        (16, 17, 11),
        ((6, 5), (3, 2), (1, 1)),
        ((5, 4), (4, 1), (1, 1)),
        9,
    )
    preact = review_layout(student, teacher, stu_preact=True, max_mid_channels=4)
    assert (preact.in_channels, preact.out_channels, preact.mid_channels) == ((14, 15, 9), (16, 17, 11), 4)


def test_review_layout_takes_two_maps_stem_included():
    layout = review_layout(_features([(3, 8, 8), (4, 2, 2)]), _features([(3, 8, 8), (6, 2, 2)]))
    assert (layout.in_channels, layout.out_channels, layout.mid_channels) == ((4, 8), (6, 8), 8)


@pytest.mark.parametrize(
    "feats,preact,pooled",
    [
        ([(3, 8, 8)], [(3, 8, 8), (4, 2, 2)], 8),
        ([(3, 8, 8), (4, 2, 2)], [(3, 8, 8)], 8),
        ([(3, 8, 8), (4, 2, 2)], [(3, 8, 8), (4, 2, 2)], None),
    ],
)
def test_review_layout_refusals_name_the_side(feats, preact, pooled):
    good = _features([(3, 8, 8), (4, 2, 2)])
    bad = _features(feats, preact, pooled)
    for role, args in (("student", (bad, good)), ("teacher", (good, bad))):
        with pytest.raises(ValueError) as err:
            review_layout(*args)
        assert str(err.value) == f"ReviewKD needs stage features after the stem and the pooled feature of the {role}"


def test_abf_convolutions_have_no_bias_and_two_attention_maps():
    abf = ABF(3, 4, 5, fuse=True)
    assert abf.conv1[0].bias is None and abf.conv2[0].bias is None
    assert (abf.att_conv[0].in_channels, abf.att_conv[0].out_channels) == (8, 2)
    assert abf.att_conv[0].bias is not None
    assert ABF(3, 4, 5, fuse=False).att_conv is None


def test_abf_weights_are_kaiming_uniform_with_a_1():
    """kaiming_uniform_(a=1): U(-b, b) with b = sqrt(3 / fan_in) (gain sqrt(2 / (1 + a²)) = 1)."""
    torch.manual_seed(0)
    abf = ABF(64, 64, 64, fuse=False)
    for conv, fan_in in ((abf.conv1[0], 64), (abf.conv2[0], 64 * 9)):
        bound = math.sqrt(3.0 / fan_in)
        top = conv.weight.abs().max().item()
        assert 0.99 * bound < top <= bound


def _toy_reviewkd_ctx(student: nn.Module) -> MethodContext:
    return _ctx(student, _zoo(seed=1))


def test_reviewkd_asks_the_student_for_the_maps_it_fuses():
    student = _Toy([(3, 32, 32), (4, 16, 16), (5, 8, 8)], preact=[], name="toy")
    assert method_refusal({"name": "reviewkd", "stu_preact": True}, _toy_reviewkd_ctx(student)) == (
        "method 'reviewkd': ReviewKD reads the student's stage features (Features.preact_feats), and the student "
        "'toy' has none: torchvision: models, and timm: models without forward_intermediates, give only logits and "
        "the pooled feature. Use a model of the zoo (resnet8, wrn_16_2, MobileNetV2, ...) or a timm: model with "
        "forward_intermediates"
    )
    assert method_refusal({"name": "reviewkd"}, _toy_reviewkd_ctx(student)) == (
        "method 'reviewkd': ReviewKD needs stage features after the stem and the pooled feature of the student"
    )


def test_reviewkd_builds_its_fusion_on_the_student_maps_it_is_told_and_bounds_mid_channels():
    student = _Toy([(3, 32, 32), (4, 16, 16), (5, 8, 8)], preact=[(3, 32, 32), (6, 16, 16), (7, 8, 8)])
    method = build_method({"name": "reviewkd", "stu_preact": True, "max_mid_channels": 3}, _toy_reviewkd_ctx(student))
    assert (method.layout.in_channels, method.layout.mid_channels) == ((6, 7, 8), 3)
    assert [abf.conv1[0].in_channels for abf in method.abfs] == [6, 7, 8]
    method = build_method({"name": "reviewkd"}, _toy_reviewkd_ctx(student))
    assert (method.layout.in_channels, method.layout.mid_channels) == ((4, 5, 8), 8)


def _reviewkd_params(**changes) -> dict:
    return {**dataclasses.asdict(ReviewKDConfig()), **changes}


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"ce_weight": -1.0}, "ce_weight must be a number >= 0, got -1.0"),
        ({"feat_weight": -1.0}, "feat_weight must be a number >= 0, got -1.0"),
        ({"warmup_epochs": -1.0}, "warmup_epochs must be a number >= 0, got -1.0"),
        ({"max_mid_channels": 0}, "max_mid_channels must be an integer >= 1, got 0"),
        ({"stu_preact": 1}, "stu_preact must be true or false, got 1"),
        ({"teacher_train_mode": "yes"}, "teacher_train_mode must be true or false, got 'yes'"),
    ],
)
def test_reviewkd_check_refuses_each_bad_value(changes, message):
    with pytest.raises(ValueError) as err:
        reviewkd_module.check(_reviewkd_params(**changes))
    assert str(err.value) == message


def test_reviewkd_check_takes_one_mid_channel():
    reviewkd_module.check(_reviewkd_params(max_mid_channels=1))


# ----------------------------------------------------------------------------- OFD


@pytest.mark.parametrize("kernel,padding", [(1, 0), (3, 1), (5, 2)])
def test_ofd_connector_keeps_the_size(kernel, padding):
    conv, bn = connector(3, 5, kernel)
    assert (conv.stride, conv.padding, conv.bias) == ((1, 1), (padding, padding), None)
    assert connector(3, 5, kernel)(torch.randn(2, 3, 6, 7)).shape == (2, 5, 6, 7)
    assert torch.equal(bn.weight, torch.ones(5)) and torch.equal(bn.bias, torch.zeros(5))


@pytest.mark.parametrize("kernel", [1, 3])
def test_ofd_connector_weights_are_normal_with_std_sqrt_2_over_k2_ct(kernel):
    torch.manual_seed(0)
    w = connector(64, 128, kernel)[0].weight.detach().double()
    std = math.sqrt(2.0 / (kernel * kernel * 128))
    assert abs(w.mean().item()) < 0.02 * std
    assert w.std().item() == pytest.approx(std, rel=0.03)


def test_ofd_runs_the_teacher_in_training_mode_by_default():
    assert OFD(ofd_module.SPEC, nn.ModuleList(), [], 1.0, 0.001).teacher_training is True


class _BNTeacher(nn.Module):
    model_name = "bnnet"

    def __init__(self, *channels: int):
        super().__init__()
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in channels)

    def bn_before_relu(self):
        return list(self.bns)


STAGES = [(8, 4, 4), (16, 2, 2), (32, 1, 1)]


def test_ofd_teacher_batchnorms_pair_with_the_last_stages():
    teacher = _BNTeacher(16, 32)
    assert teacher_bns(teacher, STAGES) == list(teacher.bns)


COUNT = "the teacher bnnet's bn_before_relu() gives {} BatchNorms for 3 stages (Features.preact_feats[1:])"
MATCH = "the teacher bnnet's bn_before_relu() does not match its stages: a BatchNorm of {} channels for a stage of {}"


@pytest.mark.parametrize(
    "channels,message",
    [
        ((), COUNT.format(0)),
        ((8, 8, 16, 32), COUNT.format(4)),
        ((7,), MATCH.format(7, 32)),
        ((8, 32), MATCH.format(8, 16)),
    ],
)
def test_ofd_teacher_batchnorm_refusals(channels, message):
    with pytest.raises(ValueError) as err:
        teacher_bns(_BNTeacher(*channels), STAGES)
    assert str(err.value) == message


def test_ofd_refuses_a_teacher_without_bn_before_relu_whole():
    message = method_refusal({"name": "ofd"}, _ctx(_zoo(), create_model("ShuffleV2", num_classes=10)))
    assert message == (
        "method 'ofd': OFD takes its margins from the teacher's BatchNorm before each stage's ReLU, and the teacher "
        "'ShuffleV2' does not name them (no bn_before_relu(); the published code refuses ShuffleNet teachers too). "
        "Use a ResNet, WRN, VGG, MobileNetV2 or MobileNetV1 teacher"
    )


def test_ofd_refuses_a_model_of_one_feature_map():
    student = _Toy([(8, 32, 32)], name="stem_only")
    assert method_refusal({"name": "ofd"}, _ctx(student, _zoo(seed=1))) == (
        "method 'ofd': OFD distils the stages after the stem (Features.preact_feats[1:]), and the student "
        "stem_only lists only one feature map"
    )


def test_ofd_stages_up_to_the_paired_count():
    method = build_method({"name": "ofd", "stages": 3}, _ctx(_zoo(), _zoo("resnet20", seed=1)))
    assert [c[0].out_channels for c in method.connectors] == [16, 32, 64]
    assert method_refusal({"name": "ofd", "stages": 4}, _ctx(_zoo(), _zoo("resnet20", seed=1))) == (
        "method 'ofd': stages=4, but the teacher resnet20 and the student resnet8 pair 3 stages; use stages <= 3"
    )


# ----------------------------------------------------------------------------- SDD


def _sdd(name: str, **params):
    s, t = _zoo(seed=2), _zoo(seed=3).eval().requires_grad_(False)
    method = build_method({"name": name, **params}, _ctx(s, t))
    torch.manual_seed(4)
    x = torch.randn(6, 3, 32, 32)
    fs = s.train().forward_features(x)
    with torch.no_grad():
        ft = t.forward_features(x)
    z_s, z_t = method.local_logits(fs, ft)
    y = z_t[:, :, 5].argmax(dim=1)  # the teacher right on a 2x2 region, often wrong on the whole map
    assert sdd_weights(z_t, y).ne(1).any() and sdd_weights(z_t, y).eq(1).any()
    return method, fs, ft, z_s, z_t, y


def _kd_rows_by_hand(s: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    p, log_q = F.softmax(t.double() / tau, 1), F.log_softmax(s.double() / tau, 1)
    return tau**2 * (p * (p.log() - log_q)).sum(1)


def test_sd_kd_rows_at_the_configured_temperature_and_weight_weighted_row_by_row():
    method, fs, ft, z_s, z_t, y = _sdd("sd_kd", temperature=2.0, complementary_weight=3.0, ce_weight=0.0)
    total, parts = method(fs, ft, y, 0.5)  # no warm-up in SD-KD: half an epoch counts fully
    assert list(parts) == ["kd"]
    b, _, n = z_s.shape
    rows_s, rows_t = z_s.permute(2, 0, 1).reshape(n * b, -1), z_t.permute(2, 0, 1).reshape(n * b, -1)
    w = sdd_weights(z_t, y, 3.0).T.reshape(n * b).double()
    expected = 0.9 * (w * _kd_rows_by_hand(rows_s, rows_t, 2.0)).sum() / (n * b)
    torch.testing.assert_close(parts["kd"].double(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(total, parts["kd"], rtol=0, atol=0)


@pytest.mark.parametrize(
    "name,params,rows",
    [
        ("sd_dkd", {}, lambda s, t, y: dkd_terms(s, t, y, 2.0, reduction="none")),
        ("sd_nkd", {}, lambda s, t, y: nkd_terms(s, t, y, 2.0, reduction="none", exclude_target=False)),
        ("sd_rld", {"mask": "g"}, lambda s, t, y: rld_terms(s, t, y, 2.0, None, "g", reduction="none")),
    ],
)
def test_sdd_terms_are_the_per_row_terms_at_the_configured_values(name, params, rows):
    method, fs, ft, z_s, z_t, y = _sdd(name, temperature=2.0, warmup_epochs=0.0, **params)
    _, parts = method(fs, ft, y, 1)
    expected = sdd_loss(z_s, z_t, y, rows, 2.0)
    names = [k for k in parts if k != "ce"]
    weights = {"sd_dkd": (1.0, 8.0), "sd_nkd": (1.0, 8.0), "sd_rld": (1.0, 8.0)}[name]
    for key, weight, term in zip(names, weights, expected, strict=True):
        torch.testing.assert_close(parts[key], weight * term, rtol=1e-6, atol=1e-7)


def test_sd_rld_masks_differ_here():
    _, _, _, z_s, z_t, y = _sdd("sd_rld")
    ge = sdd_loss(z_s, z_t, y, lambda s, t, yy: rld_terms(s, t, yy, 4.0, None, "ge", reduction="none"))
    g = sdd_loss(z_s, z_t, y, lambda s, t, yy: rld_terms(s, t, yy, 4.0, None, "g", reduction="none"))
    assert not torch.allclose(ge[1], g[1])


def test_sdd_copies_a_teacher_classifier_without_bias_as_none():
    s, t = _zoo(seed=2), _zoo(seed=3)
    t.fc = nn.Linear(64, 10, bias=False)
    method = build_method({"name": "sd_kd"}, _ctx(s, t))
    assert method.teacher_bias is None and torch.equal(method.teacher_weight, t.fc.weight)
    x = torch.randn(2, 3, 32, 32)
    total, _ = method(s.forward_features(x), t.forward_features(x), torch.tensor([0, 1]), 1)
    assert torch.isfinite(total)


def test_sdd_refuses_a_base_that_gives_more_terms_than_it_names(monkeypatch):
    base = sdd_module.BASES["sd_kd"]
    monkeypatch.setitem(
        sdd_module.BASES, "sd_kd", dataclasses.replace(base, rows=lambda s, t, y, temperature: (s[:, 0], s[:, 1]))
    )
    method, fs, ft, _, _, y = _sdd("sd_kd")
    with pytest.raises(ValueError, match=r"^zip\(\) argument 3 is longer than arguments 1-2$"):
        method(fs, ft, y, 1)
