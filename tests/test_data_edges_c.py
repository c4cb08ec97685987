"""Edges of the strong view and the pieces around it: each RandAugment operation of rld.data.strong
against PIL or a brute force on small non-square images, the affine maps against Pillow's formulas,
the epoch's strong plan against the documented order of its draws, the device loader's strong
batches, the devices every tensor lands on (the meta device standing in for an accelerator), and
the two-crop wrapping of torch_loader, the CIFAR transform of pil and concat_batches of types."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.data import Subset
from torchvision import transforms as T

from conftest import random_rgb, to_nchw, to_nhwc
from rld.data.device_loader import DeviceLoader
from rld.data.pil import ArrayImageDataset, array_transform
from rld.data.strong import (
    OP_INDEX,
    OPS,
    StrongAugment,
    StrongPlan,
    _affine_matrices,
    _auto_contrast,
    _blend,
    _equalize,
    _gray,
    _smooth,
    _warp,
    rand_augment,
    strong_generator,
    strong_plan,
)
from rld.data.torch_loader import IndexedDataset, TwoCrops, normalization, with_two_crops
from rld.data.types import ArraySplit, Batch, concat_batches
from rld.errors import UserError

MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.3)


def _pil_each(images: np.ndarray, op) -> np.ndarray:
    return np.stack([np.asarray(op(Image.fromarray(a))) for a in images])


def _identity_plan(views: torch.Tensor) -> StrongPlan:
    n = views.shape[0]
    ops = torch.full((n, 2), OP_INDEX["identity"])
    return StrongPlan(views, ops, torch.zeros(n, 2), torch.zeros(n, 3))


# ----------------------------------------------------------------------------- the operations


def test_gray_is_the_rounded_luma_of_itu_r_601():
    images = random_rgb(3, 5, 7, seed=0)
    wide = images.astype(np.int64)
    thousandths = 299 * wide[..., 0] + 587 * wide[..., 1] + 114 * wide[..., 2]
    assert not (thousandths % 1000 == 500).any()  # no ties: the rounding direction is not in question
    got = _gray(to_nchw(images))
    assert got.shape == (3, 1, 5, 7)
    np.testing.assert_array_equal(got[:, 0].numpy(), (thousandths + 500) // 1000)
    np.testing.assert_array_equal(got[:, 0].numpy(), _pil_each(images, lambda im: im.convert("L")))


@pytest.mark.parametrize("enhancer", [ImageEnhance.Brightness, ImageEnhance.Color])
def test_blend_interpolates_extrapolates_and_clips_like_pil_image_enhance(enhancer):
    images = random_rgb(6, 6, 9, seed=1)
    images[:, 0, 0] = 255
    factors = (-0.5, 0.0, 0.35, 1.0, 1.7, 2.3)
    x = to_nchw(images)
    degenerate = torch.zeros_like(x) if enhancer is ImageEnhance.Brightness else _gray(x).expand_as(x)
    got = to_nhwc(_blend(x, degenerate, torch.tensor(factors)))
    expected = np.stack([np.asarray(enhancer(Image.fromarray(a)).enhance(f)) for a, f in zip(images, factors)])
    np.testing.assert_array_equal(got, expected)
    assert got.min() == 0 and got[4:].max() == 255  # both clips reached


def test_smooth_is_pils_smooth_filter_with_the_border_kept():
    images = random_rgb(2, 9, 11, seed=2)
    expected = _pil_each(images, lambda im: im.filter(ImageFilter.SMOOTH))
    np.testing.assert_array_equal(to_nhwc(_smooth(to_nchw(images))), expected)
    wide = images.astype(np.int64)
    kernel = np.ones((3, 3), dtype=np.int64)
    kernel[1, 1] = 5
    inner = sum(kernel[i, j] * wide[:, i : i + 7, j : j + 9] for i in range(3) for j in range(3))
    np.testing.assert_array_equal(expected[:, 1:-1, 1:-1], (2 * inner + 13) // 26)  # round(inner / 13)
    np.testing.assert_array_equal(expected[:, 0], images[:, 0])
    double = _smooth(to_nchw(images).double())
    assert double.dtype == torch.float64
    np.testing.assert_array_equal(to_nhwc(double), expected)


@pytest.mark.parametrize("height,width", [(2, 5), (5, 2), (1, 1)])
def test_smooth_keeps_an_image_under_3_pixels_on_either_side_whole_as_pil_does(height, width):
    images = random_rgb(2, height, width, seed=5)
    expected = _pil_each(images, lambda im: im.filter(ImageFilter.SMOOTH))
    np.testing.assert_array_equal(expected, images)
    np.testing.assert_array_equal(to_nhwc(_smooth(to_nchw(images))), expected)


def test_auto_contrast_stretches_each_channel_of_each_image_to_0_255():
    images = random_rgb(3, 6, 8, seed=3)
    images[0, ..., 0] = images[0, ..., 0] // 4 + 60  # 60 .. 123
    images[0, ..., 1] = 100 + (images[0, ..., 1] % 2)  # two levels one apart
    images[1, ..., 2] = 77  # one level: unchanged
    images[2] = images[2] // 2 + 40
    got = to_nhwc(_auto_contrast(to_nchw(images)))
    wide = images.astype(np.int64)
    lo, hi = wide.min(axis=(1, 2), keepdims=True), wide.max(axis=(1, 2), keepdims=True)
    stretched = np.where(hi > lo, (wide - lo) * 255 // np.maximum(hi - lo, 1), wide)
    # a few pixels whose exact stretch is an integer come out one level low in float32 (Pillow's float64 too)
    assert np.abs(got - stretched).max() <= 1 and (got != stretched).mean() < 0.01
    pil = _pil_each(images, ImageOps.autocontrast)
    assert np.abs(got - pil).max() <= 1 and (got != pil).mean() < 0.01
    lowest = got.min(axis=(1, 2))
    np.testing.assert_array_equal(lowest, [[0, 0, 0], [0, 0, 77], [0, 0, 0]])
    assert (got[1, ..., 2] == 77).all() and set(np.unique(got[0, ..., 1])) == {0.0, 255.0}


def _equalize_cases(size: int, seed: int) -> np.ndarray:
    images = random_rgb(3, size, size, seed=seed)
    images[1] = images[1] // 2 + 20  # top level below 255
    images[1, ..., 0] = np.minimum(images[1, ..., 0], 180)
    images[1, 0, 0, 0] = 230  # the top level present once
    images[2, ..., 1] = 9  # one level
    images[2, ..., 2] = images[2, ..., 2] % 7 + 100  # a few levels
    return images


@pytest.mark.parametrize("size", [8, 20, 32])
def test_equalize_is_pils_equalize_per_channel(size):
    images = _equalize_cases(size, seed=size)
    got = _equalize(to_nchw(images))
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(to_nhwc(got), _pil_each(images, ImageOps.equalize))


def test_equalize_ignores_too_few_pixels_and_clamps_the_top_of_its_table():
    # 8x8: fewer than 255 pixels below the top level, so PIL keeps the channel (step 0); 20x20: step 1;
    # 32x32 with its top level present once: (step // 2 + 1023) // 4 = 256 there, clamped to 255
    small = _equalize_cases(8, seed=8)
    np.testing.assert_array_equal(to_nhwc(_equalize(to_nchw(small))), small)
    mid = _equalize_cases(20, seed=20)
    assert not np.array_equal(to_nhwc(_equalize(to_nchw(mid)))[0], mid[0])
    big = _equalize_cases(32, seed=32)
    channel = _equalize(to_nchw(big))[1, 0]
    assert channel[0, 0] == 255 and (channel[1:] < 255).all()


def _pil_rotation(angle: float, w: int, h: int) -> list[list[float]]:
    """Pillow's ``Image.rotate`` (no expand, centre (w/2, h/2)): the inverse affine map it samples with."""
    a = -math.radians(angle)
    m = [round(math.cos(a), 15), round(math.sin(a), 15), 0.0, round(-math.sin(a), 15), round(math.cos(a), 15), 0.0]
    cx, cy = w / 2.0, h / 2.0
    m[2] = m[0] * -cx + m[1] * -cy + cx
    m[5] = m[3] * -cx + m[4] * -cy + cy
    return [m[:3], m[3:]]


