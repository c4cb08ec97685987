"""How rld.data.build finds a run's images and describes their evaluation preprocessing: the process
group's rank, the image sources (Hugging Face, a manifest, one folder of classes, train/ and val/ or test/
folders) with every setting handed on, and the preprocessing an export records."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from rld.data import ArraySplit, DeviceLoader, sources
from rld.data import build as build_module
from rld.data.build import _image_datasets, _world, build_data, eval_preprocess
from rld.errors import UserError


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(path)
    return path


def _classes(folder: Path, per_class: int = 2) -> None:
    for c in ("cat", "dog"):
        for i in range(per_class):
            _png(folder / c / f"{i}.png", seed=i)


def _datasets(path, *, split=None, val_fraction=None, seed=0, skip_bad=False, held_out=True, key="folder", size=8):
    return _image_datasets(key, str(path), size, split, val_fraction, seed, skip_bad, "img", "lbl", held_out)


# ----------------------------------------------------------------------------- the process group


@pytest.fixture
def group_of_two(monkeypatch):
    """An initialised process group in which this process is rank 1 of 2."""
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)


def test_the_rank_is_the_process_groups_only_when_distributed_and_initialised(group_of_two, monkeypatch):
    assert _world(True) == (1, 2)
    assert _world(False) == (0, 1)  # a group initialised by the caller does not make a plain run distributed
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    assert _world(True) == (0, 1)


# ----------------------------------------------------------------------------- image sources


def test_a_hugging_face_source_gets_every_setting(monkeypatch):
    seen = {}

    def hf_datasets(path, **kwargs):
        seen.update(path=path, **kwargs)
        return "train", "test", ["a", "b"]

    monkeypatch.setattr(sources, "hf_datasets", hf_datasets)
    out = _datasets("user/set", key="hf", val_fraction=0.2, seed=7, held_out=False, size=12)
    assert out == ("train", "test", ["a", "b"], None)
    assert seen == {
        "path": "user/set",
        "image_column": "img",
        "label_column": "lbl",
        "val_fraction": 0.2,
        "seed": 7,
        "image_size": 12,
        "held_out": False,
    }


def test_a_manifest_is_split_with_the_runs_fraction_and_seed(tmp_path, monkeypatch):
    manifest = tmp_path / "list.csv"
    seen = []
    real = sources.manifest_split
    monkeypatch.setattr(sources, "manifest_split", lambda *args: seen.append(args) or real(*args))
    _classes(tmp_path / "img")
    manifest.write_text("path,label\n" + "".join(f"img/{c}/{i}.png,{c}\n" for c in ("cat", "dog") for i in range(2)))
    train, test, classes, split = _datasets(manifest, val_fraction=0.5, seed=5)
    assert seen == [(manifest, 0.5, 5)]
    assert classes == ["cat", "dog"] and (len(train), len(test)) == (2, 2) and split.val == sorted(split.val)


def test_one_folder_of_classes_needs_a_fraction_to_be_split(tmp_path):
    _classes(tmp_path / "pets")
    with pytest.raises(UserError) as err:
        _datasets(tmp_path / "pets")
    assert str(err.value) == (
        f"{tmp_path / 'pets'} has no train/ and val/ folders: set data.val_fraction (e.g. 0.1) to split its "
        "<class>/ folders into training and validation images"
    )
    train, test, classes, split = _datasets(tmp_path / "pets", val_fraction=0.5)
    assert classes == ["cat", "dog"] and (len(train), len(test)) == (2, 2)


def test_a_saved_split_builds_only_the_training_part_without_held_out_images(tmp_path):
    _classes(tmp_path / "pets")
    split = sources.folder_split(tmp_path / "pets", 0.5, 0)
    train, test, classes, same = _datasets(tmp_path / "pets", split=split, held_out=False)
    assert test is None and same is split and len(train) == 2 and classes == ["cat", "dog"]


def test_a_root_with_only_a_train_folder_trains_from_it_when_nothing_is_held_out(tmp_path):
    """train/ alone is the train/-and-val/ layout, not a folder whose classes are train: its images, its
    size and the skipping of unreadable files are handed on."""
    _classes(tmp_path / "train")
    (tmp_path / "train" / "dog" / "bad.png").write_bytes(b"not an image")
    train, test, classes, split = _datasets(tmp_path, held_out=False, skip_bad=True, size=12)
    assert test is None and split is None and classes == ["cat", "dog"]
    assert len(train) == 4 and train.skipped == [str(Path("dog") / "bad.png")]
    assert train[0][0].shape == (3, 12, 12)


def test_a_root_with_only_a_test_folder_is_the_train_and_val_layout_missing_train(tmp_path):
    _classes(tmp_path / "test")
    with pytest.raises(UserError) as err:
        _datasets(tmp_path)
    assert str(err.value) == (
        f"{tmp_path} has no train/ folder: expected the layout ROOT/train/<class>/<image> and ROOT/val/<class>/<image>"
    )


# ----------------------------------------------------------------------------- evaluation preprocessing


def test_array_data_is_described_by_its_size_and_statistics():
    split = ArraySplit(np.zeros((2, 6, 4, 3), np.uint8), np.arange(2))
    loader = DeviceLoader(split, 2, device="cpu", mean=(0.5, 0.25, 0.125), std=(0.2, 0.3, 0.4), train=False, flip=False)
    assert eval_preprocess(loader) == {"size": [6, 4], "mean": [0.5, 0.25, 0.125], "std": [0.2, 0.3, 0.4]}


def _torch_loader(transform, wrapped: bool = False):
    dataset = SimpleNamespace(transform=transform)
    return SimpleNamespace(loader=SimpleNamespace(dataset=SimpleNamespace(base=dataset) if wrapped else dataset))


@pytest.mark.parametrize("wrapped", [False, True], ids=["data set", "subset of it"])
def test_a_torchvision_pipeline_is_read_step_by_step(wrapped):
    normalize = T.Normalize((0.5, 0.25, 0.125), (0.2, 0.3, 0.4))
    plain = T.Compose([T.Resize(14), T.CenterCrop(12), T.ToTensor(), normalize])
    assert eval_preprocess(_torch_loader(plain, wrapped)) == {
        "resize": 14,
        "crop": [12, 12],
        "mean": [0.5, 0.25, 0.125],
        "std": [0.2, 0.3, 0.4],
    }
    rectangle = T.Compose([T.Resize((14, 16)), T.ToTensor(), normalize])
    assert eval_preprocess(_torch_loader(rectangle, wrapped))["resize"] == [14, 16]


@pytest.mark.parametrize(
    "test_loader",
    [
        SimpleNamespace(),  # no loader
        SimpleNamespace(loader=SimpleNamespace()),  # a loader without a data set
        SimpleNamespace(loader=SimpleNamespace(dataset=SimpleNamespace())),  # a data set without a transform
        _torch_loader(lambda image: image),  # a transform that is not a pipeline
        _torch_loader(T.Compose([T.Resize(14), T.ToTensor()])),  # no Normalize step
    ],
    ids=["no loader", "no data set", "no transform", "a function", "no Normalize"],
)
def test_a_pipeline_without_a_normalize_step_cannot_be_described(test_loader):
    with pytest.raises(UserError) as err:
        eval_preprocess(test_loader)
    assert str(err.value) == "cannot tell the evaluation preprocessing of this data set (no Normalize step)"


# ----------------------------------------------------------------------------- build_data's settings


class _Recorded:
    """Stands in for a loader class: keeps its arguments."""

    calls: list = []

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        type(self).calls.append(self)


@pytest.fixture
def loaders(monkeypatch):
    """The loaders build_data makes, recorded instead of built (device, device-folder, torch)."""
    made = {}
    for name in ("DeviceLoader", "DeviceFolderLoader", "TorchLoader"):
        made[name] = type(name, (_Recorded,), {"calls": []})
        monkeypatch.setattr(build_module, name, made[name])
    return made


def test_array_data_by_default_one_process_plain_memory_format_no_strong_view(loaders, group_of_two):
    """Defaults of build_data for digits: not distributed (even inside a process group), contiguous
    images, no strong view, the evaluation batch the training one, the seed to both loaders."""
    bundle = build_data("digits", None, batch_size=4, device="cpu", seed=9)
    train, test = bundle.train, bundle.test
    common = {"device": "cpu", "seed": 9, "channels_last": False, "rank": 0, "world_size": 1}
    assert train.args[1:] == (4,) and test.args[1:] == (4,)
    assert {k: train.kwargs[k] for k in common} == common == {k: test.kwargs[k] for k in common}
    assert train.kwargs["train"] is True and train.kwargs["strong"] is False and test.kwargs["train"] is False
    assert len(train.args[0]) == 1347 and bundle.holdout is None  # the whole training split


def test_the_pil_pipeline_of_array_data_uses_four_workers_by_default(loaders):
    bundle = build_data("digits", None, batch_size=4, eval_batch_size=1, device="cpu", seed=0, pipeline="pil")
    assert bundle.train.kwargs["num_workers"] == bundle.test.kwargs["num_workers"] == 4
    assert bundle.train.kwargs["strong"] is None and bundle.test.args[1] == 1


def test_image_folders_on_the_device_pipeline_get_every_default(tmp_path, loaders):
    for part in ("train", "val"):
        _classes(tmp_path / part)
    bundle = build_data("imagefolder", str(tmp_path), batch_size=2, device="cpu", seed=4, pipeline="device")
    train, test = bundle.train, bundle.test
    options = {
        "image_size": 224,
        "decoder": "auto",
        "skip_bad": False,
        "num_workers": 4,
        "device": "cpu",
        "seed": 4,
        "channels_last": False,
        "rank": 0,
        "world_size": 1,
    }
    assert {k: train.kwargs[k] for k in options} == options == {k: test.kwargs[k] for k in options}
    assert train.kwargs["strong"] is False and len(train.args[0]) == len(test.args[0]) == 4


def test_an_image_source_gets_the_default_columns_and_keeps_unreadable_files(monkeypatch):
    seen = []

    def image_datasets(*args):
        seen.append(args)
        raise KeyboardInterrupt  # stop there: only the arguments are wanted

    monkeypatch.setattr(build_module, "_image_datasets", image_datasets)
    with pytest.raises(KeyboardInterrupt):
        build_data("hf", "user/set", batch_size=2, device="cpu", seed=0)
    assert seen == [("hf", "user/set", 224, None, None, 0, False, "image", "label", True)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"pipeline": "gpu"}, "unknown data pipeline 'gpu': choose one of auto, device, pil"),
        ({"decoder": "pil"}, "unknown data.decoder 'pil': choose one of auto, torchvision, torchcodec"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"batch_size": True}, "batch_size must be a positive integer, got True"),
        ({"eval_batch_size": 0}, "eval_batch_size must be a positive integer, got 0"),
        ({"eval_batch_size": 2.0}, "eval_batch_size must be a positive integer, got 2.0"),
        ({"eval_batch_size": False}, "eval_batch_size must be a positive integer, got False"),
    ],
)
def test_build_data_refuses_unknown_choices_and_batch_sizes_that_are_not_positive_integers(kwargs, message):
    with pytest.raises(UserError) as err:
        build_data("digits", None, **{"batch_size": 4, "device": "cpu", "seed": 0, **kwargs})
    assert str(err.value) == message


def test_batches_of_one_are_allowed(loaders):
    bundle = build_data("digits", None, batch_size=1, eval_batch_size=1, device="cpu", seed=0)
    assert bundle.train.args[1] == bundle.test.args[1] == 1


def test_cifar100_refuses_an_image_size_and_needs_a_path():
    with pytest.raises(UserError) as err:
        build_data("cifar100", "x.npz", batch_size=4, device="cpu", seed=0, image_size=64)
    assert str(err.value) == "data.image_size does not apply to cifar100 (its images are 32x32)"
    with pytest.raises(UserError) as err:
        build_data("CIFAR100", None, batch_size=4, device="cpu", seed=0)
    assert str(err.value) == (
        "cifar100 needs a data path: the 'cifar-100-python' folder, 'cifar-100-python.tar.gz', or an .npz with "
        "train_x, train_y, test_x, test_y"
    )


def test_digits_at_an_image_size_few_per_class_and_a_seeded_holdout(loaders, monkeypatch):
    """digits at 16 pixels; the first 3 images of each class; 20 % of those held out by holdout_seed."""
    bundle = build_data("digits", None, batch_size=4, device="cpu", seed=0, image_size=16)
    assert bundle.train.args[0].x.shape[1:] == (16, 16, 3)
    few = build_data("digits", None, batch_size=4, device="cpu", seed=0, train_per_class=3).train.args[0]
    assert len(few) == 30 and np.bincount(few.y).tolist() == [3] * 10
    seen = []
    real = build_module.carve_arrays
    monkeypatch.setattr(build_module, "carve_arrays", lambda *args: seen.append(args[1:]) or real(*args))
    held = build_data("digits", None, batch_size=4, device="cpu", seed=0, train_per_class=5, holdout=0.2)
    assert seen == [(0.2, 0)] and held.holdout is not None
    assert (len(held.train.args[0]), len(held.test.args[0])) == (40, 10)
    assert np.bincount(held.test.args[0].y).tolist() == [1] * 10
    build_data("digits", None, batch_size=4, device="cpu", seed=0, holdout=0.2, holdout_seed=5)
    assert seen[-1] == (0.2, 5)


def test_array_data_hands_on_the_strong_view_and_its_holdout(loaders):
    bundle = build_data("digits", None, batch_size=4, device="cpu", seed=0, strong_view=True, holdout=0.1)
    assert bundle.train.kwargs["strong"] is True and "strong" not in bundle.test.kwargs
    assert bundle.holdout is not None and len(bundle.test.args[0]) == len(bundle.holdout.val_indices)


def _folder_message(key: str) -> str:
    return (
        f"{key} needs a data path: a folder with train/<class>/ and val/<class>/ image folders, a single folder "
        "of <class>/ folders (with data.val_fraction), or a CSV manifest (path,label)"
    )


def test_image_data_needs_a_path_and_takes_no_per_class_subset(tmp_path):
    for name in ("imagefolder", "ImageNet"):
        with pytest.raises(UserError) as err:
            build_data(name, "", batch_size=2, device="cpu", seed=0)
        assert str(err.value) == _folder_message(name.lower())
    with pytest.raises(UserError) as err:
        build_data("imagefolder", str(tmp_path), batch_size=2, device="cpu", seed=0, train_per_class=2)
    assert str(err.value) == (
        "data.train_per_class applies to the array data sets (digits, cifar100), not image folders"
    )


def test_a_saved_split_is_used_as_it_is_and_handed_back(tmp_path, loaders):
    _classes(tmp_path / "pets", per_class=4)
    saved = sources.folder_split(tmp_path / "pets", 0.5, 0)
    bundle = build_data(
        "imagefolder", str(tmp_path / "pets"), batch_size=2, device="cpu", seed=99, val_fraction=0.5, split=saved
    )
    assert bundle.split is saved and bundle.name == "imagefolder" and bundle.classes == ["cat", "dog"]
    assert bundle.train.args[0].base.items == saved.train and bundle.holdout is None


def test_image_folders_hold_out_training_images_with_the_evaluation_transform(tmp_path):
    """holdout on image folders: the held-out images get the evaluation transform at the run's size
    (resize to size·256/224, centre crop), recorded in the bundle."""
    _classes(tmp_path / "train", per_class=4)
    bundle = build_data(
        "imagefolder", str(tmp_path), batch_size=2, device="cpu", seed=0, holdout=0.5, image_size=12, num_workers=0
    )
    assert bundle.holdout is not None and len(bundle.holdout.val_indices) == 4
    preprocess = eval_preprocess(bundle.test)
    assert (preprocess["resize"], preprocess["crop"]) == (14, [12, 12])
    assert next(iter(bundle.test)).images.shape == (2, 3, 12, 12)


def test_image_folders_on_the_device_pipeline_hand_on_the_runs_settings(tmp_path, loaders):
    _classes(tmp_path / "pets", per_class=4)
    bundle = build_data(
        "ImageFolder",
        str(tmp_path / "pets"),
        batch_size=2,
        eval_batch_size=3,
        device="cpu",
        seed=1,
        pipeline="device",
        val_fraction=0.5,
        skip_bad_images=True,
        decoder="torchvision",
        num_workers=2,
        channels_last=True,
        image_size=16,
        strong_view=True,
    )
    train, test = bundle.train, bundle.test
    options = {"image_size": 16, "decoder": "torchvision", "skip_bad": True, "num_workers": 2, "channels_last": True}
    assert {k: train.kwargs[k] for k in options} == options == {k: test.kwargs[k] for k in options}
    assert (train.kwargs["train"], train.kwargs["strong"], test.kwargs["train"]) == (True, True, False)
    assert "strong" not in test.kwargs and (train.args[2], test.args[2]) == (2, 3)
    assert (bundle.num_classes, bundle.classes, bundle.name) == (2, ["cat", "dog"], "imagefolder")
    assert bundle.split is not None and bundle.split.train == sorted(bundle.split.train) and bundle.holdout is None


class _Images:
    """A data set of two classes with a torchvision transform (or none)."""

    def __init__(self, n: int, transform=None):
        self.n, self.transform = n, transform

    def __len__(self) -> int:
        return self.n


NORMALIZE = T.Normalize((0.5, 0.25, 0.125), (0.2, 0.3, 0.4))


@pytest.fixture
def hf_source(monkeypatch):
    """A Hugging Face source of 6 training and 2 evaluation images (no download)."""
    made = {}

    def image_datasets(key, *args):
        made["train"] = _Images(6, T.Compose([T.ToTensor(), NORMALIZE]))
        made["test"] = _Images(2, T.Compose([T.ToTensor(), NORMALIZE]))
        return made["train"], made["test"], ["a", "b"], None

    monkeypatch.setattr(build_module, "_image_datasets", image_datasets)
    return made


@pytest.mark.parametrize("pipeline, device, logged", [("device", "cpu", True), ("auto", "cpu", False)])
def test_a_hugging_face_source_loads_through_the_torch_pipeline_even_on_the_device_one(
    hf_source, loaders, caplog, pipeline, device, logged
):
    caplog.set_level("INFO", logger="rld")
    bundle = build_data("HF", "user/set", batch_size=2, device=device, seed=3, pipeline=pipeline, num_workers=1)
    assert caplog.messages == (
        ["data.pipeline=device: a Hugging Face data set loads through the pil pipeline"] if logged else []
    )
    train, test = bundle.train, bundle.test
    assert train.args[0].base is hf_source["train"] and test.args[0].base is hf_source["test"]
    assert (train.kwargs["train"], test.kwargs["train"]) == (True, False)
    assert train.kwargs["num_workers"] == test.kwargs["num_workers"] == 1
    assert train.kwargs["strong"] is None and "strong" not in test.kwargs
    assert (bundle.name, bundle.classes, bundle.split, bundle.holdout) == ("hf", ["a", "b"], None, None)
    assert not loaders["DeviceFolderLoader"].calls


def test_a_strong_view_of_a_torch_pipeline_crops_twice_and_normalises_as_the_transform(hf_source, loaders):
    bundle = build_data("hf", "user/set", batch_size=2, device="cpu", seed=0, strong_view=True)
    assert bundle.train.kwargs["strong"] == ((0.5, 0.25, 0.125), (0.2, 0.3, 0.4))
    assert type(hf_source["train"].transform).__name__ == "TwoCrops"
    assert isinstance(hf_source["test"].transform, T.Compose)  # evaluation keeps one crop


def test_a_strong_view_needs_a_torchvision_transform(monkeypatch, loaders):
    monkeypatch.setattr(build_module, "_image_datasets", lambda *args: (_Images(4), _Images(2), ["a"], None))
    with pytest.raises(UserError) as err:
        build_data("hf", "user/set", batch_size=2, device="cpu", seed=0, strong_view=True)
    assert str(err.value) == (
        "the strong view of data set hf: this data set's training images have no torchvision transform to crop "
        "them twice"
    )


def test_image_folders_on_the_device_pipeline_hand_back_their_holdout(tmp_path, loaders):
    _classes(tmp_path / "train", per_class=4)
    bundle = build_data(
        "imagefolder", str(tmp_path), batch_size=2, device="cpu", seed=0, pipeline="device", holdout=0.5
    )
    held = bundle.holdout
    assert held is not None and (held.train_size, held.val_per_class) == (8, (2, 2))
    files = sorted(str(p) for p in (tmp_path / "train").rglob("*.png"))
    assert bundle.test.args[0] == [files[i] for i in held.val_indices]
    assert bundle.train.args[0] == [files[i] for i in held.train_indices] and bundle.split is None
