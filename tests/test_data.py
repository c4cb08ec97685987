"""Tests of rld.data: readers, the device loader against torchvision, sampling, image folders."""

from __future__ import annotations

import io
import math
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from rld.data import (
    CENTER_VIEW,
    CIFAR100_CLASSES,
    CIFAR100_MEAN,
    CIFAR100_STD,
    NUM_VIEWS,
    ArrayImageDataset,
    ArraySplit,
    Batch,
    DeviceLoader,
    EpochSampler,
    array_transform,
    build_data,
    decode_views,
    encode_views,
    load_cifar100,
    load_digits,
)
from rld.errors import UserError

MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.3)


# --------------------------------------------------------------------------- helpers


def _images(n: int, seed: int, size: int = 32) -> np.ndarray:
    """(n, size, size, 3) uint8 random pixels."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _fake_official(n_train: int = 20, n_test: int = 10, *, bytes_keys: bool = True):
    """Pickled official-format files: (files {name: bytes}, train HWC, train y, test HWC, test y)."""
    k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    rng = np.random.default_rng(1)
    out, arrays = {}, []
    for name, n in (("train", n_train), ("test", n_test)):
        hwc = _images(n, seed=n)
        y = rng.integers(0, 100, n).tolist()
        rows = hwc.transpose(0, 3, 1, 2).reshape(n, 3072)  # official rows: R plane, G plane, B plane
        d = {k("data"): rows, k("fine_labels"): y, k("coarse_labels"): [0] * n, k("batch_label"): k(name)}
        out[name] = pickle.dumps(d, protocol=2)
        arrays += [hwc, np.array(y, dtype=np.int64)]
    names = [c.encode() if bytes_keys else c for c in CIFAR100_CLASSES]
    out["meta"] = pickle.dumps({k("fine_label_names"): names, k("coarse_label_names"): []}, protocol=2)
    return out, *arrays


def _write_dir(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _check_loaded(ds, train_x, train_y, test_x, test_y):
    assert ds.name == "cifar100" and ds.flip is True
    assert ds.mean == CIFAR100_MEAN and ds.std == CIFAR100_STD
    assert ds.classes == list(CIFAR100_CLASSES)
    for got, want in ((ds.train.x, train_x), (ds.test.x, test_x)):
        assert got.dtype == np.uint8 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    for got, want in ((ds.train.y, train_y), (ds.test.y, test_y)):
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)


def _tv_view(image: np.ndarray, dy: int, dx: int, flip: int, mean=MEAN, std=STD) -> torch.Tensor:
    """torchvision's pad(4, fill=0) -> crop(dy, dx, H, W) -> hflip -> ToTensor -> Normalize."""
    pil = TF.pad(Image.fromarray(image), 4, fill=0)
    pil = TF.crop(pil, dy, dx, image.shape[0], image.shape[1])
    if flip:
        pil = TF.hflip(pil)
    return TF.normalize(TF.to_tensor(pil), mean, std)


def _loader(n=23, b=5, *, train=True, flip=True, seed=0, **kw) -> DeviceLoader:
    split = ArraySplit(_images(n, seed=3, size=kw.pop("size", 32)), np.arange(n, dtype=np.int64) % 7)
    return DeviceLoader(split, b, device="cpu", mean=MEAN, std=STD, train=train, flip=flip, seed=seed, **kw)


# --------------------------------------------------------------------------- CIFAR-100 readers


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_official_folder_loads_exact_arrays(tmp_path, bytes_keys):
    files, *arrays = _fake_official(bytes_keys=bytes_keys)
    folder = _write_dir(tmp_path / "cifar-100-python", files)
    ds = load_cifar100(folder)
    _check_loaded(ds, *arrays)
    # Pixel (r, c) of channel ch sits at ch * 1024 + r * 32 + c of the official row.
    row = pickle.loads(files["train"])[b"data" if bytes_keys else "data"][3]
    assert ds.train.x[3, 5, 7, 2] == row[2 * 1024 + 5 * 32 + 7]
    assert ds.train.x[3, 31, 0, 0] == row[31 * 32]
    # A folder that contains cifar-100-python works too.
    _check_loaded(load_cifar100(str(tmp_path)), *arrays)


