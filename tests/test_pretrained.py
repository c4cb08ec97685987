"""Pretrained weights (local files, a library's named weights from its cache), a new classifier for
other classes, linear probing, and the fine-tuning schedules (cosine, warm-up, AdamW)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from rld.config import resolve
from rld.engine import lr_at, train
from rld.engine.distributed import World
from rld.engine.trainer import Run
from rld.errors import UserError
from rld.models import create_model
from rld.models.weights import create_pretrained, freeze_backbone

FAST = ["train.batch_size=256", "data.eval_batch_size=512", "train.channels_last=false"]


def _state(num_classes: int, seed: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return create_model("resnet8", num_classes=num_classes).state_dict()


def _equal(a: dict, b: dict, skip: str = "\0") -> bool:
    keys = [k for k in a if not k.startswith(skip)]
    return all(torch.equal(a[k], b[k]) for k in keys) and bool(keys)


@pytest.mark.parametrize("layout", ["bare", "wrapped", "safetensors"])
def test_local_weight_files_in_every_layout(tmp_path, layout):
    state = _state(10)
    if layout == "bare":
        path = tmp_path / "w.pth"
        torch.save(state, path)
    elif layout == "wrapped":
        path = tmp_path / "w.pt"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = create_pretrained("resnet8", str(path), num_classes=10)
    assert _equal(model.state_dict(), state)


def test_a_classifier_of_another_size_is_replaced_and_a_teacher_refuses_it(tmp_path, caplog):
    state = _state(100)
    path = tmp_path / "imagenet-ish.pth"
    torch.save(state, path)
    with caplog.at_level(logging.INFO, logger="rld"):
        model = create_pretrained("resnet8", str(path), num_classes=10)
    assert model.get_classifier().out_features == 10
    assert _equal(model.state_dict(), state, skip="fc.")  # the backbone is the file's
    assert "resnet8: replaced the classifier (100 -> 10 classes, newly initialised)" in caplog.messages
    with pytest.raises(UserError, match="predict 100 classes, the data has 10: a teacher must predict the data's"):
        create_pretrained("resnet8", str(path), num_classes=10, replace_head=False)
    with pytest.raises(UserError, match="weights file .*missing.pth does not exist"):
        create_pretrained("resnet8", str(tmp_path / "missing.pth"), num_classes=10)
    with pytest.raises(UserError, match="resnet8 is a model of rld's zoo, which has no named weight sets"):
        create_pretrained("resnet8", "default", num_classes=10)


def test_torchvision_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.MobileNet_V3_Small_Weights.DEFAULT
    cache = tmp_path / "torch" / "hub" / "checkpoints" / Path(weights.url).name
    torch.manual_seed(0)
    saved = torchvision.models.mobilenet_v3_small(num_classes=1000).state_dict()
    # no file yet and no download (simulated offline): the message says where the file goes
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    with monkeypatch.context() as m:
        m.setattr(api, "load_state_dict_from_url", offline)
        with pytest.raises(UserError, match=f"not in the torch.hub cache \\({cache}\\)"):
            create_pretrained("torchvision:mobilenet_v3_small", "default", num_classes=10)
    cache.parent.mkdir(parents=True)
    torch.save(saved, cache)
    model = create_pretrained("torchvision:mobilenet_v3_small", "IMAGENET1K_V1", num_classes=10)
    assert model.get_classifier().out_features == 10
    assert _equal({k.removeprefix("net."): v for k, v in model.state_dict().items()}, saved, skip="classifier.3.")
    with pytest.raises(UserError, match="has no weights 'IMAGENET9K'; choose default or one of IMAGENET1K_V1"):
        create_pretrained("torchvision:mobilenet_v3_small", "IMAGENET9K", num_classes=10)


def test_linear_probing_trains_only_the_classifier(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_state(100), path)
    probe = ["train.epochs=1", f"model.student_weights={path}", "model.freeze_backbone=true"]
    cfg = resolve("demo/vanilla", [*FAST, *probe])
    train(cfg, tmp_path / "run")
    final = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["model"]
    start = _state(100)
    assert _equal(final, start, skip="fc.")  # every backbone tensor as loaded, BatchNorm statistics included
    assert final["fc.weight"].shape == (10, 64)
    model = create_model("resnet8", num_classes=10)
    assert freeze_backbone(model) == ["fc.weight", "fc.bias"]


def test_cosine_schedule_with_warmup_and_adamw():
    cfg = resolve("demo/vanilla", ["train.epochs=10", "train.lr=0.1", "train.schedule=cosine", "train.warmup_epochs=2"])
    expected = [0.05, 0.1] + [0.1 * (1 + math.cos(math.pi * k / 8)) / 2 for k in range(8)]
    assert [lr_at(cfg, e) for e in range(1, 11)] == pytest.approx(expected, rel=1e-12)
    step = resolve(
        "demo/vanilla", ["train.epochs=10", "train.lr=0.1", "train.warmup_epochs=1", "train.lr_milestones=[5]"]
    )
    assert [lr_at(step, e) for e in (1, 2, 5, 6)] == pytest.approx([0.1, 0.1, 0.1, 0.01])
    with pytest.raises(UserError, match="train.schedule must be step or cosine, got linear"):
        resolve("demo/vanilla", ["train.schedule=linear"])
    with pytest.raises(UserError, match="train.warmup_epochs must be >= 0 and < train.epochs"):
        resolve("demo/vanilla", ["train.epochs=3", "train.warmup_epochs=3"])
    adamw = resolve("demo/vanilla", ["train.optimizer=adamw", "train.lr=0.001", "train.weight_decay=0.05"])
    run = Run(
        adamw, Path("unused"), world=World(), device=torch.device("cpu"), num_classes=10, resume_from=None, resume=False
    )
    assert isinstance(run.optimizer, torch.optim.AdamW)
    assert (run.optimizer.defaults["lr"], run.optimizer.defaults["weight_decay"]) == (0.001, 0.05)
    scaled = resolve("demo/vanilla", ["train.schedule=cosine", "train.warmup_epochs=2"])
    from rld.config import schedule_overrides

    assert "train.warmup_epochs=4" in schedule_overrides(scaled, 20)


def test_timm_weights_from_a_local_file(tmp_path, caplog):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    saved = timm.create_model("resnet18", pretrained=False, num_classes=1000).state_dict()
    path = tmp_path / "timm-resnet18.pth"
    torch.save({"model": saved}, path)
    with caplog.at_level(logging.INFO, logger="rld"):
        model = create_pretrained("timm:resnet18", str(path), num_classes=10)
    assert model.get_classifier().out_features == 10
    assert _equal({k.removeprefix("net."): v for k, v in model.state_dict().items()}, saved, skip="fc.")
    assert "timm:resnet18: replaced the classifier (1000 -> 10 classes, newly initialised)" in caplog.messages
