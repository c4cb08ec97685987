"""Edges of rld.data, part E: one RandAugment slot and Cutout of rld.data.strong against the published
PIL operations (MLKD's augment_list, FixMatch's CutoutAbs), the nearest-neighbour warp against a
brute-force loop, StrongAugment's normalisation; the counter-based hash and the RandomResizedCrop rule
of rld.data.crop_views against a pure-Python splitmix64 and a loop that follows torchvision's
get_params; the device loader's argument checks with their whole messages, its defaults and where its
tensors live; the embedded digits set against sklearn's pixels upsampled by a numpy bilinear."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from sklearn.datasets import load_digits as sklearn_digits
from sklearn.model_selection import train_test_split

from conftest import random_rgb, to_nchw, to_nhwc
from rld.data.crop_views import (
    ATTEMPTS,
    DRAWS,
    RATIO,
    SCALE,
    _mix,
    resized_crop_params,
    train_views,
    uniforms,
)
from rld.data.device_loader import DeviceLoader
from rld.data.digits import _upsample, load_digits
from rld.data.strong import OP_INDEX, StrongAugment, StrongPlan, _apply_op, _cutout, _warp
from rld.data.types import ArraySplit
from rld.errors import UserError

MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)
MASK64 = 2**64 - 1
GAMMA = 0x9E3779B97F4A7C15
META = torch.device("meta")


def _raises(call, message: str) -> None:
    with pytest.raises(UserError) as caught:
        call()
    assert str(caught.value) == message


# ----------------------------------------------------------------------------- one RandAugment slot


def _published(image: Image.Image, name: str, v: float) -> Image.Image:
    """augment_list() of mdistiller/dataset/cifar100.py (MLKD, CRLD), one operation on a PIL image."""
    w, h = image.size
    if name == "auto_contrast":
        return ImageOps.autocontrast(image)
    if name in ("brightness", "color", "contrast", "sharpness"):
        enhancer = {"brightness": ImageEnhance.Brightness, "color": ImageEnhance.Color}.get(name)
        enhancer = enhancer or {"contrast": ImageEnhance.Contrast, "sharpness": ImageEnhance.Sharpness}[name]
        return enhancer(image).enhance(v)
    if name == "equalize":
        return ImageOps.equalize(image)
    if name == "identity":
        return image
    if name == "posterize":
        return ImageOps.posterize(image, min(8, max(1, int(v))))
    if name == "rotate":
        return image.rotate(v)
    if name == "solarize":
        return ImageOps.solarize(image, v)
    data = {
        "shear_x": (1, v, 0, 0, 1, 0),
        "shear_y": (1, 0, 0, v, 1, 0),
        "translate_x": (1, 0, v * w, 0, 1, 0),
        "translate_y": (1, 0, 0, 0, 1, v * h),
    }[name]
    return image.transform(image.size, Image.AFFINE, data)


SLOT_CASES = [
    ("auto_contrast", 0.5),
    ("brightness", 0.37),
    ("color", 0.81),
    ("contrast", 0.23),
    ("contrast", 0.66),
    ("equalize", 0.1),
    ("identity", 0.9),
    ("posterize", 4.7),
    ("posterize", 7.2),
    ("posterize", 0.6),
    ("posterize", 1.5),
    ("posterize", 2.9),
    ("rotate", 17.3),
    ("rotate", -26.0),
    ("sharpness", 0.44),
    ("shear_x", 0.21),
    ("shear_y", -0.17),
    ("solarize", 128.0),
    ("solarize", 37.5),
    ("translate_x", -0.25),
    ("translate_y", 0.2),
    ("translate_y", -0.3),
]


def _slot_images() -> np.ndarray:
    images = random_rgb(len(SLOT_CASES), 18, 20, seed=11)
    images[0] = images[0] // 3 + 10  # 10 .. 94: auto contrast multiplies by exactly 3
    images[0, 0, 0], images[0, 0, 1] = 10, 95
    images[3] = images[3] // 2 + 90  # the two contrast images: other means
    images[17, :4] = 128  # pixels at the solarize threshold
    return images


def test_one_slot_applies_each_images_published_operation():
    images = _slot_images()
    ops = torch.tensor([OP_INDEX[n] for n, _ in SLOT_CASES])
    values = torch.tensor([v for _, v in SLOT_CASES])
    got = _apply_op(to_nchw(images), ops, values)
    assert got.dtype == torch.float32 and got.shape == (len(SLOT_CASES), 3, 18, 20)
    magnitudes = [float(v) for v in values]  # the float32 magnitudes, exactly
    expected = np.stack(
        [np.asarray(_published(Image.fromarray(a), name, v)) for a, (name, _), v in zip(images, SLOT_CASES, magnitudes)]
    )
    for k, (name, v) in enumerate(SLOT_CASES):
        np.testing.assert_array_equal(to_nhwc(got)[k], expected[k], err_msg=f"{name} {v}")


def _levels(rows: list[list[float]]) -> torch.Tensor:
    """(len(rows), 3, 3, W): image k has the grey levels rows[k] in each of its 3 rows and 3 channels."""
    return torch.tensor(rows).view(len(rows), 1, 1, -1).expand(len(rows), 3, 3, len(rows[0])).contiguous()


def test_posterize_keeps_int_v_bits_and_at_least_one():
    levels = [0.0, 1.0, 63.0, 64.0, 100.0, 127.0, 128.0, 129.0, 200.0, 255.0]
    values = torch.tensor([0.6, 1.0, 1.5, 2.9, 4.7, 7.99])
    got = _apply_op(_levels([levels] * 6), torch.full((6,), OP_INDEX["posterize"]), values)
    expected = [
        [0, 0, 0, 0, 0, 0, 128, 128, 128, 128],  # below one bit: one bit
        [0, 0, 0, 0, 0, 0, 128, 128, 128, 128],
        [0, 0, 0, 0, 0, 0, 128, 128, 128, 128],
        [0, 0, 0, 64, 64, 64, 128, 128, 192, 192],
        [0, 0, 48, 64, 96, 112, 128, 128, 192, 240],
        [0, 0, 62, 64, 100, 126, 128, 128, 200, 254],
    ]
    assert torch.equal(got, _levels(expected))


def test_solarize_inverts_the_pixels_at_and_above_the_threshold():
    got = _apply_op(
        _levels([[0.0, 99.0, 100.0, 101.0, 255.0]]), torch.tensor([OP_INDEX["solarize"]]), torch.tensor([100.0])
    )
    assert torch.equal(got, _levels([[0.0, 99.0, 155.0, 154.0, 0.0]]))


def test_contrast_blends_with_each_images_own_mean_grey_rounded_half_up():
    # grey levels 10 and 13 (mean 11.5 -> 12), and 0 and 1 (mean 0.5 -> 1): factor 0 gives the mean
    x = _levels([[10.0, 13.0, 10.0, 13.0], [0.0, 1.0, 0.0, 1.0]])
    got = _apply_op(x, torch.full((2,), OP_INDEX["contrast"]), torch.zeros(2))
    assert torch.equal(got, _levels([[12.0] * 4, [1.0] * 4]))


def test_a_slot_keeps_the_images_dtype_whatever_the_magnitudes_dtype():
    x = to_nchw(random_rgb(3, 4, 5, seed=12))
    ops = torch.tensor([OP_INDEX["brightness"], OP_INDEX["posterize"], OP_INDEX["identity"]])
    got = _apply_op(x, ops, torch.tensor([0.3, 5.5, 0.0], dtype=torch.float64))
    assert got.dtype == torch.float32
    assert torch.equal(got, _apply_op(x, ops, torch.tensor([0.3, 5.5, 0.0])))


# ----------------------------------------------------------------------------- Cutout


def _published_cutout(image: np.ndarray, frac: float, ux: float, uy: float) -> np.ndarray:
    """Cutout then CutoutAbs of FixMatch's RandAugment (MLKD, CRLD), with np.random.uniform(w) = w + (1 - w)·u."""
    pil = Image.fromarray(image)
    w, h = pil.size
    v = frac * w
    if v <= 0:
        return image
    x0 = int(max(0, (w + (1.0 - w) * ux) - v / 2.0))
    y0 = int(max(0, (h + (1.0 - h) * uy) - v / 2.0))
    x1, y1 = min(w, x0 + v), min(h, y0 + v)
    ImageDraw.Draw(pil).rectangle((x0, y0, x1, y1), (125, 123, 114))
    return np.asarray(pil)


