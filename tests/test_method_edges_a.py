"""Edges of the methods CRD, CAT-KD, RKD, AT and vanilla, of their shared helpers and of the
registry: every refusal's whole message (the role and the model it names), the boundaries of the
checks on labels, stages and batch sizes, CRD's draws of negatives (their random stream, their
device, the top of the range), its temperature in both NCE terms and its helpers across two
processes, CAT-KD's flags, the logit-standardization rule of scaled weights, the registry's order."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import method_context, method_refusal
from rld.errors import UserError
from rld.losses import cat_loss, class_activation_maps
from rld.methods import build_method, list_methods, ls_adjustments
from rld.methods._stages import no_stage_features
from rld.methods.base import logits_only
from rld.models.features import Features


class Stub(nn.Module):
    """A model whose ``forward_features`` lists ``maps`` stage maps of 4 channels (each half the size
    of the one before), with or without the pooled feature and the final map."""

    def __init__(self, name: str, maps: int = 3, classes: int = 3, pooled: bool = True, pre_pool: bool = True):
        super().__init__()
        self.model_name = name
        self.maps, self.with_pooled, self.with_pre_pool = maps, pooled, pre_pool
        self.conv = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4, classes)

    def forward_features(self, x: torch.Tensor) -> Features:
        f = torch.relu(self.conv(x))
        feats = [F.avg_pool2d(f, 2**i) if i else f for i in range(self.maps)]
        pooled = feats[-1].mean(dim=(2, 3)) if feats else f.mean(dim=(2, 3))
        return Features(
            logits=self.fc(pooled),
            feats=feats,
            preact_feats=feats,
            pooled=pooled if self.with_pooled else None,
            pre_pool=feats[-1] if self.with_pre_pool and feats else None,
        )

    def get_classifier(self) -> nn.Linear:
        return self.fc


def _pooled(batch: int, dim: int = 4, classes: int = 3, pooled: bool = True) -> Features:
    return Features(
        logits=torch.randn(batch, classes),
        feats=[],
        preact_feats=[],
        pooled=torch.randn(batch, dim) if pooled else None,
    )


NO_STAGES = (
    "{method} reads the {role}'s stage features (Features.{kind}), and the {role} {model!r} has none: "
    "torchvision: models, and timm: models without forward_intermediates, give only logits and the pooled "
    "feature. Use a model of the zoo (resnet8, wrn_16_2, MobileNetV2, ...) or a timm: model with "
    "forward_intermediates"
)


# ----------------------------------------------------------------------------- the registry, vanilla


def test_list_methods_is_the_registry_in_order():
    assert list_methods() == [
        "vanilla", "kd", "dkd", "rld", "la", "rc", "lr", "ctkd", "fitnet", "at", "rkd", "crd", "ofd",
        "reviewkd", "simkd", "catkd", "dist", "nkd", "wttm", "mlkd", "crld", "abkd",
        "sd_kd", "sd_dkd", "sd_nkd", "sd_rld",
    ]  # fmt: skip


def test_logit_standardization_refusals_name_the_method_and_the_methods_that_take_it():
    with pytest.raises(UserError) as caught:
        ls_adjustments({"name": "vanilla"})
    assert str(caught.value) == (
        "method 'vanilla' has no distillation term: method.logit_standardization does not apply"
    )
    with pytest.raises(UserError) as caught:
        ls_adjustments({"name": "lr"})
    assert str(caught.value) == (
        "method 'lr' with method.logit_standardization=true is not defined by the published code of logit "
        "standardization; switch it off (methods that take it: kd, dkd, rld, la, rc, ctkd, mlkd, abkd)"
    )


def test_ls_scales_the_given_weights_and_the_defaults_of_the_others():
    assert ls_adjustments({"name": "dkd", "alpha": 2.0}) == {"temperature": 2.0, "alpha": 18.0, "beta": 72.0}
    assert ls_adjustments({"name": "dkd", "alpha": None, "beta": 0.5}, temperature=3, weight=4) == {
        "temperature": 3.0,
        "alpha": 4.0,
        "beta": 2.0,
    }
    assert ls_adjustments({"name": "rc", "kd_weight": 3.0}, weight=2) == {
        "temperature": 2.0,
        "kd_weight": 6.0,
        "rc_weight": 0.2,
    }


def test_vanilla_is_the_weighted_cross_entropy_and_reads_no_teacher():
    method = build_method({"name": "vanilla", "ce_weight": 0.5})
    logits, target = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, 3.0]]), torch.tensor([0, 1])
    total, parts = method(logits_only(logits), None, target, 1)
    expected = 0.5 * -(torch.log_softmax(logits, dim=1)[[0, 1], [0, 1]].mean())
    assert list(parts) == ["ce"] and torch.equal(total, parts["ce"])
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- parameter checks


@pytest.mark.parametrize(
    "params,message",
    [
        ({"name": "at", "ce_weight": -1}, "method 'at': ce_weight must be a number >= 0, got -1"),
        ({"name": "at", "feat_weight": -2.0}, "method 'at': feat_weight must be a number >= 0, got -2.0"),
        ({"name": "catkd", "ce_weight": -1}, "method 'catkd': ce_weight must be a number >= 0, got -1"),
        ({"name": "catkd", "feat_weight": -3}, "method 'catkd': feat_weight must be a number >= 0, got -3"),
        ({"name": "catkd", "normalize": "yes"}, "method 'catkd': normalize must be true or false, got 'yes'"),
        ({"name": "catkd", "binarize_teacher": 1}, "method 'catkd': binarize_teacher must be true or false, got 1"),
        ({"name": "rkd", "ce_weight": -1}, "method 'rkd': ce_weight must be a number >= 0, got -1"),
        ({"name": "rkd", "feat_weight": -1}, "method 'rkd': feat_weight must be a number >= 0, got -1"),
        ({"name": "rkd", "distance_weight": -1}, "method 'rkd': distance_weight must be a number >= 0, got -1"),
    ],
)
def test_parameter_refusals(params, message):
    assert method_refusal(params) == message


# ----------------------------------------------------------------------------- stage features, AT


def test_no_stage_features_reads_feats_unless_told():
    assert str(no_stage_features("FitNet", "teacher", Stub("zoo_net"))) == NO_STAGES.format(
        method="FitNet", role="teacher", kind="feats", model="zoo_net"
    )


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_at_refuses_a_model_without_stage_features_naming_its_role(role):
    models = {"student": Stub("s_net"), "teacher": Stub("t_net")}
    models[role] = Stub("plain", maps=0)
    message = method_refusal({"name": "at"}, method_context(models["student"], models["teacher"]))
    assert message == "method 'at': " + NO_STAGES.format(method="AT", role=role, kind="feats", model="plain")


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_at_refuses_a_model_with_only_its_stem(role):
    models = {"student": Stub("s_net"), "teacher": Stub("t_net")}
    models[role] = Stub("stem_only", maps=1)
    message = method_refusal({"name": "at"}, method_context(models["student"], models["teacher"]))
    assert message == (
        f"method 'at': AT compares the stages after the stem (Features.feats[1:]), and the {role} "
        "stem_only lists only one feature map"
    )


def test_at_pairs_the_stages_after_the_stem_of_the_shorter_list():
    method = build_method({"name": "at"}, method_context(Stub("s", maps=2), Stub("t", maps=4)))
    assert method.stages == 1
    method = build_method({"name": "at"}, method_context(Stub("s", maps=4), Stub("t", maps=3)))
    assert method.stages == 2


# ----------------------------------------------------------------------------- RKD


def test_rkd_relates_a_batch_of_two():
    method = build_method(
        {"name": "rkd", "ce_weight": 0.5, "feat_weight": 2.0, "distance_weight": 3.0, "angle_weight": 5.0},
        method_context(Stub("s"), Stub("t")),
    )
    s, t, y = _pooled(2), _pooled(2), torch.tensor([0, 2])
    # the student's two samples coincide: its two non-degenerate triplet cosines are 0 (a zero vector),
    # the teacher's 1; each distance is its own mean on either side (no distance term)
    s.pooled = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    t.pooled = torch.tensor([[0.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 1.0]])
    total, parts = method(s, t, y, 1)
    assert parts["feat"].item() == pytest.approx(2.0 * 5.0 * (2 * 0.5) / 8, rel=1e-6)
    torch.testing.assert_close(total, parts["ce"] + parts["feat"], rtol=0, atol=0)


# ----------------------------------------------------------------------------- CAT-KD


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_catkd_refuses_a_model_without_its_final_map_naming_its_role(role):
    models = {"student": Stub("s_net"), "teacher": Stub("t_net")}
    models[role] = Stub("logits_only", maps=0)
    message = method_refusal({"name": "catkd"}, method_context(models["student"], models["teacher"]))
    assert message == (
        f"method 'catkd': CAT-KD reads the {role}'s final feature map, which model 'logits_only' does not provide "
        "(torchvision: and timm: models give logits and the pooled feature only); use a model of the rld zoo"
    )


def test_catkd_refuses_a_pair_that_classifies_different_classes():
    message = method_refusal({"name": "catkd"}, method_context(Stub("s", classes=5), Stub("t", classes=3)))
    assert message == "method 'catkd': the student classifies 5 classes and the teacher 3: their CAMs cannot be matched"


@pytest.mark.parametrize("normalize,binarize", [(True, False), (False, True), (True, True)])
def test_catkd_loss_follows_its_flags(normalize, binarize):
    torch.manual_seed(0)
    student, teacher = Stub("s", maps=2), Stub("t", maps=2)
    params = {"name": "catkd", "feat_weight": 3.0, "normalize": normalize, "binarize_teacher": binarize}
    method = build_method(params, method_context(student, teacher))
    x = torch.randn(2, 3, 8, 8)
    fs, ft = student.forward_features(x), teacher.forward_features(x)
    _, parts = method(fs, ft, torch.tensor([0, 2]), 1)
    cam_s = class_activation_maps(fs.pre_pool, student.fc.weight)
    cam_t = class_activation_maps(ft.pre_pool, teacher.fc.weight)
    expected = 3.0 * cat_loss(cam_s, cam_t, 2, normalize, binarize)
    torch.testing.assert_close(parts["cat"], expected, rtol=1e-6, atol=0)
    assert not torch.allclose(expected, 3.0 * cat_loss(cam_s, cam_t, 2, False, False), rtol=1e-3)


# ----------------------------------------------------------------------------- CRD

# classes 0: samples 1, 3, 6; 1: samples 2, 5, 9; 2: samples 0, 4, 7, 8
LABELS = torch.tensor([2, 0, 1, 0, 2, 1, 0, 2, 2, 1])
CRD_INDEX = torch.tensor([0, 3, 5, 8])


def _crd(labels: torch.Tensor, num_classes: int = 3, **params):
    params = {"name": "crd", "feat_dim": 4, "nce_k": 5, **params}
    return build_method(params, method_context(Stub("s"), Stub("t"), labels, num_classes))


def _published_negatives(labels: torch.Tensor, index: torch.Tensor, u: torch.Tensor) -> list[list[int]]:
    """Each sample, then for each draw u the sample at u·n of the n samples of the other classes,
    listed by class and, within a class, by index."""
    order = sorted(range(len(labels)), key=lambda i: (int(labels[i]), i))
    rows = []
    for i, draws in zip(index.tolist(), u.tolist()):
        others = [j for j in order if labels[j] != labels[i]]
        rows.append([i, *(others[math.floor(d * len(others))] for d in draws)])
    return rows


def _nce(scores: torch.Tensor, n: int) -> torch.Tensor:
    """CRD's NCE bound of scores already divided by Z (RepDistiller crd/criterion.py), in float64."""
    noise = (scores.shape[1] - 1) / n
    p = scores.double()
    positive = torch.log(p[:, 0] / (p[:, 0] + noise + 1e-7))
    negatives = torch.log(noise / (p[:, 1:] + noise + 1e-7))
    return -(positive.sum() + negatives.sum()) / p.shape[0]


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_crd_refuses_a_model_without_the_pooled_feature(role):
    models = {"student": Stub("s_net"), "teacher": Stub("t_net")}
    models[role] = Stub("no_pool", pooled=False)
    message = method_refusal({"name": "crd"}, method_context(models["student"], models["teacher"], LABELS))
    assert message == f"method 'crd': crd embeds the {role}'s pooled feature, which model 'no_pool' lacks"


