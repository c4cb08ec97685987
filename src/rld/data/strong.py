"""The strong augmentation of MLKD and CRLD, computed on the training device for a whole batch at once.

MLKD (Jin et al., CVPR 2023) trains on two views of every image: the *weak* one of the protocol
(random crop with padding 4 and flip on CIFAR-100, ``RandomResizedCrop`` and flip on ImageNet) and
a *strong* one: an independent draw of the same crop and flip, then a FixMatch-style RandAugment
with Cutout (Jin-Ying/Multi-Level-Logit-Distillation, ``mdistiller/dataset/cifar100.py`` and
``imagenet.py``: ``get_cifar100_train_transform_strong`` builds ``MultipleApply([weak, strong])``
with ``strong = RandomCrop(32, padding=4), RandomHorizontalFlip(), RandAugment(2, 10), ToTensor,
Normalize``). CRLD (Zhang et al., ACM MM 2024) trains on the same two views: its
``mdistiller/dataset/cifar100.py`` (Weijia-Zhang/CRLD, read through its copy scx-822/CRLD-main)
has MLKD's ``MultipleApply``, ``RandAugment``, ``Cutout`` and ``augment_list``, and ``imagenet.py``
the same strong view after ``RandomResizedCrop(224)`` and flip. ``RandAugment(n=2, m=10)``
ignores ``m``: per image it picks 2 of the 14 operations of ``augment_list()`` with replacement,
gives each a magnitude drawn uniformly from the operation's range, then applies ``Cutout`` with a
side of ``U(0, 0.5)`` times the image width, filled with (125, 123, 114):

==============  ===============  ====================================================
operation       magnitude        what it does (as PIL does it, on uint8 pixels)
==============  ===============  ====================================================
AutoContrast    (unused)         stretch each channel to 0..255
Brightness      0.05 .. 0.95     blend with black
Color           0.05 .. 0.95     blend with the grey image (ITU-R 601-2 luma)
Contrast        0.05 .. 0.95     blend with the image's mean grey level
Equalize        (unused)         histogram equalisation of each channel
Identity        (unused)         nothing
Posterize       4 .. 8           keep int(v) bits
Rotate          -30 .. 30        rotate by v degrees about the centre (nearest, fill 0)
Sharpness       0.05 .. 0.95     blend with the 3x3 smoothed image (border kept)
ShearX/ShearY   -0.3 .. 0.3      affine shear (nearest, fill 0)
Solarize        0 .. 256         invert the pixels >= v
TranslateX/Y    -0.3 .. 0.3      shift by v times the width / height (fill 0)
==============  ===============  ====================================================

Every random number of an epoch's strong views comes from one generator seeded by ``(seed, epoch)``
and a stream number of its own (:func:`strong_plan`), drawn for every position of the epoch's order
before the first batch: the strong view of a sample is a pure function of (seed, epoch, position),
so an exact resume, inside an epoch too, sees the same images; the weak plan is untouched (a run
with the strong view sees the same weak batches as one without). The operations run on the device
for the whole batch: each is computed for every image and kept where the image drew it, so a step
never reads the host. Pixels are rounded to integers after each operation, as PIL's uint8 images are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rld.data.sampling import check_seed, pad_to, padded_length
from rld.data.views import encode_views

# (name, low, high) in the published order (augment_list of mdistiller/dataset/cifar100.py)
OPS = (
    ("auto_contrast", 0.0, 1.0),
    ("brightness", 0.05, 0.95),
    ("color", 0.05, 0.95),
    ("contrast", 0.05, 0.95),
    ("equalize", 0.0, 1.0),
    ("identity", 0.0, 1.0),
    ("posterize", 4.0, 8.0),
    ("rotate", -30.0, 30.0),
    ("sharpness", 0.05, 0.95),
    ("shear_x", -0.3, 0.3),
    ("shear_y", -0.3, 0.3),
    ("solarize", 0.0, 256.0),
    ("translate_x", -0.3, 0.3),
    ("translate_y", -0.3, 0.3),
)
OP_INDEX = {name: i for i, (name, _, _) in enumerate(OPS)}
NUM_OPS = 2  # RandAugment(2, 10): operations per image
CUTOUT_MAX = 0.5  # Cutout's side: U(0, 0.5) times the width
CUTOUT_FILL = (125.0, 123.0, 114.0)
STRONG_STREAM = 1  # the strong views draw from (seed, epoch, 1); the weak plan from (seed, epoch)
_AFFINE = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


@dataclass(frozen=True)
class StrongPlan:
    """The strong views of some positions of an epoch, one row per position.

    views: (M,) int64 crop offsets and flips as view ids (:mod:`rld.data.device_loader`), used by the
        device-resident loader (the DataLoader pipeline crops in its workers instead).
    ops: (M, 2) int64 indices into :data:`OPS`; values: (M, 2) float32 their magnitudes;
    cutout: (M, 3) float32: the side as a fraction of the width, and two U(0, 1) draws for its corner.
    """

    views: torch.Tensor
    ops: torch.Tensor
    values: torch.Tensor
    cutout: torch.Tensor

    def __getitem__(self, rows) -> StrongPlan:
        return StrongPlan(self.views[rows], self.ops[rows], self.values[rows], self.cutout[rows])

    def to(self, device: torch.device) -> StrongPlan:
        return StrongPlan(*(t.to(device) for t in (self.views, self.ops, self.values, self.cutout)))


def strong_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator depending only on ``(seed, epoch)``, unrelated to the weak plan's
    (:func:`rld.data.sampling.epoch_generator`)."""
    state = np.random.SeedSequence([check_seed(seed), check_seed(epoch, "epoch"), STRONG_STREAM])
    return torch.Generator().manual_seed(int(state.generate_state(1, dtype=np.uint64)[0]) & (2**63 - 1))