def test_affine_matrices_are_pils_transforms_and_the_identity_elsewhere():
    h, w = 12, 10
    names = ["shear_x", "shear_y", "translate_x", "translate_y", "rotate", "rotate", "identity", "brightness"]
    values = torch.tensor([0.21, -0.17, 0.1, -0.3, 23.0, -11.5, 0.4, 0.6])
    got = _affine_matrices(torch.tensor([OP_INDEX[n] for n in names]), values, h, w)
    assert got.dtype == torch.float64 and got.shape == (8, 2, 3)
    v = [float(x) for x in values]  # the float32 magnitudes, exactly
    expected = [
        [[1, v[0], 0], [0, 1, 0]],
        [[1, 0, 0], [v[1], 1, 0]],
        [[1, 0, v[2] * w], [0, 1, 0]],
        [[1, 0, 0], [0, 1, v[3] * h]],
        _pil_rotation(v[4], w, h),
        _pil_rotation(v[5], w, h),
        [[1, 0, 0], [0, 1, 0]],
        [[1, 0, 0], [0, 1, 0]],
    ]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


AFFINE_CASES = [
    ("translate_x", 0.25),
    ("translate_x", -0.25),
    ("translate_y", 0.2),
    ("translate_y", -0.3),
    ("shear_x", 0.3),
    ("shear_x", -0.17),
    ("shear_y", -0.3),
    ("rotate", 23.0),
    ("rotate", -11.0),
    ("identity", 0.0),
]


