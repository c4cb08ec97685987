"""Own images (rld.data.sources): the stratified split and its refusals, decoding one image (RGB, its
refusals and the warnings it logs), the list data set's log of skipped files, and the two parts' data sets
with their transforms."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

from rld.data.sources import ImageListDataset, Split, _stratified, image_transform, read_image, split_datasets
from rld.errors import UserError


def _raises(call, message: str) -> None:
    with pytest.raises(UserError) as raised:
        call()
    assert str(raised.value) == message


def _png(path: Path, h: int = 6, w: int = 5, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


# ----------------------------------------------------------------------------- the stratified split


def _items(per_class: dict[int, int]) -> list[tuple[str, int]]:
    return [(f"{y}/{i}.png", y) for y, n in per_class.items() for i in range(n)]


@pytest.mark.parametrize("fraction", [0, 0.0, 1, 1.0, 1.5, -0.25])
def test_a_validation_fraction_outside_0_1_is_refused(fraction):
    _raises(
        lambda: _stratified(_items({0: 4, 1: 4}), fraction, 0),
        f"data.val_fraction must be in (0, 1), got {fraction}",
    )


def test_a_stratified_split_keeps_every_class_in_both_parts_sorted_and_seeded():
    items = _items({0: 4, 1: 2, 2: 6})
    train, val = _stratified(items, 0.5, 3)
    assert sorted(train + val) == sorted(items) and not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)
    assert [sum(y == c for _, y in val) for c in (0, 1, 2)] == [2, 1, 3]
    assert _stratified(items, 0.5, 3) == (train, val)
    assert any(_stratified(items, 0.5, seed) != (train, val) for seed in range(4, 10))


def test_two_images_of_a_class_are_enough_and_one_is_refused_naming_the_first_such_class():
    train, val = _stratified(_items({0: 2, 1: 2}), 0.5, 0)
    assert (len(train), len(val)) == (2, 2)
    _raises(
        lambda: _stratified(_items({0: 3, 4: 1, 2: 1}), 0.5, 0),
        "class 4 has a single image: a stratified split needs at least 2 per class",
    )


def test_a_split_scikit_learn_cannot_make_is_refused_with_its_reason():
    """A validation part smaller than the number of classes: scikit-learn's reason follows the sizes."""
    with pytest.raises(UserError) as raised:
        _stratified(_items({0: 2, 1: 2, 2: 2}), 0.2, 0)
    prefix = "cannot split 6 images with data.val_fraction=0.2: "
    message = str(raised.value)
    assert message.startswith(prefix) and "3" in message[len(prefix) :]  # the 3 classes it must cover
    assert isinstance(raised.value.__cause__, ValueError)


# ----------------------------------------------------------------------------- decoding one image


def test_an_image_is_decoded_as_rgb_whatever_its_mode(tmp_path):
    gray = _png(tmp_path / "gray.png", mode="L")
    with Image.open(gray) as image:
        assert image.mode == "L"
    decoded = read_image(gray)
    assert decoded.mode == "RGB" and decoded.size == (5, 6)


def test_a_large_image_is_decoded_and_its_warning_logged_at_every_read(tmp_path, monkeypatch, caplog):
    """Over Image.MAX_IMAGE_PIXELS but under twice that: PIL warns; each read logs the warning's first
    line with the file, and the warning reaches no one else."""
    path = _png(tmp_path / "big.png", 12, 12)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    caplog.set_level(logging.WARNING, logger="rld")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning that escaped read_image would fail the test
        assert read_image(path).size == (12, 12)
        assert read_image(path).size == (12, 12)
    message = "Image size (144 pixels) exceeds limit of 100 pixels, could be decompression bomb DOS attack."
    assert caplog.messages == [f"image {path}: {message}"] * 2


@pytest.mark.parametrize(
    "text, logged", [("first line\nsecond line", "first line"), ("", "a warning")], ids=["two lines", "empty"]
)
def test_a_warning_of_the_decoder_is_logged_as_its_first_line(tmp_path, monkeypatch, caplog, text, logged):
    path = _png(tmp_path / "a.png")
    real_open = Image.open

    def open_warning(*args, **kw):
        warnings.warn(text, Image.DecompressionBombWarning, stacklevel=2)
        return real_open(*args, **kw)

    monkeypatch.setattr(Image, "open", open_warning)
    caplog.set_level(logging.WARNING, logger="rld")
    assert read_image(path).mode == "RGB"
    assert caplog.messages == [f"image {path}: {logged}"]