def test_crd_refuses_a_data_set_without_labels():
    assert method_refusal({"name": "crd"}, method_context(Stub("s"), Stub("t"))) == (
        "method 'crd': crd keeps a memory entry per training sample and draws negatives from the other classes: "
        "it needs the training labels, which this data set's loader does not expose"
    )


@pytest.mark.parametrize("labels", [[0], [0, 3], [-1, 1], [2, 1, 0, 5]])
def test_crd_refuses_labels_out_of_range_or_a_single_sample(labels):
    message = method_refusal({"name": "crd"}, method_context(Stub("s"), Stub("t"), torch.tensor(labels)))
    assert message == "method 'crd': crd needs training labels in 0..2 for at least 2 samples"


def test_crd_builds_from_two_samples_and_from_float_labels():
    crd = _crd(torch.tensor([1, 0]), num_classes=2)
    assert crd.n_data == 2 and crd.class_count.tolist() == [1, 1] and crd.class_order.tolist() == [1, 0]
    crd = _crd(torch.tensor([2.0, 0.0, 1.0, 0.0]))
    assert crd.class_order.dtype == torch.int64 and crd.class_order.tolist() == [1, 3, 2, 0]
    assert crd.class_count.tolist() == [2, 1, 1] and crd.class_start.tolist() == [0, 2, 3]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_crd_keeps_its_tables_of_labels_given_on_a_gpu_on_the_host():
    crd = _crd(LABELS.cuda())
    assert {crd.class_order.device.type, crd.class_count.device.type, crd.class_start.device.type} == {"cpu"}
    assert crd.class_order.tolist() == [1, 3, 6, 2, 5, 9, 0, 4, 7, 8]


