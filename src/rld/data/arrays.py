"""Readers for CIFAR-100 in its official pickle format and as a plain ``.npz`` of arrays.

Accepted locations (see :func:`load_cifar100`):

* the official ``cifar-100-python`` folder (files ``train``, ``test`` and ``meta``), or a folder
  that contains it;
* the official ``cifar-100-python.tar.gz`` archive (read in place, nothing is extracted), or a
  folder that contains it;
* an ``.npz`` file with ``train_x (N,32,32,3) uint8``, ``train_y (N,)``, ``test_x``, ``test_y`` and
  optionally ``classes (C,) str``, or a folder that contains exactly one such file.

The official files are Python-2 pickles. They are read with a restricted unpickler that only
rebuilds plain containers and numpy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from rld.data.types import ArrayDataset, ArraySplit
from rld.errors import UserError

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray "
    "road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar "
    "sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe "
    "whale willow_tree wolf woman worm"
).split()
"""The 100 fine-label names in the standard order (label ``i`` is ``CIFAR100_CLASSES[i]``)."""

OFFICIAL_DIR = "cifar-100-python"
OFFICIAL_ARCHIVE = "cifar-100-python.tar.gz"
_IMAGE_SHAPE = (32, 32, 3)
_HOW = (
    "give the official 'cifar-100-python' folder, the 'cifar-100-python.tar.gz' archive, or an .npz "
    "with train_x, train_y, test_x, test_y"
)


# --------------------------------------------------------------------------- official pickles


def _multiarray(name: str) -> Any:
    """numpy 2 renamed ``numpy.core`` to ``numpy._core``; resolve either spelling without warnings."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    return getattr(multiarray, name)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and builtin containers, and nothing else."""

    _ALLOWED = {
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): lambda: _multiarray("_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): lambda: _multiarray("_reconstruct"),
        ("numpy.core.multiarray", "scalar"): lambda: _multiarray("scalar"),
        ("numpy._core.multiarray", "scalar"): lambda: _multiarray("scalar"),
        ("_codecs", "encode"): lambda: __import__("codecs").encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        make = self._ALLOWED.get((module, name))
        if make is None:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR-100 pickle")
        return make()


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # any failure here means a damaged or foreign file
        raise UserError(
            f"{where} is not a readable CIFAR-100 pickle ({type(exc).__name__}: {exc}); "
            f"the download is probably truncated or corrupt: download {OFFICIAL_ARCHIVE} again"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{where} does not hold a CIFAR-100 dictionary; {_HOW}")
    return obj


def _key(d: dict, key: str, where: str) -> Any:
    """``d[key]`` accepting str or bytes keys (pickles written by Python 2 or 3)."""
    for k in (key, key.encode("latin1")):
        if k in d:
            return d[k]
    raise UserError(f"{where} has no '{key}' entry; it is not a CIFAR-100 file: {_HOW}")


def _decode(name: Any) -> str:
    return name.decode("utf-8") if isinstance(name, bytes) else str(name)


def _official_split(d: dict, where: str) -> ArraySplit:
    data, labels = _key(d, "data", where), _key(d, "fine_labels", where)
    try:
        data, labels = np.asarray(data), np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where} holds malformed arrays ({exc}); download {OFFICIAL_ARCHIVE} again") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(
            f"{where}: 'data' must be uint8 rows of 3072 bytes, got {data.dtype} {data.shape}; "
            f"download {OFFICIAL_ARCHIVE} again"
        )
    # Each row is the red plane, then green, then blue, each 32 x 32 row-major: CHW -> HWC.
    x = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    y = _labels(labels, where, "fine_labels")
    if y.shape[0] != x.shape[0]:
        raise UserError(f"{where} has {x.shape[0]} images but {y.shape[0]} labels; download {OFFICIAL_ARCHIVE} again")
    return ArraySplit(x=x, y=y)


