"""The device pipeline of image folders: views as a pure function of (seed, epoch, index), drawn as
torchvision's RandomResizedCrop draws them, pixels as torchvision computes them for a view, decoding
of the files real ImageNet holds, unreadable files, sharding, and training runs."""

from __future__ import annotations

import csv
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms import functional as TF
from torchvision.transforms.v2 import functional as F2

from conftest import assert_user_error
from rld.cli import main
from rld.config import resolve
from rld.data import build_data
from rld.data.build import eval_preprocess, image_pipeline
from rld.data.crop_views import train_views, uniforms
from rld.data.decode import ImageDecoder, jpeg_components, torchcodec_available
from rld.data.device_folder import DeviceFolderLoader
from rld.data.sampling import EpochSampler
from rld.data.sources import IMAGENET_MEAN, IMAGENET_STD
from rld.data.torch_loader import IndexedDataset, TorchLoader
from rld.errors import UserError

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
NO_TORCHCODEC = pytest.mark.skipif(not torchcodec_available(), reason="torchcodec is not installed")
DECODERS = ["torchvision", pytest.param("torchcodec", marks=NO_TORCHCODEC)]


def _photo(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """A smooth random RGB image (JPEG compresses it like a photo, not like noise)."""
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


def _folder(root, classes=("cat", "dog"), train=6, val=2, seed=0):
    """ROOT/train/<class>/*.JPEG and ROOT/val/<class>/*.JPEG of assorted sizes."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                h, w = int(rng.integers(24, 72)), int(rng.integers(24, 72))
                _photo(rng, h, w).save(root / split / c / f"{i}.JPEG", quality=90)
    return root


def _loader(root, batch_size=4, **kw) -> DeviceFolderLoader:
    files = sorted((root / "train").rglob("*.JPEG"))
    labels = [0 if f.parent.name == "cat" else 1 for f in files]
    kw = {"train": True, "device": "cpu", "seed": 5, "num_workers": 0, "image_size": 32, **kw}
    return DeviceFolderLoader([str(f) for f in files], labels, batch_size, **kw)


def _by_index(batches) -> dict[int, torch.Tensor]:
    return {int(i): image for b in batches for i, image in zip(b.indices, b.images)}


def _epoch(loader, epoch, start=0):
    loader.set_epoch(epoch, start)
    return list(loader)


# ----------------------------------------------------------------------------- deterministic views


def test_a_view_is_a_pure_function_of_seed_epoch_and_index():
    u = uniforms(3, 7, np.arange(100))
    assert u.shape == (100, 23) and (u >= 0).all() and (u < 1).all()
    assert np.array_equal(uniforms(3, 7, [42, 5])[0], u[42])  # whatever the batch holds
    others = (uniforms(4, 7, range(100)), uniforms(3, 8, range(100)), uniforms(3, 7, range(100), 23, 1))
    assert all((other != u).all() for other in others)  # another seed, epoch or stream: other draws
    a = train_views(0, 2, [9, 1, 7], [375, 60, 500], [500, 80, 333])
    b = train_views(0, 2, [7, 9], [500, 375], [333, 500])
    assert [int(x[0]) for x in a] == [int(x[1]) for x in b] and [int(x[2]) for x in a] == [int(x[0]) for x in b]
    # no attempt can fit: torchvision's central crop with the aspect ratio clamped to [3/4, 4/3]
    torch.manual_seed(0)
    for shape in ((2, 300), (300, 2)):
        want = RandomResizedCrop.get_params(torch.empty(1, *shape), [0.08, 1.0], [3 / 4, 4 / 3])
        got = train_views(0, 0, np.arange(5), [shape[0]] * 5, [shape[1]] * 5)[:4]
        assert all(tuple(int(v[k]) for v in got) == want for k in range(5)), (shape, want)


def test_same_views_in_any_order_on_any_rank_and_after_a_resume(tmp_path):
    root = _folder(tmp_path)
    loader = _loader(root)
    whole = _epoch(loader, 3)
    assert [len(b.indices) for b in whole] == [4, 4, 4] and loader.epoch == 3
    assert torch.equal(torch.cat([b.indices for b in whole]), EpochSampler(12, shuffle=True, seed=5).order(3))
    views = _by_index(whole)
    again = _epoch(loader, 3)
    assert all(torch.equal(a.images, b.images) for a, b in zip(whole, again))
    # a resume inside the epoch: exactly the tail of the uninterrupted epoch
    tail = _epoch(loader, 3, start=1)
    assert len(tail) == 2 and all(torch.equal(a.images, b.images) for a, b in zip(whole[1:], tail))
    assert all(torch.equal(a.indices, b.indices) for a, b in zip(whole[1:], tail))
    # another batch size (another order of the work): the same view of every sample
    assert all(torch.equal(views[i], image) for i, image in _by_index(_epoch(_loader(root, 5), 3)).items())
    # ranks: rank r of 3 takes the positions TorchLoader's sampler gives it, with the same views
    for rank in range(3):
        shard = _epoch(_loader(root, rank=rank, world_size=3), 3)
        mine = torch.cat([b.indices for b in shard])
        pil = TorchLoader(
            IndexedDataset(_Blank(12)), 4, train=True, device="cpu", seed=5, num_workers=0, rank=rank, world_size=3
        )
        pil.set_epoch(3)
        assert torch.equal(mine, torch.cat([b.indices for b in pil]))
        assert all(torch.equal(views[i], image) for i, image in _by_index(shard).items())
    # another epoch: other views; workers give the same batches as the main process
    assert not torch.equal(_by_index(_epoch(loader, 4))[0], views[0])
    assert all(torch.equal(a.images, b.images) for a, b in zip(whole, _epoch(_loader(root, num_workers=2), 3)))


class _Blank(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.zeros(3, 2, 2), 0


# ----------------------------------------------------------------------------- equal to torchvision


@pytest.mark.parametrize("shape", [(375, 500), (500, 333), (48, 48), (30, 200), (200, 30)])
def test_the_views_are_distributed_as_torchvisions_random_resized_crop(shape):
    """Two-sample KS tests of the crops' scale, aspect ratio and position, and the frequency of the
    central fallback, against RandomResizedCrop.get_params (fixed seeds: the outcome never changes; the
    thresholds are p > 1e-3 and 4 standard deviations)."""
    H, W = shape
    n = 4000
    top, left, h, w, flip = train_views(11, 2, np.arange(n), [H] * n, [W] * n)  # the loader's draws
    torch.manual_seed(0)
    image = torch.empty(1, H, W)
    ref = np.array([RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)])
    rt, rl, rh, rw = ref.T
    assert (h > 0).all() and (h <= H).all() and (w > 0).all() and (w <= W).all()
    assert (top >= 0).all() and (top + h <= H).all() and (left >= 0).all() and (left + w <= W).all()
    ours = {"scale": h * w / (H * W), "ratio": np.log(w / h), "top": top / (H - h + 1), "left": left / (W - w + 1)}
    theirs = {"scale": rh * rw / (H * W), "ratio": np.log(rw / rh), "top": rt / (H - rh + 1), "left": rl / (W - rw + 1)}
    for name in ours:
        assert ks_2samp(ours[name], theirs[name]).pvalue > 1e-3, name
    # the central fallback (aspect ratio clamped) when no attempt fits: as often as torchvision's
    fh, fw = (round(W / 0.75), W) if W / H < 0.75 else (H, round(H * 4 / 3)) if W / H > 4 / 3 else (H, W)
    p, q = ((h == fh) & (w == fw)).mean(), ((rh == fh) & (rw == fw)).mean()
    assert abs(p - q) <= 4 * math.sqrt(max(p * (1 - p), q * (1 - q), 1 / n) * 2 / n), (p, q)
    if 30 in shape:
        assert 0.3 < p < 0.6  # the long images exercise the fallback
    assert abs(flip.mean() - 0.5) < 4 * math.sqrt(0.25 / n)


def _decoded(rng, h=375, w=500) -> torch.Tensor:
    return torch.from_numpy(np.array(_photo(rng, h, w))).permute(2, 0, 1).contiguous()


def _normalized(pixels: torch.Tensor) -> torch.Tensor:
    """torchvision's ToDtype(float32, scale=True) + Normalize (ImageNet) of uint8 pixels."""
    return F2.normalize(F2.to_dtype(pixels, torch.float32, scale=True), list(IMAGENET_MEAN), list(IMAGENET_STD))


def test_a_views_pixels_equal_torchvisions_resized_crop_flip_and_normalize(tmp_path):
    """For the view the loader drew, its image equals torchvision's resized_crop + hflip + ToDtype +
    Normalize of the decoded uint8 tensor on the same device (to float rounding, 1e-6); within 1 grey
    level of torchvision's float32 resize (what it computes on a GPU) and of the PIL path (PIL's own
    resampling; 0.2 level on average here)."""
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(375, 500), (500, 333), (40, 60)]):
        (tmp_path / "train" / "x").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_decoded(rng, h, w).permute(1, 2, 0).numpy()).save(tmp_path / "train" / "x" / f"{i}.png")
    files = sorted((tmp_path / "train" / "x").glob("*.png"))
    loader = DeviceFolderLoader([str(f) for f in files], [0] * 3, 3, train=True, device="cpu", seed=2, num_workers=0)
    for epoch in range(4):
        loader.set_epoch(epoch)
        (batch,) = list(loader)
        for image, index in zip(batch.images, batch.indices.tolist()):
            pil = Image.open(files[index]).convert("RGB")
            x = torch.from_numpy(np.array(pil)).permute(2, 0, 1).contiguous()
            top, left, h, w, flip = (int(v[0]) for v in train_views(2, epoch, [index], [x.shape[1]], [x.shape[2]]))
            want = F2.resized_crop(x, top, left, h, w, [224, 224], antialias=True)
            want = F2.horizontal_flip(want) if flip else want
            torch.testing.assert_close(image, _normalized(want), rtol=0, atol=1e-6)
            pixels = image * STD * 255 + MEAN * 255  # back to grey levels
            fp32 = F2.resized_crop(x.float(), top, left, h, w, [224, 224], antialias=True).round()
            fp32 = F2.horizontal_flip(fp32) if flip else fp32
            assert (pixels - fp32).abs().max() < 1.001
            via_pil = TF.resized_crop(pil, top, left, h, w, [224, 224], InterpolationMode.BILINEAR)
            via_pil = TF.hflip(via_pil) if flip else via_pil
            diff = (pixels - torch.from_numpy(np.array(via_pil)).permute(2, 0, 1).float()).abs()
            assert diff.mean() < 0.3 and diff.max() <= 1.001, (diff.mean(), diff.max())


