"""``build_data``: the one entry point the engine uses to get its training and evaluation loaders."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rld.data.arrays import load_cifar100
from rld.data.decode import DECODERS
from rld.data.device_folder import DeviceFolderLoader
from rld.data.device_loader import DeviceLoader, as_device
from rld.data.digits import load_digits
from rld.data.folder import load_image_folders, load_train_folder
from rld.data.holdout import Holdout, LabelledSubset, carve_arrays, carve_dataset
from rld.data.pil import ArrayImageDataset, array_transform
from rld.data.torch_loader import IndexedDataset, TorchLoader, TwoCrops, with_two_crops
from rld.data.types import ArrayDataset, ArraySplit, Loader
from rld.errors import UserError

DATASETS = ("digits", "cifar100", "imagefolder", "imagenet", "hf")
"""Names accepted by :func:`build_data` (``imagenet`` is an alias of ``imagefolder``)."""
PIPELINES = ("auto", "device", "pil")
"""``auto``: the device pipeline, except for image files on a CPU (there DataLoader workers decode and
augment in parallel, and the device pipeline would do it in the training process)."""

log = logging.getLogger("rld")


@dataclass
class DataBundle:
    """Loaders and label information of one data set.

    ``train`` and ``test`` implement :class:`~rld.data.types.Loader` (``set_epoch``, ``len``,
    iteration yielding :class:`~rld.data.types.Batch`).
    """

    train: Loader
    test: Loader
    num_classes: int
    classes: list[str]
    name: str
    split: Any = None  # the train/validation split of a single folder or a manifest (rld.data.sources.Split)
    holdout: Holdout | None = None  # data.holdout: the part of the training split that ``test`` evaluates


def image_pipeline(pipeline: str, device: torch.device | str) -> str:
    """The pipeline image files load through: ``device`` or ``pil`` (``auto``: device on CUDA only)."""
    if pipeline == "auto":
        return "device" if as_device(device).type == "cuda" else "pil"
    return pipeline


def _world(distributed: bool) -> tuple[int, int]:
    """(rank, world size) if ``distributed`` and torch.distributed is initialised, else (0, 1)."""
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def first_per_class(split: ArraySplit, per_class: int) -> ArraySplit:
    """The first ``per_class`` images of each class, in the split's order (a fixed subset).

    Raises UserError when a class has fewer images than asked for.
    """
    counts = np.bincount(split.y)
    if per_class > counts.min():
        n = int(counts.min())
        raise UserError(
            f"data.train_per_class={per_class} exceeds the smallest class of the training split "
            f"({n} image{'s' if n != 1 else ''})"
        )
    rank_in_class = np.zeros(len(split.y), dtype=np.int64)
    seen = np.zeros_like(counts)
    for i, label in enumerate(split.y):
        rank_in_class[i] = seen[label]
        seen[label] += 1
    keep = np.flatnonzero(rank_in_class < per_class)
    return ArraySplit(x=split.x[keep], y=split.y[keep])


def _array_loaders(
    data: ArrayDataset,
    pipeline: str,
    *,
    batch_size: int,
    eval_batch_size: int,
    num_workers: int,
    common: dict,
    strong_view: bool = False,
) -> tuple[Loader, Loader]:
    """Train and test loaders of an in-memory data set; ``common``: the loaders' shared keywords
    (device, seed, channels_last, rank, world_size)."""
    if pipeline == "device":
        stats = dict(mean=data.mean, std=data.std, flip=data.flip)
        return (
            DeviceLoader(data.train, batch_size, train=True, strong=strong_view, **stats, **common),
            DeviceLoader(data.test, eval_batch_size, train=False, **stats, **common),
        )
    size = (int(data.train.x.shape[1]), int(data.train.x.shape[2]))
    loaders = []
    for split, train, bs in ((data.train, True, batch_size), (data.test, False, eval_batch_size)):
        transform = array_transform(data.mean, data.std, train=train, flip=data.flip, size=size)
        strong = (data.mean, data.std) if strong_view and train else None
        dataset = ArrayImageDataset(split, TwoCrops(transform) if strong else transform)
        loaders.append(TorchLoader(dataset, bs, train=train, num_workers=num_workers, strong=strong, **common))
    return loaders[0], loaders[1]


def build_data(
    name: str,
    path: str | None,
    *,
    batch_size: int,
    eval_batch_size: int | None = None,
    device: torch.device | str,
    seed: int,
    num_workers: int = 4,
    channels_last: bool = False,
    distributed: bool = False,
    pipeline: Literal["auto", "device", "pil"] = "auto",
    train_per_class: int | None = None,
    image_size: int | None = None,
    val_fraction: float | None = None,
    skip_bad_images: bool = False,
    split: Any = None,
    image_column: str = "image",
    label_column: str = "label",
    holdout: float | None = None,
    holdout_seed: int = 0,
    strong_view: bool = False,
    decoder: str = "auto",
) -> DataBundle:
    """Build the training and evaluation loaders of data set ``name``.

    Args:
        name: ``"digits"`` (embedded, ``path`` ignored), ``"cifar100"`` (``path``: the official
            folder or archive, or an .npz; see :func:`rld.data.load_cifar100`), ``"imagefolder"``
            or its alias ``"imagenet"`` (``path``: ``ROOT`` with ``train/`` and ``val/``).
        batch_size: training batch size per process.
        eval_batch_size: evaluation batch size per process (default: ``batch_size``).
        device: where batches are delivered.
        seed: the training order and augmentation of epoch ``e`` follow from ``(seed, e)``.
        num_workers: DataLoader workers (image folders and the ``pil`` pipeline only).
        channels_last: deliver images in ``torch.channels_last`` memory format.
        distributed: when True and torch.distributed is initialised, each rank iterates over its
            shard: training takes positions ``rank::world_size`` of the epoch's permutation padded
            to a multiple of the world size by repeating its start (as ``DistributedSampler``);
            evaluation takes ``rank::world_size`` of ``0..N-1`` without padding, so that summing
            the per-rank counts covers every test sample once. ``set_epoch`` is forwarded to the
            sampler; iterating without it advances the epoch by one each time.
        pipeline: ``"device"``: augmentation on the device (:class:`DeviceLoader` for the array data
            sets; :class:`~rld.data.device_folder.DeviceFolderLoader` for image folders and manifests:
            workers read the files, the device decodes); ``"pil"``: the conventional DataLoader +
            torchvision transforms; ``"auto"``: ``device``, except for image files on a CPU device.
            Hugging Face data sets always load through the ``pil`` pipeline.
        train_per_class: for the array data sets, train on only the first N images of each class
            (:func:`first_per_class`); the normalisation statistics stay those of the full split.
        image_size: the side of the model's input: digits (upsampled; default 32), image folders,
            manifests and Hugging Face data (crops; default 224). Not for cifar100.
        val_fraction: image folders without ``train/``/``val/`` and CSV manifests without a
            ``split`` column: the stratified validation fraction (:mod:`rld.data.sources`).
        skip_bad_images: leave unreadable images out (counted in the log) instead of stopping.
        decoder: the device pipeline's image decoder: ``auto``, ``torchvision`` or ``torchcodec``
            (:mod:`rld.data.decode`).
        split: a saved :class:`~rld.data.sources.Split` to use instead of splitting anew.
        image_column, label_column: the columns of a Hugging Face data set (``name="hf"``).
        holdout: hold out this stratified fraction of the training split (seeded by ``holdout_seed``,
            the same for every ``seed``): ``train`` loads the rest, ``test`` the held-out images with the
            evaluation transform, and the data set's test split is not built (:mod:`rld.data.holdout`).
    """
    key = str(name).lower()
    if key not in DATASETS:
        raise UserError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")
    if pipeline not in PIPELINES:
        raise UserError(f"unknown data pipeline {pipeline!r}: choose one of {', '.join(PIPELINES)}")
    if decoder not in DECODERS:
        raise UserError(f"unknown data.decoder {decoder!r}: choose one of {', '.join(DECODERS)}")
    eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
    for what, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{what} must be a positive integer, got {value!r}")
    rank, world_size = _world(distributed)
    common = dict(device=device, seed=seed, channels_last=channels_last, rank=rank, world_size=world_size)

    if image_size is not None and key == "cifar100":
        raise UserError("data.image_size does not apply to cifar100 (its images are 32x32)")
    if key in ("digits", "cifar100"):
        if key == "digits":
            data = load_digits() if image_size is None else load_digits(image_size)
        else:
            if not path:
                raise UserError(
                    "cifar100 needs a data path: the 'cifar-100-python' folder, "
                    "'cifar-100-python.tar.gz', or an .npz with train_x, train_y, test_x, test_y"
                )
            data = load_cifar100(path)
        if train_per_class is not None:
            data = dataclasses.replace(data, train=first_per_class(data.train, train_per_class))
        carved = None
        if holdout is not None:
            data, carved = carve_arrays(data, holdout, holdout_seed)
        train, test = _array_loaders(
            data,
            "pil" if pipeline == "pil" else "device",
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            common=common,
            strong_view=strong_view,
        )
        return DataBundle(train, test, data.num_classes, list(data.classes), data.name, holdout=carved)

    if not path:
        raise UserError(
            f"{key} needs a data path: a folder with train/<class>/ and val/<class>/ image folders, a single "
            "folder of <class>/ folders (with data.val_fraction), or a CSV manifest (path,label)"
        )
    if train_per_class is not None:
        raise UserError("data.train_per_class applies to the array data sets (digits, cifar100), not image folders")
    from rld.data import sources

    size = sources.IMAGE_SIZE_DEFAULT if image_size is None else image_size
    train_set, test_set, classes, split = _image_datasets(
        key, path, size, split, val_fraction, seed, skip_bad_images, image_column, label_column, holdout is None
    )
    carved = None
    if holdout is not None:  # the data set's own evaluation part was never built (test_set is None)
        eval_transform = sources.image_transform(train=False, image_size=size)
        train_set, test_set, carved = carve_dataset(train_set, eval_transform, holdout, holdout_seed)
    on_device = image_pipeline(pipeline, device) == "device"
    if on_device and key == "hf":
        if pipeline == "device":
            log.info("data.pipeline=device: a Hugging Face data set loads through the pil pipeline")
    elif on_device:
        options = dict(image_size=size, decoder=decoder, skip_bad=skip_bad_images, num_workers=num_workers, **common)
        return DataBundle(
            DeviceFolderLoader(*image_list(train_set), batch_size, train=True, strong=strong_view, **options),
            DeviceFolderLoader(*image_list(test_set), eval_batch_size, train=False, **options),
            len(classes),
            classes,
            key,
            split,
            carved,
        )
    strong = with_two_crops(train_set, f"the strong view of data set {key}") if strong_view else None
    return DataBundle(
        TorchLoader(
            IndexedDataset(train_set), batch_size, train=True, num_workers=num_workers, strong=strong, **common
        ),
        TorchLoader(IndexedDataset(test_set), eval_batch_size, train=False, num_workers=num_workers, **common),
        len(classes),
        classes,
        key,
        split,
        carved,
    )


def _image_datasets(
    key: str,
    path: str,
    size: int,
    split: Any,
    val_fraction: float | None,
    seed: int,
    skip_bad_images: bool,
    image_column: str,
    label_column: str,
    held_out: bool,
) -> tuple[Any, Any, list[str], Any]:
    """(training set, evaluation set, class names, split) of an image source: a Hugging Face data set
    (``key="hf"``), a CSV manifest, a single folder of class folders (split by ``val_fraction``, or
    ``split`` saved before), or ``train/`` and ``val/`` folders. ``held_out``: build the evaluation set
    (False when ``data.holdout`` carves it from the training images instead: it is None then)."""
    from rld.data import sources

    root = Path(path).expanduser()
    if key == "hf":
        train_set, test_set, classes = sources.hf_datasets(
            path,
            image_column=image_column,
            label_column=label_column,
            val_fraction=val_fraction,
            seed=seed,
            image_size=size,
            held_out=held_out,
        )
    else:
        if split is None and root.suffix.lower() == ".csv":
            split = sources.manifest_split(root, val_fraction, seed)
        elif split is None and root.is_dir() and not any((root / n).is_dir() for n in ("train", "val", "test")):
            if val_fraction is None:
                raise UserError(
                    f"{root} has no train/ and val/ folders: set data.val_fraction (e.g. 0.1) to split its "
                    "<class>/ folders into training and validation images"
                )
            split = sources.folder_split(root, val_fraction, seed)
        if split is not None:
            train_set, test_set = sources.split_datasets(split, size, skip_bad_images, held_out=held_out)
            classes = list(split.classes)
        else:
            if held_out:
                train_set, test_set = load_image_folders(path, size, skip_bad_images)
            else:
                train_set, test_set = load_train_folder(path, size, skip_bad_images), None
            classes = list(train_set.classes)
    return train_set, test_set, classes, split


def image_list(dataset: Any) -> tuple[list[str], list[int]]:
    """(paths, labels) of the files of an image data set: an ``ImageFolder``, an
    :class:`~rld.data.sources.ImageListDataset` or a :class:`~rld.data.holdout.LabelledSubset` of one."""
    from rld.data.sources import ImageListDataset

    if isinstance(dataset, LabelledSubset):
        files, labels = image_list(dataset.base)
        return [files[i] for i in dataset.indices], [labels[i] for i in dataset.indices]
    if isinstance(dataset, ImageListDataset):
        return [str(dataset.root / p) for p, _ in dataset.items], [int(y) for _, y in dataset.items]
    samples = getattr(dataset, "samples", None)  # torchvision's ImageFolder
    if samples is None:
        raise TypeError(f"{type(dataset).__name__} does not list image files")
    return [str(p) for p, _ in samples], [int(y) for _, y in samples]


def eval_preprocess(test_loader: Any) -> dict[str, Any]:
    """The evaluation preprocessing of a run's test loader: ``{"size": [H, W]}`` (array data: images are
    resized to that size) or ``{"resize": R, "crop": C}`` (image folders), plus ``mean`` and ``std``."""
    if isinstance(test_loader, DeviceLoader):
        return {
            "size": [test_loader.height, test_loader.width],
            "mean": list(test_loader.mean),
            "std": list(test_loader.std),
        }
    if isinstance(test_loader, DeviceFolderLoader):
        size = test_loader.image_size
        return {
            "resize": test_loader.resize,
            "crop": [size, size],
            "mean": list(test_loader.mean),
            "std": list(test_loader.std),
        }
    import torchvision.transforms as T

    dataset = getattr(getattr(test_loader, "loader", None), "dataset", None)
    transform = getattr(getattr(dataset, "base", dataset), "transform", None)
    steps = getattr(transform, "transforms", [])
    out: dict[str, Any] = {}
    for step in steps:
        if isinstance(step, T.Resize):
            out["resize"] = step.size if isinstance(step.size, int) else list(step.size)
        elif isinstance(step, T.CenterCrop):
            out["crop"] = list(step.size)
        elif isinstance(step, T.Normalize):
            out["mean"], out["std"] = [float(v) for v in step.mean], [float(v) for v in step.std]
    if "mean" not in out:
        raise UserError("cannot tell the evaluation preprocessing of this data set (no Normalize step)")
    return out
