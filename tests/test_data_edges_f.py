"""Edges of rld.data's image files: the saved split, a single folder's and a manifest's split, the
count of unreadable images, the image-list and Hugging Face data sets (a stand-in ``datasets``
module), the held-out part of a training split and the labels it is drawn from, ImageFolder trees
(unreadable files listed, left out or replaced), the file list of an image data set, the decoders
(names, libraries, the CPU fallback and its reasons), and the device loader of image files (reading
bytes, batching them, its settings and checks, strong views, devices, unreadable files)."""

from __future__ import annotations

import io
import json
import logging
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.model_selection import train_test_split
from torchvision.io import ImageReadMode
from torchvision.transforms.v2 import functional as F2

from rld.data import decode as decode_module
from rld.data import device_folder as device_folder_module
from rld.data.build import image_list
from rld.data.crop_views import STRONG_STREAM, train_views
from rld.data.decode import ImageDecoder, _library, _pil, _reason, is_jpeg, resolve_decoder
from rld.data.device_folder import DeviceFolderLoader, FileBytes, collate_bytes
from rld.data.folder import ImageFolder, folder_transform, load_image_folders, load_train_folder
from rld.data.holdout import LabelledSubset, carve_dataset, dataset_labels, holdout_split
from rld.data.sources import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    HFImageDataset,
    ImageListDataset,
    Split,
    folder_split,
    hf_datasets,
    manifest_split,
    readable,
    skipped_text,
)
from rld.data.strong import StrongAugment, strong_plan
from rld.data.views import OFFSETS
from rld.errors import UserError

LAYOUT = "ROOT/train/<class>/<image> and ROOT/val/<class>/<image>"
NOT_AN_IMAGE = "not an image format PIL or the decoder reads"
LEFT_OUT = "left out (data.skip_bad_images)"


def _raises(call, message: str, error=UserError) -> None:
    with pytest.raises(error) as raised:
        call()
    assert str(raised.value) == message