def test_evaluation_resizes_and_centre_crops_as_torchvision(tmp_path):
    """Resize(256) of the shorter side + CenterCrop(224) as torchvision computes them on the decoded
    tensor (to float rounding); within 1 grey level of its float32 resize and of the PIL path."""
    rng = np.random.default_rng(2)
    shapes = [(375, 500), (500, 333), (300, 300), (180, 256)]
    for i, (h, w) in enumerate(shapes):
        (tmp_path / "v").mkdir(exist_ok=True)
        Image.fromarray(_decoded(rng, h, w).permute(1, 2, 0).numpy()).save(tmp_path / "v" / f"{i}.png")
    files = [str(tmp_path / "v" / f"{i}.png") for i in range(4)]
    loader = DeviceFolderLoader(files, [0] * 4, 4, train=False, device="cpu", num_workers=0, channels_last=True)
    (batch,) = list(loader)
    assert batch.images.is_contiguous(memory_format=torch.channels_last) and batch.indices.tolist() == [0, 1, 2, 3]
    reference = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])
    for f, image in zip(files, batch.images):
        pil = Image.open(f).convert("RGB")
        x = torch.from_numpy(np.array(pil)).permute(2, 0, 1).contiguous()
        want = F2.center_crop(F2.resize(x, [256], antialias=True), [224, 224])
        torch.testing.assert_close(image, _normalized(want), rtol=0, atol=1e-6)
        pixels = image * STD * 255 + MEAN * 255
        fp32 = F2.center_crop(F2.resize(x.float(), [256], antialias=True).round(), [224, 224])
        assert (pixels - fp32).abs().max() < 1.001
        assert (pixels - reference(pil).float()).abs().max() < 1.001


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("decoder", DECODERS)
def test_grey_cmyk_and_png_named_jpeg_decode_to_pils_rgb(tmp_path, decoder):
    rng = np.random.default_rng(3)
    photo = _photo(rng, 45, 70)
    cases = {
        "rgb.JPEG": (photo, "JPEG"),
        "grey.JPEG": (photo.convert("L"), "JPEG"),
        "cmyk.JPEG": (photo.convert("CMYK"), "JPEG"),
        "png.JPEG": (photo, "PNG"),  # real ImageNet has PNGs named .JPEG
        "rgba.png": (photo.convert("RGBA"), "PNG"),
        "palette.gif": (photo.convert("P"), "GIF"),
        "bmp.bmp": (photo, "BMP"),  # no library decoder: PIL
    }
    blobs = []
    for name, (image, fmt) in cases.items():
        image.save(tmp_path / name, fmt)
        blobs.append(torch.frombuffer(bytearray((tmp_path / name).read_bytes()), dtype=torch.uint8))
    assert [jpeg_components(b) for b in blobs[:3]] == [3, 1, 4]
    dec = ImageDecoder("cpu", decoder)
    assert dec.name == decoder
    for name, got in zip(cases, dec(blobs)):
        want = torch.from_numpy(np.array(Image.open(tmp_path / name).convert("RGB"))).permute(2, 0, 1)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.uint8 and got.shape == want.shape, name
        # the same libjpeg-turbo: equal here; other builds may round the colour conversion differently
        assert (got.int() - want.int()).abs().max() <= (2 if name.endswith("JPEG") else 0), name
    assert dec.fallbacks == 4  # the PNG, the RGBA PNG, the GIF and the BMP (on the CPU, JPEGs need none)
    assert isinstance(dec([torch.frombuffer(bytearray(b"not an image"), dtype=torch.uint8)])[0], str)