def test_official_archive_loads_without_extracting(tmp_path):
    files, *arrays = _fake_official()
    archive = _write_tar(tmp_path / "cifar-100-python.tar.gz", files)
    _check_loaded(load_cifar100(archive), *arrays)
    _check_loaded(load_cifar100(tmp_path), *arrays)  # folder holding the archive
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-100-python.tar.gz"]


def test_npz_file_and_folder(tmp_path):
    _, train_x, train_y, test_x, test_y = _fake_official()
    path = tmp_path / "cifar100-resplit.npz"
    np.savez(path, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, classes=np.array(CIFAR100_CLASSES))
    _check_loaded(load_cifar100(path), train_x, train_y, test_x, test_y)
    _check_loaded(load_cifar100(tmp_path), train_x, train_y, test_x, test_y)
    # Without `classes` the standard names are used; int32 labels become int64.
    np.savez(path, train_x=train_x, train_y=train_y.astype(np.int32), test_x=test_x, test_y=test_y)
    _check_loaded(load_cifar100(path), train_x, train_y, test_x, test_y)


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match=r"CIFAR-100 data not found at .*nowhere: give the official"):
        load_cifar100(tmp_path / "nowhere")
    with pytest.raises(UserError, match="holds no CIFAR-100 data"):
        load_cifar100(tmp_path)


