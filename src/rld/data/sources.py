"""Your own labelled images: a single class-folder tree or a CSV manifest, split into training and
validation images (stratified, seeded), with the standard 224-style transforms at any image size.

* a single folder ``ROOT/<class>/<image>`` (no ``train/``/``val/``), split by ``data.val_fraction``;
* a CSV manifest with ``path,label`` columns (paths relative to the CSV; an optional ``split`` column
  with ``train``/``val`` fixes the split, otherwise ``data.val_fraction`` splits it).

The split is a list of files per part (:class:`Split`); the engine saves it in the run folder
(``split.json``), so a resumed run or ``rld eval`` uses the same files even if the folder changed.
An image that cannot be read stops with one error naming the file, or (``data.skip_bad_images``)
is left out, counted in the log.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS

from rld.errors import UserError, first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

log = logging.getLogger("rld")

SPLIT_FILE = "split.json"
IMAGE_SIZE_DEFAULT = 224


def image_transform(*, train: bool, image_size: int = 224) -> Callable:
    """``RandomResizedCrop(size)`` + flip for training; ``Resize(size·256/224)`` + ``CenterCrop(size)``
    for evaluation; then ``ToTensor`` + ``Normalize`` with the ImageNet statistics."""
    if train:
        steps = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


@dataclass
class Split:
    """Files (relative to ``root``) and labels of the training and validation parts, and the class names."""

    root: str
    classes: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]

    def to_json(self) -> str:
        return json.dumps({"root": self.root, "classes": self.classes, "train": self.train, "val": self.val}) + "\n"

    @classmethod
    def read(cls, path: Path) -> Split:
        try:
            data = json.loads(Path(path).read_text())
            if not isinstance(data["root"], str) or not all(isinstance(c, str) for c in data["classes"]):
                raise TypeError("root and classes must be text")
            return cls(
                data["root"],
                list(data["classes"]),
                [(str(p), int(y)) for p, y in data["train"]],
                [(str(p), int(y)) for p, y in data["val"]],
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"cannot read the saved split {path} ({err}); delete it to split anew") from err


def _stratified(items: list[tuple[str, int]], val_fraction: float, seed: int) -> tuple[list, list]:
    from sklearn.model_selection import train_test_split

    if not 0 < val_fraction < 1:
        raise UserError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    labels = [y for _, y in items]
    counts: dict[int, int] = {}
    for y in labels:
        counts[y] = counts.get(y, 0) + 1
    small = [y for y, n in counts.items() if n < 2]
    if small:
        raise UserError(f"class {small[0]} has a single image: a stratified split needs at least 2 per class")
    try:
        train, val = train_test_split(items, test_size=val_fraction, stratify=labels, random_state=seed)
    except ValueError as err:
        raise UserError(f"cannot split {len(items)} images with data.val_fraction={val_fraction}: {err}") from err
    return sorted(train), sorted(val)


def folder_split(root: str | Path, val_fraction: float, seed: int) -> Split:
    """The stratified split of a single ``ROOT/<class>/<image>`` tree."""
    root = Path(root).expanduser()
    classes = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    if not classes:
        raise UserError(f"{root} has no class folders: expected ROOT/<class>/<image> (or ROOT/train and ROOT/val)")
    items = [
        (str(f.relative_to(root)), i)
        for i, c in enumerate(classes)
        for f in sorted((root / c).rglob("*"))
        if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS
    ]
    if not items:
        raise UserError(f"{root}: no images in its class folders")
    train, val = _stratified(items, val_fraction, seed)
    return Split(str(root), classes, train, val)


def manifest_split(csv_path: str | Path, val_fraction: float | None, seed: int) -> Split:
    """The split of a CSV manifest (``path,label`` and optionally ``split``)."""
    csv_path = Path(csv_path).expanduser()
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise UserError(f"cannot read the manifest {csv_path}: {err.strerror}") from err
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"cannot read the manifest {csv_path}: {err}") from err
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise UserError(f"{csv_path} needs the columns path,label (and optionally split: train or val)")
    for line, row in enumerate(rows, start=2):
        if not isinstance(row.get("path"), str) or not row["path"].strip() or not isinstance(row.get("label"), str):
            raise UserError(f"{csv_path}, line {line}: a row needs a path and a label, got {row!r}")
    classes = sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    items = [(r["path"], index[r["label"]], (r.get("split") or "").strip().lower()) for r in rows]
    root = str(csv_path.parent)
    if all(s in ("train", "val") for _, _, s in items):
        train = [(p, y) for p, y, s in items if s == "train"]
        val = [(p, y) for p, y, s in items if s == "val"]
        return Split(root, classes, train, val)
    if val_fraction is None:
        raise UserError(f"{csv_path} has no split column: set data.val_fraction to split it")
    train, val = _stratified([(p, y) for p, y, _ in items], val_fraction, seed)
    return Split(root, classes, train, val)


SKIP_HINT = "remove it or set data.skip_bad_images=true"


def read_image(path: str | Path, hint: str = SKIP_HINT) -> Image.Image:
    """The image file ``path`` decoded, as RGB. UserError naming the file, what is wrong and ``hint``
    when it is not an image PIL can decode whole: not an image, truncated or damaged (PIL raises
    many kinds of exceptions for those), or a size PIL refuses as a decompression bomb. A size it
    merely warns about (over ``Image.MAX_IMAGE_PIXELS``) is said in the log and decoded."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                rgb = image.convert("RGB")
    except UnidentifiedImageError:
        raise UserError(f"cannot read image {path}: not an image file PIL knows; {hint}") from None
    except Exception as err:  # noqa: BLE001 - truncated or damaged data: OSError, SyntaxError, ValueError, …
        raise UserError(f"cannot read image {path} ({first_line(err, 120)}); {hint}") from err
    for w in caught:
        log.warning("image %s: %s", path, str(w.message).splitlines()[0] if str(w.message) else "a warning")
    return rgb