def test_on_a_gpu_cmyk_goes_to_the_cpu_and_a_jpeg_the_device_refuses_falls_back(tmp_path):
    """The routing of a CUDA device, with the device decoder stood in for (no GPU here): grey and RGB
    JPEGs go to one batched device call; CMYK goes to the CPU before it; when the batched call fails,
    the files are tried one by one and the one refused goes to the CPU; a PNG never reaches it."""
    rng = np.random.default_rng(4)
    photo = _photo(rng, 30, 40)
    blobs = {}
    files = {
        "rgb": (photo, "JPEG"),
        "grey": (photo.convert("L"), "JPEG"),
        "cmyk": (photo.convert("CMYK"), "JPEG"),
        "refused": (photo, "JPEG"),
        "png": (photo, "PNG"),
    }
    for name, (image, fmt) in files.items():
        image.save(tmp_path / name, fmt, quality=70 if name == "refused" else 90)
        blobs[name] = torch.frombuffer(bytearray((tmp_path / name).read_bytes()), dtype=torch.uint8)
    dec = ImageDecoder("cpu", "torchvision")
    real, calls = dec._jpeg, []

    def device_jpeg(data, device):
        names = [n for x in (data if isinstance(data, list) else [data]) for n, b in blobs.items() if b is x]
        calls.append((str(device), names))
        if str(device) != "cpu" and "refused" in names:
            raise RuntimeError("nvJPEG refuses it")
        return real(data, "cpu")

    dec._jpeg, dec.device = device_jpeg, torch.device("meta")  # meta: stands for the GPU
    out = dec(list(blobs.values()))
    assert all(isinstance(x, torch.Tensor) and x.shape == (3, 30, 40) for x in out)
    assert calls == [
        ("cpu", ["cmyk"]),
        ("meta", ["rgb", "grey", "refused"]),
        ("meta", ["rgb"]),
        ("meta", ["grey"]),
        ("meta", ["refused"]),
        ("cpu", ["refused"]),
    ]
    assert dec.fallbacks == 3  # CMYK, the refused JPEG, the PNG