CUTOUT_CASES = [
    (0.0, 0.3, 0.6),  # no side: nothing
    (0.02, 0.5, 0.5),  # a side under one pixel: one pixel
    (0.5, 0.0, 0.0),  # the corner at (w, h), the rectangle clipped
    (0.5, 0.999, 0.999),  # the corner before 1 - side / 2 < 0: clamped to 0
    (0.45, 0.97, 0.1),
    (0.31, 0.2, 0.93),
    (0.17, 0.55, 0.35),
    (0.49, 0.71, 0.66),
    (0.23, 0.08, 0.47),
    (0.38, 0.42, 0.81),
]


def test_cutout_fills_the_published_rectangle_with_the_published_grey():
    images = random_rgb(len(CUTOUT_CASES), 11, 17, seed=13)
    cutout = torch.tensor(CUTOUT_CASES)
    got = _cutout(to_nchw(images), cutout)
    assert got.dtype == torch.float32 and got.shape == (len(CUTOUT_CASES), 3, 11, 17)
    draws = [[float(v) for v in row] for row in cutout]  # the float32 draws, exactly
    expected = np.stack([_published_cutout(a, *d) for a, d in zip(images, draws)])
    for k in range(len(CUTOUT_CASES)):
        np.testing.assert_array_equal(to_nhwc(got)[k], expected[k], err_msg=str(CUTOUT_CASES[k]))
    filled = (to_nhwc(got) == (125, 123, 114)).all(axis=-1) & ~(images == (125, 123, 114)).all(axis=-1)
    assert filled.sum(axis=(1, 2)).tolist()[:4] == [0, 1, 5 * 5, 9 * 9]