def test_crd_negatives_are_float64_draws_of_the_global_generator():
    crd = _crd(LABELS, nce_k=8)
    torch.manual_seed(11)
    drawn = crd.contrast_indices(CRD_INDEX, LABELS[CRD_INDEX])
    torch.manual_seed(11)
    u = torch.rand(4, 8, dtype=torch.float64)
    assert drawn.tolist() == _published_negatives(LABELS, CRD_INDEX, u)


def test_crd_negatives_are_drawn_on_the_device_of_the_indices():
    crd = _crd(LABELS, nce_k=8)
    torch.manual_seed(11)
    with torch.device("meta"):
        drawn = crd.contrast_indices(CRD_INDEX, LABELS[CRD_INDEX])
    torch.manual_seed(11)
    assert drawn.device.type == "cpu" and torch.equal(drawn, crd.contrast_indices(CRD_INDEX, LABELS[CRD_INDEX]))


def test_crd_draws_at_the_ends_of_the_unit_interval_are_the_first_and_last_negatives(monkeypatch):
    """A generator whose range includes 1 (curand's is (0, 1]) still draws inside the other classes."""
    crd = _crd(LABELS, nce_k=2)

    def ends(rows, k, dtype=None, device=None):
        return torch.tensor([[0.0, 1.0]], dtype=dtype, device=device).expand(rows, k)

    monkeypatch.setattr(torch, "rand", ends)
    index = torch.tensor([1, 2, 0])  # one sample of each class
    assert crd.contrast_indices(index, LABELS[index]).tolist() == [[1, 2, 8], [2, 1, 8], [0, 1, 9]]