def test_decoder_names_are_checked():
    with pytest.raises(UserError, match="unknown data.decoder 'nvjpeg': choose one of auto, torchvision, torchcodec"):
        ImageDecoder("cpu", "nvjpeg")
    if not torchcodec_available():
        with pytest.raises(UserError, match="data.decoder=torchcodec needs the package torchcodec"):
            ImageDecoder("cpu", "torchcodec")
        assert ImageDecoder("cpu", "auto").name == "torchvision"


def test_an_unreadable_file_stops_with_its_name_or_is_skipped(tmp_path, caplog):
    root = _folder(tmp_path)
    bad = root / "train" / "dog" / "2.JPEG"
    bad.write_bytes(b"\xff\xd8\xff broken")
    with pytest.raises(UserError, match=f"cannot read image {bad} .*; remove it or set data.skip_bad_images=true"):
        list(_loader(root))
    loader = _loader(root, skip_bad=True)
    with caplog.at_level(logging.WARNING, logger="rld"):
        batches = _epoch(loader, 0)
        _epoch(loader, 1)
    seen = torch.cat([b.indices for b in batches]).tolist()
    assert len(seen) == 11 and loader.files.index(str(bad)) not in seen
    assert sum(f"skipped unreadable image {bad}" in r.message for r in caplog.records) == 1  # once per file