def _pil_affine(image: Image.Image, name: str, v: float) -> Image.Image:
    w, h = image.size
    if name == "rotate":
        return image.rotate(v)
    data = {
        "shear_x": (1, v, 0, 0, 1, 0),
        "shear_y": (1, 0, 0, v, 1, 0),
        "translate_x": (1, 0, v * w, 0, 1, 0),
        "translate_y": (1, 0, 0, 0, 1, v * h),
        "identity": (1, 0, 0, 0, 1, 0),
    }[name]
    return image.transform(image.size, Image.AFFINE, data)


def test_warp_samples_the_nearest_pixel_with_fill_0_like_pil():
    images = random_rgb(len(AFFINE_CASES), 12, 10, seed=4, low=1)  # no zero pixel: the fill shows
    ops = torch.tensor([OP_INDEX[n] for n, _ in AFFINE_CASES])
    values = torch.tensor([v for _, v in AFFINE_CASES])
    got = to_nhwc(_warp(to_nchw(images), _affine_matrices(ops, values, 12, 10)))
    expected = np.stack([np.asarray(_pil_affine(Image.fromarray(a), n, v)) for a, (n, v) in zip(images, AFFINE_CASES)])
    np.testing.assert_array_equal(got, expected)
    filled = (got == 0).all(axis=-1)
    np.testing.assert_array_equal(filled[0].sum(axis=0), [0] * 7 + [12] * 3)  # columns 7.. read 10.. (≥ w)
    np.testing.assert_array_equal(filled[1].sum(axis=0), [12] * 2 + [0] * 8)  # columns 0, 1 read < 0
    np.testing.assert_array_equal(filled[2].sum(axis=1), [0] * 10 + [10] * 2)
    np.testing.assert_array_equal(filled[3].sum(axis=1), [10] * 4 + [0] * 8)
    np.testing.assert_array_equal(got[-1], images[-1])