def test_truncated_pickle_names_the_file(tmp_path):
    files, *_ = _fake_official()
    files["train"] = files["train"][: len(files["train"]) // 2]
    folder = _write_dir(tmp_path / "cifar-100-python", files)
    with pytest.raises(UserError, match=r"cifar-100-python/train is not a readable CIFAR-100 pickle .*download"):
        load_cifar100(folder)


def test_truncated_archive(tmp_path):
    files, *_ = _fake_official()
    archive = _write_tar(tmp_path / "cifar-100-python.tar.gz", files)
    archive.write_bytes(archive.read_bytes()[:3000])
    with pytest.raises(UserError, match=r"cifar-100-python.tar.gz is not a readable tar archive"):
        load_cifar100(archive)


def test_corrupt_npz_and_wrong_arrays(tmp_path):
    _, train_x, train_y, test_x, test_y = _fake_official()
    path = tmp_path / "d.npz"
    np.savez(path, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(UserError, match=r"d\.npz is not a readable \.npz file"):
        load_cifar100(path)
    np.savez(path, train_x=train_x.astype(np.float32), train_y=train_y, test_x=test_x, test_y=test_y)
    with pytest.raises(UserError, match=r"train_x must be uint8 of shape \(N, 32, 32, 3\), got float32"):
        load_cifar100(path)
    np.savez(path, train_x=train_x, train_y=train_y + 100, test_x=test_x, test_y=test_y)
    with pytest.raises(UserError, match=r"train labels span .* outside 0\.\.99"):
        load_cifar100(path)
    np.savez(path, train_x=train_x, train_y=train_y)
    with pytest.raises(UserError, match="lacks the arrays test_x, test_y"):
        load_cifar100(path)
    np.savez(tmp_path / "e.npz", a=train_y)
    with pytest.raises(UserError, match=r"several \.npz files \(d\.npz, e\.npz\)"):
        load_cifar100(tmp_path)


def test_pickle_with_foreign_objects_is_refused(tmp_path):
    files, *_ = _fake_official()
    files["test"] = pickle.dumps({"data": Path("x")}, protocol=2)  # references pathlib classes
    folder = _write_dir(tmp_path / "cifar-100-python", files)
    with pytest.raises(UserError, match=r"test is not a readable CIFAR-100 pickle .*unexpected object pathlib"):
        load_cifar100(folder)


def test_parts_only_folder_explains_how_to_join(tmp_path):
    for i in range(4):
        (tmp_path / f"cifar100-resplit.npz.part{i}").write_bytes(b"x")
    msg = r"join them first, e\.g\. `cd .* && cat cifar100-resplit\.npz\.part\[0-3\] > cifar100-resplit\.npz`"
    with pytest.raises(UserError, match=msg):
        load_cifar100(tmp_path)
    with pytest.raises(UserError, match=msg):
        load_cifar100(tmp_path / "cifar100-resplit.npz.part2")


# --------------------------------------------------------------------------- device loader vs torchvision


def test_views_encode_decode():
    views = torch.arange(NUM_VIEWS)
    dy, dx, flip = decode_views(views)
    assert dy.max() == 8 and dx.max() == 8 and set(flip.tolist()) == {0, 1}
    torch.testing.assert_close(encode_views(dy, dx, flip), views)
    assert decode_views(torch.tensor([CENTER_VIEW])) == (torch.tensor([4]), torch.tensor([4]), torch.tensor([0]))


@pytest.mark.parametrize("channels_last", [False, True])
def test_rendered_views_equal_torchvision(channels_last):
    loader = _loader(n=4, channels_last=channels_last)
    x = _images(4, seed=3)
    idx = torch.arange(4).repeat_interleave(NUM_VIEWS)
    views = torch.arange(NUM_VIEWS).repeat(4)
    got = loader.render_views(idx, views)
    assert got.shape == (4 * NUM_VIEWS, 3, 32, 32) and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    dy, dx, flip = decode_views(views)
    want = torch.stack(
        [_tv_view(x[i], a, b, f) for i, a, b, f in zip(idx.tolist(), dy.tolist(), dx.tolist(), flip.tolist())]
    )
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_nonsquare_images_and_padding_is_zero():
    loader = _loader(n=2, size=32)
    # Offset (0, 0): the first 4 rows/columns come from the zero padding, i.e. normalised 0.
    img = loader.render_views(torch.tensor([0]), encode_views(torch.tensor([0]), torch.tensor([0]), torch.tensor([0])))
    pad_value = (-torch.tensor(MEAN) / torch.tensor(STD))[:, None, None]
    torch.testing.assert_close(img[0, :, :4, :], pad_value.expand(3, 4, 32), rtol=0, atol=1e-6)
    split = ArraySplit(_images(3, seed=5)[:, :, :24], np.zeros(3, dtype=np.int64))  # (3, 32, 24, 3)
    loader = DeviceLoader(split, 2, device="cpu", mean=MEAN, std=STD, train=True, flip=True)
    batch = next(iter(loader))
    assert batch.images.shape == (2, 3, 32, 24)
    i, v = int(batch.indices[1]), int(batch.views[1])
    dy, dx, f = (int(t) for t in decode_views(torch.tensor([v])))
    torch.testing.assert_close(batch.images[1], _tv_view(split.x[i], dy, dx, f), rtol=0, atol=1e-6)


def test_iteration_uses_render_views_and_targets():
    loader = _loader(n=23, b=5)
    y = torch.arange(23) % 7
    for batch in loader:
        assert isinstance(batch, Batch)
        torch.testing.assert_close(batch.images, loader.render_views(batch.indices, batch.views))
        torch.testing.assert_close(batch.targets, y[batch.indices])


def test_eval_loader_is_plain_and_ordered():
    loader = _loader(n=11, b=4, train=False)
    x = _images(11, seed=3)
    batches = list(loader)
    assert [len(b.indices) for b in batches] == [4, 4, 3] and len(loader) == 3
    torch.testing.assert_close(torch.cat([b.indices for b in batches]), torch.arange(11))
    assert all((b.views == CENTER_VIEW).all() for b in batches)
    want = torch.stack([TF.normalize(TF.to_tensor(Image.fromarray(im)), MEAN, STD) for im in x])
    torch.testing.assert_close(torch.cat([b.images for b in batches]), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([b.indices for b in loader]), torch.arange(11))  # same next epoch


def test_pil_pipeline_matches_device_loader():
    split = ArraySplit(_images(6, seed=3), np.arange(6, dtype=np.int64))
    ds = ArrayImageDataset(split, array_transform(MEAN, STD, train=False, flip=True))
    device = _loader(n=6, b=6, train=False)
    image, target, index = ds[2]
    assert (target, index) == (2, 2)
    torch.testing.assert_close(image, next(iter(device)).images[2], rtol=0, atol=1e-6)
    torch.manual_seed(0)
    train_ds = ArrayImageDataset(split, array_transform(MEAN, STD, train=True, flip=True))
    # A training sample is one of the 162 device views of the same image.
    views = device.render_views(torch.full((NUM_VIEWS,), 4), torch.arange(NUM_VIEWS))
    sample = train_ds[4][0]
    assert ((views - sample).abs().amax(dim=(1, 2, 3)) < 1e-6).any()


# --------------------------------------------------------------------------- shuffling and determinism


def test_shuffling_semantics():
    loader = _loader(n=23, b=5, seed=7)
    assert len(loader) == math.ceil(23 / 5) == 5
    epochs = []
    for _ in range(3):
        batches = list(loader)
        assert len(batches) == 5
        assert [len(b.indices) for b in batches] == [5, 5, 5, 5, 3]
        order = torch.cat([b.indices for b in batches])
        assert sorted(order.tolist()) == list(range(23))
        assert all(b.indices.dtype == torch.int64 and b.views.dtype == torch.int64 for b in batches)
        epochs.append(order)
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])

    # Resume: a fresh loader told to start at epoch 2 reproduces epoch 2 exactly.
    resumed = _loader(n=23, b=5, seed=7)
    resumed.set_epoch(2)
    again = list(resumed)
    torch.testing.assert_close(torch.cat([b.indices for b in again]), epochs[2])
    loader.set_epoch(2)
    for a, b in zip(loader, again):
        torch.testing.assert_close(a.images, b.images)
        torch.testing.assert_close(a.views, b.views)
    # The plan is a pure function of (seed, epoch) and does not depend on earlier epochs.
    torch.testing.assert_close(resumed.epoch_plan(2)[0], epochs[2])
    assert not torch.equal(_loader(n=23, b=5, seed=8).epoch_plan(2)[0], epochs[2])
    with pytest.raises(UserError, match="epoch must be a non-negative integer"):
        loader.set_epoch(-1)