def strong_plan(
    seed: int, epoch: int, n: int, *, flip: bool, offsets: int, rank: int = 0, world_size: int = 1
) -> StrongPlan:
    """This rank's strong views of epoch ``epoch`` over the ``n`` positions of its order.

    Drawn in this order for all ``n`` positions: crop rows, crop columns and flips in ``0 ..
    offsets - 1`` (flips zeroed when ``flip`` is False), the operation indices, their uniform
    draws, then Cutout's three draws. Padded and sharded across ranks like the order
    (:mod:`rld.data.sampling`): row k belongs to the k-th position of this rank's order.
    """
    g = strong_generator(seed, epoch)
    dy = torch.randint(0, offsets, (n,), generator=g)
    dx = torch.randint(0, offsets, (n,), generator=g)
    flips = torch.randint(0, 2, (n,), generator=g)
    if not flip:
        flips.zero_()
    ops = torch.randint(0, len(OPS), (n, NUM_OPS), generator=g)
    u = torch.rand((n, NUM_OPS), generator=g, dtype=torch.float64)
    low = torch.tensor([lo for _, lo, _ in OPS], dtype=torch.float64)[ops]
    high = torch.tensor([hi for _, _, hi in OPS], dtype=torch.float64)[ops]
    values = (low + (high - low) * u).float()
    cut = torch.rand((n, 3), generator=g, dtype=torch.float64)
    cut[:, 0] *= CUTOUT_MAX
    plan = StrongPlan(encode_views(dy, dx, flips), ops, values, cut.float())
    rows = pad_to(torch.arange(n), padded_length(n, world_size))[rank::world_size]
    return plan[rows]


# ----------------------------------------------------------------------------- the operations


def _gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("L")``: (B, 1, H, W), L = (299 R + 587 G + 114 B) / 1000, rounded."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True).round()