def _labels(labels: np.ndarray, where: str, key: str) -> np.ndarray:
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise UserError(f"{where}: '{key}' must be a list of integer labels, got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def _official_classes(d: dict, where: str) -> list[str]:
    names = [_decode(n) for n in _key(d, "fine_label_names", where)]
    if len(names) != len(CIFAR100_CLASSES):
        raise UserError(f"{where} lists {len(names)} fine labels, CIFAR-100 has 100; {_HOW}")
    return names


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None


def _from_official_dir(folder: Path) -> tuple[ArraySplit, ArraySplit, list[str]]:
    missing = [f for f in ("train", "test") if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{folder} lacks {', '.join(missing)}: an official {OFFICIAL_DIR} folder has train, test, meta")

    def read(name: str) -> dict:
        return _unpickle(_read_file(folder / name), str(folder / name))

    train = _official_split(read("train"), str(folder / "train"))
    test = _official_split(read("test"), str(folder / "test"))
    meta = folder / "meta"
    classes = _official_classes(read("meta"), str(meta)) if meta.is_file() else list(CIFAR100_CLASSES)
    return train, test, classes


def _from_archive(path: Path) -> tuple[ArraySplit, ArraySplit, list[str]]:
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = member.name.rstrip("/").rsplit("/", 1)[-1]
                if member.isfile() and base in ("train", "test", "meta") and base not in found:
                    f = tar.extractfile(member)
                    if f is not None:
                        found[base] = f.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UserError(
            f"{path} is not a readable tar archive ({type(exc).__name__}: {exc}); "
            f"the download is probably truncated: download {OFFICIAL_ARCHIVE} again"
        ) from None
    missing = [f for f in ("train", "test") if f not in found]
    if missing:
        raise UserError(f"{path} lacks {OFFICIAL_DIR}/{' and '.join(missing)}: it is not the CIFAR-100 archive")
    splits = []
    for name in ("train", "test"):
        where = f"{path}:{name}"
        splits.append(_official_split(_unpickle(found[name], where), where))
    if "meta" in found:
        classes = _official_classes(_unpickle(found["meta"], f"{path}:meta"), f"{path}:meta")
    else:
        classes = list(CIFAR100_CLASSES)
    return splits[0], splits[1], classes


# --------------------------------------------------------------------------- npz


def _npz_classes(z: Any, path: Path) -> list[str]:
    try:
        names = z["classes"]
    except ValueError:  # stored as Python objects, which allow_pickle=False refuses
        raise UserError(
            f"{path}: 'classes' is stored as Python objects; save it as strings, "
            "e.g. classes=np.array(names, dtype=str)"
        ) from None
    if names.ndim != 1:
        raise UserError(f"{path}: 'classes' must be a 1-D array of names, got shape {names.shape}")
    return [str(c) for c in names.tolist()]


def _from_npz(path: Path) -> tuple[ArraySplit, ArraySplit, list[str]]:
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a .npy (one bare array) under an .npz name
            raise UserError(
                f"{path} holds one bare array (a .npy file), not an .npz data set of the arrays train_x, "
                "train_y, test_x, test_y: save them with numpy.savez"
            )
        with z:
            missing = [k for k in ("train_x", "train_y", "test_x", "test_y") if k not in z.files]
            if missing:
                raise UserError(
                    f"{path} lacks the arrays {', '.join(missing)}: an .npz data set needs train_x, "
                    "train_y, test_x, test_y (and optionally classes)"
                )
            arrays = {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
            classes = _npz_classes(z, path) if "classes" in z.files else None
    except UserError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"{path} is not a readable .npz file ({type(exc).__name__}: {exc}); "
            "it is probably truncated: copy or join it again"
        ) from None
    splits = []
    for s in ("train", "test"):
        x, y = arrays[f"{s}_x"], arrays[f"{s}_y"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != _IMAGE_SHAPE:
            raise UserError(f"{path}: {s}_x must be uint8 of shape (N, 32, 32, 3), got {x.dtype} {x.shape}")
        if y.shape != (x.shape[0],):
            raise UserError(f"{path}: {s}_y must have shape ({x.shape[0]},) to match {s}_x, got {y.shape}")
        splits.append(ArraySplit(x=x, y=_labels(y, str(path), f"{s}_y")))
    return splits[0], splits[1], classes if classes is not None else list(CIFAR100_CLASSES)


# --------------------------------------------------------------------------- locating


def _parts_hint(folder: Path) -> str | None:
    parts = sorted(p.name for p in folder.glob("*.npz.part*") if re.fullmatch(r".+\.npz\.part\d+", p.name))
    if not parts:
        return None
    stem = parts[0].rsplit(".part", 1)[0]  # the name may hold ".part" itself
    count = len([p for p in parts if p.startswith(stem + ".part")])
    pieces = f"{stem}.part[0-{count - 1}]" if count <= 10 else f"{stem}.part*"
    return (
        f"{folder} holds only the pieces of {stem}: join them first, "
        f"e.g. `cd {folder} && cat {pieces} > {stem}`, then pass {folder / stem}"
    )


def _locate(path: Path) -> tuple[str, Path]:
    """Find what ``path`` points to: ("official" | "archive" | "npz", location)."""
    if not path.exists():
        raise UserError(f"CIFAR-100 data not found at {path}: {_HOW}")
    if path.is_file():
        if path.suffix == ".npz":
            return "npz", path
        if path.name.endswith((".tar.gz", ".tgz", ".tar")):
            return "archive", path
        if re.search(r"\.npz\.part\d+$", path.name):
            raise UserError(_parts_hint(path.parent) or f"{path} is a piece of an .npz: join the pieces first")
        raise UserError(f"{path} is not a known CIFAR-100 format: {_HOW}")
    if (path / "train").is_file() and (path / "test").is_file():
        return "official", path
    if (path / OFFICIAL_DIR).is_dir():
        return "official", path / OFFICIAL_DIR
    if (path / OFFICIAL_ARCHIVE).is_file():
        return "archive", path / OFFICIAL_ARCHIVE
    npz = sorted(path.glob("*.npz"))
    if len(npz) == 1:
        return "npz", npz[0]
    if len(npz) > 1:
        names = ", ".join(p.name for p in npz)
        raise UserError(f"{path} holds several .npz files ({names}): pass the one to use")
    hint = _parts_hint(path)
    if hint:
        raise UserError(hint)
    raise UserError(f"{path} holds no CIFAR-100 data: {_HOW}")


def load_cifar100(path: str | os.PathLike[str]) -> ArrayDataset:
    """Read CIFAR-100 from ``path`` (any location listed in this module's docstring).

    Returns an :class:`ArrayDataset` named ``"cifar100"``: train/test images (N, 32, 32, 3) uint8
    in HWC order, int64 labels, the 100 fine-label names, the usual CIFAR-100 normalisation
    statistics and ``flip=True``. Raises :class:`UserError` for a missing, damaged or foreign file.
    """
    kind, where = _locate(Path(path).expanduser())
    reader = {"official": _from_official_dir, "archive": _from_archive, "npz": _from_npz}[kind]
    train, test, classes = reader(where)
    for split_name, split in (("train", train), ("test", test)):
        if len(split) == 0:
            raise UserError(f"{where}: the {split_name} split is empty")
        lo, hi = int(split.y.min()), int(split.y.max())
        if lo < 0 or hi >= len(classes):
            raise UserError(
                f"{where}: {split_name} labels span {lo}..{hi}, outside 0..{len(classes) - 1} "
                f"for {len(classes)} classes; the file is not CIFAR-100 or is damaged"
            )
    return ArrayDataset(
        name="cifar100",
        train=train,
        test=test,
        classes=classes,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        flip=True,
    )
