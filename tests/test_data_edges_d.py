"""Edges of rld.data: the CIFAR-100 readers (official pickles in a folder or an archive, .npz) and
every error they give, the held-out part of an array data set, the first images per class, the
array loaders' settings, JPEG frame headers, and the in-order and per-sample views of the device
pipeline of image files."""

from __future__ import annotations

import errno
import io
import pickle
import signal
import struct
import tarfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from torchvision import transforms as T

from rld.data import CIFAR100_CLASSES, load_cifar100
from rld.data import device_folder as device_folder_module
from rld.data.build import _array_loaders, first_per_class
from rld.data.decode import jpeg_components
from rld.data.device_folder import DeviceFolderLoader
from rld.data.holdout import Holdout, carve_arrays
from rld.data.strong import StrongAugment
from rld.data.torch_loader import TwoCrops
from rld.data.types import ArrayDataset, ArraySplit
from rld.errors import UserError

HOW = (
    "give the official 'cifar-100-python' folder, the 'cifar-100-python.tar.gz' archive, or an .npz "
    "with train_x, train_y, test_x, test_y"
)
AGAIN = "download cifar-100-python.tar.gz again"
NAMES = [f"n{i:02d}" for i in range(100)]


def _raises(call, message: str, error=UserError) -> None:
    with pytest.raises(error) as raised:
        call()
    assert str(raised.value) == message


# --------------------------------------------------------------------------- official pickles


