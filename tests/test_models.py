"""Tests of the model zoo: reference layouts, the feature interface, checkpoints, the registry."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rld.errors import UserError
from rld.models import ExternalModel, FeatureModel, Features, create_model, list_models, load_checkpoint, registry

# The reference state-dict layouts, parameter counts and feature shapes of the shared checkpoints'
# architectures: test data kept in the repository, so that every checkout runs these tests.
LAYOUTS_PATH = Path(__file__).resolve().parent / "data" / "model_layouts.json"
LAYOUTS: dict = json.loads(LAYOUTS_PATH.read_text())
NUM_CLASSES = {"cifar100": 100, "imagenet": 1000}


@pytest.fixture(scope="module", autouse=True)
def _one_intra_op_thread() -> Iterator[None]:
    """Batch-2 CPU forwards gain little from threads, and extra threads spin on a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _case_params() -> list:
    return [
        pytest.param((dataset, name), id=f"{dataset}-{name}")
        for dataset in NUM_CLASSES
        for name in sorted(LAYOUTS[dataset])
    ]


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so every BN computes a different map."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))


@dataclass
class Case:
    name: str
    dataset: str
    model: FeatureModel
    x: Tensor
    logits: Tensor
    features: Features


def _case(name: str, dataset: str, size: int) -> Case:
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES[dataset], dataset=dataset)
    _randomise_batchnorm(model)
    model.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
    return Case(name, dataset, model, x, logits, features)


@pytest.fixture(scope="module", params=_case_params())
def case(request: pytest.FixtureRequest) -> Case:
    """One randomly initialised model of the reference list and its outputs on a batch of 2."""
    dataset, name = request.param
    return _case(name, dataset, 32 if dataset == "cifar100" else 224)


# --- reference layouts -----------------------------------------------------------------------


def test_state_dict_layout_and_param_count(case: Case) -> None:
    reference = LAYOUTS[case.dataset][case.name]
    layout = {k: list(v.shape) for k, v in case.model.state_dict().items()}
    assert layout == reference["state_dict"]
    assert sum(p.numel() for p in case.model.parameters()) == reference["params"]


def test_logits_shape_and_forward_features_agree(case: Case) -> None:
    features, num_classes = case.features, NUM_CLASSES[case.dataset]
    assert case.logits.shape == (2, num_classes)
    assert torch.isfinite(case.logits).all()
    assert torch.equal(features.logits, case.logits)
    classifier = case.model.get_classifier()
    assert isinstance(classifier, nn.Linear)
    assert (classifier.in_features, classifier.out_features) == (features.pooled.shape[1], num_classes)
    assert torch.equal(classifier(features.pooled), case.logits)


# (channels, downsampling) of each entry of ``feats`` of the ImageNet models (not in the reference file).
IMAGENET_FEATS = {
    "ResNet18": ((64, 64, 128, 256, 512), (2, 4, 8, 16, 32)),
    "ResNet34": ((64, 64, 128, 256, 512), (2, 4, 8, 16, 32)),
    "ResNet50": ((64, 256, 512, 1024, 2048), (2, 4, 8, 16, 32)),
    "ResNet101": ((64, 256, 512, 1024, 2048), (2, 4, 8, 16, 32)),
    "MobileNetV1": ((64, 128, 256, 512, 1024), (2, 4, 8, 16, 32)),
}