def skipped_text(count: int, total: int, root: Any, names: list[Any]) -> str:
    """``3 unreadable image(s) of 120 under ROOT: a.jpg, b.jpg, c.jpg`` (five names at most)."""
    shown = ", ".join(map(str, names[:5])) + (", …" if len(names) > 5 else "")
    return f"{count} unreadable image(s) of {total} under {root}" + (f": {shown}" if shown else "")


def readable(path: str | Path) -> bool:
    """Whether PIL identifies ``path`` as an image and its ``verify`` passes: a check that decodes no
    pixels (a truncated JPEG passes it; :func:`read_image` finds that when it decodes)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.verify()
        return True
    except Exception:  # noqa: BLE001 - any exception PIL raises on a damaged file
        return False


class ImageListDataset(Dataset):
    """``(image, label)`` of a list of files under ``root``, read with PIL and transformed."""

    def __init__(self, root: str, items: list[tuple[str, int]], transform: Callable, skip_bad: bool = False):
        self.root, self.transform = Path(root), transform
        missing = [p for p, _ in items if not (self.root / p).is_file()]
        if missing:
            raise UserError(f"image {self.root / missing[0]} does not exist ({len(missing)} missing files)")
        if skip_bad:
            bad = [p for p, _ in items if not readable(self.root / p)]
            if bad:
                log.info("skipped %s", skipped_text(len(bad), len(items), root, bad))
            unreadable = set(bad)
            good = [(p, y) for p, y in items if p not in unreadable]
            if items and not good:
                raise UserError(f"none of the {len(items)} images under {root} can be read")
            items = good
        self.items, self.skip_bad = items, skip_bad

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        """The label of every item, in order (no image is read)."""
        return [label for _, label in self.items]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        """``(image, label)``; with ``skip_bad``, an image whose damage only decoding shows (the check
        in ``__init__`` decodes no pixels) is replaced by the next readable one, said in the log."""
        for k in range(len(self.items) if self.skip_bad else 1):
            path, label = self.items[(index + k) % len(self.items)]
            if not self.skip_bad:
                return self.transform(read_image(self.root / path)), label
            try:
                return self.transform(read_image(self.root / path, "left out (data.skip_bad_images)")), label
            except UserError as err:
                log.info("%s", err)
        raise UserError(f"none of the {len(self.items)} images under {self.root} can be read")


def split_datasets(
    split: Split, image_size: int, skip_bad: bool = False, *, held_out: bool = True
) -> tuple[Dataset, Dataset | None]:
    """The training and validation data sets of ``split`` with their transforms; without ``held_out``
    the validation part is not built (None): none of its files is looked at."""
    train = ImageListDataset(split.root, split.train, image_transform(train=True, image_size=image_size), skip_bad)
    if not held_out:
        return train, None
    val = ImageListDataset(split.root, split.val, image_transform(train=False, image_size=image_size), skip_bad)
    return train, val


# ----------------------------------------------------------------------------- Hugging Face data sets


class HFImageDataset(Dataset):
    """``(image, label)`` of one split of a Hugging Face ``datasets`` data set."""

    def __init__(self, split: Any, image_column: str, label_column: str, transform: Callable):
        self.split, self.image_column, self.label_column, self.transform = split, image_column, label_column, transform

    def __len__(self) -> int:
        return len(self.split)

    @property
    def labels(self) -> list[int]:
        """The label of every row, in order (no image is decoded)."""
        return [int(y) for y in self.split[self.label_column]]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        row = self.split[int(index)]
        image = row[self.image_column]
        if not isinstance(image, Image.Image):
            raise UserError(f"column {self.image_column!r} holds {type(image).__name__}, not images")
        return self.transform(image.convert("RGB")), int(row[self.label_column])


def hf_datasets(
    path: str,
    *,
    image_column: str = "image",
    label_column: str = "label",
    val_fraction: float | None = None,
    seed: int = 0,
    image_size: int = IMAGE_SIZE_DEFAULT,
    held_out: bool = True,
) -> tuple[Dataset, Dataset | None, list[str]]:
    """Training and validation sets of a Hugging Face data set: a folder written by
    ``save_to_disk`` or a hub name (``pip install datasets``; the hub's cache serves offline machines).

    Its ``train`` split trains; ``validation`` (or ``test``) evaluates, or ``data.val_fraction`` of
    ``train`` (stratified, seeded) when there is neither. Class names come from the label column's
    ``ClassLabel`` feature (else the sorted label values). Without ``held_out`` the evaluation set is
    not built (None; ``data.val_fraction`` still takes its part out of ``train``)."""
    try:
        import datasets
    except ImportError as err:
        raise UserError("data.name=hf needs the package datasets: pip install datasets (or rld[hf])") from err
    try:
        data = datasets.load_from_disk(path) if Path(path).expanduser().is_dir() else datasets.load_dataset(path)
    except Exception as err:  # missing folder, no network and no cache, ...
        raise UserError(f"cannot load the Hugging Face data set {path!r}: {str(err).splitlines()[0][:160]}") from err
    if not isinstance(data, datasets.DatasetDict) or "train" not in data:
        raise UserError(f"the Hugging Face data set {path!r} needs a 'train' split")
    train = data["train"]
    for column in (image_column, label_column):
        if column not in train.column_names:
            raise UserError(
                f"the Hugging Face data set {path!r} has no column {column!r} (its columns: "
                f"{', '.join(train.column_names)}); set data.image_column / data.label_column"
            )
    feature = train.features[label_column]
    classes = list(feature.names) if hasattr(feature, "names") else [str(v) for v in sorted(set(train[label_column]))]
    evaluated = next((name for name in ("validation", "test") if name in data), None)
    held = data[evaluated] if evaluated is not None and held_out else None
    if evaluated is None:
        if val_fraction is None:
            raise UserError(f"the Hugging Face data set {path!r} has no validation/test split: set data.val_fraction")
        items = [(str(i), int(y)) for i, y in enumerate(train[label_column])]
        tr, va = _stratified(items, val_fraction, seed)
        held = train.select([int(i) for i, _ in va]) if held_out else None
        train = train.select([int(i) for i, _ in tr])
    train_set = HFImageDataset(train, image_column, label_column, image_transform(train=True, image_size=image_size))
    if held is None:
        return train_set, None, classes
    eval_transform = image_transform(train=False, image_size=image_size)
    return train_set, HFImageDataset(held, image_column, label_column, eval_transform), classes
