"""Edges of rld.data.sampling, the per-epoch sample order shared by every loader: the order and the
generator of pinned (seed, epoch) pairs, as literals and against the documented recipe (one 64-bit
SeedSequence word of ``[seed, epoch]``, its top bit cleared, seeding a CPU ``torch.Generator``);
padding and sharding across ranks; the evaluation order; ``EpochSampler``'s default seed, lengths,
epoch advance and ``set_epoch``; ``pad_to`` around the exact length; and the whole refusal messages
of the seed, epoch, skip, rank and device checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rld.data.device_loader import DeviceLoader, as_device
from rld.data.sampling import EpochSampler, check_rank, check_seed, epoch_generator, pad_to
from rld.data.types import ArraySplit
from rld.errors import UserError

TOP_BIT = 2**63

# (seed, epoch, n) -> (the 64-bit SeedSequence word, the order of the n samples)
PINNED = {
    (0, 0, 10): (0xDB2CD7E7B0F478BE, [6, 3, 1, 5, 8, 7, 0, 2, 9, 4]),
    (3, 7, 12): (0x84BF99A799C80C91, [4, 2, 11, 9, 3, 0, 1, 8, 6, 10, 5, 7]),
    (2**40 + 5, 2, 9): (0xDB8CAD63DC3C8132, [7, 1, 4, 6, 3, 0, 5, 8, 2]),
    (1, 0, 10): (0x672D8EE56D6791FF, [8, 1, 4, 2, 9, 7, 0, 6, 3, 5]),
}


def _recipe_word(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])


def _recipe_order(seed: int, epoch: int, n: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The documented recipe, written out: permute with a generator seeded from the masked word, pad by
    repeating from the start up to a multiple of the world size, take positions ``rank::world_size``."""
    g = torch.Generator().manual_seed(_recipe_word(seed, epoch) % TOP_BIT)
    perm = torch.randperm(n, generator=g).tolist()
    total = -(-n // world_size) * world_size
    padded = (perm * (total // n + 1))[:total]
    return padded[rank::world_size]


def _refused(message: str, fn, *args, **kwargs) -> None:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize(("seed", "epoch", "n"), list(PINNED))
def test_pinned_orders_match_the_recipe(seed, epoch, n):
    """The order of (seed, epoch) is fixed across runs and machines: the literal list, the recipe's list."""
    word, order = PINNED[(seed, epoch, n)]
    assert _recipe_word(seed, epoch) == word
    assert _recipe_order(seed, epoch, n) == order
    got = EpochSampler(n, shuffle=True, seed=seed).order(epoch)
    assert got.dtype == torch.int64 and got.tolist() == order


@pytest.mark.parametrize(("seed", "epoch", "n"), list(PINNED))
def test_epoch_generator_is_seeded_with_the_word_less_its_top_bit(seed, epoch, n):
    """The generator's seed is the first 64-bit word with bit 63 cleared: the other 63 bits are kept."""
    word, _ = PINNED[(seed, epoch, n)]
    g = epoch_generator(seed, epoch)
    assert g.device == torch.device("cpu")
    assert g.initial_seed() == word & (TOP_BIT - 1) == word % TOP_BIT
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(word % TOP_BIT).get_state())


def test_epoch_generator_seeds_where_the_top_bit_matters():
    """(0, 0) and (3, 7) have bit 63 set, which is dropped; (3, 7)'s lowest bit is set, which is kept."""
    assert epoch_generator(0, 0).initial_seed() == 0x5B2CD7E7B0F478BE == 6569863346532939966
    assert epoch_generator(3, 7).initial_seed() == 0x04BF99A799C80C91 == 342161041822059665
    assert epoch_generator(1, 0).initial_seed() == 0x672D8EE56D6791FF  # bit 63 clear: the word itself
    assert epoch_generator(np.int64(3), np.uint8(7)).initial_seed() == 342161041822059665


def test_seed_and_epoch_are_mixed_not_summed():
    """(0, 1) and (1, 0) are unrelated epochs; epoch 1 of seed 0 is not epoch 0 of seed 1."""
    assert EpochSampler(10, shuffle=True, seed=0).order(1).tolist() == [4, 8, 5, 0, 7, 6, 2, 3, 9, 1]
    assert EpochSampler(10, shuffle=True, seed=1).order(0).tolist() == [8, 1, 4, 2, 9, 7, 0, 6, 3, 5]


def test_sharded_order_pads_from_the_start():
    """10 samples on 4 ranks: padded to 12 by repeating the permutation's first two, rank r takes r::4."""
    perm = [6, 0, 3, 1, 7, 8, 4, 2, 9, 5]
    assert EpochSampler(10, shuffle=True, seed=3).order(7).tolist() == perm
    shards = [[6, 7, 9], [0, 8, 5], [3, 4, 6], [1, 2, 0]]
    for rank, shard in enumerate(shards):
        sampler = EpochSampler(10, shuffle=True, seed=3, rank=rank, world_size=4)
        assert sampler.order(7).tolist() == shard == _recipe_order(3, 7, 10, rank, 4)
        assert len(sampler) == 3


def test_lengths_training_padded_evaluation_not():
    """Training: every rank has ceil(N / world) samples; evaluation: len(range(rank, N, world))."""
    for rank, (train_len, eval_len) in enumerate([(3, 3), (3, 3), (3, 2), (3, 2)]):
        train = EpochSampler(10, shuffle=True, seed=3, rank=rank, world_size=4)
        evaluation = EpochSampler(10, shuffle=False, rank=rank, world_size=4)
        assert len(train) == train_len == len(train.order(0)) == len(list(train))
        assert len(evaluation) == eval_len == len(evaluation.order(0)) == len(list(evaluation))
    assert len(EpochSampler(7, shuffle=True, world_size=3, rank=2)) == 3
    assert len(EpochSampler(7, shuffle=False, world_size=3, rank=2)) == 2
    assert len(EpochSampler(7, shuffle=True)) == len(EpochSampler(7, shuffle=False)) == 7


def test_evaluation_order_is_rank_strided_int64():
    expected = [[0, 4, 8], [1, 5, 9], [2, 6], [3, 7]]
    for rank, indices in enumerate(expected):
        sampler = EpochSampler(10, shuffle=False, seed=5, rank=rank, world_size=4)
        order = sampler.order(3)
        assert order.dtype == torch.int64 and order.device == torch.device("cpu")
        assert order.tolist() == indices and list(sampler) == indices
    whole = EpochSampler(5, shuffle=False).order(0)
    assert whole.dtype == torch.int64 and whole.tolist() == [0, 1, 2, 3, 4]


def _eval_loader(n: int, rank: int, world_size: int) -> DeviceLoader:
    split = ArraySplit(np.zeros((n, 4, 4, 3), np.uint8), np.arange(n))
    return DeviceLoader(
        split,
        1,
        device="cpu",
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        train=False,
        flip=False,
        rank=rank,
        world_size=world_size,
    )


@pytest.mark.parametrize("n, rank, world_size", [(2, 3, 4), (2, 2, 4), (1, 1, 2), (3, 7, 8)])
def test_ranks_past_the_last_sample_evaluate_nothing(n, rank, world_size):
    """A validation set smaller than the world (a few images on many GPUs): the ranks past its last sample
    get no index, and their lengths say so, while the ranks together still see every sample once."""
    sampler = EpochSampler(n, shuffle=False, rank=rank, world_size=world_size)
    assert len(sampler) == 0 and list(sampler) == [] and sampler.order(0).dtype == torch.int64
    loader = _eval_loader(n, rank, world_size)
    assert loader.num_samples == 0 and len(loader) == 0 and list(loader) == []
    seen = [i for r in range(world_size) for batch in _eval_loader(n, r, world_size) for i in batch.indices.tolist()]
    assert sorted(seen) == list(range(n))
    empty = EpochSampler(0, shuffle=False, rank=rank, world_size=world_size)
    assert len(empty) == 0 and list(empty) == []


def test_default_seed_is_zero():
    """Without ``seed`` the order is seed 0's, not seed 1's."""
    sampler = EpochSampler(10, shuffle=True)
    assert sampler.seed == 0
    assert sampler.order(0).tolist() == PINNED[(0, 0, 10)][1]
    assert sampler.order(0).tolist() != EpochSampler(10, shuffle=True, seed=1).order(0).tolist()
    assert list(sampler) == [6, 3, 1, 5, 8, 7, 0, 2, 9, 4]


def test_each_iteration_advances_the_epoch_by_one():
    """Without ``set_epoch``, successive iterations are epochs 0, 1, 2, …; ``order`` does not advance it."""
    sampler = EpochSampler(10, shuffle=True)
    assert sampler.order(5).tolist() == sampler.order(5).tolist() and sampler.epoch == 0
    epochs = [list(sampler) for _ in range(3)]
    assert epochs == [
        [6, 3, 1, 5, 8, 7, 0, 2, 9, 4],
        [4, 8, 5, 0, 7, 6, 2, 3, 9, 1],
        [5, 1, 8, 4, 9, 2, 3, 0, 6, 7],
    ]
    assert epochs == [_recipe_order(0, e, 10) for e in range(3)]
    assert sampler.epoch == 3 and sampler.skip == 0


def test_set_epoch_with_skip_resumes_mid_epoch_once():
    """``set_epoch(7, 5)`` yields epoch 7 without its first 5 indices; the next iteration is all of epoch 8."""
    sampler = EpochSampler(12, shuffle=True, seed=3)
    sampler.set_epoch(7, 5)
    assert (sampler.epoch, sampler.skip) == (7, 5)
    assert list(sampler) == [0, 1, 8, 6, 10, 5, 7]  # PINNED[(3, 7, 12)] from position 5
    assert (sampler.epoch, sampler.skip) == (8, 0)
    assert list(sampler) == [10, 8, 2, 7, 5, 0, 11, 6, 4, 9, 3, 1] == _recipe_order(3, 8, 12)
    sampler.set_epoch(np.int64(7), np.uint16(12))  # numpy integers; skipping the whole epoch
    assert (sampler.epoch, sampler.skip) == (7, 12) and type(sampler.epoch) is int and type(sampler.skip) is int
    assert list(sampler) == []
    sampler.set_epoch(0)
    assert (sampler.epoch, sampler.skip) == (0, 0)


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (0, []),
        (3, [5, 2, 7]),
        (4, [5, 2, 7, 1]),
        (5, [5, 2, 7, 1, 5]),
        (8, [5, 2, 7, 1, 5, 2, 7, 1]),
        (9, [5, 2, 7, 1, 5, 2, 7, 1, 5]),
        (11, [5, 2, 7, 1, 5, 2, 7, 1, 5, 2, 7]),
    ],
)
def test_pad_to_repeats_from_the_start_or_truncates(length, expected):
    order = torch.tensor([5, 2, 7, 1])
    out = pad_to(order, length)
    assert out.dtype == torch.int64 and out.tolist() == expected
    assert order.tolist() == [5, 2, 7, 1]