def test_feature_shapes(case: Case) -> None:
    if case.dataset == "cifar100":
        reference = LAYOUTS["cifar100"][case.name]["feature_shapes"]
        expected, pooled = reference["feats"], reference["pooled_feat"]
    else:
        channels, strides = IMAGENET_FEATS[case.name]
        size = case.x.shape[-1]
        expected = [[2, c, size // s, size // s] for c, s in zip(channels, strides, strict=True)]
        pooled = [2, channels[-1]]
    assert [list(f.shape) for f in case.features.feats] == expected
    assert [list(f.shape) for f in case.features.preact_feats] == expected
    assert list(case.features.pooled.shape) == pooled


# How ``preact_feats[i]`` relates to ``feats[i]``: "relu" (relu(preact) == feat), "same" (the
# output itself: no ReLU follows), or the dotted name of the BatchNorm whose output it is (WRN).
_WRN_BN = ["block1.layer.0.bn1", "block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"]
PREACT_RELATION = {
    "MobileNetV2": ["relu", "same", "same", "same", "same"],
    "wrn_16_1": _WRN_BN,
    "wrn_16_2": _WRN_BN,
    "wrn_40_1": _WRN_BN,
    "wrn_40_2": _WRN_BN,
}


def test_preact_features(case: Case) -> None:
    features = case.features
    relations = PREACT_RELATION.get(case.name, ["relu"] * len(features.feats))
    assert len(features.feats) == len(features.preact_feats) == len(relations)
    for feat, preact, relation in zip(features.feats, features.preact_feats, relations, strict=True):
        if relation == "relu":
            assert (preact < 0).any() and (feat >= 0).all()
            assert torch.equal(F.relu(preact), feat)
        elif relation == "same":
            assert preact is feat
        else:
            bn = case.model.get_submodule(relation)
            assert (preact < 0).any() and not torch.equal(preact, feat)
            with torch.no_grad():
                assert torch.equal(preact, bn(feat))


def test_registry_lists_exactly_the_reference_models() -> None:
    assert (len(LAYOUTS["cifar100"]), len(LAYOUTS["imagenet"])) == (23, 5)
    assert list_models("cifar100") == sorted(LAYOUTS["cifar100"])
    assert list_models("imagenet") == sorted(LAYOUTS["imagenet"])
    assert list_models() == sorted(set(LAYOUTS["cifar100"]) | set(LAYOUTS["imagenet"]))


# --- features in training mode, other precisions, compile ------------------------------------


def test_num_classes_and_training_mode_gradients() -> None:
    model = create_model("wrn_16_1", num_classes=10)
    assert model.get_classifier().weight.shape == (10, 64)
    features = model.forward_features(torch.randn(2, 3, 32, 32))
    assert features.logits.shape == (2, 10)
    # BatchNorm statistics are updated once per forward pass, also for the pre-activation features.
    assert int(model.block2.layer[0].bn1.num_batches_tracked) == 1
    (features.logits.sum() + sum(f.sum() for f in features.preact_feats)).backward()
    assert model.conv1.weight.grad is not None and model.fc.weight.grad is not None


@pytest.mark.parametrize("name", ["resnet8", "ShuffleV2"])
def test_channels_last_and_bf16_autocast(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        x_cl = x.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x_cl), reference, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = model.forward_features(x_cl)
    assert features.logits.dtype == torch.bfloat16
    assert features.feats[-1].is_contiguous(memory_format=torch.channels_last)
    error = (features.logits.float() - reference).abs().max()
    assert error <= 0.05 * reference.abs().max() + 0.05


@pytest.mark.parametrize("name", ["ShuffleV2", "wrn_16_1"])
def test_forward_features_compiles_without_graph_breaks(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model.forward_features, fullgraph=True, backend="eager")
    with torch.no_grad():
        expected, got = model.forward_features(x), compiled(x)
    assert isinstance(got, Features)
    torch.testing.assert_close(got.logits, expected.logits)
    assert [f.shape for f in got.preact_feats] == [f.shape for f in expected.preact_feats]


# --- registry ---------------------------------------------------------------------------------


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(UserError, match=r"unknown model 'resnet9' for dataset 'cifar100'; did you mean 'resnet8'"):
        create_model("resnet9")
    with pytest.raises(UserError, match=r"did you mean 'ShuffleV2'") as info:
        create_model("shufflev2")
    assert "valid names: MobileNetV2, ResNet18" in str(info.value)
    assert "\n" not in str(info.value)


def test_name_of_other_dataset_points_to_it() -> None:
    with pytest.raises(UserError, match=r"'ResNet101' .* registered for dataset 'imagenet': pass dataset='imagenet'"):
        create_model("ResNet101", dataset="cifar100")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "resnet8", "dataset": "cifar10"}, "unknown dataset 'cifar10'.*cifar100, imagenet"),
        ({"name": "resnet8", "num_classes": 0}, "num_classes must be a positive integer, got 0"),
        ({"name": "resnet8", "num_classes": 10.0}, "num_classes must be a positive integer"),
        ({"name": ""}, "model name must be a non-empty string"),
        ({"name": "hub:resnet8"}, "unknown model source 'hub'.*'torchvision:<name>'"),
    ],
)
def test_invalid_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        create_model(**kwargs)


def test_list_models_rejects_unknown_dataset() -> None:
    with pytest.raises(UserError, match="unknown dataset 'tiny' for models; use one of: cifar100, imagenet"):
        list_models("tiny")


def test_register_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", {d: dict(v) for d, v in registry._REGISTRY.items()})

    @registry.register_model("cifar100")
    def tiny_resnet(num_classes: int) -> FeatureModel:
        return create_model("resnet8", num_classes)

    assert "tiny_resnet" in list_models("cifar100") and "tiny_resnet" not in list_models("imagenet")
    model = create_model("tiny_resnet", num_classes=7)
    assert model.model_name == "tiny_resnet" and model.get_classifier().out_features == 7
    with pytest.raises(UserError, match="'resnet8' is already registered for dataset 'cifar100'"):
        registry.register_model("cifar100", "resnet8")(tiny_resnet)
    with pytest.raises(UserError, match="must not contain ':'"):
        registry.register_model("cifar100", "a:b")(tiny_resnet)


# --- bring-your-own models --------------------------------------------------------------------


def test_torchvision_model_gives_logits_and_pooled_feature() -> None:
    torch.manual_seed(0)
    model = create_model("torchvision:resnet18", num_classes=10).eval()
    assert isinstance(model, ExternalModel) and model.model_name == "torchvision:resnet18"
    classifier = model.get_classifier()
    assert classifier is model.net.fc
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
        net = model.net
        stages = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
        pooled = torch.flatten(net.avgpool(stages), 1)
    assert features.feats == [] and features.preact_feats == []
    assert features.logits.shape == (2, 10) and torch.equal(features.logits, logits)
    assert torch.equal(features.pooled, pooled)
    assert torch.equal(classifier(features.pooled), logits)
    assert len(classifier._forward_pre_hooks) == 0