def _blend(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance (``Image.blend``): degenerate + factor·(x − degenerate), clipped to 0..255 and
    truncated."""
    return (degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp(0, 255).floor()


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3x3, centre 5, the others 1, /13), the one-pixel border kept (an image
    under 3 pixels high or wide is all border: kept whole, as PIL keeps it)."""
    if x.shape[-2] < 3 or x.shape[-1] < 3:
        return x.clone()
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(3, 1, 3, 3)
    inner = F.conv2d(x, kernel, groups=3).round()
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = inner
    return out


def _auto_contrast(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.autocontrast per channel: int(i * scale + offset) in double precision, with
    scale = 255 / (hi - lo) a true division (``255.0 / tensor`` multiplies by a reciprocal; either
    that or single precision puts some levels one below PIL's, e.g. the brightest at 254)."""
    x64 = x.double()
    lo = x64.amin(dim=(2, 3), keepdim=True)
    hi = x64.amax(dim=(2, 3), keepdim=True)
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp_min(1.0)
    stretched = (x64 * scale + (-lo * scale)).trunc().clamp(0, 255)
    return torch.where(hi > lo, stretched, x64).to(x.dtype)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.equalize`` per channel: the look-up table of its cumulative histogram."""
    b, c, h, w = x.shape
    flat = x.reshape(b * c, h * w).long()
    hist = torch.zeros(b * c, 256, dtype=torch.int64, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    last = 255 - torch.flip(hist > 0, dims=[1]).int().argmax(dim=1)  # highest level present
    step = (h * w - hist.gather(1, last[:, None])) // 255  # (BC, 1)
    before = hist.cumsum(dim=1) - hist  # pixels below each level
    lut = ((step // 2 + before) // step.clamp_min(1)).clamp(max=255)
    out = torch.where(step > 0, lut.gather(1, flat), flat)
    return out.reshape(b, c, h, w).to(x.dtype)


def _affine_matrices(ops: torch.Tensor, values: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, 2, 3): for each image, the map from an output pixel's centre to the input point it reads
    (PIL's ``Image.transform(AFFINE, (a, b, c, d, e, f))``); the identity for non-affine operations."""
    b = ops.shape[0]
    m = torch.zeros(b, 2, 3, dtype=torch.float64, device=ops.device)
    m[:, 0, 0] = m[:, 1, 1] = 1.0
    v = values.double()
    shear_x, shear_y = ops == OP_INDEX["shear_x"], ops == OP_INDEX["shear_y"]
    m[:, 0, 1] = torch.where(shear_x, v, 0.0)
    m[:, 1, 0] = torch.where(shear_y, v, 0.0)
    m[:, 0, 2] = torch.where(ops == OP_INDEX["translate_x"], v * w, 0.0)
    m[:, 1, 2] = torch.where(ops == OP_INDEX["translate_y"], v * h, 0.0)
    # Image.rotate(v): angle −v in radians, about (w/2, h/2)
    rot = ops == OP_INDEX["rotate"]
    phi = -v * math.pi / 180.0
    cos, sin = phi.cos(), phi.sin()
    cx, cy = w / 2.0, h / 2.0
    rotation = torch.stack(
        [
            torch.stack([cos, sin, cos * -cx + sin * -cy + cx], dim=1),
            torch.stack([-sin, cos, -sin * -cx + cos * -cy + cy], dim=1),
        ],
        dim=1,
    )
    return torch.where(rot[:, None, None], rotation, m)


def _warp(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour affine warp with fill 0: output (x, y) reads input ⌊m·(x + ½, y + ½, 1)⌋."""
    b, c, h, w = x.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64, device=x.device) + 0.5,
        torch.arange(w, dtype=torch.float64, device=x.device) + 0.5,
        indexing="ij",
    )
    grid = torch.stack([xs, ys, torch.ones_like(xs)], dim=0).reshape(3, -1)  # (3, HW)
    src = (m @ grid).floor().long()  # (B, 2, HW)
    sx, sy = src[:, 0], src[:, 1]
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    index = (sy.clamp(0, h - 1) * w + sx.clamp(0, w - 1))[:, None, :].expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, index)
    return torch.where(inside[:, None, :], out, torch.zeros_like(out)).reshape(b, c, h, w)


def _apply_op(x: torch.Tensor, ops: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """One RandAugment slot: image i gets operation ``ops[i]`` with magnitude ``values[i]``."""

    def pick(name: str, result: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        return torch.where((ops == OP_INDEX[name]).view(-1, 1, 1, 1), result, current)

    v = values.to(x.dtype)
    out = _warp(x, _affine_matrices(ops, values, x.shape[2], x.shape[3]))  # identity where not affine
    out = pick("auto_contrast", _auto_contrast(x), out)
    out = pick("brightness", _blend(x, torch.zeros_like(x), v), out)
    out = pick("color", _blend(x, _gray(x).expand_as(x), v), out)
    mean_gray = (_gray(x).mean(dim=(2, 3), keepdim=True) + 0.5).floor()  # PIL: int(mean + 0.5)
    out = pick("contrast", _blend(x, mean_gray.expand_as(x), v), out)
    out = pick("equalize", _equalize(x), out)
    out = pick("identity", x, out)
    shift = 2.0 ** (8 - v.floor().clamp(1, 8))  # Posterize: keep int(v) bits
    out = pick("posterize", (x / shift.view(-1, 1, 1, 1)).floor() * shift.view(-1, 1, 1, 1), out)
    out = pick("sharpness", _blend(x, _smooth(x), v), out)
    return pick("solarize", torch.where(x >= v.view(-1, 1, 1, 1), 255.0 - x, x), out)


def _cutout(x: torch.Tensor, cutout: torch.Tensor) -> torch.Tensor:
    """Cutout as published (CutoutAbs): side s = frac·W pixels; the corner from ``np.random.uniform(W)``,
    i.e. a draw between 1 and W (numpy's low = W, high = 1), minus s/2, truncated and at least 0;
    the filled rectangle spans the corner to min(W, corner + s) inclusive (PIL's rectangle), and
    nothing when s = 0."""
    b, _, h, w = x.shape
    frac, ux, uy = cutout[:, 0].double(), cutout[:, 1].double(), cutout[:, 2].double()
    side = frac * w
    x0 = (w + (1 - w) * ux - side / 2).clamp_min(0).floor()
    y0 = (h + (1 - h) * uy - side / 2).clamp_min(0).floor()
    x1 = torch.minimum(torch.full_like(x0, w), x0 + side).floor()
    y1 = torch.minimum(torch.full_like(y0, h), y0 + side).floor()
    cols = torch.arange(w, device=x.device, dtype=torch.float64)
    rows = torch.arange(h, device=x.device, dtype=torch.float64)
    in_x = (cols >= x0[:, None]) & (cols <= x1[:, None])  # (B, W)
    in_y = (rows >= y0[:, None]) & (rows <= y1[:, None])  # (B, H)
    mask = (in_y[:, :, None] & in_x[:, None, :] & (side > 0)[:, None, None])[:, None]  # (B, 1, H, W)
    fill = torch.tensor(CUTOUT_FILL, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return torch.where(mask, fill, x)


def rand_augment(pixels: torch.Tensor, plan: StrongPlan) -> torch.Tensor:
    """RandAugment(2, 10) then Cutout of ``pixels`` (B, 3, H, W), integer values in 0..255 (float),
    with the operations, magnitudes and Cutout draws of ``plan`` (B rows); the same shape back."""
    x = pixels.float()
    for slot in range(NUM_OPS):
        x = _apply_op(x, plan.ops[:, slot], plan.values[:, slot])
    return _cutout(x, plan.cutout)


class StrongAugment:
    """The strong view of a batch for a loader: ``mean``/``std`` are the loader's normalisation."""

    def __init__(self, mean, std, device: torch.device):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def from_pixels(self, pixels: torch.Tensor, plan: StrongPlan) -> torch.Tensor:
        """Normalised strong images (B, 3, H, W) float32 of cropped and flipped ``pixels`` in 0..255."""
        return (rand_augment(pixels, plan) / 255.0 - self.mean) / self.std

    def from_normalized(self, images: torch.Tensor, plan: StrongPlan) -> torch.Tensor:
        """The same from normalised images (a DataLoader's ``ToTensor`` + ``Normalize`` output)."""
        pixels = ((images.float() * self.std + self.mean) * 255.0).round().clamp(0, 255)
        return self.from_pixels(pixels, plan)
