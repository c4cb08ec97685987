"""Edges of the DataLoader pipeline (``TorchLoader``): its published defaults, the refusals of a bad
batch size or worker count, the sample order (seeded, sharded, resumed inside an epoch), the memory
format of the images, the worker processes (persistent, seeded from ``seed``) and the global random
generator with none, pinned memory and non-blocking copies exactly on CUDA (a stand-in device, since
no GPU is needed), the device every tensor of a batch goes to, and the strong view: the rows of the
epoch's strong plan consumed position by position, on every rank."""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torchvision import transforms as T

from rld.data import torch_loader
from rld.data.pil import ArrayImageDataset
from rld.data.strong import StrongAugment, strong_plan
from rld.data.torch_loader import TorchLoader, TwoCrops
from rld.data.types import ArraySplit
from rld.data.views import OFFSETS
from rld.errors import UserError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
PLAIN = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])  # no random crop: the strong crop is the image


def _split(n: int) -> ArraySplit:
    rng = np.random.default_rng(n)
    return ArraySplit(rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8), np.arange(n, dtype=np.int64) % 3)


def _loader(n: int = 8, batch_size: int = 2, *, train: bool = True, strong: bool = False, **kw) -> TorchLoader:
    """A loader of ``n`` random 8x8 images in the main process (unless ``num_workers`` says otherwise)."""
    kw.setdefault("num_workers", 0)
    kw.setdefault("device", "cpu")
    data = ArrayImageDataset(_split(n), TwoCrops(PLAIN) if strong else PLAIN)
    return TorchLoader(data, batch_size, train=train, strong=(MEAN, STD) if strong else None, **kw)


def _indices(batches) -> list[int]:
    return [i for b in batches for i in b.indices.tolist()]