@pytest.mark.parametrize(
    "error, reason",
    [
        (OSError("  broken data stream when reading image file\nmore"), "broken data stream when reading image file"),
        (ValueError("v" * 130), "v" * 120),
        (SyntaxError(), "SyntaxError"),
        (OSError("   "), "OSError"),
    ],
    ids=["first line", "120 characters", "no message", "blank message"],
)
def test_a_damaged_image_is_refused_naming_the_first_line_of_the_error(tmp_path, monkeypatch, error, reason):
    path = _png(tmp_path / "a.png")

    def broken(*args, **kw):
        raise error

    monkeypatch.setattr(Image, "open", broken)
    _raises(lambda: read_image(path, "HINT"), f"cannot read image {path} ({reason}); HINT")


# ----------------------------------------------------------------------------- the list data set


def _tree(root: Path) -> list[tuple[str, int]]:
    _png(root / "a" / "0.png")
    _png(root / "b" / "1.png", 7, 8)
    (root / "b" / "bad.png").write_bytes(b"not an image")
    return [("a/0.png", 0), ("b/1.png", 1), ("b/bad.png", 1)]


def test_skipped_files_are_counted_in_one_log_line(tmp_path, caplog):
    items = _tree(tmp_path)
    caplog.set_level(logging.INFO, logger="rld")
    data = ImageListDataset(str(tmp_path), items, T.ToTensor(), skip_bad=True)
    assert data.items == items[:2]
    assert caplog.messages == [f"skipped 1 unreadable image(s) of 3 under {tmp_path}: b/bad.png"]


def test_a_list_of_only_unreadable_files_is_refused(tmp_path):
    _tree(tmp_path)
    _raises(
        lambda: ImageListDataset(str(tmp_path), [("b/bad.png", 1), ("b/bad.png", 0)], T.ToTensor(), skip_bad=True),
        f"none of the 2 images under {tmp_path} can be read",
    )


# ----------------------------------------------------------------------------- the two parts' data sets


def test_the_parts_get_the_training_and_the_evaluation_transforms_at_the_image_size(tmp_path):
    items = _tree(tmp_path)
    split = Split(str(tmp_path), ["a", "b"], items[:2], items[:2])
    train, val = split_datasets(split, 12)
    assert not train.skip_bad and not val.skip_bad  # the default: an unreadable file stops the run
    crop, flip = train.transform.transforms[:2]
    assert isinstance(crop, T.RandomResizedCrop) and crop.size == (12, 12) and isinstance(flip, T.RandomHorizontalFlip)
    resize, centre = val.transform.transforms[:2]
    assert isinstance(resize, T.Resize) and resize.size == round(12 * 256 / 224) == 14
    assert isinstance(centre, T.CenterCrop) and centre.size == (12, 12)
    assert train[1][0].shape == val[1][0].shape == (3, 12, 12)


def test_skipping_applies_to_both_parts_and_the_held_out_part_is_built_unless_declined(tmp_path):
    items = _tree(tmp_path)
    split = Split(str(tmp_path), ["a", "b"], items, items)
    train, val = split_datasets(split, 8, True)
    assert train.skip_bad and val.skip_bad and len(train) == len(val) == 2
    only, none = split_datasets(Split(str(tmp_path), ["a", "b"], items[:2], [("missing.png", 0)]), 8, held_out=False)
    assert none is None and len(only) == 2


def test_a_warning_the_callers_filters_ignore_is_not_logged(tmp_path, monkeypatch, caplog):
    """Only the decompression-bomb warning is always logged: any other warning of the decoder follows the
    warning filters in force (here: UserWarning ignored)."""
    path = _png(tmp_path / "a.png")
    real_open = Image.open

    def open_warning(*args, **kw):
        warnings.warn("a warning of the decoder", UserWarning, stacklevel=2)
        return real_open(*args, **kw)

    monkeypatch.setattr(Image, "open", open_warning)
    caplog.set_level(logging.WARNING, logger="rld")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert read_image(path).mode == "RGB"
    assert caplog.messages == []
    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        read_image(path)
    assert caplog.messages == [f"image {path}: a warning of the decoder"]


def test_the_evaluation_transform_is_224_pixels_by_default():
    resize, crop = image_transform(train=False).transforms[:2]
    assert (resize.size, crop.size) == (256, (224, 224))
    assert image_transform(train=True).transforms[0].size == (224, 224)
