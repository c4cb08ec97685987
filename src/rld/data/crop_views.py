"""The ImageNet protocol's augmentation as pure functions of ``(seed, epoch, sample index)``.

Training draws ``RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3))`` and ``RandomHorizontalFlip(0.5)``
by torchvision's rule (``torchvision.transforms.RandomResizedCrop.get_params``), but every random number
comes from a counter-based hash instead of a generator's stream: the view of a sample is the same in any
order, on any rank, after a resume, in another run of the same seed, without a per-epoch table.

The hash (splitmix64's finaliser ``mix``, all arithmetic modulo 2**64, γ = 0x9E3779B97F4A7C15)::

    key(seed, epoch, stream) = mix(mix(mix(seed + γ) ^ (epoch + 2γ)) ^ (stream + 3γ))
    sample(index)            = mix(key ^ mix(index + 4γ))
    u[k]                     = (mix(sample + (k + 1)·γ) >> 11) · 2**-53        in [0, 1), 53 bits

Draw layout of one sample (``stream`` 0 is the training view; MLKD's strong view crops with stream 1):

=========  ==================================================================================
draws      use
=========  ==================================================================================
2t, 2t+1   attempt t = 0..9: area fraction ``scale0 + (scale1 - scale0)·u``, log aspect ratio
           ``log(ratio0) + (log(ratio1) - log(ratio0))·u``; ``w = round(sqrt(A·r))``,
           ``h = round(sqrt(A/r))`` (round half to even, as Python's ``round``); the first attempt
           with ``0 < w <= W`` and ``0 < h <= H`` is taken
20, 21     ``top = floor(u·(H - h + 1))``, ``left = floor(u·(W - w + 1))`` (torchvision's two
           ``randint`` after the accepted attempt)
22         flip when ``u < 0.5``
=========  ==================================================================================

When no attempt fits, torchvision's central crop with the aspect ratio clamped to ``ratio`` is taken
(draws 20 and 21 unused). Every draw is made for every sample whether it is used or not, so a draw's
number never depends on another's value.
"""

from __future__ import annotations

import math

import numpy as np

VERSION = 1
"""The version of the rule below (hash, draw layout, crop rule): stored teacher outputs are keyed by it
(:mod:`rld.fast.key`); a change of the rule that changes any view must bump it."""
SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
ATTEMPTS = 10
DRAWS = 2 * ATTEMPTS + 3  # per sample: the attempts, top, left, flip
TRAIN_STREAM = 0
STRONG_STREAM = 1

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniforms(seed: int, epoch: int, indices, draws: int = DRAWS, stream: int = TRAIN_STREAM) -> np.ndarray:
    """(B, draws) float64 uniforms in [0, 1) of samples ``indices`` (B,), a pure function of
    ``(seed, epoch, stream, index, draw)`` (the hash of this module's docstring)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1).astype(np.uint64)
    with np.errstate(over="ignore"):
        key = _mix(np.array([seed], dtype=np.uint64) + _GAMMA)
        key = _mix(key ^ (np.array([epoch], dtype=np.uint64) + _GAMMA * np.uint64(2)))
        key = _mix(key ^ (np.array([stream], dtype=np.uint64) + _GAMMA * np.uint64(3)))
        sample = _mix(key ^ _mix(idx + _GAMMA * np.uint64(4)))  # (B,)
        counters = np.arange(1, draws + 1, dtype=np.uint64) * _GAMMA  # (draws,)
        bits = _mix(sample[:, None] + counters[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def resized_crop_params(
    u: np.ndarray,
    heights,
    widths,
    scale: tuple[float, float] = SCALE,
    ratio: tuple[float, float] = RATIO,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(top, left, h, w, flip)`` (each (B,) int64) of images ``heights`` x ``widths`` (B,) from their
    uniforms ``u`` (B, DRAWS): torchvision's ``RandomResizedCrop.get_params`` and a flip with p = 0.5."""
    H = np.asarray(heights, dtype=np.int64).reshape(-1)
    W = np.asarray(widths, dtype=np.int64).reshape(-1)
    area = (H * W).astype(np.float64)[:, None]  # (B, 1)
    a = u[:, 0 : 2 * ATTEMPTS : 2]  # (B, 10)
    r = u[:, 1 : 2 * ATTEMPTS : 2]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target = area * (scale[0] + (scale[1] - scale[0]) * a)
    aspect = np.exp(log_lo + (log_hi - log_lo) * r)
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= W[:, None]) & (h > 0) & (h <= H[:, None])
    first = fits.argmax(axis=1)  # the first attempt that fits (0 where none does)
    found = fits.any(axis=1)
    rows = np.arange(len(H))
    h, w = h[rows, first], w[rows, first]
    top = np.floor(u[:, 2 * ATTEMPTS] * (H - h + 1)).astype(np.int64)
    left = np.floor(u[:, 2 * ATTEMPTS + 1] * (W - w + 1)).astype(np.int64)
    if not found.all():  # torchvision's fallback: the central crop, its aspect ratio clamped to ``ratio``
        fh, fw = H.copy(), W.copy()
        in_ratio = W / H
        narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
        fh[narrow] = np.rint(W[narrow] / min(ratio)).astype(np.int64)
        fw[wide] = np.rint(H[wide] * max(ratio)).astype(np.int64)
        h, w = np.where(found, h, fh), np.where(found, w, fw)
        top = np.where(found, top, (H - fh) // 2)
        left = np.where(found, left, (W - fw) // 2)
    flip = (u[:, 2 * ATTEMPTS + 2] < 0.5).astype(np.int64)
    return top, left, h, w, flip


def train_views(
    seed: int, epoch: int, indices, heights, widths, stream: int = TRAIN_STREAM
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(top, left, h, w, flip)`` of samples ``indices`` (B,) of images ``heights`` x ``widths`` in
    epoch ``epoch`` of a run seeded ``seed``: :func:`uniforms` then :func:`resized_crop_params`."""
    return resized_crop_params(uniforms(seed, epoch, indices, DRAWS, stream), heights, widths)