class _Py2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2's ``str`` (BINSTRING), as the official files hold their keys and pixels."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _py2_pickle(obj) -> bytes:
    out = io.BytesIO()
    _Py2Pickler(out, protocol=2).dump(obj)
    return out.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _hwc(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _rows(hwc: np.ndarray) -> np.ndarray:
    """Official rows: the red plane, then green, then blue, each 32 x 32 row-major."""
    return np.ascontiguousarray(hwc.transpose(0, 3, 1, 2).reshape(len(hwc), 3072))


def _split(n: int, seed: int, labels=None) -> tuple[dict, np.ndarray, list[int]]:
    hwc = _hwc(n, seed)
    y = list(range(n)) if labels is None else labels
    return {"data": _rows(hwc), "fine_labels": y}, hwc, y


def _good_files(names=NAMES) -> tuple[dict[str, bytes], tuple]:
    train, train_x, train_y = _split(3, 1, [7, 0, 99])
    test, test_x, test_y = _split(2, 2, [5, 5])
    files = {"train": pickle.dumps(train, protocol=2), "test": pickle.dumps(test, protocol=2)}
    if names is not None:
        files["meta"] = pickle.dumps({"fine_label_names": names, "coarse_label_names": []}, protocol=2)
    return files, (train_x, train_y, test_x, test_y)


def _write_dir(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _write_tar(path: Path, members: list[tuple[str, bytes | None]], mode: str = "w:gz") -> Path:
    """A tar archive of ``members`` (name, bytes) in that order; bytes None: a directory."""
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _assert_loaded(ds, arrays, classes) -> None:
    train_x, train_y, test_x, test_y = arrays
    assert ds.name == "cifar100" and ds.classes == classes
    for got, want in ((ds.train.x, train_x), (ds.test.x, test_x)):
        assert got.dtype == np.uint8 and got.shape == want.shape and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)
    for got, want in ((ds.train.y, train_y), (ds.test.y, test_y)):
        assert got.dtype == np.int64 and got.tolist() == list(want)


def test_an_official_folder_pickled_by_python_2_loads_its_pixels_labels_and_names(tmp_path):
    train, train_x, train_y = _split(3, 1, [7, 0, 99])
    test, test_x, test_y = _split(2, 2, [5, 5])
    names = [b"caf\xe9"] + [n.encode() for n in NAMES[1:]]
    files = {
        "train": _py2_pickle({k.encode(): v for k, v in train.items()}),
        "test": _py2_pickle({k.encode(): v for k, v in test.items()}),
        "meta": _py2_pickle({b"fine_label_names": names, b"coarse_label_names": []}),
    }
    folder = _write_dir(tmp_path / "cifar-100-python", files)
    ds = load_cifar100(folder)
    _assert_loaded(ds, (train_x, train_y, test_x, test_y), ["caf\xe9"] + NAMES[1:])
    assert ds.train.x[2, 5, 7].tolist() == [_rows(train_x)[2][c * 1024 + 5 * 32 + 7] for c in range(3)]


def test_utf8_bytes_names_of_the_meta_file_are_decoded(tmp_path):
    files, arrays = _good_files(names=["é".encode()] + [n.encode() for n in NAMES[1:]])
    ds = load_cifar100(_write_dir(tmp_path / "cifar-100-python", files))
    _assert_loaded(ds, arrays, ["é"] + NAMES[1:])


def test_a_folder_without_meta_takes_the_standard_names_and_with_meta_its_names(tmp_path):
    files, arrays = _good_files(names=None)
    _assert_loaded(load_cifar100(_write_dir(tmp_path / "a" / "cifar-100-python", files)), arrays, CIFAR100_CLASSES)
    files, arrays = _good_files()
    _assert_loaded(load_cifar100(_write_dir(tmp_path / "b" / "cifar-100-python", files)), arrays, NAMES)


def test_an_official_folder_lacking_its_files_names_them(tmp_path):
    folder = _write_dir(tmp_path / "a" / "cifar-100-python", {})
    lacks = "an official cifar-100-python folder has train, test, meta"
    _raises(lambda: load_cifar100(tmp_path / "a"), f"{folder} lacks train, test: {lacks}")
    files, _ = _good_files()
    folder = _write_dir(tmp_path / "b" / "cifar-100-python", {"train": files["train"]})
    _raises(lambda: load_cifar100(tmp_path / "b"), f"{folder} lacks test: {lacks}")


def test_a_file_that_cannot_be_read_gives_the_reason(tmp_path, monkeypatch):
    files, _ = _good_files()
    folder = _write_dir(tmp_path / "cifar-100-python", files)
    read_bytes, failing = Path.read_bytes, {}

    def read(path: Path) -> bytes:
        if path.name in failing:
            raise failing[path.name]
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", read)
    failing["test"] = PermissionError(errno.EACCES, "Permission denied")
    _raises(lambda: load_cifar100(folder), f"cannot read {folder / 'test'}: Permission denied")
    failing.clear()
    failing["meta"] = OSError("the disk went away")
    _raises(lambda: load_cifar100(folder), f"cannot read {folder / 'meta'}: the disk went away")


def _folder_error(tmp_path: Path, which: str, content: bytes) -> tuple[Path, Path]:
    files, _ = _good_files()
    files[which] = content
    folder = _write_dir(tmp_path / "cifar-100-python", files)
    return folder, folder / which


@pytest.mark.parametrize("which", ["train", "test"])
def test_each_damaged_split_of_a_folder_is_named_with_what_is_wrong(tmp_path, which):
    def check(split: dict | list, message: str) -> None:
        folder, where = _folder_error(tmp_path, which, pickle.dumps(split, protocol=2))
        _raises(lambda: load_cifar100(folder), message.format(where=where))

    rows = _rows(_hwc(2, 3))
    check([1, 2], "{where} does not hold a CIFAR-100 dictionary; " + HOW)
    check({"fine_labels": [0, 1]}, "{where} has no 'data' entry; it is not a CIFAR-100 file: " + HOW)
    check({"data": rows}, "{where} has no 'fine_labels' entry; it is not a CIFAR-100 file: " + HOW)
    must = "{where}: 'data' must be uint8 rows of 3072 bytes, got "
    check({"data": rows.astype(np.int64), "fine_labels": [0, 1]}, must + "int64 (2, 3072); " + AGAIN)
    check({"data": rows.reshape(4, 1536), "fine_labels": [0, 1, 2, 3]}, must + "uint8 (4, 1536); " + AGAIN)
    check({"data": rows.reshape(2, 3072, 1), "fine_labels": [0, 1]}, must + "uint8 (2, 3072, 1); " + AGAIN)
    check({"data": rows, "fine_labels": [0, 1, 2]}, "{where} has 2 images but 3 labels; " + AGAIN)
    labels = "{where}: 'fine_labels' must be a list of integer labels, got "
    check({"data": rows, "fine_labels": [0.0, 1.0]}, labels + "float64 (2,)")
    check({"data": rows, "fine_labels": [[0], [1]]}, labels + "int64 (2, 1)")
    ragged = [[1, 2], [3]]
    with pytest.raises(ValueError) as numpy_says:
        np.asarray(ragged)
    check({"data": ragged, "fine_labels": [0, 1]}, f"{{where}} holds malformed arrays ({numpy_says.value}); {AGAIN}")
    check(
        {"data": OrderedDict()},
        "{where} is not a readable CIFAR-100 pickle (UnpicklingError: unexpected object collections.OrderedDict "
        "in a CIFAR-100 pickle); the download is probably truncated or corrupt: " + AGAIN,
    )


def test_a_damaged_meta_file_is_named_with_what_is_wrong(tmp_path):
    def check(meta, message: str) -> None:
        folder, where = _folder_error(tmp_path, "meta", pickle.dumps(meta, protocol=2))
        _raises(lambda: load_cifar100(folder), message.format(where=where))

    check({"fine_label_names": NAMES[:99]}, "{where} lists 99 fine labels, CIFAR-100 has 100; " + HOW)
    check({"coarse_label_names": []}, "{where} has no 'fine_label_names' entry; it is not a CIFAR-100 file: " + HOW)


# --------------------------------------------------------------------------- archives


def test_archive_members_are_taken_by_their_base_name_first_one_first(tmp_path):
    files, arrays = _good_files()
    path = _write_tar(
        tmp_path / "cifar-100-python.tar.gz",
        [
            ("data", None),
            ("data/junk/train/X", b"not a pickle"),
            ("data/junk/test", None),
            ("data/cifar-100-python/meta", files["meta"]),
            ("data/cifar-100-python/train", files["train"]),
            ("data/cifar-100-python/test/", files["test"]),
            ("data/copy/train", b"not a pickle"),
            ("data/copy/meta", b"not a pickle"),
        ],
    )
    _assert_loaded(load_cifar100(path), arrays, NAMES)


@pytest.mark.parametrize("name", ["cifar.tgz", "cifar.tar"])
def test_a_flat_archive_without_meta_takes_the_standard_names(tmp_path, name):
    files, arrays = _good_files(names=None)
    mode = "w" if name.endswith(".tar") else "w:gz"
    path = _write_tar(tmp_path / name, [("train", files["train"]), ("test", files["test"])], mode)
    _assert_loaded(load_cifar100(path), arrays, CIFAR100_CLASSES)


def test_an_archive_lacking_its_splits_names_them(tmp_path):
    files, _ = _good_files()
    path = _write_tar(tmp_path / "a.tar.gz", [("cifar-100-python/meta", files["meta"])])
    _raises(
        lambda: load_cifar100(path), f"{path} lacks cifar-100-python/train and test: it is not the CIFAR-100 archive"
    )
    path = _write_tar(tmp_path / "b.tar.gz", [("cifar-100-python/train", files["train"])])
    _raises(lambda: load_cifar100(path), f"{path} lacks cifar-100-python/test: it is not the CIFAR-100 archive")


def test_each_damaged_member_of_an_archive_is_named_with_what_is_wrong(tmp_path):
    files, _ = _good_files()
    rows = _rows(_hwc(2, 3))

    def check(which: str, content, message: str) -> None:
        members = {**files, which: pickle.dumps(content, protocol=2)}
        path = _write_tar(
            tmp_path / "cifar-100-python.tar.gz", [(f"cifar-100-python/{k}", v) for k, v in members.items()]
        )
        _raises(lambda: load_cifar100(path), message.format(where=f"{path}:{which}"))

    must = "{where}: 'data' must be uint8 rows of 3072 bytes, got int64 (2, 3072); " + AGAIN
    check("train", {"data": rows.astype(np.int64), "fine_labels": [0, 1]}, must)
    check("test", {"data": rows.astype(np.int64), "fine_labels": [0, 1]}, must)
    check("train", [], "{where} does not hold a CIFAR-100 dictionary; " + HOW)
    check("test", [], "{where} does not hold a CIFAR-100 dictionary; " + HOW)
    check("meta", [], "{where} does not hold a CIFAR-100 dictionary; " + HOW)
    check("meta", {"fine_label_names": NAMES[:99]}, "{where} lists 99 fine labels, CIFAR-100 has 100; " + HOW)


def test_a_file_that_is_no_archive_gives_tarfiles_reason(tmp_path):
    path = tmp_path / "cifar-100-python.tar.gz"
    path.write_bytes(b"this is not an archive" * 40)
    with pytest.raises(tarfile.ReadError) as tarfile_says:
        tarfile.open(path, "r:*")
    _raises(
        lambda: load_cifar100(path),
        f"{path} is not a readable tar archive (ReadError: {tarfile_says.value}); the download is probably "
        "truncated: download cifar-100-python.tar.gz again",
    )


# --------------------------------------------------------------------------- npz


def _npz(path: Path, n_train: int = 2, n_test: int = 2, **arrays) -> Path:
    base = {
        "train_x": _hwc(n_train, 4),
        "train_y": np.arange(n_train) % 3,
        "test_x": _hwc(n_test, 5),
        "test_y": np.arange(n_test) % 3,
    }
    np.savez(path, **{k: v for k, v in {**base, **arrays}.items() if v is not None})
    return path


def test_an_npz_with_its_own_class_names_uses_them(tmp_path):
    path = _npz(tmp_path / "d.npz", classes=np.array(["cat", "dog", "emu"]))
    ds = load_cifar100(path)
    assert ds.classes == ["cat", "dog", "emu"] and all(type(c) is str for c in ds.classes)
    np.testing.assert_array_equal(ds.train.x, _hwc(2, 4))
    assert ds.train.y.tolist() == [0, 1] and ds.test.y.tolist() == [0, 1]


def test_an_npz_with_one_image_per_split_loads(tmp_path):
    ds = load_cifar100(_npz(tmp_path / "d.npz", n_train=1, n_test=1))
    assert (len(ds.train), len(ds.test), ds.classes) == (1, 1, CIFAR100_CLASSES)


def test_npz_class_names_must_be_a_list_of_strings(tmp_path):
    path = _npz(tmp_path / "d.npz", classes=np.array(["cat", "dog", "emu"], dtype=object))
    _raises(
        lambda: load_cifar100(path),
        f"{path}: 'classes' is stored as Python objects; save it as strings, e.g. classes=np.array(names, dtype=str)",
    )
    path = _npz(tmp_path / "d.npz", classes=np.array([["cat", "dog", "emu"]]))
    _raises(lambda: load_cifar100(path), f"{path}: 'classes' must be a 1-D array of names, got shape (1, 3)")


def test_each_wrong_npz_array_is_named_with_what_is_wrong(tmp_path):
    path = tmp_path / "d.npz"
    _npz(path, train_y=None, test_x=None)
    _raises(
        lambda: load_cifar100(path),
        f"{path} lacks the arrays train_y, test_x: an .npz data set needs train_x, train_y, test_x, test_y "
        "(and optionally classes)",
    )
    _npz(path, train_x=np.zeros((2, 32, 32, 1), np.uint8))
    _raises(
        lambda: load_cifar100(path), f"{path}: train_x must be uint8 of shape (N, 32, 32, 3), got uint8 (2, 32, 32, 1)"
    )
    _npz(path, test_y=np.arange(3))
    _raises(lambda: load_cifar100(path), f"{path}: test_y must have shape (2,) to match test_x, got (3,)")
    _npz(path, test_y=np.array([0.0, 1.0]))
    _raises(lambda: load_cifar100(path), f"{path}: 'test_y' must be a list of integer labels, got float64 (2,)")
    _npz(path, train_y=np.array([0.0, 1.0]))
    _raises(lambda: load_cifar100(path), f"{path}: 'train_y' must be a list of integer labels, got float64 (2,)")


def test_a_file_that_is_no_npz_gives_numpys_reason(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(b"some text, not arrays\n")
    with pytest.raises(ValueError) as numpy_says:
        np.load(path, allow_pickle=False)
    _raises(
        lambda: load_cifar100(path),
        f"{path} is not a readable .npz file (ValueError: {numpy_says.value}); it is probably truncated: "
        "copy or join it again",
    )


def test_labels_must_fit_the_classes_and_no_split_may_be_empty(tmp_path):
    path = tmp_path / "d.npz"
    classes = np.array([f"c{i}" for i in range(10)])
    _npz(path, test_y=np.array([0, 10]), classes=classes)
    _raises(
        lambda: load_cifar100(path),
        f"{path}: test labels span 0..10, outside 0..9 for 10 classes; the file is not CIFAR-100 or is damaged",
    )
    _npz(path, test_y=np.array([0, 9]), classes=classes)
    assert load_cifar100(path).test.y.tolist() == [0, 9]
    _npz(path, n_test=0, classes=classes)
    _raises(lambda: load_cifar100(path), f"{path}: the test split is empty")


# --------------------------------------------------------------------------- locating


@pytest.mark.parametrize(("count", "pieces"), [(1, "part[0-0]"), (10, "part[0-9]"), (11, "part*")])
def test_pieces_of_an_npz_are_to_be_joined(tmp_path, count, pieces):
    for i in range(count):
        (tmp_path / f"d.npz.part{i}").write_bytes(b"x")
    message = (
        f"{tmp_path} holds only the pieces of d.npz: join them first, "
        f"e.g. `cd {tmp_path} && cat d.npz.{pieces} > d.npz`, then pass {tmp_path / 'd.npz'}"
    )
    _raises(lambda: load_cifar100(tmp_path), message)
    _raises(lambda: load_cifar100(tmp_path / "d.npz.part0"), message)


def test_an_unknown_file_or_a_folder_with_a_train_file_only_is_no_cifar(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello")
    _raises(lambda: load_cifar100(path), f"{path} is not a known CIFAR-100 format: {HOW}")
    folder = _write_dir(tmp_path / "only-train", {"train": _good_files()[0]["train"]})
    _raises(lambda: load_cifar100(folder), f"{folder} holds no CIFAR-100 data: {HOW}")


# --------------------------------------------------------------------------- held-out part, first per class


def _array_dataset(n_per_class: int = 10, classes: int = 3, shape=(4, 6)) -> ArrayDataset:
    n = n_per_class * classes
    x = np.arange(n * shape[0] * shape[1] * 3, dtype=np.int64).reshape(n, *shape, 3).astype(np.uint8)
    y = np.arange(n, dtype=np.int64) % classes
    test = ArraySplit(x[:2].copy(), y[:2].copy())
    return ArrayDataset("toy", ArraySplit(x, y), test, [f"c{i}" for i in range(classes)], (0.5,) * 3, (0.25,) * 3, True)


def test_carving_arrays_holds_out_sklearns_stratified_seeded_part_of_the_training_split():
    data = _array_dataset()
    carved, h = carve_arrays(data, 0.2, 7)
    rest, val = train_test_split(np.arange(30), test_size=0.2, stratify=data.train.y, random_state=7)
    rest, val = np.sort(rest), np.sort(val)
    assert h.val_indices == tuple(val.tolist()) and h.train_indices == tuple(rest.tolist())
    np.testing.assert_array_equal(carved.train.x, data.train.x[rest])
    np.testing.assert_array_equal(carved.train.y, data.train.y[rest])
    np.testing.assert_array_equal(carved.test.x, data.train.x[val])
    np.testing.assert_array_equal(carved.test.y, data.train.y[val])
    assert (carved.name, carved.classes, carved.mean, carved.std, carved.flip) == (
        "toy",
        ["c0", "c1", "c2"],
        (0.5,) * 3,
        (0.25,) * 3,
        True,
    )
    assert h.to_dict() == {
        "fraction": 0.2,
        "seed": 7,
        "train_size": 30,
        "val_size": 6,
        "val_per_class": [2, 2, 2],
        "val_indices": val.tolist(),
    }


def test_a_holdout_records_its_fraction_seed_sizes_and_positions():
    h = Holdout(0.25, 3, 8, (1, 6), (0, 2, 3, 4, 5, 7), (1, 0, 1))
    assert h.to_dict() == {
        "fraction": 0.25,
        "seed": 3,
        "train_size": 8,
        "val_size": 2,
        "val_per_class": [1, 0, 1],
        "val_indices": [1, 6],
    }
    assert type(h.to_dict()["val_indices"]) is list and type(h.to_dict()["val_per_class"]) is list


def test_first_per_class_keeps_the_first_images_of_each_class():
    y = np.array([2, 0, 2, 1, 0, 2, 1, 0, 0], dtype=np.int64)
    split = ArraySplit(np.arange(9, dtype=np.uint8).reshape(9, 1, 1, 1) * 10, y)
    for per_class, keep in ((1, [0, 1, 3]), (2, [0, 1, 2, 3, 4, 6])):
        kept = first_per_class(split, per_class)
        assert kept.x[:, 0, 0, 0].tolist() == [10 * i for i in keep] and kept.y.tolist() == y[keep].tolist()
    message = "data.train_per_class={} exceeds the smallest class of the training split ({})"
    _raises(lambda: first_per_class(split, 3), message.format(3, "2 images"))
    one = ArraySplit(np.zeros((3, 1, 1, 1), np.uint8), np.array([0, 0, 1]))
    _raises(lambda: first_per_class(one, 2), message.format(2, "1 image"))
    assert first_per_class(one, 1).y.tolist() == [0, 1]


# --------------------------------------------------------------------------- array loaders

COMMON = {"device": "cpu", "seed": 0, "channels_last": False, "rank": 0, "world_size": 1}


def test_the_device_pipeline_augments_and_strengthens_only_training():
    data = _array_dataset()
    train, test = _array_loaders(data, "device", batch_size=4, eval_batch_size=3, num_workers=0, common=COMMON)
    assert (train.train, train.flip, train.strong, train.batch_size) == (True, True, None, 4)
    assert (test.train, test.flip, test.strong, test.batch_size) == (False, False, None, 3)
    train, test = _array_loaders(
        data, "device", batch_size=4, eval_batch_size=3, num_workers=0, common=COMMON, strong_view=True
    )
    assert isinstance(train.strong, StrongAugment) and test.strong is None


def _steps(transform) -> list[tuple]:
    out = []
    for step in transform.transforms:
        if isinstance(step, T.RandomCrop):
            out.append(("crop", tuple(step.size), step.padding))
        else:
            out.append((type(step).__name__,))
    return out


def test_the_pil_pipeline_crops_non_square_images_to_their_size_and_flips_for_training():
    data = _array_dataset(shape=(12, 20))
    train, test = _array_loaders(data, "pil", batch_size=4, eval_batch_size=3, num_workers=0, common=COMMON)
    assert _steps(train.loader.dataset.transform) == [
        ("crop", (12, 20), 4),
        ("RandomHorizontalFlip",),
        ("ToTensor",),
        ("Normalize",),
    ]
    assert _steps(test.loader.dataset.transform) == [("ToTensor",), ("Normalize",)]
    assert (train.loader.num_workers, test.loader.num_workers) == (0, 0)
    assert train.strong is None and test.strong is None
    train, test = _array_loaders(
        data, "pil", batch_size=4, eval_batch_size=3, num_workers=0, common=COMMON, strong_view=True
    )
    two = train.loader.dataset.transform
    assert isinstance(two, TwoCrops) and _steps(two.transform)[0] == ("crop", (12, 20), 4)
    assert isinstance(train.strong, StrongAugment) and test.strong is None
    assert _steps(test.loader.dataset.transform) == [("ToTensor",), ("Normalize",)]


# --------------------------------------------------------------------------- JPEG frame headers


def _jpeg(mode: str, **save) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, "JPEG", **save)
    return out.getvalue()


def _components(data: bytes) -> int | None:
    """``jpeg_components`` of ``data``, failing instead of hanging should the scan never end."""

    def stop(*_):
        raise TimeoutError("jpeg_components did not return")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    try:
        return jpeg_components(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _after_soi(data: bytes, extra: bytes) -> bytes:
    return data[:2] + extra + data[2:]


def _com(length: int) -> bytes:
    """A comment segment whose length field is ``length`` (it counts its own 2 bytes)."""
    return b"\xff\xfe" + length.to_bytes(2, "big") + b"c" * (length - 2)


@pytest.mark.parametrize(
    ("mode", "save", "layer"),
    [
        ("L", {}, [(1, 1, 1, 0)]),
        ("RGB", {"subsampling": 2}, [(1, 2, 2, 0), (2, 1, 1, 1), (3, 1, 1, 1)]),
        ("RGB", {"subsampling": 0}, [(1, 1, 1, 0), (2, 1, 1, 1), (3, 1, 1, 1)]),
        ("RGB", {"progressive": True}, [(1, 2, 2, 0), (2, 1, 1, 1), (3, 1, 1, 1)]),
        ("CMYK", {}, None),
    ],
)
def test_jpeg_components_are_what_pil_reads(mode, save, layer):
    data = _jpeg(mode, **save)
    with Image.open(io.BytesIO(data)) as image:
        if layer is not None:
            assert image.layer == layer
        components = image.layers
    assert components == {"L": 1, "RGB": 3, "CMYK": 4}[mode]
    assert _components(data) == components
    for extra in (b"\xff", b"\xff\xff\xff", b"\xff\xd0", b"\xff\xd7", _com(300), _com(2)):
        edited = _after_soi(data, extra)
        with Image.open(io.BytesIO(edited)) as image:
            assert image.layers == components
        assert _components(edited) == components, extra[:4]
    assert _components(_after_soi(data, b"\xff\x01")) == components  # TEM, which PIL does not take


def test_a_second_soi_or_a_head_without_a_frame_header_gives_none():
    data = _jpeg("RGB")
    with pytest.raises(OSError):
        Image.open(io.BytesIO(_after_soi(data, b"\xff\xd8"))).load()
    assert _components(_after_soi(data, b"\xff\xd8")) is None
    assert _components(b"\xff\xd8" + _com(2)) is None
    assert _components(data[:20]) is None  # SOI and APP0 only
    assert _components(b"\xff\xd8\x00\x00\x00\x00") is None


def test_a_frame_header_cut_before_its_component_count_gives_none():
    sof = b"\xff\xc0\x00\x11\x08\x00\x10\x00\x18\x03" + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    head = b"\xff\xd8" + sof
    assert _components(head) == 3
    assert _components(head[:12]) == 3
    assert _components(head[:11]) is None
    assert _components(head[:10]) is None


def test_only_the_first_64_kib_are_searched_for_the_frame_header():
    data = _jpeg("L")
    far = _after_soi(data, _com(65535))
    with Image.open(io.BytesIO(far)) as image:
        assert image.layers == 1
    assert _components(far) is None
    near = _after_soi(data, _com(65535 - 2000))
    assert data.index(b"\xff\xc0") + 65535 - 2000 + 2 + 9 < 1 << 16
    assert _components(near) == 1


# --------------------------------------------------------------------------- in-order and per-sample views


def _files(folder: Path, bad: tuple[int, ...] = (), n: int = 5) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        path = folder / f"{i}.JPEG"
        if i in bad:
            path.write_bytes(b"not an image")
        else:
            small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
            Image.fromarray(small).resize((20 + 3 * i, 18 + 2 * i), Image.BICUBIC).save(path, quality=90)
        files.append(str(path))
    return files, [i % 3 for i in range(n)]


def _folder_loader(files, labels, *, train=True, **kw) -> DeviceFolderLoader:
    kw = {"device": "cpu", "seed": 5, "num_workers": 0, "image_size": 16, **kw}
    return DeviceFolderLoader(files, labels, 2, train=train, **kw)


def _training_views(loader: DeviceFolderLoader, epoch: int) -> dict[int, torch.Tensor]:
    loader.set_epoch(epoch)
    return {int(i): image for batch in loader for i, image in zip(batch.indices, batch.images)}


def test_in_order_renders_every_training_view_of_an_epoch_in_index_order(tmp_path):
    files, labels = _files(tmp_path)
    loader = _folder_loader(files, labels)
    views = _training_views(loader, 3)
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    for batch_size, sizes in ((None, [2, 2, 1]), (3, [3, 2])):
        batches = list(loader.in_order(3, batch_size))
        assert [len(b.indices) for b in batches] == sizes
        for batch in batches:
            assert len(batch) == 5 and batch.views is None and batch.strong is None
            assert batch.targets.dtype == torch.int64 and batch.indices.dtype == torch.int64
            assert batch.targets.tolist() == [labels[i] for i in batch.indices.tolist()]
            assert batch.images.shape == (len(batch.indices), 3, 16, 16)
            for i, image in zip(batch.indices.tolist(), batch.images):
                assert torch.equal(image, views[i])
        assert torch.cat([b.indices for b in batches]).tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(torch.get_rng_state(), rng)
    other = next(iter(loader.in_order(0)))
    assert not torch.equal(other.images[0], views[0])


def test_in_order_leaves_out_unreadable_files_or_stops_with_their_name(tmp_path):
    files, labels = _files(tmp_path, bad=(0, 2, 3))
    loader = _folder_loader(files, labels, skip_bad=True)
    views = _training_views(loader, 1)
    batches = list(loader.in_order(1))
    assert [b.indices.tolist() for b in batches] == [[1], [4]]
    assert [b.targets.tolist() for b in batches] == [[1], [1]]
    assert all(torch.equal(b.images[0], views[int(b.indices[0])]) for b in batches)
    strict = _folder_loader(files, labels)
    _raises(
        lambda: list(strict.in_order(1)),
        f"cannot read image {files[0]} (not an image format PIL or the decoder reads); remove it or set "
        "data.skip_bad_images=true",
    )


def test_in_order_is_for_training_loaders_only(tmp_path):
    files, labels = _files(tmp_path, n=2)
    loader = _folder_loader(files, labels, train=False)
    _raises(lambda: next(loader.in_order(0)), "in_order renders training views: this loader evaluates", ValueError)


def test_in_order_reads_with_the_loaders_workers(tmp_path, monkeypatch):
    files, labels = _files(tmp_path, n=2)
    loader = _folder_loader(files, labels, num_workers=1)
    asked = []

    class Asked(Exception):
        pass

    def data_loader(*args, **kw):
        asked.append(kw["num_workers"])
        raise Asked

    monkeypatch.setattr(device_folder_module, "DataLoader", data_loader)
    with pytest.raises(Asked):
        next(loader.in_order(0))
    assert asked == [1]


def test_views_of_renders_the_training_views_of_the_samples_asked_for(tmp_path):
    files, labels = _files(tmp_path, bad=(2,))
    loader = _folder_loader(files, labels, skip_bad=True)
    views = _training_views(loader, 2)
    batch = loader.views_of([4, 0, 2, 3], 2)
    assert len(batch) == 5 and batch.views is None and batch.strong is None
    assert batch.indices.tolist() == [4, 0, 3] and batch.targets.tolist() == [1, 0, 0]
    assert batch.images.shape == (3, 3, 16, 16)
    for i, image in zip([4, 0, 3], batch.images):
        assert torch.equal(image, views[i])
    none = loader.views_of([2], 2)
    assert none.images.shape == (0, 3, 16, 16) and none.images.dtype == torch.float32
    assert none.targets.tolist() == [] and none.indices.tolist() == [] and none.views is None


def test_in_order_and_views_of_deliver_on_the_loaders_device(tmp_path):
    files, labels = _files(tmp_path, n=3)
    loader = _folder_loader(files, labels, device="meta")
    meta = torch.device("meta")
    for batch in (*loader.in_order(0), loader.views_of([2, 1], 0)):
        assert (batch.images.device, batch.targets.device, batch.indices.device) == (meta, meta, meta)
        assert batch.images.shape == (len(batch.indices), 3, 16, 16)


def test_a_bare_npy_array_under_an_npz_name_is_one_line(tmp_path):
    path = tmp_path / "d.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros((2, 3), dtype=np.uint8))
    _raises(
        lambda: load_cifar100(path),
        f"{path} holds one bare array (a .npy file), not an .npz data set of the arrays train_x, train_y, test_x, "
        "test_y: save them with numpy.savez",
    )


def test_the_pieces_of_a_name_holding_part_are_joined_under_that_name(tmp_path):
    for i in range(2):
        (tmp_path / f"cifar.partial.npz.part{i}").write_bytes(b"x")
    _raises(
        lambda: load_cifar100(tmp_path),
        f"{tmp_path} holds only the pieces of cifar.partial.npz: join them first, e.g. `cd {tmp_path} && "
        f"cat cifar.partial.npz.part[0-1] > cifar.partial.npz`, then pass {tmp_path / 'cifar.partial.npz'}",
    )


def test_no_readable_view_is_an_empty_batch_on_the_loaders_device(tmp_path):
    files, labels = _files(tmp_path, n=3, bad=(1,))
    loader = _folder_loader(files, labels, device="meta", skip_bad=True)
    none = loader.views_of([1], 0)
    meta = torch.device("meta")
    assert (none.images.device, none.targets.device, none.indices.device) == (meta, meta, meta)
    assert none.images.shape == (0, 3, 16, 16) and none.images.dtype == torch.float32