def test_pad_to_of_an_empty_order_to_length_zero():
    assert pad_to(torch.empty(0, dtype=torch.int64), 0).tolist() == []


def test_empty_sampler_yields_nothing():
    """N = 0: an empty order in training on every rank, and in evaluation on rank 0."""
    samplers = [EpochSampler(0, shuffle=True, seed=4, rank=rank, world_size=2) for rank in (0, 1)]
    samplers += [EpochSampler(0, shuffle=False), EpochSampler(0, shuffle=True)]
    for sampler in samplers:
        assert len(sampler) == 0 and sampler.order(3).tolist() == [] and list(sampler) == []


def test_check_seed_accepts_non_negative_integers():
    assert check_seed(0) == 0
    assert check_seed(2**40 + 5) == 2**40 + 5
    for value in (np.int64(9), np.uint32(9), np.int8(9)):
        got = check_seed(value, "epoch")
        assert got == 9 and type(got) is int
    assert check_seed(np.uint64(0)) == 0


@pytest.mark.parametrize("what", ["seed", "epoch", "skip"])
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (True, "True"),
        (False, "False"),
        (1.0, "1.0"),
        (2.5, "2.5"),
        (-1, "-1"),
        (np.int64(-3), "np.int64(-3)"),
        ("3", "'3'"),
    ],
)
def test_check_seed_refuses_with_the_name(what, value, shown):
    _refused(f"{what} must be a non-negative integer, got {shown}", check_seed, value, what)


