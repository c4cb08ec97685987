"""Every parameter check of the feature and SDD methods, at its boundary: the value just inside is
accepted and the value just outside is refused with the whole message naming the parameter; the
shape rules of FitNet's regressor (which convolution for which pair of sizes); the build-time
checks shared by CAT-KD and SDD (a model's final map and its classifier); CRD's construction as
published (two embeddings of their own widths, Z unset at -1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import method_context, method_refusal
from rld.errors import UserError
from rld.methods import build_method, method_params
from rld.methods.fitnet import HintRegressor
from rld.models.features import Features

# ----------------------------------------------------------------------------- parameter checks

WEIGHTS = [
    ("fitnet", "ce_weight"),
    ("fitnet", "feat_weight"),
    ("ofd", "ce_weight"),
    ("ofd", "feat_weight"),
    ("simkd", "ce_weight"),
    ("simkd", "feat_weight"),
    ("crd", "ce_weight"),
    ("crd", "feat_weight"),
    ("sd_kd", "complementary_weight"),
    ("sd_kd", "ce_weight"),
    ("sd_kd", "kd_weight"),
    ("sd_dkd", "complementary_weight"),
    ("sd_dkd", "alpha"),
    ("sd_dkd", "beta"),
    ("sd_dkd", "warmup_epochs"),
    ("sd_nkd", "gamma"),
    ("sd_nkd", "warmup_epochs"),
    ("sd_rld", "alpha"),
    ("sd_rld", "beta"),
    ("sd_rld", "warmup_epochs"),
    ("sd_rld", "ce_weight"),
]


@pytest.mark.parametrize("method,key", WEIGHTS)
def test_each_weight_is_refused_below_zero_and_accepted_at_zero(method, key):
    assert method_refusal({"name": method, key: -0.5}) == f"method {method!r}: {key} must be a number >= 0, got -0.5"
    assert method_params({"name": method, key: 0})[key] == 0


@pytest.mark.parametrize(
    "method,key,low",
    [("crd", "feat_dim", 1), ("crd", "nce_k", 1), ("fitnet", "hint_layer", 0), ("simkd", "factor", 1)],
)
def test_each_integer_is_refused_below_its_least_value_and_accepted_at_it(method, key, low):
    assert method_refusal({"name": method, key: low - 1}) == (
        f"method {method!r}: {key} must be an integer >= {low}, got {low - 1}"
    )
    assert method_params({"name": method, key: low})[key] == low


@pytest.mark.parametrize("method,key", [("crd", "nce_t"), ("sd_kd", "temperature"), ("sd_rld", "scd_temperature")])
def test_each_temperature_is_refused_at_zero_and_accepted_above(method, key):
    assert method_refusal({"name": method, key: 0}) == f"method {method!r}: {key} must be > 0, got 0"
    assert method_params({"name": method, key: 0.07})[key] == 0.07


def test_sd_rld_takes_its_scd_temperature_unset():
    assert method_params({"name": "sd_rld"})["scd_temperature"] is None


@pytest.mark.parametrize("value", [-0.1, 1, 1.0, False, True, "0.5"])
def test_crd_momentum_outside_the_unit_interval_or_not_a_number_is_refused(value):
    assert method_refusal({"name": "crd", "nce_momentum": value}) == (
        f"method 'crd': nce_momentum must be in [0, 1), got {value!r}"
    )


@pytest.mark.parametrize("value", [0, 0.0, 0.5, 0.999])
def test_crd_momentum_in_the_unit_interval_is_accepted(value):
    assert method_params({"name": "crd", "nce_momentum": value})["nce_momentum"] == value


# ----------------------------------------------------------------------------- FitNet's regressor


def _layout(conv: nn.Module) -> tuple:
    return (type(conv).__name__, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)


@pytest.mark.parametrize(
    "student,teacher,layout",
    [
        ((3, 8, 6), (5, 4, 3), ("Conv2d", 3, 5, (3, 3), (2, 2), (1, 1))),  # twice the teacher's sides
        ((3, 4, 3), (5, 8, 6), ("ConvTranspose2d", 3, 5, (4, 4), (2, 2), (1, 1))),  # half
        ((3, 6, 5), (5, 4, 4), ("Conv2d", 3, 5, (3, 2), (1, 1), (0, 0))),  # at least: kernel 1 + the excess
        ((3, 4, 4), (5, 4, 4), ("Conv2d", 3, 5, (1, 1), (1, 1), (0, 0))),  # equal
        ((3, 8, 7), (5, 4, 4), ("Conv2d", 3, 5, (5, 4), (1, 1), (0, 0))),  # twice one side only
        ((3, 6, 8), (5, 3, 4), ("Conv2d", 3, 5, (3, 3), (2, 2), (1, 1))),  # twice, unequal sides
    ],
)
def test_fitnet_regressor_picks_its_convolution_by_the_sizes_and_maps_to_the_teacher_shape(student, teacher, layout):
    regressor = HintRegressor(student, teacher)
    assert _layout(regressor.conv) == layout
    assert regressor.bn.num_features == teacher[0]
    out = regressor(torch.randn(2, *student))
    assert tuple(out.shape) == (2, *teacher)
    assert bool((out >= 0).all())


@pytest.mark.parametrize("student,teacher", [((3, 4, 3), (5, 4, 4)), ((3, 3, 4), (5, 4, 4)), ((3, 2, 2), (5, 5, 5))])
def test_fitnet_regressor_refuses_a_student_map_smaller_than_the_teacher_s_on_either_side(student, teacher):
    with pytest.raises(ValueError) as caught:
        HintRegressor(student, teacher)
    h_s, w_s, h_t, w_t = student[1], student[2], teacher[1], teacher[2]
    assert str(caught.value) == (
        f"no regressor maps the student's {h_s}x{w_s} hint map to the teacher's {h_t}x{w_t} (the student's side "
        "must be twice, half, or at least the teacher's); choose another method.hint_layer"
    )


# ----------------------------------------------------------------------------- final maps, CRD's build


class Net(nn.Module):
    """``forward_features``: 3 stage maps of ``channels`` channels (8×8, 4×4, 2×2), the pooled
    feature, the final map unless ``pre_pool`` is false; a linear classifier reading ``reads`` features."""

    def __init__(self, name: str, channels: int = 4, reads: int | None = None, pre_pool: bool = True):
        super().__init__()
        self.model_name = name
        self.pre_pool = pre_pool
        self.conv = nn.Conv2d(3, channels, 1)
        self.fc = nn.Linear(channels if reads is None else reads, 3)

    def forward_features(self, x: torch.Tensor) -> Features:
        f = torch.relu(self.conv(x))
        feats = [f, F.avg_pool2d(f, 2), F.avg_pool2d(f, 4)]
        pooled = feats[-1].mean(dim=(2, 3))
        logits = self.fc(pooled) if self.fc.in_features == pooled.shape[1] else pooled[:, :3]
        return Features(
            logits=logits, feats=feats, preact_feats=feats, pooled=pooled, pre_pool=feats[-1] if self.pre_pool else None
        )

    def get_classifier(self) -> nn.Linear:
        return self.fc


@pytest.mark.parametrize("method,label", [("catkd", "CAT-KD"), ("sd_kd", "SD-KD")])
@pytest.mark.parametrize("role", ["student", "teacher"])
def test_a_model_with_stage_maps_but_no_final_map_is_refused(method, label, role):
    models = {"student": Net("s"), "teacher": Net("t")}
    models[role] = Net("no_final", pre_pool=False)
    message = method_refusal({"name": method}, method_context(models["student"], models["teacher"]))
    assert message == (
        f"method {method!r}: {label} reads the {role}'s final feature map, which model 'no_final' does not provide "
        "(torchvision: and timm: models give logits and the pooled feature only); use a model of the rld zoo"
    )


@pytest.mark.parametrize("method", ["catkd", "sd_kd"])
@pytest.mark.parametrize("role", ["student", "teacher"])
def test_a_linear_classifier_of_another_width_than_the_final_map_is_refused(method, role):
    models = {"student": Net("s"), "teacher": Net("t")}
    models[role] = Net("wide", reads=5)
    message = method_refusal({"name": method}, method_context(models["student"], models["teacher"]))
    assert message == f"method {method!r}: the {role} 'wide': its classifier does not read its 4-channel final map"


def test_crd_embeds_each_model_at_its_own_width():
    labels = torch.tensor([0, 1, 2, 1])
    crd = build_method({"name": "crd", "feat_dim": 3, "nce_k": 2}, method_context(Net("s", 4), Net("t", 6), labels))
    assert (crd.embed_s.linear.in_features, crd.embed_t.linear.in_features) == (4, 6)
    assert (crd.embed_s.linear.out_features, crd.embed_t.linear.out_features) == (3, 3)


def test_crd_starts_with_z_unset_at_minus_one_as_published():
    # RepDistiller crd/memory.py: ContrastMemory's params buffer holds Z_v1 = Z_v2 = -1 until the first step
    crd = build_method(
        {"name": "crd", "feat_dim": 3, "nce_k": 2}, method_context(Net("s"), Net("t"), torch.tensor([0, 1]))
    )
    assert crd.z.tolist() == [-1.0, -1.0]
    assert "z" in crd.state_dict()


def test_crd_refuses_labels_of_a_single_class_in_one_line():
    message = method_refusal({"name": "crd"}, method_context(Net("s"), Net("t"), torch.tensor([1, 1, 1])))
    assert message == (
        "method 'crd': crd draws negatives from other classes, but every training sample has the same label"
    )


def test_crd_tables_cover_every_class_even_those_without_samples():
    crd = build_method(
        {"name": "crd", "nce_k": 2}, method_context(Net("s"), Net("t"), torch.tensor([1, 0, 1]), num_classes=4)
    )
    assert crd.class_count.tolist() == [1, 2, 0, 0] and crd.class_start.tolist() == [0, 1, 3, 3]
    assert crd.class_order.tolist() == [1, 0, 2]
    assert set(crd.state_dict()) >= {"memory_s", "memory_t", "z"}
    assert not {"class_order", "class_count", "class_start"} & set(crd.state_dict())


def test_crd_lists_each_class_s_samples_in_the_order_of_the_data_set():
    # the published sampler reads the samples of a class in data-set order; an unstable sort of
    # tied labels would permute them (it does at this size on the CPU)
    labels = torch.tensor([i * 7 % 3 for i in range(37)])
    crd = build_method({"name": "crd", "nce_k": 2}, method_context(Net("s"), Net("t"), labels))
    expected = [i for c in range(3) for i in range(37) if int(labels[i]) == c]
    assert crd.class_order.tolist() == expected


# ----------------------------------------------------------------------------- CRD across processes


class TwoRanks:
    """``torch.distributed`` as rank 0 of two processes sees it: the other rank holds the same
    tensors plus 100 (what the two-process test of test_method_edges_a.py runs for real)."""

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def get_world_size(self) -> int:
        return 2

    def all_gather(self, parts: list, t: torch.Tensor) -> None:
        assert isinstance(parts, list) and len(parts) == 2 and isinstance(t, torch.Tensor)
        assert all(p.shape == t.shape and p.dtype == t.dtype for p in parts)
        parts[0].copy_(t)
        parts[1].copy_(t + 100)

    def all_reduce(self, t: torch.Tensor) -> None:
        t.add_(t + 100)


def test_crd_gathers_and_averages_over_the_processes_in_rank_order(monkeypatch):
    from rld.methods import crd

    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert crd._world_size() == 1 and crd._all_gather(x) is x and crd._mean_over_processes(x) is x
    monkeypatch.setattr(crd, "dist", TwoRanks())
    assert crd._world_size() == 2
    assert crd._all_gather(x).tolist() == [[1.0, 2.0], [3.0, 4.0], [101.0, 102.0], [103.0, 104.0]]
    assert crd._all_gather(x.t()).tolist() == [[1.0, 3.0], [2.0, 4.0], [101.0, 103.0], [102.0, 104.0]]
    assert crd._mean_over_processes(x).tolist() == [[51.0, 52.0], [53.0, 54.0]]
    assert x.tolist() == [[1.0, 2.0], [3.0, 4.0]]  # the caller's tensor is left as it was


# ----------------------------------------------------------------------------- the registry's checks


@pytest.mark.parametrize(
    "params,message",
    [
        ({"name": "crd", "feat_dim": True}, "method 'crd': feat_dim must be an integer >= 1, got True"),
        ({"name": "crd", "nce_k": 2.5}, "method 'crd': nce_k must be an integer >= 1, got 2.5"),
        (
            {"name": "sd_nkd", "nkd_exclude_target": "yes"},
            "method 'sd_nkd': nkd_exclude_target must be true or false, got 'yes'",
        ),
        ({"name": "sd_rld", "mask": "gt"}, "method 'sd_rld': mask must be one of 'ge', 'g', got 'gt'"),
        (
            {"name": "kd", "ls_temperature": 2.0},
            "method.ls_temperature applies only with method.logit_standardization=true (it is ignored otherwise)",
        ),
        (
            {"name": "kd", "ls_weight": 9.0, "ls_temperature": 2.0},
            "method.ls_temperature applies only with method.logit_standardization=true (it is ignored otherwise)",
        ),
        (
            {"name": "kd", "ls_weight": 9.0},
            "method.ls_weight applies only with method.logit_standardization=true (it is ignored otherwise)",
        ),
        (
            {"name": "vanilla", "logit_standardization": True},
            "method 'vanilla' has no distillation term: method.logit_standardization does not apply",
        ),
        (
            {"name": "kd", "alpha": 1.0, "beta": None},
            "method 'kd' does not take alpha (it takes: temperature, ce_weight, kd_weight, logit_standardization, "
            "ls_temperature, ls_weight)",
        ),
    ],
)
def test_registry_refusals_are_one_whole_line(params, message):
    assert method_refusal(params) == message


def test_a_key_of_another_method_set_to_none_is_ignored():
    assert "beta" not in method_params({"name": "kd", "beta": None})


def test_the_standardization_refusal_lists_the_methods_that_take_it():
    message = method_refusal({"name": "lr", "logit_standardization": True})
    assert message.startswith(
        "method 'lr' with method.logit_standardization=true is not defined by the published code of logit "
        "standardization; switch it off (methods that take it: kd, dkd, "
    )
    assert ", lr," not in message and message.endswith(")")


@pytest.mark.parametrize("ctx", [None, "no teacher"])
def test_a_feature_method_without_its_models_is_refused_in_one_line(ctx):
    if ctx is not None:
        ctx = method_context(Net("s"), None)
    with pytest.raises(UserError) as caught:
        build_method({"name": "fitnet"}, ctx)
    assert str(caught.value) == "method 'fitnet' reads features: it is built with the student and teacher models"


def test_building_a_method_leaves_every_random_generator_as_it_was(monkeypatch):
    # on a GPU, torch.manual_seed would reseed every device's generator, which the build does not restore
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded.append(seed))
    ctx = method_context(Net("s"), Net("t"))
    state = torch.random.get_rng_state()
    first = build_method({"name": "fitnet"}, ctx)
    assert seeded == [] and torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(123)  # the modules' draws are the context seed's, whatever the global state
    again = build_method({"name": "fitnet"}, ctx)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))


class Nameless(Net):
    """A model that does not say its name (no ``model_name``, or an empty one)."""


@pytest.mark.parametrize("name", [None, ""])
def test_a_model_without_a_name_is_called_by_its_class(name):
    model = Nameless("x", reads=5)
    if name is None:
        del model.model_name
    else:
        model.model_name = name
    message = method_refusal({"name": "catkd"}, method_context(Net("s"), model))
    assert message == "method 'catkd': the teacher 'Nameless': its classifier does not read its 4-channel final map"


def test_ofd_names_the_preactivation_maps_a_model_lacks():
    teacher = Net("t")
    teacher.forward_features = lambda x, f=teacher.forward_features: Features(
        logits=f(x).logits, feats=f(x).feats, preact_feats=[], pooled=f(x).pooled, pre_pool=f(x).pre_pool
    )
    message = method_refusal({"name": "ofd"}, method_context(Net("s"), teacher))
    assert message.startswith(
        "method 'ofd': OFD reads the teacher's stage features (Features.preact_feats), and the teacher 't' has none"
    )


def test_cross_entropy_of_half_precision_logits_is_computed_in_float32():
    from rld.methods._stages import ce_term

    logits = torch.tensor([[1.0, 2.5, -0.75], [0.1, 0.2, 3.0]], dtype=torch.float16)
    target = torch.tensor([1, 2])
    got = ce_term(logits, target, 2.0)
    assert got.dtype == torch.float32
    assert got == 2.0 * F.cross_entropy(logits.float(), target)


def test_a_logits_only_pass_has_empty_feature_lists():
    from rld.methods.base import logits_only

    f = logits_only(torch.zeros(2, 3))
    assert (f.feats, f.preact_feats, f.pooled, f.pre_pool) == ([], [], None, None)


def test_an_unknown_method_is_refused_listing_every_method_in_registration_order():
    from rld.methods import get_spec

    with pytest.raises(UserError) as err:
        get_spec("nope")
    assert str(err.value) == (
        "unknown method 'nope'; available: vanilla, kd, dkd, rld, la, rc, lr, ctkd, fitnet, at, rkd, crd, ofd, "
        "reviewkd, simkd, catkd, dist, nkd, wttm, mlkd, crld, abkd, sd_kd, sd_dkd, sd_nkd, sd_rld"
    )


@pytest.mark.parametrize(
    "method, message",
    [
        (
            {"name": "at", "zzz": 1, "aaa": 2},
            "method 'at' does not take aaa, zzz (it takes: ce_weight, feat_weight, p)",
        ),
        (
            {"name": "kd", "xyz": 1},
            "method 'kd' does not take xyz (it takes: temperature, ce_weight, kd_weight, logit_standardization, "
            "ls_temperature, ls_weight)",
        ),
    ],
    ids=["no standardized variant", "a standardized variant"],
)
def test_parameters_a_method_does_not_take_are_refused_with_what_it_takes(method, message):
    """The keys it does not take, sorted; what it takes, the standardization keys only for a method that has
    a standardized variant."""
    with pytest.raises(UserError) as err:
        method_params(method)
    assert str(err.value) == message
