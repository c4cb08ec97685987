"""Data sets and loaders.

* :func:`build_data` — the entry point: name + path -> :class:`DataBundle` of two loaders.
* Array data sets kept in memory: :func:`load_cifar100` (official pickles, archive or .npz),
  :func:`load_digits` (embedded, no download); :class:`DeviceLoader` runs their augmentation on
  the training device, :class:`ArrayImageDataset` is the conventional PIL/torchvision path.
* Image folders (ImageNet): :func:`load_image_folders`; :class:`DeviceFolderLoader` decodes and augments
  on the training device (views a pure function of (seed, epoch, index)), :class:`TorchLoader` is the
  DataLoader + PIL path.

Every loader yields :class:`Batch` ``(images, targets, indices, views)``.
"""

from rld.data.arrays import CIFAR100_CLASSES, CIFAR100_MEAN, CIFAR100_STD, load_cifar100
from rld.data.build import DATASETS, DataBundle, build_data
from rld.data.device_folder import DeviceFolderLoader
from rld.data.device_loader import DeviceLoader
from rld.data.digits import load_digits
from rld.data.folder import folder_transform, load_image_folders
from rld.data.pil import ArrayImageDataset, array_transform
from rld.data.sampling import EpochSampler, epoch_generator
from rld.data.sources import IMAGENET_MEAN, IMAGENET_STD
from rld.data.torch_loader import IndexedDataset, TorchLoader
from rld.data.types import ArrayDataset, ArraySplit, Batch, Loader
from rld.data.views import CENTER_VIEW, NUM_VIEWS, PAD, decode_views, encode_views

__all__ = [
    "CENTER_VIEW",
    "CIFAR100_CLASSES",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NUM_VIEWS",
    "PAD",
    "ArrayDataset",
    "ArrayImageDataset",
    "ArraySplit",
    "Batch",
    "DataBundle",
    "DeviceFolderLoader",
    "DeviceLoader",
    "EpochSampler",
    "IndexedDataset",
    "Loader",
    "TorchLoader",
    "array_transform",
    "build_data",
    "decode_views",
    "encode_views",
    "epoch_generator",
    "folder_transform",
    "load_cifar100",
    "load_digits",
    "load_image_folders",
]