# ----------------------------------------------------------------------------- build_data and training


def test_build_data_chooses_the_pipeline(tmp_path):
    root = _folder(tmp_path)
    kw = dict(batch_size=4, device="cpu", seed=0, num_workers=0, image_size=32)
    device = build_data("imagefolder", str(root), pipeline="device", **kw)
    assert isinstance(device.train, DeviceFolderLoader) and isinstance(device.test, DeviceFolderLoader)
    assert isinstance(build_data("imagefolder", str(root), **kw).train, TorchLoader)  # auto on a CPU: pil
    assert isinstance(build_data("imagefolder", str(root), pipeline="pil", **kw).train, TorchLoader)
    pil = build_data("imagefolder", str(root), pipeline="pil", **kw)
    assert (
        eval_preprocess(device.test)
        == eval_preprocess(pil.test)
        == {
            "resize": 37,
            "crop": [32, 32],
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        }
    )
    assert device.test.labels.tolist() == pil.test.labels.tolist() == [0, 0, 1, 1]
    # a hold-out of the training images and MLKD's strong view on the device pipeline
    held = build_data("imagefolder", str(root), pipeline="device", holdout=0.25, strong_view=True, **kw)
    assert held.test.n == 3 and held.train.n == 9 and not held.test.train
    batch = next(iter(held.train))
    assert batch.strong.shape == batch.images.shape == (4, 3, 32, 32)
    assert (batch.strong - batch.images).abs().amax() > 1e-3 and next(iter(held.test)).strong is None
    first = list(held.train)
    held.train.set_epoch(1, 1)
    assert all(torch.equal(a.strong, b.strong) for a, b in zip(first[1:], held.train))  # exact resume
    with pytest.raises(UserError, match="unknown data.decoder 'pillow'"):
        build_data("imagefolder", str(root), decoder="pillow", **kw)
    # auto: the device pipeline on CUDA, as the ImageNet presets leave it
    assert [image_pipeline("auto", d) for d in ("cuda", "cuda:1", "cpu")] == ["device", "device", "pil"]
    assert image_pipeline("device", "cpu") == "device" and image_pipeline("pil", "cuda") == "pil"
    assert resolve("imagenet/ResNet34-ResNet18/rld").data.pipeline == "auto"


@pytest.mark.parametrize("pipeline", ["device", "pil"])
def test_a_tiny_image_folder_trains_with_either_pipeline(tmp_path, pipeline, capsys):
    root = _folder(tmp_path / "data", classes=("a", "b", "c"), train=4, val=2)
    over = [
        "data.name=imagefolder",
        f"data.path={root}",
        f"data.pipeline={pipeline}",
        "data.image_size=16",
        "data.num_workers=0",
        "data.eval_batch_size=8",
        "train.batch_size=4",
        "train.epochs=2",
        "train.device=cpu",
    ]
    assert main(["train", "demo/vanilla", *over, "--out", str(tmp_path / "run")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(math.isfinite(float(r["train_loss"])) for r in rows)
    (root / "train" / "b" / "1.JPEG").write_bytes(b"broken")
    capsys.readouterr()
    if pipeline == "device":  # (the pil pipeline of a train/val layout raises PIL's own error, as before)
        code = main(["train", "demo/vanilla", *over, "--out", str(tmp_path / "broken")])
        assert_user_error(code, capsys.readouterr().err, f"cannot read image {root / 'train' / 'b' / '1.JPEG'}")
        skip = ["train", "demo/vanilla", *over, "data.skip_bad_images=true", "--out", str(tmp_path / "skipped")]
        assert main(skip) == 0