def test_cutout_spans_its_corner_to_corner_plus_side_inclusive():
    # w = h = 10, side 4, draws 0.5: corner 10 - 4.5 - 2 = 3.5 -> 3, far edge min(10, 3 + 4) = 7
    x = torch.zeros(1, 3, 10, 10)
    got = _cutout(x, torch.tensor([[0.4, 0.5, 0.5]]))[0, 0]
    rows, cols = torch.nonzero(got, as_tuple=True)
    assert sorted(set(rows.tolist())) == [3, 4, 5, 6, 7] and sorted(set(cols.tolist())) == [3, 4, 5, 6, 7]
    assert set(got.unique().tolist()) == {0.0, 125.0}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_cutout_keeps_the_images_dtype(dtype):
    x = torch.zeros(2, 3, 6, 6, dtype=dtype)
    got = _cutout(x, torch.tensor([[0.5, 0.5, 0.5], [0.0, 0.5, 0.5]]))
    assert got.dtype == dtype
    assert got[0, :, 2, 2].tolist() == [125.0, 123.0, 114.0] and got[1].abs().sum() == 0


def test_cutout_stays_on_the_images_device():
    x = torch.zeros(2, 3, 6, 5, device=META)
    assert _cutout(x, torch.zeros(2, 3, device=META)).device == META


# ----------------------------------------------------------------------------- the warp