def test_crd_step_refusals():
    crd = _crd(LABELS)
    s, t, y = _pooled(2), _pooled(2), LABELS[:2]
    with pytest.raises(ValueError) as caught:
        crd(s, t, y, 1, None)
    assert str(caught.value) == (
        "crd needs each sample's index in the training set (Batch.indices) and the batch has none: "
        "its memories hold one entry per training sample"
    )
    for student, teacher in ((s, None), (s, _pooled(2, pooled=False)), (_pooled(2, pooled=False), t)):
        with pytest.raises(ValueError) as caught:
            crd(student, teacher, y, 1, torch.tensor([0, 1]))
        assert str(caught.value) == "crd needs the pooled features of the student and the teacher"


def test_crd_scores_both_terms_at_its_temperature():
    crd = _crd(LABELS, nce_t=0.2, feat_weight=1.5)
    torch.manual_seed(0)
    s, t, y = _pooled(4), _pooled(4), LABELS[CRD_INDEX]
    memory_s, memory_t = crd.memory_s.clone(), crd.memory_t.clone()
    torch.manual_seed(7)
    _, parts = crd(s, t, y, 1, CRD_INDEX)
    torch.manual_seed(7)
    contrast = crd.contrast_indices(CRD_INDEX, y)
    with torch.no_grad():
        v_s = F.normalize(crd.embed_s.linear(s.pooled), dim=1).double()
        v_t = F.normalize(crd.embed_t.linear(t.pooled), dim=1).double()
    scores_s = torch.exp(torch.einsum("bkd,bd->bk", memory_t[contrast].double(), v_s) / 0.2)
    scores_t = torch.exp(torch.einsum("bkd,bd->bk", memory_s[contrast].double(), v_t) / 0.2)
    # Z: the first batch's mean score times the 10 samples
    expected = _nce(scores_s / (10 * scores_s.mean()), 10) + _nce(scores_t / (10 * scores_t.mean()), 10)
    assert parts["crd"].item() == pytest.approx(1.5 * expected.item(), rel=1e-5)