def test_a_loader_with_another_seed_is_that_seeds_loader_over_the_same_images():
    loader = _loader(n=23, b=5, seed=7)
    loader.set_epoch(3, start_batch=1)
    other = loader.with_seed(8)
    assert other._x is loader._x and other._y is loader._y  # one copy of the images on the device
    fresh = _loader(n=23, b=5, seed=8)
    for a, b in zip(other, fresh):  # from epoch 0, batch 0: nothing of the original's position
        assert torch.equal(a.indices, b.indices) and torch.equal(a.views, b.views) and torch.equal(a.images, b.images)
    assert torch.equal(next(iter(loader)).indices, _loader(n=23, b=5, seed=7).epoch_plan(3)[0][5:10])
    with pytest.raises(UserError, match="seed must be a non-negative integer"):
        loader.with_seed(-1)


def test_sampler_order_equals_device_loader_order():
    loader = _loader(n=23, b=5, seed=3)
    sampler = EpochSampler(23, shuffle=True, seed=3)
    for epoch in (0, 5):
        torch.testing.assert_close(sampler.order(epoch), loader.epoch_plan(epoch)[0])
    sampler.set_epoch(5)
    assert list(sampler) == loader.epoch_plan(5)[0].tolist()


def test_distributed_shards_like_distributed_sampler():
    world = 3
    shards = [_loader(n=10, b=2, seed=1, rank=r, world_size=world) for r in range(world)]
    full = _loader(n=10, b=2, seed=1).epoch_plan(4)
    padded = [torch.cat([t, t[:2]]) for t in full]  # 10 -> 12 by repeating the start
    for r, loader in enumerate(shards):
        idx, views = loader.epoch_plan(4)
        torch.testing.assert_close(idx, padded[0][r::world])
        torch.testing.assert_close(views, padded[1][r::world])
        assert len(idx) == 4 and len(loader) == 2
        torch.testing.assert_close(idx, EpochSampler(10, shuffle=True, seed=1, rank=r, world_size=world).order(4))
    evals = [_loader(n=10, b=2, train=False, rank=r, world_size=world) for r in range(world)]
    seen = sorted(i for e in evals for b in e for i in b.indices.tolist())
    assert seen == list(range(10)) and [len(e) for e in evals] == [2, 2, 2]