def _brute_warp(image: np.ndarray, m: list[list[float]]) -> np.ndarray:
    h, w = image.shape[:2]
    out = np.zeros_like(image)
    for y in range(h):
        for x in range(w):
            sx = math.floor(m[0][0] * (x + 0.5) + m[0][1] * (y + 0.5) + m[0][2])
            sy = math.floor(m[1][0] * (x + 0.5) + m[1][1] * (y + 0.5) + m[1][2])
            if 0 <= sx < w and 0 <= sy < h:
                out[y, x] = image[sy, sx]
    return out


WARPS = [
    [[1, 0, 0], [0, 1, 0]],
    [[1, 0, 2], [0, 1, 0]],
    [[1, 0, -2], [0, 1, 0]],
    [[1, 0, 0], [0, 1, 1]],
    [[1, 0, 0], [0, 1, -3]],
    [[1, 0.5, -1], [0, 1, 0]],
    [[1, 0, 0], [-0.3, 1, 0.5]],
]


def test_warp_reads_the_floor_of_the_mapped_centre_and_fills_0_outside():
    images = random_rgb(len(WARPS), 5, 7, seed=14, low=1)
    got = to_nhwc(_warp(to_nchw(images), torch.tensor(WARPS, dtype=torch.float64)))
    for k, m in enumerate(WARPS):
        np.testing.assert_array_equal(got[k], _brute_warp(images[k], m), err_msg=str(m))
    np.testing.assert_array_equal(got[0], images[0])
    assert (got[2][:, :2] == 0).all() and (got[4][:3] == 0).all()


# ----------------------------------------------------------------------------- StrongAugment


def _plain_plan(n: int) -> StrongPlan:
    ops = torch.full((n, 2), OP_INDEX["identity"])
    return StrongPlan(torch.zeros(n, dtype=torch.int64), ops, torch.zeros(n, 2), torch.zeros(n, 3))


def test_strong_augment_keeps_float32_statistics_on_its_device():
    for mean, std in ((MEAN, STD), (np.array(MEAN), np.array(STD))):
        augment = StrongAugment(mean, std, torch.device("cpu"))
        for stat, want in ((augment.mean, MEAN), (augment.std, STD)):
            assert stat.shape == (1, 3, 1, 1) and stat.dtype == torch.float32
            assert stat.flatten().tolist() == [float(np.float32(v)) for v in want]
    on_meta = StrongAugment(MEAN, STD, META)
    assert on_meta.mean.device == on_meta.std.device == META


def test_from_pixels_normalises_the_augmented_pixels():
    pixels = to_nchw(random_rgb(2, 3, 4, seed=15))
    augment = StrongAugment(np.array(MEAN), np.array(STD), torch.device("cpu"))
    got = augment.from_pixels(pixels, _plain_plan(2))
    assert got.dtype == torch.float32
    mean, std = np.array(MEAN).reshape(1, 3, 1, 1), np.array(STD).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(got.numpy(), (pixels.numpy() / 255.0 - mean) / std, rtol=0, atol=2e-6)


# ----------------------------------------------------------------------------- the hash of crop_views


def _py_mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def _py_uniforms(seed: int, epoch: int, stream: int, index: int, draws: int) -> list[float]:
    key = _py_mix((seed + GAMMA) & MASK64)
    key = _py_mix(key ^ ((epoch + 2 * GAMMA) & MASK64))
    key = _py_mix(key ^ ((stream + 3 * GAMMA) & MASK64))
    sample = _py_mix(key ^ _py_mix((index + 4 * GAMMA) & MASK64))
    return [(_py_mix((sample + (k + 1) * GAMMA) & MASK64) >> 11) * 2.0**-53 for k in range(draws)]


