"""Image files (their bytes) to RGB ``uint8`` tensors on the training device, a batch at a time.

JPEGs are decoded together in one call on the device (nvJPEG on CUDA, libjpeg-turbo on the CPU), by
TorchCodec's ``decode_jpeg`` or torchvision's (``data.decoder``). Everything the batched call cannot
take falls back, file by file, to the CPU and then moves to the device:

* files that are not JPEGs whatever their name (ImageNet has PNGs named ``.JPEG``; the first bytes
  decide): the library's ``decode_image`` (PNG, GIF, WebP), else PIL (BMP, TIFF, ...);
* four-component JPEGs (CMYK/YCCK; ImageNet has a few), which nvJPEG does not convert, and any JPEG
  the device decoder refuses: the library's CPU ``decode_jpeg``, else PIL.

Grayscale images come out as three equal channels, alpha is dropped: what ``PIL.Image.convert("RGB")``
gives. EXIF orientation is not applied (neither does PIL's ``open``). A file no decoder reads comes back
as the reason why, for the loader to name it.

Decoders: TorchCodec (``pip install torchcodec``, 0.12 or later for torch >= 2.11) decodes images with
the libjpeg-turbo, libpng, libwebp and nvJPEG it bundles; FFmpeg is needed only for its video and audio
decoders. torchvision deprecated its ``decode_jpeg``/``decode_image`` in 0.29 in favour of TorchCodec
but still ships them; ``auto`` takes TorchCodec when it imports and torchvision otherwise.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

import numpy as np
import torch

from rld.errors import UserError

DECODERS = ("auto", "torchvision", "torchcodec")
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # start-of-frame markers


@cache
def torchcodec_available() -> bool:
    """Whether TorchCodec's image decoders import (its wheel must match the installed torch)."""
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception:  # absent, or built for another torch (an ImportError or an OSError of its library)
        return False
    return True


def resolve_decoder(name: str) -> str:
    """``"torchcodec"`` or ``"torchvision"`` for ``data.decoder`` ``name`` (``auto``: TorchCodec when it
    imports). UserError for an unknown name or ``torchcodec`` without the package."""
    if name not in DECODERS:
        raise UserError(f"unknown data.decoder {name!r}: choose one of {', '.join(DECODERS)}")
    if name == "torchvision":
        return name
    if torchcodec_available():
        return "torchcodec"
    if name == "torchcodec":
        raise UserError(
            "data.decoder=torchcodec needs the package torchcodec (pip install torchcodec; a version built for "
            "the installed torch), or set data.decoder=auto to use torchvision's decoder"
        )
    return "torchvision"


@contextmanager
def _quiet() -> Iterator[None]:
    # torchvision 0.29 warns that its decoders are deprecated in favour of TorchCodec; they still work,
    # and data.decoder=auto takes TorchCodec where it is installed.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The image decoding and encoding capabilities of TorchVision")
        yield


def _library(name: str) -> tuple[Callable, Callable]:
    """(decode_jpeg(data or list, device), decode_image(data)) of decoder ``name``, both to RGB."""
    if name == "torchcodec":
        from torchcodec.decoders import decode_image, decode_jpeg

        return (
            lambda data, device: decode_jpeg(data, mode="RGB", device=device),
            lambda data: decode_image(data, mode="RGB"),
        )
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    def jpeg(data, device):
        with _quiet():
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

    def image(data):
        with _quiet():
            return decode_image(data, mode=ImageReadMode.RGB)

    return jpeg, image


def is_jpeg(data: torch.Tensor) -> bool:
    """Whether ``data`` (1-D uint8) starts like a JPEG file (``FF D8 FF``)."""
    return data.numel() >= 3 and data[:3].tolist() == [0xFF, 0xD8, 0xFF]


def jpeg_components(data: torch.Tensor) -> int | None:
    """The number of colour components in a JPEG's frame header (1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK), or
    None where no frame header is found in its first 64 KiB."""
    head = data[: 1 << 16].numpy().tobytes()
    pos = 2
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        length = (head[pos + 2] << 8) | head[pos + 3]
        if marker in _SOF:
            return head[pos + 9] if pos + 9 < len(head) else None
        pos += 2 + length
    return None


def _pil(data: torch.Tensor) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
        rgb = np.asarray(image.convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def _reason(err: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        return "not an image format PIL or the decoder reads"
    text = str(err).strip().splitlines()
    return text[0][:120] if text else type(err).__name__


class ImageDecoder:
    """Decode batches of image files to (3, H, W) uint8 RGB tensors on ``device``.

    ``decoder``: ``auto``, ``torchvision`` or ``torchcodec`` (:func:`resolve_decoder`). Calling it with a
    list of 1-D uint8 CPU tensors (the files' bytes) returns, per file, the image or the reason (a str)
    why no decoder could read it.
    """

    def __init__(self, device: torch.device | str, decoder: str = "auto"):
        self.device = torch.device(device)
        self.name = resolve_decoder(decoder)
        self._jpeg, self._image = _library(self.name)
        self.fallbacks = 0  # files decoded on the CPU instead (not a JPEG, CMYK, refused by the device)

    def _on_cpu(self, data: torch.Tensor, jpeg: bool) -> torch.Tensor | str:
        self.fallbacks += 1
        first: Exception | None = None
        try:
            image = self._jpeg(data, "cpu") if jpeg else self._image(data)
            return image.to(self.device)
        except Exception as err:  # the library's message; PIL may still read it
            first = err
        try:
            return _pil(data).to(self.device)
        except Exception as err:
            return _reason(err if not jpeg else first or err)

    def __call__(self, blobs: list[torch.Tensor]) -> list[torch.Tensor | str]:
        out: list[torch.Tensor | str | None] = [None] * len(blobs)
        batch: list[int] = []
        on_device = self.device.type != "cpu"
        for i, data in enumerate(blobs):
            if data.numel() == 0:
                out[i] = "empty file"
            elif is_jpeg(data) and (not on_device or jpeg_components(data) in (1, 3)):
                batch.append(i)
            else:
                out[i] = self._on_cpu(data, is_jpeg(data))
        if batch:
            try:
                images = self._jpeg([blobs[i] for i in batch], self.device)
            except Exception:  # one file spoils the batched call: file by file, then on the CPU
                images = []
                for i in batch:
                    try:
                        images.append(self._jpeg(blobs[i], self.device))
                    except Exception:
                        images.append(self._on_cpu(blobs[i], True))
            for i, image in zip(batch, images):
                out[i] = image
        return out  # type: ignore[return-value]