def _png(path: Path, h: int = 6, w: int = 5, seed: int = 0, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def _truncated_jpeg(path: Path) -> Path:
    """A JPEG missing its last 50 bytes: PIL's ``verify`` passes, decoding fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[:-50])
    return path


def _pil_error(path: Path) -> str:
    try:
        with Image.open(path) as image:
            image.convert("RGB")
    except Exception as err:  # noqa: BLE001
        return str(err)
    raise AssertionError(f"{path} decodes")


def _rgb(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def _blob(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def _steps(transform) -> list[tuple[str, object]]:
    return [(type(t).__name__, getattr(t, "size", None)) for t in transform.transforms]


def _train_steps(size: int) -> list[tuple[str, object]]:
    return [
        ("RandomResizedCrop", (size, size)),
        ("RandomHorizontalFlip", None),
        ("ToTensor", None),
        ("Normalize", None),
    ]


def _eval_steps(size: int, resize: int) -> list[tuple[str, object]]:
    return [("Resize", resize), ("CenterCrop", (size, size)), ("ToTensor", None), ("Normalize", None)]


# ----------------------------------------------------------------------------- the count of unreadable images


def test_skipped_text_names_at_most_five_files():
    assert skipped_text(3, 10, "R", ["a", "b", "c"]) == "3 unreadable image(s) of 10 under R: a, b, c"
    five = list("abcde")
    assert skipped_text(5, 9, Path("/d"), five) == "5 unreadable image(s) of 9 under /d: a, b, c, d, e"
    assert skipped_text(6, 9, "R", list("abcdef")) == "6 unreadable image(s) of 9 under R: a, b, c, d, e, …"
    assert skipped_text(7, 9, "R", list("abcdefg")) == "7 unreadable image(s) of 9 under R: a, b, c, d, e, …"
    assert skipped_text(0, 4, "R", []) == "0 unreadable image(s) of 4 under R"


def test_readable_refuses_a_non_image_and_silences_only_the_decompression_warning(tmp_path, monkeypatch):
    text = tmp_path / "x.png"
    text.write_text("not an image")
    assert readable(text) is False
    image = _png(tmp_path / "big.png", 12, 12)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 144 pixels: warned about, not refused
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert readable(image) is True
    assert caught == []
    real_open = Image.open

    def open_warning(*args, **kw):
        warnings.warn("a warning of the opener", UserWarning, stacklevel=2)
        return real_open(*args, **kw)

    monkeypatch.setattr(Image, "open", open_warning)
    with pytest.warns(UserWarning, match="a warning of the opener"):
        assert readable(image) is True


# ----------------------------------------------------------------------------- saved split, folder and manifest


def test_a_saved_split_with_classes_that_are_not_text_is_refused(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"root": "r", "classes": ["a", 1], "train": [], "val": []}))
    _raises(
        lambda: Split.read(path),
        f"cannot read the saved split {path} (root and classes must be text); delete it to split anew",
    )


def test_a_folder_split_lists_only_image_files_and_needs_class_folders_with_images(tmp_path):
    root = tmp_path / "data"
    for c in ("a", "b"):
        for i in range(2):
            _png(root / c / f"{i}.png", seed=i)
    (root / "a" / "notes.txt").write_text("not listed")
    split = folder_split(root, 0.5, 0)
    assert split.root == str(root) and split.classes == ["a", "b"]
    assert sorted(split.train + split.val) == [("a/0.png", 0), ("a/1.png", 0), ("b/0.png", 1), ("b/1.png", 1)]
    assert sorted(y for _, y in split.val) == [0, 1]
    missing = tmp_path / "nowhere"
    _raises(
        lambda: folder_split(missing, 0.5, 0),
        f"{missing} has no class folders: expected ROOT/<class>/<image> (or ROOT/train and ROOT/val)",
    )
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "a" / "notes.txt").write_text("not an image")
    _raises(lambda: folder_split(empty, 0.5, 0), f"{empty}: no images in its class folders")


def test_manifest_errors_name_the_file_and_what_is_wrong(tmp_path):
    manifest = tmp_path / "m.csv"
    _raises(lambda: manifest_split(manifest, 0.5, 0), f"cannot read the manifest {manifest}: No such file or directory")
    columns = f"{manifest} needs the columns path,label (and optionally split: train or val)"
    manifest.write_text("path,label\n")
    _raises(lambda: manifest_split(manifest, 0.5, 0), columns)
    manifest.write_text("file,class\nx.png,a\n")
    _raises(lambda: manifest_split(manifest, 0.5, 0), columns)
    manifest.write_text("path,label\n  ,cat\nb.png,cat\n")
    _raises(
        lambda: manifest_split(manifest, 0.5, 0),
        f"{manifest}, line 2: a row needs a path and a label, got {{'path': '  ', 'label': 'cat'}}",
    )
    manifest.write_text("path,label\na.png,cat\nb.png,cat\n")
    _raises(
        lambda: manifest_split(manifest, None, 0), f"{manifest} has no split column: set data.val_fraction to split it"
    )


def test_a_manifest_keeps_its_fields_as_written_and_its_split_column(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b'path,label,split\r\na.png,"x\ry",train\r\nb.png,x,val\r\n')
    assert manifest_split(manifest, None, 0) == Split(str(tmp_path), ["x", "x\ry"], [("a.png", 1)], [("b.png", 0)])
    manifest.write_text("path,label,split\na.png,cat,train\n")
    assert manifest_split(manifest, None, 0) == Split(str(tmp_path), ["cat"], [("a.png", 0)], [])


def test_a_manifest_without_split_column_is_split_stratified_with_its_seed(tmp_path):
    manifest = tmp_path / "m.csv"
    rows = [(f"{i}.png", "cat" if i % 2 else "dog") for i in range(20)]
    manifest.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in rows))
    items = [(p, 0 if c == "cat" else 1) for p, c in rows]
    train, val = train_test_split(items, test_size=0.5, stratify=[y for _, y in items], random_state=3)
    assert manifest_split(manifest, 0.5, 3) == Split(str(tmp_path), ["cat", "dog"], sorted(train), sorted(val))


# ----------------------------------------------------------------------------- a list of image files


def test_an_image_list_names_its_first_missing_file_and_their_count(tmp_path):
    _png(tmp_path / "a.png")
    _raises(
        lambda: ImageListDataset(str(tmp_path), [("a.png", 0), ("gone1.png", 1), ("gone2.png", 0)], np.asarray),
        f"image {tmp_path / 'gone1.png'} does not exist (2 missing files)",
    )


def test_an_image_list_keeps_unreadable_files_unless_told_to_skip(tmp_path):
    (tmp_path / "x.png").write_text("not an image")
    _png(tmp_path / "a.png")
    items = [("x.png", 0), ("a.png", 1)]
    assert ImageListDataset(str(tmp_path), items, np.asarray).items == items
    assert ImageListDataset(str(tmp_path), items, np.asarray, skip_bad=True).items == [("a.png", 1)]


def test_an_image_list_replaces_an_image_that_fails_to_decode_by_the_next_one(tmp_path, caplog):
    for i in (0, 2):
        _png(tmp_path / f"{i}.png", seed=i)
    bad = _truncated_jpeg(tmp_path / "1.jpg")
    items = [("0.png", 0), ("1.jpg", 1), ("2.png", 2)]
    dataset = ImageListDataset(str(tmp_path), items, np.asarray, skip_bad=True)
    with caplog.at_level(logging.INFO, logger="rld"):
        image, label = dataset[1]
    assert label == 2 and np.array_equal(image, np.asarray(Image.open(tmp_path / "2.png").convert("RGB")))
    assert caplog.messages == [f"cannot read image {bad} ({_pil_error(bad)}); {LEFT_OUT}"]
    strict = ImageListDataset(str(tmp_path), items, np.asarray)
    _raises(
        lambda: strict[1],
        f"cannot read image {bad} ({_pil_error(bad)}); remove it or set data.skip_bad_images=true",
    )
    _truncated_jpeg(tmp_path / "3.jpg")
    none = ImageListDataset(str(tmp_path), [("1.jpg", 0), ("3.jpg", 1)], np.asarray, skip_bad=True)
    _raises(lambda: none[0], f"none of the 2 images under {tmp_path} can be read")


def test_image_list_gives_the_paths_and_labels_of_an_image_data_set(tmp_path):
    _png(tmp_path / "a" / "0.png")
    _png(tmp_path / "b" / "1.png")
    dataset = ImageListDataset(str(tmp_path), [("a/0.png", np.int64(0)), ("b/1.png", np.int64(1))], np.asarray)
    files, labels = image_list(dataset)
    assert files == [str(tmp_path / "a" / "0.png"), str(tmp_path / "b" / "1.png")]
    assert labels == [0, 1] and all(type(y) is int for y in labels)

    class Plain:
        pass

    _raises(lambda: image_list(Plain()), "Plain does not list image files", TypeError)


# ----------------------------------------------------------------------------- Hugging Face data sets


class _DatasetDict(dict):
    pass


class _ClassLabel:
    def __init__(self, names):
        self.names = names


class _Value:
    pass


class _Table:
    """A stand-in for a ``datasets.Dataset``: columns by name, rows by position, ``select``."""

    def __init__(self, columns: dict, features: dict):
        self.columns, self.features = columns, features

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, key):
        if isinstance(key, str):
            return list(self.columns[key])
        return {name: values[key] for name, values in self.columns.items()}

    def select(self, rows) -> _Table:
        return _Table({name: [values[i] for i in rows] for name, values in self.columns.items()}, self.features)


def _table(prefix: str, labels: list[int], feature=None) -> _Table:
    images = [f"{prefix}{k}" for k in range(len(labels))]
    return _Table({"image": images, "label": list(labels)}, {"label": feature or _ClassLabel(["cat", "dog"])})


def _fake_datasets(monkeypatch, found: dict) -> list:
    """A ``datasets`` module whose loaders return (or raise) ``found[(kind, path)]``; the calls are listed."""
    module = types.ModuleType("datasets")
    module.DatasetDict = _DatasetDict
    calls = []

    def loader(kind):
        def load(path):
            calls.append((kind, path))
            value = found[(kind, path)]
            if isinstance(value, Exception):
                raise value
            return value

        return load

    module.load_from_disk, module.load_dataset = loader("disk"), loader("hub")
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


def test_an_hf_folder_trains_on_train_and_evaluates_validation_with_the_default_columns(tmp_path, monkeypatch):
    train, validation = _table("t", [0, 1, 0]), _table("v", [1, 0])
    calls = _fake_datasets(monkeypatch, {("disk", str(tmp_path)): _DatasetDict(train=train, validation=validation)})
    train_set, eval_set, classes = hf_datasets(str(tmp_path))
    assert calls == [("disk", str(tmp_path))] and classes == ["cat", "dog"]
    assert train_set.split is train and eval_set.split is validation
    assert (train_set.image_column, train_set.label_column) == ("image", "label")
    assert (eval_set.image_column, eval_set.label_column) == ("image", "label")
    assert _steps(train_set.transform) == _train_steps(224) and _steps(eval_set.transform) == _eval_steps(224, 256)


def test_a_hub_data_set_evaluates_validation_else_test_at_the_image_size(monkeypatch):
    train, validation, test = _table("t", [0, 1]), _table("v", [1]), _table("s", [0])
    found = {
        ("hub", "user/both"): _DatasetDict(train=train, test=test, validation=validation),
        ("hub", "user/test"): _DatasetDict(train=train, test=test),
    }
    calls = _fake_datasets(monkeypatch, found)
    assert hf_datasets("user/both")[1].split is validation
    train_set, eval_set, _ = hf_datasets("user/test", image_size=32)
    assert calls == [("hub", "user/both"), ("hub", "user/test")]
    assert train_set.split is train and eval_set.split is test
    assert _steps(train_set.transform) == _train_steps(32) and _steps(eval_set.transform) == _eval_steps(32, 37)
    assert hf_datasets("user/test", held_out=False)[1] is None


def test_without_validation_a_fraction_of_train_is_held_out_with_its_seed(monkeypatch):
    labels = [10, 9] * 6
    train = _table("t", labels, _Value())
    _fake_datasets(monkeypatch, {("hub", "h"): _DatasetDict(train=train)})
    items = [(str(i), y) for i, y in enumerate(labels)]
    for seed, kw in ((0, {}), (5, {"seed": 5})):
        rest, val = train_test_split(items, test_size=0.5, stratify=labels, random_state=seed)
        train_set, eval_set, classes = hf_datasets("h", val_fraction=0.5, **kw)
        assert classes == ["9", "10"]
        assert sorted(train_set.split["image"]) == sorted(f"t{i}" for i, _ in rest)
        assert sorted(eval_set.split["image"]) == sorted(f"t{i}" for i, _ in val)
    rest, _ = train_test_split(items, test_size=0.5, stratify=labels, random_state=0)
    train_only, none, _ = hf_datasets("h", val_fraction=0.5, held_out=False)
    assert none is None and sorted(train_only.split["image"]) == sorted(f"t{i}" for i, _ in rest)
    _raises(
        lambda: hf_datasets("h"), "the Hugging Face data set 'h' has no validation/test split: set data.val_fraction"
    )


def test_hf_errors_name_the_data_set_and_what_is_wrong(monkeypatch):
    train = _table("t", [0, 1])
    found = {
        ("hub", "gone"): RuntimeError("x" * 170 + "\nsecond line"),
        ("hub", "plain"): {"train": train},
        ("hub", "no-train"): _DatasetDict(test=train),
        ("hub", "cols"): _DatasetDict(train=train),
    }
    _fake_datasets(monkeypatch, found)
    _raises(lambda: hf_datasets("gone"), f"cannot load the Hugging Face data set 'gone': {'x' * 160}")
    _raises(lambda: hf_datasets("plain"), "the Hugging Face data set 'plain' needs a 'train' split")
    _raises(lambda: hf_datasets("no-train"), "the Hugging Face data set 'no-train' needs a 'train' split")
    _raises(
        lambda: hf_datasets("cols", label_column="y"),
        "the Hugging Face data set 'cols' has no column 'y' (its columns: image, label); set data.image_column / "
        "data.label_column",
    )
    monkeypatch.setitem(sys.modules, "datasets", None)
    _raises(lambda: hf_datasets("cols"), "data.name=hf needs the package datasets: pip install datasets (or rld[hf])")


def test_an_hf_row_gives_an_rgb_image_and_an_int_label_or_names_a_column_without_images():
    grey = Image.new("L", (3, 2), 77)
    dataset = HFImageDataset([{"img": grey, "y": np.int64(1)}, {"img": "a.png", "y": 0}], "img", "y", lambda im: im)
    image, label = dataset[0]
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), np.full((2, 3, 3), 77, dtype=np.uint8))
    assert label == 1 and type(label) is int
    _raises(lambda: dataset[1], "column 'img' holds str, not images")


# ----------------------------------------------------------------------------- the held-out part of a training split


def test_holdout_split_is_sklearns_stratified_seeded_split_of_the_flattened_int_labels():
    labels = [2, 0, 1, 1, 0, 2, 0, 1, 2, 0, 1, 2, 2, 0, 1, 1]
    rest, val = train_test_split(np.arange(16), test_size=0.3, stratify=labels, random_state=7)
    h = holdout_split(torch.tensor(labels, dtype=torch.float32).view(-1, 1), 0.3, np.int64(7))
    assert type(h.fraction) is float and type(h.seed) is int
    assert (h.fraction, h.seed, h.train_size) == (0.3, 7, 16)
    assert h.val_indices == tuple(sorted(int(i) for i in val))
    assert h.train_indices == tuple(sorted(int(i) for i in rest))
    assert h.val_per_class == tuple(int(c) for c in np.bincount(np.array(labels)[val], minlength=3))


def test_the_held_out_count_of_a_class_left_out_of_it_is_zero():
    h = holdout_split([0] * 10 + [1] * 2, 0.1, 0)
    assert h.val_per_class == (2, 0) and h.val_size == 2


def test_two_images_per_class_are_enough():
    h = holdout_split([0, 1, 0, 1], 0.5, 0)
    assert h.val_per_class == (1, 1) and h.train_size == 4


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1])
def test_the_held_out_fraction_must_be_between_0_and_1(fraction):
    _raises(
        lambda: holdout_split([0, 0, 1, 1], fraction, 0),
        f"data.holdout (--val-fraction) must be in (0, 1), got {fraction}",
    )


def test_holding_out_names_a_single_image_class():
    _raises(
        lambda: holdout_split([0, 0, 1, 2, 2], 0.5, 0),
        "class 1 has a single training image: holding out a stratified validation part needs at least 2 per class",
    )


@pytest.mark.parametrize(("labels", "fraction"), [([0, 0, 1, 1], 0.1), ([], 0.5)])
def test_holding_out_what_sklearn_cannot_split_gives_its_reason(labels, fraction):
    y = np.asarray(labels, dtype=np.int64)
    with pytest.raises(ValueError) as sklearn:
        train_test_split(np.arange(len(y)), test_size=fraction, stratify=y, random_state=0)
    _raises(
        lambda: holdout_split(labels, fraction, 0),
        f"cannot hold out {fraction} of {len(y)} training images in {len(set(labels))} classes (stratified, "
        f"every class in both parts): {sklearn.value}; choose another --val-fraction",
    )


def test_dataset_labels_are_int64_of_labels_else_targets():
    class Both:
        labels, targets = [1.0, 0.0], [9, 9]

    class Targets:
        targets = [2, 1]

    class Bare:
        pass

    got = dataset_labels(Both())
    assert got.dtype == torch.int64 and got.tolist() == [1, 0]
    assert dataset_labels(Targets()).tolist() == [2, 1]
    _raises(lambda: dataset_labels(Bare()), "cannot hold out a stratified part of a Bare: it does not list its labels")


def test_a_labelled_subset_takes_its_labels_at_its_indices():
    labels = torch.tensor([5, 6, 7])
    assert LabelledSubset(None, [2, 0], labels).labels.tolist() == [7, 5]
    empty = LabelledSubset(None, [], labels).labels
    assert empty.shape == (0,) and empty.dtype == torch.int64


def test_carving_a_data_set_evaluates_the_held_out_part_with_the_evaluation_transform():
    class Items:
        labels = [0, 1, 0, 1]
        transform = "train transform"

    base = Items()
    rest, held, h = carve_dataset(base, "eval transform", 0.5, 0)
    assert rest.transform == "train transform" and held.transform == "eval transform"
    assert base.transform == "train transform" and held.indices == list(h.val_indices)


# ----------------------------------------------------------------------------- image folders


def _tree(root: Path) -> dict[str, Path]:
    """a/{0,1}.png, a/bad.png (text), a/notes.txt, b/0.png, b/1.jpg (truncated), b/2.png."""
    files = {
        "a/0.png": _png(root / "a" / "0.png", seed=0),
        "a/1.png": _png(root / "a" / "1.png", seed=1),
        "b/0.png": _png(root / "b" / "0.png", seed=2),
        "b/1.jpg": _truncated_jpeg(root / "b" / "1.jpg"),
        "b/2.png": _png(root / "b" / "2.png", seed=3),
    }
    (root / "a" / "bad.png").write_text("not an image")
    (root / "a" / "notes.txt").write_text("not listed")
    return files


def test_an_image_folder_lists_image_files_and_leaves_out_unreadable_ones_when_told(tmp_path, caplog):
    _tree(tmp_path)
    root = str(tmp_path)
    listed = ImageFolder(root, np.asarray)
    names = ["a/0.png", "a/1.png", "a/bad.png", "b/0.png", "b/1.jpg", "b/2.png"]
    assert listed.samples == [(str(tmp_path / n), int(n[0] == "b")) for n in names] and listed.skipped == []
    with caplog.at_level(logging.INFO, logger="rld"):
        skipping = ImageFolder(root, np.asarray, skip_bad=True)
    assert [p for p, _ in skipping.samples] == [str(tmp_path / n) for n in names if n != "a/bad.png"]
    assert skipping.skipped == ["a/bad.png"]
    assert caplog.messages == [f"skipped 1 unreadable image(s) of 6 under {root}: a/bad.png"]


def test_an_image_folder_replaces_an_image_that_fails_to_decode_by_the_next_one(tmp_path, caplog):
    files = _tree(tmp_path)
    dataset = ImageFolder(str(tmp_path), np.asarray, skip_bad=True)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rld"):
        image, label = dataset[3]
    assert label == 1 and np.array_equal(image, _rgb(files["b/2.png"]).permute(1, 2, 0).numpy())
    bad = files["b/1.jpg"]
    assert caplog.messages == [f"cannot read image {bad} ({_pil_error(bad)}); {LEFT_OUT}"]
    only = tmp_path / "only"
    _truncated_jpeg(only / "a" / "x.jpg")
    none = ImageFolder(str(only), np.asarray, skip_bad=True)
    _raises(lambda: none[0], f"none of the 1 images under {only} can be read")


def _split_tree(root: Path, val: str = "val") -> None:
    for split in ("train", val):
        for c in ("a", "b"):
            _png(root / split / c / "0.png")
        (root / split / "a" / "bad.png").write_text("not an image")


def test_image_folders_read_val_or_test_with_their_transforms_and_skip_only_when_told(tmp_path):
    _split_tree(tmp_path, "test")
    train, test = load_image_folders(tmp_path, image_size=16)
    assert test.root == str(tmp_path / "test") and len(train) == 3 and len(test) == 3
    assert _steps(train.transform) == _train_steps(16) and _steps(test.transform) == _eval_steps(16, 18)
    train, test = load_image_folders(tmp_path, image_size=16, skip_bad=True)
    assert (len(train), len(test)) == (2, 2) and train.skipped == test.skipped == ["a/bad.png"]


def test_image_folders_with_different_classes_name_five_of_each_side(tmp_path):
    for split, extra in (("train", "t"), ("val", "v")):
        for c in ("a", *(f"{extra}{i}" for i in range(1, 7))):
            _png(tmp_path / split / c / "0.png", 2, 2)
    only_train = [f"t{i}" for i in range(1, 6)]
    only_val = [f"v{i}" for i in range(1, 6)]
    _raises(
        lambda: load_image_folders(tmp_path),
        f"{tmp_path}: train and val have different class folders (only in train: {only_train}, only in val: "
        f"{only_val}); both need the same <class> folders",
    )


def test_the_train_folder_alone_has_the_training_transform_and_skips_only_when_told(tmp_path):
    _split_tree(tmp_path)
    train = load_train_folder(tmp_path, image_size=16)
    assert train.root == str(tmp_path / "train") and len(train) == 3
    assert _steps(train.transform) == _train_steps(16)
    skipping = load_train_folder(tmp_path, image_size=16, skip_bad=True)
    assert len(skipping) == 2 and skipping.skipped == ["a/bad.png"]
    missing = tmp_path / "nowhere"
    _raises(lambda: load_train_folder(missing), f"image folder {missing} not found: expected the layout {LAYOUT}")


def test_the_folder_transform_trains_or_evaluates():
    assert _steps(folder_transform(train=True, image_size=16)) == _train_steps(16)
    assert _steps(folder_transform(train=False, image_size=16)) == _eval_steps(16, 18)


# ----------------------------------------------------------------------------- decoders


def test_decoder_names_resolve_by_what_imports(monkeypatch):
    monkeypatch.setattr(decode_module, "torchcodec_available", lambda: True)
    assert [resolve_decoder(n) for n in ("torchvision", "auto", "torchcodec")] == [
        "torchvision",
        "torchcodec",
        "torchcodec",
    ]
    monkeypatch.setattr(decode_module, "torchcodec_available", lambda: False)
    assert [resolve_decoder(n) for n in ("torchvision", "auto")] == ["torchvision", "torchvision"]
    _raises(
        lambda: resolve_decoder("torchcodec"),
        "data.decoder=torchcodec needs the package torchcodec (pip install torchcodec; a version built for the "
        "installed torch), or set data.decoder=auto to use torchvision's decoder",
    )
    assert ImageDecoder("cpu").name == "torchvision"


def _fake_torchcodec(monkeypatch) -> list:
    calls = []
    decoders = types.ModuleType("torchcodec.decoders")

    def decode_jpeg(data, *, mode="unset", device="unset"):
        calls.append(("jpeg", data, mode, device))
        return "jpeg image"

    def decode_image(data, *, mode="unset"):
        calls.append(("image", data, mode))
        return "image"

    decoders.decode_jpeg, decoders.decode_image = decode_jpeg, decode_image
    package = types.ModuleType("torchcodec")
    package.decoders = decoders
    monkeypatch.setitem(sys.modules, "torchcodec", package)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", decoders)
    return calls


def test_torchcodec_decodes_to_rgb_on_the_device_asked_for(monkeypatch):
    calls = _fake_torchcodec(monkeypatch)
    jpeg, image = _library("torchcodec")
    assert jpeg("data", "cuda:1") == "jpeg image" and image("data") == "image"
    assert calls == [("jpeg", "data", "RGB", "cuda:1"), ("image", "data", "RGB")]
    monkeypatch.setattr(decode_module, "torchcodec_available", lambda: True)
    decoder = ImageDecoder("cpu", "torchcodec")
    assert decoder.name == "torchcodec" and decoder._jpeg("more", "cpu") == "jpeg image"
    assert calls[-1] == ("jpeg", "more", "RGB", "cpu")


def test_torchvision_decodes_to_rgb_on_the_device_asked_for(monkeypatch):
    calls = []
    monkeypatch.setattr(torchvision.io, "decode_jpeg", lambda data, **kw: calls.append(("jpeg", data, kw)) or 1)
    monkeypatch.setattr(torchvision.io, "decode_image", lambda data, **kw: calls.append(("image", data, kw)) or 2)
    jpeg, image = _library("torchvision")
    assert jpeg("data", "cuda:1") == 1 and image("data") == 2
    assert calls == [
        ("jpeg", "data", {"mode": ImageReadMode.RGB, "device": "cuda:1"}),
        ("image", "data", {"mode": ImageReadMode.RGB}),
    ]


def test_three_bytes_ff_d8_ff_are_a_jpeg():
    assert is_jpeg(torch.tensor([0xFF, 0xD8, 0xFF], dtype=torch.uint8))
    assert not is_jpeg(torch.tensor([0xFF, 0xD8], dtype=torch.uint8))


def test_pil_decodes_grey_to_three_equal_channels(tmp_path):
    path = _png(tmp_path / "g.png", 4, 3, mode="L")
    got = _pil(_blob(path.read_bytes()))
    assert got.shape == (3, 4, 3) and torch.equal(got, _rgb(path))
    assert torch.equal(got[0], got[1]) and torch.equal(got[0], got[2])


def test_the_reason_is_the_first_line_of_the_error_or_its_type():
    from PIL import UnidentifiedImageError

    assert _reason(UnidentifiedImageError("cannot identify")) == NOT_AN_IMAGE
    assert _reason(ValueError("  bad thing\nmore  ")) == "bad thing"
    assert _reason(ValueError("y" * 130)) == "y" * 120
    assert _reason(OSError("")) == "OSError"


def _bmp(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(path, "BMP")
    return path


def test_the_cpu_fallback_decodes_with_the_library_else_pil_and_moves_to_the_device(tmp_path):
    png = _png(tmp_path / "a.png", 4, 5)
    bmp = _bmp(tmp_path / "a.bmp")
    cpu = ImageDecoder("cpu", "torchvision")
    assert torch.equal(cpu._on_cpu(_blob(png.read_bytes()), False), _rgb(png))
    assert torch.equal(cpu._on_cpu(_blob(bmp.read_bytes()), False), _rgb(bmp)) and cpu.fallbacks == 2
    meta = ImageDecoder("meta", "torchvision")
    for path in (png, bmp):
        got = meta._on_cpu(_blob(path.read_bytes()), False)
        assert got.device == torch.device("meta") and got.shape == (3, 4, 5)
    seen = []
    cpu._image = lambda data: seen.append(data) or torch.zeros(3, 1, 1, dtype=torch.uint8)
    blob = _blob(png.read_bytes())
    assert torch.equal(cpu._on_cpu(blob, False), torch.zeros(3, 1, 1, dtype=torch.uint8)) and seen == [blob]


def test_the_reason_of_a_broken_jpeg_is_the_librarys_and_of_another_file_pils():
    broken = _blob(b"\xff\xd8\xff broken")
    with pytest.raises(RuntimeError) as library, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torchvision.io.decode_jpeg(broken, mode=ImageReadMode.RGB)
    decoder = ImageDecoder("cpu", "torchvision")
    assert decoder._on_cpu(broken, True) == str(library.value).strip().splitlines()[0][:120]
    assert decoder._on_cpu(_blob(b"GIF89a garbage"), False) == NOT_AN_IMAGE
    assert decoder([broken, _blob(b""), _blob(b"\x00")]) == [
        str(library.value).strip().splitlines()[0][:120],
        "empty file",
        NOT_AN_IMAGE,
    ]


# ----------------------------------------------------------------------------- the device loader of image files


def test_file_bytes_are_the_files_bytes_or_empty_with_the_reason(tmp_path, monkeypatch):
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "empty.bin").write_bytes(b"")
    files = [str(tmp_path / n) for n in ("a.bin", "gone.bin", "empty.bin")]
    dataset = FileBytes(files, [4, np.int64(7), 1])
    blob, label, index, error = dataset[0]
    assert blob.tolist() == [97, 98, 99] and blob.dtype == torch.uint8 and (label, index, error) == (4, 0, "")
    for k, reason in ((1, "No such file or directory"), (2, "")):
        blob, label, index, error = dataset[k]
        assert blob.shape == (0,) and blob.dtype == torch.uint8
        assert (index, error) == (k, reason)
    assert dataset[1][1] == 7 and type(dataset[1][1]) is int

    def refuse(*args, **kw):
        raise OSError("the disk went away")

    monkeypatch.setattr(device_folder_module, "open", refuse, raising=False)
    assert dataset[0][3] == "the disk went away"


def test_collated_bytes_are_one_buffer_with_offsets():
    empty = torch.empty(0, dtype=torch.uint8)
    items = [
        (empty, 1, 0, "gone"),
        (torch.tensor([1, 2], dtype=torch.uint8), 2, 1, ""),
        (torch.tensor([3], dtype=torch.uint8), 3, 2, ""),
    ]
    flat, offsets, labels, indices, errors = collate_bytes(items)
    assert flat.tolist() == [1, 2, 3] and flat.dtype == torch.uint8
    assert offsets.tolist() == [0, 0, 2, 3] and offsets.dtype == torch.int64
    assert labels.tolist() == [1, 2, 3] and indices.tolist() == [0, 1, 2] and errors == ["gone", "", ""]
    flat, offsets, *_ = collate_bytes([(empty, 0, 0, "e"), (empty, 0, 1, "f")])
    assert flat.shape == (0,) and flat.dtype == torch.uint8 and offsets.tolist() == [0, 0, 0]


def _loader(files, labels=None, batch_size=2, **kw) -> DeviceFolderLoader:
    labels = [i % 3 for i in range(len(files))] if labels is None else labels
    return DeviceFolderLoader(files, labels, batch_size, **{"train": True, "device": "cpu", **kw})


@pytest.mark.parametrize("value", [0, -2, True, 1.5])
def test_the_batch_size_must_be_a_positive_integer(value):
    _raises(lambda: _loader(["x"], batch_size=value), f"batch size must be a positive integer, got {value!r}")


@pytest.mark.parametrize("value", [-1, True, 2.0])
def test_num_workers_must_be_a_non_negative_integer(value):
    _raises(lambda: _loader(["x"], num_workers=value), f"num_workers must be a non-negative integer, got {value!r}")


def test_the_loader_checks_its_files_labels_decoder_and_start_batch():
    _raises(lambda: _loader(["x", "y"], [0]), "2 files but 1 labels", ValueError)
    _raises(
        lambda: _loader(["x"], decoder="bogus"),
        "unknown data.decoder 'bogus': choose one of auto, torchvision, torchcodec",
    )
    loader = _loader(["x"], batch_size=1, num_workers=0)
    assert loader.batch_size == 1
    _raises(lambda: loader.set_epoch(0, start_batch=-1), "start_batch must be a non-negative integer, got -1")


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
def test_the_loaders_defaults_and_data_loader_settings():
    loader = _loader(["x", "y"])
    assert (loader.seed, loader.epoch, loader.channels_last, loader.strong) == (0, 0, False, None)
    data = loader.loader
    assert (data.num_workers, data.persistent_workers, data.pin_memory, data.drop_last) == (4, True, False, False)
    assert data.generator.initial_seed() == 0 and _loader(["x"], seed=9).loader.generator.initial_seed() == 9
    assert _loader(["x"], num_workers=1).loader.persistent_workers is True
    assert _loader(["x"], num_workers=0).loader.persistent_workers is False
    assert _loader(["x"], train=False, strong=True).strong is None
    assert isinstance(_loader(["x"], strong=True).strong, StrongAugment)


def _pngs(folder: Path, n: int) -> list[str]:
    return [str(_png(folder / f"{i}.png", 10 + i % 3, 12 - i % 2, seed=i)) for i in range(n)]


def test_strong_views_crop_stream_1_and_follow_the_ranks_plan_from_batch_to_batch(tmp_path):
    files = _pngs(tmp_path, 10)
    loader = _loader(files, seed=4, num_workers=0, image_size=8, strong=True, rank=1, world_size=2)
    loader.set_epoch(1)
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    batches = list(loader)
    assert torch.equal(torch.get_rng_state(), rng) and loader.epoch == 1
    assert [len(b.indices) for b in batches] == [2, 2, 1]
    plan = strong_plan(4, 1, 10, flip=False, offsets=OFFSETS, rank=1, world_size=2)
    augment = StrongAugment(IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu"))
    position = 0
    for batch in batches:
        images = [_rgb(Path(files[i])) for i in batch.indices.tolist()]
        heights, widths = [im.shape[1] for im in images], [im.shape[2] for im in images]
        top, left, h, w, flip = train_views(4, 1, batch.indices.numpy(), heights, widths, STRONG_STREAM)
        crops = []
        for k, image in enumerate(images):
            crop = image[:, top[k] : top[k] + h[k], left[k] : left[k] + w[k]]
            crop = F2.resize(crop.unsqueeze(0), [8, 8], antialias=True)[0]
            crops.append(crop.flip(-1) if flip[k] else crop)
        rows = slice(position, position + len(images))
        want = augment.from_pixels(torch.stack(crops).float(), plan[rows])
        assert torch.equal(batch.strong, want) and batch.strong.is_contiguous()
        assert batch.images.is_contiguous() and batch.targets.tolist() == [i % 3 for i in batch.indices.tolist()]
        position += len(images)


def test_channels_last_applies_to_the_images_and_the_strong_views(tmp_path):
    files = _pngs(tmp_path, 2)
    batch = next(iter(_loader(files, num_workers=0, image_size=8, strong=True, channels_last=True)))
    for images in (batch.images, batch.strong):
        assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()


def test_every_field_of_a_batch_is_on_the_loaders_device(tmp_path):
    files = _pngs(tmp_path, 3)
    meta = torch.device("meta")
    batches = list(_loader(files, num_workers=0, image_size=8, strong=True, device="meta"))
    assert [len(b.indices) for b in batches] == [2, 1]
    for batch in batches:
        assert {t.device for t in (batch.images, batch.targets, batch.indices, batch.strong)} == {meta}
        assert batch.images.shape == (len(batch.indices), 3, 8, 8) == batch.strong.shape


def test_a_batch_of_unreadable_files_only_is_left_out_and_each_file_said_once(tmp_path, caplog):
    files = _pngs(tmp_path, 4)
    for i in (0, 1):
        Path(files[i]).write_text("not an image")
    loader = _loader(files, train=False, num_workers=0, image_size=8, skip_bad=True)
    with caplog.at_level(logging.WARNING, logger="rld"):
        for _ in range(2):
            assert [b.indices.tolist() for b in loader] == [[2, 3]]
    assert caplog.messages == [f"skipped unreadable image {files[i]} ({NOT_AN_IMAGE})" for i in (0, 1)]
    images, rows = loader._decode(*_bytes_of(loader, [0, 1]))
    assert images == [] and rows.shape == (0,) and rows.dtype == torch.int64


def _bytes_of(loader: DeviceFolderLoader, indices: list[int]):
    flat, offsets, _, idx, errors = collate_bytes([loader._dataset[i] for i in indices])
    return flat, offsets, idx, errors


def test_an_unreadable_or_missing_file_stops_with_its_name_and_reason(tmp_path):
    files = _pngs(tmp_path, 2)
    Path(files[1]).write_text("not an image")
    _raises(
        lambda: list(_loader(files, train=False, num_workers=0, image_size=8)),
        f"cannot read image {files[1]} ({NOT_AN_IMAGE}); remove it or set data.skip_bad_images=true",
    )
    gone = str(tmp_path / "gone.png")
    _raises(
        lambda: list(_loader([files[0], gone], train=False, num_workers=0, image_size=8)),
        f"cannot read image {gone} (No such file or directory); remove it or set data.skip_bad_images=true",
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_loader_pins_its_batches_and_delivers_every_field_there(tmp_path):
    files = _pngs(tmp_path, 3)
    loader = _loader(files, num_workers=0, image_size=8, strong=True, device="cuda")
    assert loader.loader.pin_memory is True
    for batch in loader:
        assert {t.device.type for t in (batch.images, batch.targets, batch.indices, batch.strong)} == {"cuda"}