def test_warp_asks_meshgrid_for_its_indexing_so_torch_warns_nothing():
    warn_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # torch gives some warnings once per process only
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            m = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)
            shifted = _warp(torch.ones(1, 3, 4, 5), m)
    finally:
        torch.set_warn_always(warn_always)
    assert shifted[0, :, :, :4].eq(1).all() and shifted[0, :, :, 4].eq(0).all()


def test_the_operations_run_on_their_inputs_device():
    # a CUDA device faked on the host: a GPU run's devices, where a tensor on another device raises
    with FakeTensorMode():
        cuda = torch.device("cuda", 0)
        x = torch.zeros(2, 3, 6, 5, device=cuda)
        for op in (_gray, _smooth, _equalize, _auto_contrast):
            assert op(x).device == cuda
        ops = torch.tensor([OP_INDEX["rotate"], OP_INDEX["shear_x"]], device=cuda)
        m = _affine_matrices(ops, torch.zeros(2, device=cuda), 6, 5)
        assert m.device == cuda and _warp(x, m).device == cuda
        plan = _identity_plan(torch.zeros(2, dtype=torch.int64)).to(cuda)
        assert [t.device for t in (plan.views, plan.ops, plan.values, plan.cutout)] == [cuda] * 4
        assert rand_augment(x, plan).device == cuda
        assert StrongAugment(MEAN, STD, cuda).from_normalized(x, plan).device == cuda