def test_check_seed_default_name_is_seed():
    _refused("seed must be a non-negative integer, got -2", check_seed, -2)


def test_epoch_generator_names_what_is_wrong():
    _refused("seed must be a non-negative integer, got -1", epoch_generator, -1, 0)
    _refused("epoch must be a non-negative integer, got -1", epoch_generator, 0, -1)
    _refused("epoch must be a non-negative integer, got 1.5", epoch_generator, 0, 1.5)
    _refused("epoch must be a non-negative integer, got True", epoch_generator, 0, True)
    _refused("epoch must be a non-negative integer, got -4", EpochSampler(5, shuffle=True).order, -4)


def test_sampler_refuses_a_bad_seed():
    _refused("seed must be a non-negative integer, got -1", EpochSampler, 5, shuffle=True, seed=-1)
    _refused("seed must be a non-negative integer, got 0.5", EpochSampler, 5, shuffle=True, seed=0.5)


def test_set_epoch_names_what_is_wrong():
    sampler = EpochSampler(5, shuffle=True)
    _refused("epoch must be a non-negative integer, got -1", sampler.set_epoch, -1)
    _refused("epoch must be a non-negative integer, got 2.0", sampler.set_epoch, 2.0)
    _refused("epoch must be a non-negative integer, got False", sampler.set_epoch, False, 0)
    _refused("skip must be a non-negative integer, got -3", sampler.set_epoch, 0, -3)
    _refused("skip must be a non-negative integer, got 1.0", sampler.set_epoch, 0, 1.0)
    _refused("skip must be a non-negative integer, got True", sampler.set_epoch, 0, True)