def test_torchvision_unknown_or_unsuitable_names() -> None:
    with pytest.raises(UserError, match=r"unknown torchvision classification model 'resnet19'.*'resnet18'"):
        create_model("torchvision:resnet19")
    with pytest.raises(UserError, match="unknown torchvision classification model 'fasterrcnn_resnet50_fpn'"):
        create_model("torchvision:fasterrcnn_resnet50_fpn")
    with pytest.raises(UserError, match="has no linear classifier with 10 outputs"):
        create_model("torchvision:squeezenet1_0", num_classes=10)


def test_timm_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(UserError, match=r"'timm:resnet18' needs the optional package timm: pip install timm"):
        create_model("timm:resnet18")


# --- checkpoints ------------------------------------------------------------------------------


def _trained_like(name: str, seed: int) -> FeatureModel:
    torch.manual_seed(seed)
    model = create_model(name)
    _randomise_batchnorm(model, seed)
    return model.eval()


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_teacher_checkpoint_round_trip(tmp_path: Path, prefix: str) -> None:
    source, target = _trained_like("resnet8", seed=1), _trained_like("resnet8", seed=2)
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(_logits(source, x), _logits(target, x))
    state = {prefix + k: v for k, v in source.state_dict().items()}
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": state, "epoch": 240}, path)
    assert load_checkpoint(target, path) == {"epoch": 240}
    assert torch.equal(_logits(target, x), _logits(source, x))


@pytest.mark.parametrize("layout", ["plain", "state_dict", "student"])
def test_other_checkpoint_layouts(tmp_path: Path, layout: str) -> None:
    source, target = _trained_like("wrn_16_1", seed=1), _trained_like("wrn_16_1", seed=2)
    state = source.state_dict()
    path = tmp_path / "weights.pt"
    torch.save(state if layout == "plain" else {layout: state, "step": 3}, path)
    assert load_checkpoint(target, path) == ({} if layout == "plain" else {"step": 3})
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_logits(target, x), _logits(source, x))


def test_load_into_wrapped_models(tmp_path: Path) -> None:
    source = _trained_like("resnet8", seed=1)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": source.state_dict()}, path)
    x = torch.randn(2, 3, 32, 32)
    for wrap in (torch.compile, nn.DataParallel):
        target = _trained_like("resnet8", seed=2)
        load_checkpoint(wrap(target), path)
        assert torch.equal(_logits(target, x), _logits(source, x))


def test_external_model_loads_bare_library_state_dict(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    model = create_model("torchvision:resnet18", num_classes=10).eval()
    load_checkpoint(model, path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_logits(model, x), _logits(net, x))


@pytest.mark.parametrize(
    ("other", "expected"),
    [
        ("resnet14", "unexpected keys (layer1.1.conv1.weight"),
        ("resnet8x4", "conv1.weight [32, 3, 3, 3] in the file vs [16, 3, 3, 3] in the model"),
        ("vgg8", "missing keys (conv1.weight, bn1.weight"),
    ],
)
def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path, other: str, expected: str) -> None:
    path = tmp_path / f"{other}.pth"
    torch.save({"model": create_model(other).state_dict(), "epoch": 240}, path)
    model = create_model("resnet8")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError) as info:
        load_checkpoint(model, path)
    message = str(info.value)
    assert message.startswith(f"checkpoint {path} does not fit model 'resnet8': ")
    assert expected in message and "\n" not in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_num_classes_mismatch_names_the_classifier(tmp_path: Path) -> None:
    path = tmp_path / "cifar10.pth"
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, path)
    with pytest.raises(UserError, match=r"2 shape mismatches \(fc\.weight \[10, 64\] in the file vs \[100, 64\]"):
        load_checkpoint(create_model("resnet8"), path)


def test_unreadable_checkpoints(tmp_path: Path) -> None:
    model = create_model("resnet8")
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(UserError, match=re.escape(f"checkpoint file not found: {missing}; check the path")):
        load_checkpoint(model, missing)

    valid = tmp_path / "valid.pth"
    torch.save({"model": model.state_dict()}, valid)
    data = valid.read_bytes()
    corrupt, truncated = tmp_path / "corrupt.pth", tmp_path / "truncated.pth"
    corrupt.write_bytes(bytes(range(256)) * 8)
    truncated.write_bytes(data[: len(data) // 2])
    pickled_module = tmp_path / "module.pth"
    torch.save(model, pickled_module)
    for path in (corrupt, truncated, pickled_module):
        with pytest.raises(UserError, match=re.escape(f"cannot read checkpoint {path} (") + ".*weights_only"):
            load_checkpoint(model, path)

    metrics, a_list = tmp_path / "metrics.pth", tmp_path / "list.pth"
    torch.save({"epoch": 3, "accuracy": 71.2}, metrics)
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(UserError, match=r"holds a dict with entries \['accuracy', 'epoch'\], not model weights"):
        load_checkpoint(model, metrics)
    with pytest.raises(UserError, match=r"holds a list, not model weights: expected a state dict"):
        load_checkpoint(model, a_list)