class _Probe(Dataset):
    """Items ``(zeros, (process id, workers of its DataLoader, a draw of torch's generator), index)``."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        info = get_worker_info()
        draw = int(torch.randint(0, 2**62, ()))
        return torch.zeros(3, 8, 8), torch.tensor([os.getpid(), 0 if info is None else info.num_workers, draw]), index


# ----------------------------------------------------------------------------- defaults and refusals


def test_published_defaults():
    params = inspect.signature(TorchLoader).parameters
    defaults = {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}
    assert defaults == dict(seed=0, num_workers=4, channels_last=False, rank=0, world_size=1, strong=None)
    assert [name for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY] == [
        "train", "device", "seed", "num_workers", "channels_last", "rank", "world_size", "strong",
    ]  # fmt: skip


def test_the_default_seed_is_zero():
    """Without ``seed`` the training order is seed 0's, not seed 1's."""
    data = ArrayImageDataset(_split(8), PLAIN)
    default = _indices(TorchLoader(data, 2, train=True, device="cpu", num_workers=0))
    assert default == _indices(_loader(seed=0))
    assert default != _indices(_loader(seed=1))


def test_by_default_one_process_takes_every_sample():
    """Rank 0 of 1 by default: evaluation yields all samples in order, training a permutation of all."""
    data = ArrayImageDataset(_split(8), PLAIN)
    assert _indices(TorchLoader(data, 3, train=False, device="cpu", num_workers=0)) == list(range(8))
    assert sorted(_indices(TorchLoader(data, 3, train=True, device="cpu", num_workers=0))) == list(range(8))
    assert _indices(_loader(batch_size=3, train=False, rank=1, world_size=2)) == [1, 3, 5, 7]


def test_by_default_images_are_contiguous_and_not_channels_last():
    data = ArrayImageDataset(_split(4), PLAIN)
    images = next(iter(TorchLoader(data, 4, train=False, device="cpu", num_workers=0))).images
    assert images.is_contiguous() and not images.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
def test_by_default_four_persistent_worker_processes_load_the_batches():
    """Four processes other than this one, each told there are four, and the same ones next epoch."""
    loader = TorchLoader(_Probe(4), 1, train=False, device="cpu")
    first, second = ([b.targets[0, :2].tolist() for b in loader] for _ in range(2))
    pids = [pid for pid, _ in first]
    assert len(set(pids)) == 4 and os.getpid() not in pids
    assert [workers for _, workers in first] == [4, 4, 4, 4]
    assert second == first


@pytest.mark.parametrize("bad", [True, False, 2.0, "2", None, 0, -1])
def test_batch_size_must_be_a_positive_integer(bad):
    with pytest.raises(UserError) as info:
        _loader(batch_size=bad)
    assert str(info.value) == f"batch size must be a positive integer, got {bad!r}"


@pytest.mark.parametrize("bad", [True, False, 1.0, "1", None, -1])
def test_num_workers_must_be_a_non_negative_integer(bad):
    with pytest.raises(UserError) as info:
        _loader(num_workers=bad)
    assert str(info.value) == f"num_workers must be a non-negative integer, got {bad!r}"


def test_a_batch_of_one_and_no_workers_are_accepted():
    loader = _loader(n=3, batch_size=1, train=False, num_workers=0)
    assert len(loader) == 3
    assert [b.indices.tolist() for b in loader] == [[0], [1], [2]]


# ----------------------------------------------------------------------------- order and random draws


def test_the_order_is_a_function_of_seed_and_epoch():
    a, b, other = _loader(seed=5), _loader(seed=5), _loader(seed=6)
    epochs = [_indices(a) for _ in range(2)]
    assert epochs == [_indices(b) for _ in range(2)]
    assert all(sorted(order) == list(range(8)) for order in epochs) and epochs[0] != epochs[1]
    assert _indices(other) != epochs[0]


@pytest.mark.parametrize("start", [0, 1, 2, 3])
def test_set_epoch_skips_the_first_batches_of_the_epoch(start):
    """``set_epoch(e, start_batch)`` yields epoch e without its first ``start_batch * batch_size`` samples;
    the next iteration is epoch e + 1 from its start."""
    whole = _loader(n=8, batch_size=3, seed=2)
    whole.set_epoch(4)
    full, following = _indices(whole), _indices(whole)
    loader = _loader(n=8, batch_size=3, seed=2)
    loader.set_epoch(4, start_batch=start)
    batches = list(loader)
    assert len(batches) == 3 - start and _indices(batches) == full[3 * start :]
    assert _indices(loader) == following != full


def test_without_workers_iterating_draws_nothing_from_the_global_generator():
    """With no worker the items' random draws are torch's global generator's, after nothing else: a run
    that restores that generator gets the same augmentations."""
    loader = TorchLoader(_Probe(5), 2, train=True, device="cpu", num_workers=0)
    torch.manual_seed(11)
    draws = [d for b in loader for d in b.targets[:, 2].tolist()]
    torch.manual_seed(11)
    assert draws == [int(torch.randint(0, 2**62, ())) for _ in range(5)]


def test_workers_are_persistent_and_their_draws_are_seeded_by_seed():
    """One worker: a process of its own, kept for the next epoch; its random draws are the same for the
    same seed and others for another seed."""
    a = TorchLoader(_Probe(4), 2, train=False, device="cpu", seed=3, num_workers=1)
    first, second = (torch.cat([b.targets for b in a]) for _ in range(2))
    pids = set(first[:, 0].tolist()) | set(second[:, 0].tolist())
    assert len(pids) == 1 and os.getpid() not in pids
    assert first[:, 1].tolist() == [1, 1, 1, 1]
    again = TorchLoader(_Probe(4), 2, train=False, device="cpu", seed=3, num_workers=1)
    other = TorchLoader(_Probe(4), 2, train=False, device="cpu", seed=4, num_workers=1)
    assert torch.equal(torch.cat([b.targets for b in again])[:, 2], first[:, 2])
    assert not torch.equal(torch.cat([b.targets for b in other])[:, 2], first[:, 2])


# ----------------------------------------------------------------------------- memory format and devices


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("strong", [False, True])
def test_images_and_strong_views_come_in_the_chosen_memory_format(channels_last, strong):
    batch = next(iter(_loader(batch_size=4, strong=strong, channels_last=channels_last)))
    views = [batch.images, batch.strong] if strong else [batch.images]
    for x in views:
        assert x.shape == (4, 3, 8, 8)
        assert x.is_contiguous(memory_format=torch.channels_last) is channels_last
        assert x.is_contiguous() is not channels_last
    plain = next(iter(_loader(batch_size=4, strong=strong)))
    assert torch.equal(batch.images, plain.images)


@pytest.mark.parametrize("strong", [False, True])
def test_every_tensor_of_a_batch_goes_to_the_loaders_device(strong):
    """On a device other than the CPU (the meta device, which needs no hardware)."""
    batches = list(_loader(n=5, batch_size=2, strong=strong, device="meta", channels_last=True))
    assert [b.images.shape for b in batches] == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]
    for b in batches:
        fields = [b.images, b.targets, b.indices] + ([b.strong] if strong else [])
        assert [x.device for x in fields] == [torch.device("meta")] * len(fields)
        assert b.images.is_contiguous(memory_format=torch.channels_last)
        assert b.views is None and (b.strong is None) is not strong
    if strong:
        assert all(b.strong.shape == b.images.shape and b.strong.is_contiguous(memory_format=torch.channels_last)
                   for b in batches)  # fmt: skip


class _StandInCuda:
    """A CUDA device on a machine without one: the DataLoader's settings and batches are recorded (it
    pins nothing, having no GPU to pin for), every copy to a device is recorded, and a copy to CUDA (and
    the strong augmentation's statistics there) lands on the meta device."""

    def __init__(self, monkeypatch):
        self.settings: list[dict] = []
        self.produced: list = []
        self.copies: list[tuple[torch.Tensor, torch.device, bool]] = []
        stand_in = self

        class RecordingDataLoader(DataLoader):
            def __init__(self, dataset, **kwargs):
                stand_in.settings.append(kwargs)
                super().__init__(dataset, **{**kwargs, "pin_memory": False})

            def __iter__(self):
                for batch in super().__iter__():
                    stand_in.produced.append(batch)
                    yield batch

        real_to = torch.Tensor.to

        def to(tensor, *args, **kwargs):
            device = kwargs.get("device", args[0] if args and isinstance(args[0], (str, torch.device)) else None)
            if device is not None:
                device = torch.device(device)
                stand_in.copies.append((tensor, device, kwargs.get("non_blocking", False)))
                if device.type == "cuda" and "device" in kwargs:
                    kwargs = {**kwargs, "device": "meta"}
                elif device.type == "cuda":
                    args = ("meta", *args[1:])
            return real_to(tensor, *args, **kwargs)

        def strong_augment(mean, std, device):
            on_cuda = device is not None and torch.device(device).type == "cuda"
            return StrongAugment(mean, std, torch.device("meta") if on_cuda else device)

        monkeypatch.setattr(torch_loader, "DataLoader", RecordingDataLoader)
        monkeypatch.setattr(torch.Tensor, "to", to)
        monkeypatch.setattr(torch_loader, "StrongAugment", strong_augment)


@pytest.mark.parametrize("strong", [False, True])
@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_pinned_memory_and_non_blocking_copies_exactly_on_cuda(device, strong, monkeypatch):
    """On CUDA the DataLoader pins its batches and each of its tensors (the strong crops too) is copied
    to the device once, without blocking; on the CPU neither."""
    cuda = device == "cuda"
    stand_in = _StandInCuda(monkeypatch)
    batches = list(_loader(n=5, batch_size=2, strong=strong, device=device))
    assert [s["pin_memory"] for s in stand_in.settings] == [cuda]
    assert len(stand_in.produced) == len(batches) == 3
    for (images, targets, indices), batch in zip(stand_in.produced, batches):
        for x in [*images, targets, indices] if strong else [images, targets, indices]:
            assert [(to, blocking) for t, to, blocking in stand_in.copies if t is x] == [(torch.device(device), cuda)]
        landed = torch.device("meta" if cuda else "cpu")
        fields = [batch.images, batch.targets, batch.indices] + ([batch.strong] if strong else [])
        assert [x.device for x in fields] == [landed] * len(fields)


# ----------------------------------------------------------------------------- the strong view


def _expected_strong(split: ArraySplit, batches, *, seed, epoch, rank, world_size, start=0) -> list[torch.Tensor]:
    """The strong view of each batch: RandAugment and Cutout of its images' pixels with the rows of the
    epoch's strong plan (this rank's) at the batch's positions, ``start`` the position of the first."""
    n = len(split)
    plan = strong_plan(seed, epoch, n, flip=False, offsets=OFFSETS, rank=rank, world_size=world_size)
    augment, out = StrongAugment(MEAN, STD, torch.device("cpu")), []
    for b in batches:
        pixels = torch.from_numpy(split.x[b.indices.numpy()]).permute(0, 3, 1, 2).float()
        out.append(augment.from_pixels(pixels, plan[start : start + len(b.indices)]))
        start += len(b.indices)
    return out


@pytest.mark.parametrize("rank", [0, 1])
def test_strong_views_take_the_plan_rows_position_by_position(rank):
    """9 images on 2 ranks (5 positions each, padded), batches of 2, 2 and 1: batch k gets the plan rows of
    its positions; a resume from batch 1 continues at position 2; the next iteration is the next epoch's."""
    split = _split(9)
    loader = _loader(n=9, batch_size=2, strong=True, seed=4, rank=rank, world_size=2)
    loader.set_epoch(3)
    whole, following = list(loader), list(loader)
    assert [len(b.indices) for b in whole] == [2, 2, 1] and all(b.views is None for b in whole)
    for got, want in zip(whole, _expected_strong(split, whole, seed=4, epoch=3, rank=rank, world_size=2)):
        assert torch.equal(got.strong, want)
    for got, want in zip(following, _expected_strong(split, following, seed=4, epoch=4, rank=rank, world_size=2)):
        assert torch.equal(got.strong, want)
    loader.set_epoch(3, start_batch=1)
    tail = list(loader)
    assert _indices(tail) == _indices(whole)[2:]
    assert all(torch.equal(a.strong, b.strong) for a, b in zip(tail, whole[1:]))
    assert not torch.equal(whole[0].strong, following[0].strong)


def test_batches_carry_no_strong_view_without_one_or_in_evaluation():
    evaluation = TorchLoader(
        ArrayImageDataset(_split(4), PLAIN), 2, train=False, device="cpu", num_workers=0, strong=(MEAN, STD)
    )
    for loader in (_loader(n=4), evaluation):
        batches = list(loader)
        assert [(b.views, b.strong) for b in batches] == [(None, None)] * 2