@pytest.mark.parametrize(("rank", "world_size"), [(2, 2), (1, 1), (0, 0), (-1, 2), (5, 3), (0, -1)])
def test_check_rank_refuses(rank, world_size):
    message = f"rank {rank} / world size {world_size} is invalid: need 0 <= rank < world_size"
    _refused(message, check_rank, rank, world_size)
    _refused(message, EpochSampler, 10, shuffle=True, rank=rank, world_size=world_size)


def test_check_rank_accepts_every_rank_below_the_world_size():
    for world_size in (1, 2, 5):
        for rank in range(world_size):
            assert check_rank(rank, world_size) is None
            assert EpochSampler(10, shuffle=False, rank=rank, world_size=world_size).rank == rank


@pytest.mark.parametrize(("device", "shown"), [("gpu", "'gpu'"), ("cuda:x", "'cuda:x'"), (None, "None")])
def test_as_device_refuses_unknown_names(device, shown):
    message = f"unknown device {shown}: use e.g. 'cpu', 'cuda' or 'cuda:1'"
    _refused(message, as_device, device)
    split = ArraySplit(np.zeros((2, 4, 4, 3), dtype=np.uint8), np.zeros(2, dtype=np.int64))
    kwargs = {"mean": (0.5,) * 3, "std": (0.5,) * 3, "train": False, "flip": False}
    _refused(message, DeviceLoader, split, 1, device=device, **kwargs)


def test_as_device_accepts_cpu_names():
    assert as_device("cpu") == torch.device("cpu")
    assert as_device("cpu:0") == torch.device("cpu", 0)
    assert as_device(torch.device("cpu")) == torch.device("cpu")