def test_mix_is_splitmix64s_finaliser():
    # the first output of splitmix64 seeded 0 (Vigna's reference generator)
    assert int(_mix(np.array([GAMMA], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF
    inputs = [0, 1, 2**31 - 1, 2**32 + 7, 2**63, MASK64, 0x0123456789ABCDEF, 0xFEDCBA9876543210, GAMMA * 3 & MASK64]
    got = _mix(np.array(inputs, dtype=np.uint64))
    assert got.dtype == np.uint64
    assert [int(v) for v in got] == [_py_mix(z) for z in inputs]


def test_uniforms_are_the_documented_hash_of_seed_epoch_stream_index_and_draw():
    for seed, epoch, stream, indices in ((0, 0, 0, [0, 1, 2]), (7, 3, 1, [5, 1000, 2**40]), (2**40, 9, 4, [17])):
        got = uniforms(seed, epoch, indices, DRAWS, stream)
        assert got.dtype == np.float64 and got.shape == (len(indices), DRAWS)
        expected = [_py_uniforms(seed, epoch, stream, i, DRAWS) for i in indices]
        assert got.tolist() == expected
    assert uniforms(3, 1, 4, 5).tolist() == [_py_uniforms(3, 1, 0, 4, 5)]


def test_uniforms_take_indices_of_any_shape_and_warn_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grid = uniforms(1, 2, np.array([[3, 4], [5, 6]]), 4)
    assert grid.tolist() == [_py_uniforms(1, 2, 0, i, 4) for i in (3, 4, 5, 6)]


def test_uniforms_read_indices_as_int64():
    with pytest.raises(OverflowError):
        uniforms(0, 0, [2**63])


def test_train_views_draw_from_the_given_stream():
    indices, heights, widths = [0, 4, 9], [40, 50, 60], [60, 45, 30]
    for stream in (0, 1, 3):
        got = train_views(5, 2, indices, heights, widths, stream)
        want = resized_crop_params(uniforms(5, 2, indices, DRAWS, stream), heights, widths)
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert not np.array_equal(
        train_views(5, 2, indices, heights, widths, 1)[0], train_views(5, 2, indices, heights, widths)[0]
    )


# ----------------------------------------------------------------------------- RandomResizedCrop


def _get_params(u: list[float], height: int, width: int) -> tuple[int, int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, each random number read from ``u`` in the documented
    layout (a uniform(a, b) is a + (b - a)·u, randint(0, n) is floor(u·n)), and the flip."""
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for t in range(ATTEMPTS):
        target_area = area * (SCALE[0] + (SCALE[1] - SCALE[0]) * u[2 * t])
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[2 * t + 1])
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = math.floor(u[20] * (height - h + 1))
            j = math.floor(u[21] * (width - w + 1))
            return i, j, h, w, int(u[22] < 0.5)
    in_ratio = float(width) / float(height)
    if in_ratio < min(RATIO):
        w = width
        h = int(round(w / min(RATIO)))
    elif in_ratio > max(RATIO):
        h = height
        w = int(round(h * max(RATIO)))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w, int(u[22] < 0.5)


SHAPES = [(1, 1), (1, 3), (3, 1), (2, 2), (2, 3), (2, 300), (300, 2), (5, 7), (32, 32), (375, 500), (4, 3), (9, 12)]


def test_resized_crop_params_follow_torchvisions_get_params():
    rng = np.random.default_rng(16)
    heights = np.repeat([s[0] for s in SHAPES], 150)
    widths = np.repeat([s[1] for s in SHAPES], 150)
    u = rng.random((len(heights), DRAWS))
    got = resized_crop_params(u, heights, widths)
    assert [a.dtype for a in got] == [np.dtype(np.int64)] * 5
    expected = np.array([_get_params(list(row), int(h), int(w)) for row, h, w in zip(u, heights, widths)])
    np.testing.assert_array_equal(np.stack(got, axis=1), expected)


def test_the_crop_accepts_attempts_that_reach_the_border_and_refuses_empty_sides():
    u = np.full((5, DRAWS), 0.5)
    u[0, 0] = 0.999999  # 10x10, the whole area with aspect 1: w = h = 10 fits
    u[1, 0:4] = [0.2, 0.3, 0.999999, 0.5]  # 1x1: w = round(0.49) = 0, h = 1 does not fit, then w = h = 1
    u[2, 21] = 0.1  # 1x3: the first attempt's w = h = 1 fits, its left floor(0.1 * 3) = 0
    u[3, 0:4] = [0.2, 0.7, 0.999999, 0.5]  # 1x1: w = 1, h = round(0.49) = 0 does not fit, then w = h = 1
    heights, widths = [10, 1, 1, 1, 10], [10, 1, 3, 1, 10]
    top, left, h, w, flip = resized_crop_params(u, heights, widths)  # 10x10 at 0.5: w = h = 7, top 2
    assert (h.tolist(), w.tolist()) == ([10, 1, 1, 1, 7], [10, 1, 1, 1, 7])
    assert (top.tolist(), left.tolist()) == ([0, 0, 0, 0, 2], [0, 0, 0, 0, 2])
    assert flip.tolist() == [0, 0, 0, 0, 0]  # no flip at exactly one half
    u[4, 22] = 0.4999999
    assert resized_crop_params(u, heights, widths)[4].tolist() == [0, 0, 0, 0, 1]


def test_the_central_fallback_halves_with_integer_division():
    u = np.full((2, DRAWS), 0.999)  # the largest areas: nothing fits a 2x300 or 300x2 image
    top, left, h, w, flip = resized_crop_params(u, [2, 300], [300, 2])
    assert [a.dtype for a in (top, left, h, w, flip)] == [np.dtype(np.int64)] * 5
    assert (top.tolist(), left.tolist(), h.tolist(), w.tolist()) == ([0, 148], [148, 0], [2, 3], [3, 2])
    floats = resized_crop_params(u, [2.0, 300.0], [300.0, 2.0])
    assert [a.dtype for a in floats] == [np.dtype(np.int64)] * 5
    assert all(np.array_equal(a, b) for a, b in zip(floats, (top, left, h, w, flip)))


def test_resized_crop_params_take_scalar_and_uint8_sizes():
    u = np.random.default_rng(17).random((6, DRAWS))
    want = resized_crop_params(u, [200, 100, 255, 40, 3, 77], [150, 250, 255, 2, 90, 77])
    got = resized_crop_params(
        u, np.array([200, 100, 255, 40, 3, 77], np.uint8), np.array([150, 250, 255, 2, 90, 77], np.uint8)
    )
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    one = resized_crop_params(u[:1], 200, 150)
    assert [a.tolist() for a in one] == [[int(a[0])] for a in want]


# ----------------------------------------------------------------------------- the device loader


def _split(n: int = 4, h: int = 5, w: int = 6) -> ArraySplit:
    return ArraySplit(random_rgb(n, h, w, seed=18), np.arange(n) % 3)


def _loader(split: ArraySplit | None = None, batch_size: int = 2, **kw) -> DeviceLoader:
    args = dict(device="cpu", mean=MEAN, std=STD, train=True, flip=True) | kw
    return DeviceLoader(split if split is not None else _split(), batch_size, **args)


IMAGES = "images must be a uint8 array of shape (N, H, W, 3), got "


def test_the_split_check_names_what_it_got():
    x, y = _split().x, _split().y
    _raises(lambda: _loader(ArraySplit([[1, 2]], y)), IMAGES + "list ")
    _raises(lambda: _loader(ArraySplit(x.astype(np.float32), y)), IMAGES + "float32 (4, 5, 6, 3)")
    _raises(lambda: _loader(ArraySplit(np.zeros((4, 5, 6, 4), np.uint8), y)), IMAGES + "uint8 (4, 5, 6, 4)")
    _raises(lambda: _loader(ArraySplit(x[0], y)), IMAGES + "uint8 (5, 6, 3)")
    _raises(lambda: _loader(ArraySplit(torch.from_numpy(x), y)), IMAGES + "torch.uint8 torch.Size([4, 5, 6, 3])")
    labels = "labels must be an integer array of shape (4,), got "
    _raises(lambda: _loader(ArraySplit(x, [0, 1, 2, 0])), labels + "[0, 1, 2, 0]")
    _raises(lambda: _loader(ArraySplit(x, y[:3])), labels + "(3,)")
    _raises(lambda: _loader(ArraySplit(x, y.astype(np.float64))), labels + "(4,)")
    _raises(lambda: _loader(ArraySplit(x, y[:, None])), labels + "(4, 1)")
    _raises(lambda: _loader(ArraySplit(x[:0], y[:0])), "the split has no images")
    assert len(_loader(ArraySplit(x[:1], y[:1]))) == 1


def test_the_loader_refuses_bad_batch_sizes_and_statistics():
    for bad in (0, -2, True, 2.0, "2"):
        _raises(lambda bad=bad: _loader(batch_size=bad), f"batch size must be a positive integer, got {bad!r}")
    assert _loader(batch_size=1).batch_size == 1 and len(_loader(batch_size=1)) == 4
    for mean, std in (((0.5, 0.5), STD), (MEAN, (0.2, 0.2)), (MEAN, (0.2, 0.0, 0.2)), (MEAN, (0.2, 0.3, -0.1))):
        _raises(
            lambda mean=mean, std=std: _loader(mean=mean, std=std),
            f"mean and std need 3 values each with std > 0, got mean={mean}, std={std}",
        )


def test_the_loaders_defaults():
    loader = _loader()
    assert (loader.seed, loader.channels_last, loader.strong, loader.rank, loader.world_size) == (0, False, None, 0, 1)
    assert loader.device == torch.device("cpu")
    assert next(iter(loader)).images.is_contiguous()


def test_the_strong_view_only_when_asked_and_training():
    for strong, train in ((True, True), (True, False), (False, True), (False, False)):
        loader = _loader(strong=strong, train=train, mean=np.array(MEAN), std=np.array(STD))
        if strong and train:
            assert isinstance(loader.strong, StrongAugment)
            assert loader.strong.mean.flatten().tolist() == [float(np.float32(v)) for v in MEAN]
            assert loader.strong.std.flatten().tolist() == [float(np.float32(v)) for v in STD]
            assert loader.strong.mean.dtype == torch.float32
        else:
            assert loader.strong is None, (strong, train)


def test_render_views_reads_only_the_splits_images():
    loader = _loader()
    with pytest.raises(IndexError):
        loader.render_views(torch.tensor([4]), torch.tensor([80]))
    got = loader.render_views(torch.tensor([3]), torch.tensor([80]))
    mean, std = np.array(MEAN, np.float32).reshape(1, 3, 1, 1), np.array(STD, np.float32).reshape(1, 3, 1, 1)
    expected = (to_nchw(_split().x[3:]).numpy() / np.float32(255) - mean) / std
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)


def test_every_tensor_of_the_loader_lives_on_its_device():
    loader = _loader(device="meta", strong=True, mean=np.array(MEAN), std=np.array(STD))
    kept = {name: t for name, t in vars(loader).items() if isinstance(t, torch.Tensor)}
    kept |= {f"strong.{name}": t for name, t in vars(loader.strong).items() if isinstance(t, torch.Tensor)}
    assert len(kept) == 8
    assert {name: t.device for name, t in kept.items()} == dict.fromkeys(kept, META)
    floats = {name: t.dtype for name, t in kept.items() if t.is_floating_point()}
    assert floats == dict.fromkeys(["_mean", "_std", "strong.mean", "strong.std"], torch.float32)
    assert loader.labels.device == META
    assert all(t.device == META for t in next(iter(loader)) if t is not None)


# ----------------------------------------------------------------------------- digits


def _bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Half-pixel-centre bilinear upsampling (align_corners=False), the source index clamped at 0."""
    n = images.shape[-1]
    src = np.maximum((np.arange(size) + 0.5) * (n / size) - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = src - i0
    rows = images[:, i0, :] * (1 - lam)[None, :, None] + images[:, i1, :] * lam[None, :, None]
    return rows[:, :, i0] * (1 - lam)[None, None, :] + rows[:, :, i1] * lam[None, None, :]


def _split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    train, test = train_test_split(np.arange(len(labels)), test_size=0.25, stratify=labels, random_state=0)
    return np.sort(train), np.sort(test)


@pytest.mark.parametrize("size", [8, 16, 32])
def test_digits_are_sklearns_pixels_scaled_upsampled_and_rounded(size):
    raw = sklearn_digits()
    train_idx, test_idx = _split_indices(raw.target)
    grey = np.rint(_bilinear(raw.images * (255 / 16), size))
    data = load_digits(size)
    for split, idx in ((data.train, train_idx), (data.test, test_idx)):
        assert split.x.shape == (len(idx), size, size, 3) and split.x.dtype == np.uint8
        for c in range(3):
            np.testing.assert_array_equal(split.x[..., c], grey[idx])
        np.testing.assert_array_equal(split.y, raw.target[idx])
    if size == 8:
        np.testing.assert_array_equal(data.train.x[..., 0], np.rint(raw.images[train_idx] * 15.9375))
    scaled = grey[train_idx] / 255.0
    assert data.mean[0] == data.mean[1] == data.mean[2] and data.std[0] == data.std[1] == data.std[2]
    assert data.mean == pytest.approx((scaled.mean(),) * 3, rel=1e-12) and data.std == pytest.approx(
        (scaled.std(),) * 3, rel=1e-12
    )


def test_digits_refuse_a_size_below_8_or_not_an_integer():
    for bad in (7, 0, True, 32.0, "32"):
        _raises(
            lambda bad=bad: load_digits(bad),
            f"the digits' image size must be an integer >= 8 (they are 8x8 originals), got {bad!r}",
        )


def test_upsample_saturates_to_0_255():
    images = np.zeros((3, 8, 8))
    images[0], images[1] = -3.0, 300.0
    images[2, :, :4], images[2, :, 4:] = -40.0, 400.0
    got = _upsample(images, 16)
    assert got.shape == (3, 16, 16, 3) and got.dtype == np.uint8
    assert (got[0] == 0).all() and (got[1] == 255).all()
    assert (got[2, :, :7] == 0).all() and (got[2, :, 9:] == 255).all()


@pytest.mark.parametrize("shape", [(2, 1), (1, 5), (2, 2), (3, 3)])
def test_every_operation_takes_an_image_under_3_pixels_as_pil_does(shape):
    """The sharpness operation of an image that is all border (under 3 pixels high or wide) is the
    image itself in PIL; every other operation is computed as for a larger image."""
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, size=(len(SLOT_CASES), *shape, 3), dtype=np.uint8)
    ops = torch.tensor([OP_INDEX[n] for n, _ in SLOT_CASES])
    values = torch.tensor([v for _, v in SLOT_CASES])
    got = to_nhwc(_apply_op(to_nchw(images), ops, values))
    for k, (name, v) in enumerate(SLOT_CASES):
        expected = np.asarray(_published(Image.fromarray(images[k]), name, float(values[k])))
        np.testing.assert_array_equal(got[k], expected, err_msg=f"{name} {v}")


def test_auto_contrast_is_pils_on_every_level_range():
    """PIL stretches in double precision: in single precision some levels of these images (a
    channel's brightest among them) came out one below PIL's."""
    rng = np.random.default_rng(11)
    lo, hi = rng.integers(0, 128, size=64), rng.integers(128, 256, size=64)
    images = np.stack([rng.integers(a, b + 1, size=(6, 7, 3)) for a, b in zip(lo, hi)]).astype(np.uint8)
    got = to_nhwc(_apply_op(to_nchw(images), torch.full((64,), OP_INDEX["auto_contrast"]), torch.zeros(64)))
    expected = np.stack([np.asarray(ImageOps.autocontrast(Image.fromarray(a))) for a in images])
    np.testing.assert_array_equal(got, expected)