def test_augmentation_distribution():
    loader = _loader(n=20_000, b=512, seed=0)
    _, views = loader.epoch_plan(0)
    dy, dx, flip = decode_views(views)
    n = len(views)
    for offsets in (dy, dx):
        counts = torch.bincount(offsets, minlength=9)
        assert len(counts) == 9
        assert ((counts - n / 9).abs() < 0.06 * n / 9).all(), counts  # ~8 sigma
    assert abs(flip.float().mean().item() - 0.5) < 0.02
    assert ((dy == 4) & (dx == 4)).float().mean().item() == pytest.approx(1 / 81, abs=0.004)
    no_flip = _loader(n=20_000, b=512, seed=0, flip=False).epoch_plan(0)[1]
    assert (no_flip % 2 == 0).all()
    torch.testing.assert_close(no_flip // 2, views // 2)  # offsets do not depend on `flip`


def test_device_loader_rejects_bad_arguments():
    split = ArraySplit(_images(4, seed=0), np.zeros(4, dtype=np.int64))
    kw = dict(device="cpu", mean=MEAN, std=STD, train=True, flip=True)
    with pytest.raises(UserError, match="batch size must be a positive integer, got 0"):
        DeviceLoader(split, 0, **kw)
    with pytest.raises(UserError, match=r"uint8 array of shape \(N, H, W, 3\)"):
        DeviceLoader(ArraySplit(split.x.astype(np.float32), split.y), 2, **kw)
    with pytest.raises(UserError, match="seed must be a non-negative integer"):
        DeviceLoader(split, 2, seed=-3, **kw)


# --------------------------------------------------------------------------- digits


def test_digits():
    a, b = load_digits(), load_digits()
    assert a.name == "digits" and a.classes == [str(i) for i in range(10)] and a.flip is False
    assert a.train.x.shape == (1347, 32, 32, 3) and a.test.x.shape == (450, 32, 32, 3)
    assert a.train.x.dtype == np.uint8 and a.train.y.dtype == np.int64
    assert a.train.x.max() == 255 and a.train.x.min() == 0
    np.testing.assert_array_equal(a.train.x[..., 0], a.train.x[..., 2])  # grey replicated
    for s1, s2 in ((a.train, b.train), (a.test, b.test)):
        np.testing.assert_array_equal(s1.x, s2.x)
        np.testing.assert_array_equal(s1.y, s2.y)
    assert a.mean == b.mean and a.std == b.std
    assert a.mean == pytest.approx([a.train.x.mean() / 255] * 3)
    assert a.std == pytest.approx([(a.train.x / 255).std()] * 3)
    train_counts = np.bincount(a.train.y, minlength=10)
    test_counts = np.bincount(a.test.y, minlength=10)
    assert (np.abs(test_counts - 0.25 * (train_counts + test_counts)) <= 1).all()  # stratified


def test_build_data_digits_and_errors():
    bundle = build_data("digits", None, batch_size=64, eval_batch_size=200, device="cpu", seed=0, channels_last=True)
    assert (bundle.name, bundle.num_classes, len(bundle.classes)) == ("digits", 10, 10)
    assert len(bundle.train) == math.ceil(1347 / 64) and len(bundle.test) == 3
    batch = next(iter(bundle.train))
    assert batch.images.shape == (64, 3, 32, 32)
    assert batch.images.is_contiguous(memory_format=torch.channels_last)
    assert (batch.views % 2 == 0).all()  # digits are never flipped
    with pytest.raises(UserError, match="unknown data set 'mnist': choose one of digits, cifar100, imagefolder"):
        build_data("mnist", None, batch_size=8, device="cpu", seed=0)
    with pytest.raises(UserError, match="cifar100 needs a data path"):
        build_data("cifar100", None, batch_size=8, device="cpu", seed=0)
    with pytest.raises(UserError, match="batch_size must be a positive integer"):
        build_data("digits", None, batch_size=0, device="cpu", seed=0)


def test_build_data_cifar_pil_pipeline(tmp_path):
    files, train_x, train_y, *_ = _fake_official()
    _write_dir(tmp_path / "cifar-100-python", files)
    bundle = build_data("cifar100", str(tmp_path), batch_size=8, device="cpu", seed=0, num_workers=0, pipeline="pil")
    assert bundle.num_classes == 100 and len(bundle.train) == 3 and len(bundle.test) == 2
    batches = list(bundle.train)
    assert [len(b.targets) for b in batches] == [8, 8, 4]
    order = torch.cat([b.indices for b in batches])
    assert sorted(order.tolist()) == list(range(20)) and batches[0].views is None
    torch.testing.assert_close(torch.cat([b.targets for b in batches]), torch.from_numpy(train_y)[order])
    device = build_data("cifar100", str(tmp_path), batch_size=8, device="cpu", seed=0)
    torch.testing.assert_close(torch.cat([b.indices for b in device.train]), order)  # same order


# --------------------------------------------------------------------------- image folders


def _image_tree(root: Path, splits=("train", "val")) -> None:
    rng = np.random.default_rng(0)
    for split in splits:
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                px = rng.integers(0, 256, (30 + 10 * i, 40, 3), dtype=np.uint8)
                Image.fromarray(px).save(root / split / cls / f"{i}.png")


def test_image_folder(tmp_path):
    _image_tree(tmp_path)
    bundle = build_data("imagenet", str(tmp_path), batch_size=3, device="cpu", seed=0, num_workers=0)
    assert bundle.classes == ["cat", "dog"] and bundle.num_classes == 2 and bundle.name == "imagenet"
    assert len(bundle.train) == 2 and len(bundle.test) == 2
    batches = list(bundle.train)
    assert isinstance(batches[0], Batch) and batches[0].images.shape == (3, 3, 224, 224)
    assert batches[1].images.shape == (1, 3, 224, 224) and batches[0].views is None
    assert sorted(torch.cat([b.indices for b in batches]).tolist()) == [0, 1, 2, 3]
    test = list(bundle.test)
    torch.testing.assert_close(torch.cat([b.targets for b in test]), torch.tensor([0, 0, 1, 1]))
    # Evaluation images: torchvision's Resize(256), CenterCrop(224), ToTensor and ImageNet Normalize,
    # file by file in class-folder order.
    import torchvision.transforms as T

    reference = T.Compose(
        [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    )
    files = [tmp_path / "val" / c / f"{i}.png" for c in ("cat", "dog") for i in range(2)]
    expected = torch.stack([reference(Image.open(f).convert("RGB")) for f in files])
    got = torch.cat([b.images for b in test])
    assert got.dtype == torch.float32 and torch.equal(got, expected)


def test_image_folder_missing_parts(tmp_path):
    with pytest.raises(UserError, match=r"image folder .*nothere not found: expected the layout ROOT/train/<class>"):
        build_data("imagefolder", str(tmp_path / "nothere"), batch_size=2, device="cpu", seed=0, num_workers=0)
    _image_tree(tmp_path, splits=("val",))
    with pytest.raises(UserError, match=r"has no train/ folder: expected the layout ROOT/train/<class>/<image>"):
        build_data("imagefolder", str(tmp_path), batch_size=2, device="cpu", seed=0, num_workers=0)
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match=r"train: .*expected the layout"):
        build_data("imagefolder", str(tmp_path), batch_size=2, device="cpu", seed=0, num_workers=0)