_TWO_PROCESSES = """
import json, sys
from datetime import timedelta
import torch
import torch.distributed as dist
from rld.methods import crd

rank, folder = int(sys.argv[1]), sys.argv[2]
dist.init_process_group(
    "gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=2, timeout=timedelta(seconds=60)
)
try:
    rows = torch.tensor([[rank, 10 + rank], [20 + rank, 30 + rank]], dtype=torch.float32).t()
    x = torch.tensor([1.0 + 2 * rank, 4.0 * rank])
    out = {
        "world": crd._world_size(),
        "gathered": crd._all_gather(rows).tolist(),
        "mean": crd._mean_over_processes(x).tolist(),
        "x": x.tolist(),
    }
finally:
    dist.destroy_process_group()
print(json.dumps(out))
"""


def test_crd_gathers_in_rank_order_and_averages_over_two_processes(tmp_path):
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", _TWO_PROCESSES, str(rank), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for rank in range(2)
    ]
    outputs = []
    try:
        for proc in ranks:
            out, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, err
            outputs.append(json.loads(out.splitlines()[-1]))
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, out in enumerate(outputs):
        assert out == {
            "world": 2,
            "gathered": [[0.0, 20.0], [10.0, 30.0], [1.0, 21.0], [11.0, 31.0]],
            "mean": [2.0, 2.0],
            "x": [1.0 + 2 * rank, 4.0 * rank],
        }