def test_from_normalized_recovers_the_rounded_pixels_clipped_to_0_255():
    pixels = torch.tensor([0.0, 1.0, 17.0, 128.0, 200.0, 254.0, 255.0, -3.0, 255.6, 258.0, 300.0, 99.4])
    pixels = pixels.view(1, 1, 3, 4).expand(2, 3, 3, 4)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    normalized = (pixels / 255.0 - mean) / std
    got = StrongAugment(MEAN, STD, torch.device("cpu")).from_normalized(normalized, _identity_plan(torch.zeros(2)))
    kept = torch.tensor([0.0, 1.0, 17.0, 128.0, 200.0, 254.0, 255.0, 0.0, 255.0, 255.0, 255.0, 99.0])
    expected = (kept.view(1, 1, 3, 4) / 255.0 - mean) / std
    torch.testing.assert_close(got, expected.expand(2, 3, 3, 4), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- the plan of an epoch


def test_strong_generator_seeds_from_the_seed_sequence_of_seed_epoch_and_stream_1():
    # SeedSequence([seed, epoch, 1]).generate_state(1, uint64)[0], its top bit cleared
    assert strong_generator(0, 0).initial_seed() == 8649202198168436674
    assert strong_generator(3, 1).initial_seed() == 14964165266733655597 - 2**63
    assert strong_generator(7, 5).initial_seed() == 12176184755866622661 - 2**63
    assert strong_generator(5, 5).initial_seed() == 2455563696501805745
    for seed, epoch in ((0, 0), (3, 1), (2, 9)):
        state = np.random.SeedSequence([seed, epoch, 1]).generate_state(1, dtype=np.uint64)[0]
        assert strong_generator(seed, epoch).initial_seed() == int(state) % 2**63


def test_strong_generator_refuses_a_negative_seed_or_epoch():
    with pytest.raises(UserError) as caught:
        strong_generator(0, -1)
    assert str(caught.value) == "epoch must be a non-negative integer, got -1"
    with pytest.raises(UserError) as caught:
        strong_generator(-2, 0)
    assert str(caught.value) == "seed must be a non-negative integer, got -2"


def _reference_plan(initial_seed: int, n: int, *, flip: bool) -> dict[str, np.ndarray]:
    """The documented draws: crop rows, crop columns, flips, operations, their uniforms, Cutout's three."""
    g = torch.Generator().manual_seed(initial_seed)
    dy = torch.randint(0, 9, (n,), generator=g).numpy()
    dx = torch.randint(0, 9, (n,), generator=g).numpy()
    flips = torch.randint(0, 2, (n,), generator=g).numpy() * int(flip)
    ops = torch.randint(0, 14, (n, 2), generator=g).numpy()
    u = torch.rand((n, 2), generator=g, dtype=torch.float64).numpy()
    cut = torch.rand((n, 3), generator=g, dtype=torch.float64).numpy()
    # OPS is pinned to the published table in test_published_constants.py
    low = np.array([lo for _, lo, _ in OPS])[ops]
    high = np.array([hi for _, _, hi in OPS])[ops]
    cut[:, 0] *= 0.5
    return {
        "views": (dy * 9 + dx) * 2 + flips,
        "ops": ops,
        "values": (low + (high - low) * u).astype(np.float32),
        "cutout": cut.astype(np.float32),
    }


@pytest.mark.parametrize("flip", [True, False])
def test_strong_plan_draws_in_the_documented_order(flip):
    n = 400
    plan = strong_plan(3, 1, n, flip=flip, offsets=9)
    expected = _reference_plan(14964165266733655597 - 2**63, n, flip=flip)
    assert plan.views.dtype == plan.ops.dtype == torch.int64
    assert plan.values.dtype == plan.cutout.dtype == torch.float32
    assert plan.cutout.shape == (n, 3) and plan.values.shape == plan.ops.shape == (n, 2)
    for field, want in expected.items():
        np.testing.assert_array_equal(getattr(plan, field).numpy(), want, err_msg=field)
    assert (plan.views % 2 == 0).all() != flip
    assert set(plan.ops.flatten().tolist()) == set(range(14))


def test_strong_plan_shards_the_padded_positions_across_ranks():
    whole = strong_plan(4, 2, 5, flip=True, offsets=9)
    assert len(whole.views) == 5
    default = strong_plan(4, 2, 5, flip=True, offsets=9, rank=0, world_size=1)
    for field in ("views", "ops", "values", "cutout"):
        assert torch.equal(getattr(whole, field), getattr(default, field))
    for rank, rows in ((0, [0, 2, 4]), (1, [1, 3, 0])):
        shard = strong_plan(4, 2, 5, flip=True, offsets=9, rank=rank, world_size=2)
        for field in ("views", "ops", "values", "cutout"):
            assert torch.equal(getattr(shard, field), getattr(whole, field)[rows])


# ----------------------------------------------------------------------------- the device loader


def _split(n: int = 10, h: int = 8, w: int = 12) -> ArraySplit:
    return ArraySplit(random_rgb(n, h, w, seed=5), np.arange(n) % 3)


def _loader(**kw) -> DeviceLoader:
    args = dict(device="cpu", mean=MEAN, std=STD, train=True, flip=True, seed=3, strong=True)
    return DeviceLoader(_split(), 4, **(args | kw))


def _crops(split: ArraySplit, indices, dys, dxs, flips) -> np.ndarray:
    """RandomCrop(padding=4) at (dy, dx) then the horizontal flip, read off the padded arrays."""
    padded = np.pad(split.x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    h, w = split.x.shape[1:3]
    out = []
    for i, dy, dx, f in zip(indices, dys, dxs, flips):
        crop = padded[i, dy : dy + h, dx : dx + w]
        out.append(crop[:, ::-1] if f else crop)
    return np.stack(out)


def _decode(views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return views // 2 // 9, views // 2 % 9, views % 2


@pytest.mark.parametrize("channels_last", [False, True])
def test_render_strong_crops_at_the_plans_views_then_augments(channels_last):
    loader = _loader(channels_last=channels_last)
    indices = torch.tensor([0, 7, 3, 9])
    dys, dxs, flips = [0, 8, 3, 4], [0, 8, 5, 4], [0, 1, 1, 0]
    views = torch.tensor([(dy * 9 + dx) * 2 + f for dy, dx, f in zip(dys, dxs, flips)])
    crops = _crops(_split(), indices.tolist(), dys, dxs, flips)
    got = loader.render_strong(indices, _identity_plan(views))
    assert got.shape == (4, 3, 8, 12)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert got.is_contiguous(memory_format=layout) and not got.is_contiguous(
        memory_format=torch.contiguous_format if channels_last else torch.channels_last
    )
    mean, std = np.array(MEAN, dtype=np.float32), np.array(STD, dtype=np.float32)
    np.testing.assert_allclose(to_nhwc(got), (crops / np.float32(255.0) - mean) / std, rtol=0, atol=1e-6)
    ops = torch.tensor([[OP_INDEX["rotate"], OP_INDEX["solarize"]]] * 4)
    values = torch.tensor([[17.0, 128.0], [-9.0, 40.0], [3.0, 200.0], [29.0, 0.0]])
    plan = StrongPlan(views, ops, values, torch.tensor([[0.3, 0.2, 0.7]] * 4))
    augmented = StrongAugment(MEAN, STD, torch.device("cpu")).from_pixels(to_nchw(crops.copy()), plan)
    assert torch.equal(loader.render_strong(indices, plan), augmented)


def test_the_loaders_strong_plan_is_that_of_its_seed_flip_and_shard():
    for flip in (True, False):
        loader = DeviceLoader(
            _split(7), 2, device="cpu", mean=MEAN, std=STD, train=True, flip=flip, seed=5, rank=1, world_size=2
        )
        got = loader.strong_plan(2)
        want = strong_plan(5, 2, 7, flip=flip, offsets=9, rank=1, world_size=2)
        assert len(got.views) == 4
        for field in ("views", "ops", "values", "cutout"):
            assert torch.equal(getattr(got, field), getattr(want, field)), field
        assert (got.views % 2 == 1).any() == flip


def test_strong_batches_render_the_epochs_plan_from_the_resumed_position():
    loader = _loader()
    loader.set_epoch(1, start_batch=1)
    batches = list(loader)
    assert [len(b.indices) for b in batches] == [4, 2]
    order, views = loader.epoch_plan(1)
    plan = loader.strong_plan(1)
    for k, batch in enumerate(batches):
        rows = slice(4 + 4 * k, 8 + 4 * k)
        assert torch.equal(batch.indices, order[rows]) and torch.equal(batch.views, views[rows])
        assert torch.equal(batch.strong, loader.render_strong(order[rows], plan[rows]))
        crops = _crops(_split(), order[rows].tolist(), *[[int(v) for v in t] for t in _decode(plan.views[rows])])
        augmented = StrongAugment(MEAN, STD, torch.device("cpu")).from_pixels(to_nchw(crops.copy()), plan[rows])
        assert torch.equal(batch.strong, augmented)


def test_set_epoch_refuses_a_negative_start_batch():
    with pytest.raises(UserError) as caught:
        _loader().set_epoch(0, start_batch=-1)
    assert str(caught.value) == "start_batch must be a non-negative integer, got -1"


@pytest.mark.parametrize("train", [True, False])
def test_a_loader_on_another_device_yields_every_field_there(train):
    loader = _loader(device="meta", train=train)
    for batch in loader:
        fields = [t for t in batch if t is not None]
        assert len(fields) == (5 if train else 4)
        assert {t.device.type for t in fields} == {"meta"}


# ----------------------------------------------------------------------------- two crops, the CIFAR transform, batches


def test_two_crops_applies_the_transform_twice_to_the_same_image():
    calls = []

    def transform(image):
        calls.append(image)
        return len(calls) * 10 + image

    assert TwoCrops(transform)(3) == (13, 23)
    assert calls == [3, 3]


def test_normalization_reads_the_normalize_step_of_a_compose():
    compose = T.Compose([T.ToTensor(), T.Normalize([0, 0.5, 1], (0.25, 2, 3))])
    stats = normalization(compose)
    assert stats == ((0.0, 0.5, 1.0), (0.25, 2.0, 3.0))
    assert all(type(v) is float for part in stats for v in part)
    assert normalization(T.Compose([T.ToTensor()])) is None
    assert normalization(lambda image: image) is None
    assert normalization(None) is None


class _Plain:
    def __init__(self, transform):
        self.transform = transform


def test_with_two_crops_wraps_the_transform_of_the_data_set_or_of_the_one_it_wraps():
    def compose():
        return T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])

    direct = _Plain(compose())
    subset_of = _Plain(compose())
    indexed = ArrayImageDataset(_split(3), compose())
    nested = IndexedDataset(Subset(_Plain(compose()), [0]))
    for dataset, holder in (
        (direct, direct),
        (Subset(subset_of, [0, 1]), subset_of),
        (IndexedDataset(indexed), indexed),
        (nested, nested.base.dataset),
    ):
        original = holder.transform
        assert with_two_crops(dataset, "MLKD") == (MEAN, STD)
        assert isinstance(holder.transform, TwoCrops) and holder.transform.transform is original


@pytest.mark.parametrize("dataset", [[1, 2], _Plain(lambda image: image), IndexedDataset(_Plain(T.ToTensor()))])
def test_with_two_crops_refuses_a_data_set_without_a_normalizing_transform(dataset):
    with pytest.raises(UserError) as caught:
        with_two_crops(dataset, "method 'mlkd'")
    assert str(caught.value) == (
        "method 'mlkd': this data set's training images have no torchvision transform to crop them twice"
    )


def test_the_cifar_transform_pads_4_zero_pixels_then_crops_and_flips():
    train = array_transform(MEAN, STD, train=True, flip=True, size=(8, 12))
    crop, flip, to_tensor, normalize = train.transforms
    assert isinstance(crop, T.RandomCrop) and isinstance(flip, T.RandomHorizontalFlip)
    assert isinstance(to_tensor, T.ToTensor) and isinstance(normalize, T.Normalize)
    assert (crop.size, crop.padding, crop.fill, crop.padding_mode) == ((8, 12), 4, 0, "constant")
    assert [type(s) for s in array_transform(MEAN, STD, train=True, flip=False).transforms] == [
        T.RandomCrop,
        T.ToTensor,
        T.Normalize,
    ]
    split = _split(1)
    image = Image.fromarray(split.x[0])
    plain = array_transform(MEAN, STD, train=True, flip=False, size=(8, 12))
    mean, std = np.array(MEAN, dtype=np.float32), np.array(STD, dtype=np.float32)
    for seed in range(6):
        torch.manual_seed(seed)
        got = plain(image)
        torch.manual_seed(seed)
        dy, dx = (int(torch.randint(0, 9, (1,))) for _ in range(2))  # RandomCrop's draws: top, then left
        crop = _crops(split, [0], [dy], [dx], [0])[0]
        np.testing.assert_allclose(got.permute(1, 2, 0).numpy(), (crop / np.float32(255) - mean) / std, atol=1e-6)


def test_concat_batches_joins_each_field_and_keeps_the_missing_ones_missing():
    def batch(start):
        images = torch.arange(start, start + 2, dtype=torch.float32).view(2, 1, 1, 1).expand(2, 3, 2, 2)
        return Batch(images, torch.tensor([start, start + 1]), torch.tensor([7 + start, 8 + start]), None)

    joined = concat_batches([batch(0), batch(2), batch(4)])
    assert joined.views is None and joined.strong is None
    assert joined.targets.tolist() == [0, 1, 2, 3, 4, 5] and joined.indices.tolist() == [7, 8, 9, 10, 11, 12]
    assert joined.images[:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    alone = concat_batches([batch(0)])
    assert alone.targets.tolist() == [0, 1] and alone.views is None
