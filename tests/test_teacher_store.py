"""The store of image-folder teacher outputs (rld.fast.store): filled once by `rld cache` per (teacher,
data, seed, form), read by student runs by (epoch, sample) — exact in float32, within the forms' stated
errors otherwise, refused when damaged, incomplete, of another key or inexact for the method."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_same_run_state, assert_user_error, folder_snapshot, load_last, metric_rows
from rld.cli import main
from rld.config import resolve
from rld.data.device_folder import DeviceFolderLoader
from rld.engine import faults, train
from rld.engine.teacher import TeacherForward
from rld.errors import UserError
from rld.fast import forms
from rld.fast.store import StoredTeacher, fill_store, open_run_store, pack, record_dtype, unpack
from rld.models import create_model

CLASSES = ("a", "b", "c")
STORE_KEYS = ("train.teacher_cache", "train.cache_precision", "train.cache_dir", "train.cache_inexact")


def _folder(root: Path, per_class: int = 5, seed: int = 0) -> Path:
    """ROOT/train/<class>/*.JPEG (15 images: batches of 4, 4, 4, 3) and ROOT/val/<class>/*.JPEG."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", 2)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                h, w = int(rng.integers(24, 60)), int(rng.integers(24, 60))
                small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
                Image.fromarray(small).resize((w, h), Image.BICUBIC).save(root / split / c / f"{i}.JPEG", quality=90)
    return root


@pytest.fixture
def setup(tmp_path):
    """(data folder, teacher checkpoint, overrides of a tiny RLD run on it)."""
    data = _folder(tmp_path / "data")
    torch.manual_seed(3)
    teacher = tmp_path / "teacher.pt"
    torch.save({"model": create_model("resnet8", num_classes=len(CLASSES)).state_dict()}, teacher)
    over = [
        "data.name=imagefolder",
        f"data.path={data}",
        "data.pipeline=device",
        "data.image_size=16",
        "data.num_workers=0",
        "data.eval_batch_size=8",
        "train.batch_size=4",
        "train.epochs=2",
        "train.device=cpu",
        "model.teacher=resnet8",
        f"model.teacher_checkpoint={teacher}",
        f"train.cache_dir={tmp_path / 'cache'}",
    ]
    return data, teacher, over


def _store_folder(tmp_path: Path) -> Path:
    (folder,) = (tmp_path / "cache").iterdir()
    return folder


def _cache(capsys, over: list[str], *extra: str) -> str:
    assert main(["cache", "demo/rld", *over, *extra]) == 0
    return capsys.readouterr().out


def _loader(data: Path, seed: int = 0, **kw) -> DeviceFolderLoader:
    files = sorted((data / "train").rglob("*.JPEG"))
    labels = [CLASSES.index(f.parent.name) for f in files]
    kw = {"train": True, "device": "cpu", "seed": seed, "num_workers": 0, "image_size": 16, **kw}
    return DeviceFolderLoader([str(f) for f in files], labels, 4, **kw)


def _forward(teacher: Path) -> TeacherForward:
    model = create_model("resnet8", num_classes=len(CLASSES))
    model.load_state_dict(torch.load(teacher, weights_only=True)["model"])
    return TeacherForward(model.eval().requires_grad_(False), amp=False)


def _store(tmp_path, data, teacher, form, *, k=20, epochs=2, loader=None):
    """A filled store of ``form`` (directly, as `rld cache` fills it) and its loader and teacher."""
    over = [f"train.cache_dir={tmp_path / 'cache'}", f"train.cache_precision={form}", f"train.cache_topk={k}"]
    cfg = resolve("demo/rld", [*over, "model.teacher=resnet8", "data.name=imagefolder", f"data.path={data}"])
    loader, forward = loader or _loader(data), _forward(teacher)
    store, _ = open_run_store(cfg, forward.teacher, forward.precision, loader, len(CLASSES), create=True)
    assert fill_store(store, loader, forward, range(1, epochs + 1)) == list(range(1, epochs + 1))
    return StoredTeacher(store, loader), loader, forward


# ----------------------------------------------------------------------------- exact and approximate records


def test_a_float32_store_trains_bit_identically_to_the_live_teacher(setup, tmp_path, capsys, monkeypatch):
    data, teacher, over = setup
    over = [*over, "train.cache_precision=float32"]
    out = _cache(capsys, over)
    assert "teacher-output store: epochs 1-2 of 15 samples (2 computed now" in out and "180 B per epoch" in out
    assert main(["train", "demo/rld", *over, "--out", str(tmp_path / "live")]) == 0
    forwards = []
    real = TeacherForward._forward
    monkeypatch.setattr(TeacherForward, "_forward", lambda self, *a: forwards.append(1) or real(self, *a))
    assert main(["train", "demo/rld", *over, "train.teacher_cache=full", "--out", str(tmp_path / "stored")]) == 0
    assert forwards == []  # no teacher forward in the student run (not even its test accuracy)
    assert metric_rows(tmp_path / "stored" / "metrics.csv") == metric_rows(tmp_path / "live" / "metrics.csv")
    assert_same_run_state(load_last(tmp_path / "live"), load_last(tmp_path / "stored"), ignore_config=STORE_KEYS)


def test_float16_int8_and_topk_records_are_the_logits_within_the_stated_errors(setup, tmp_path):
    """The logits the loss reads (the provider's output) against the live teacher's on the same training
    batches of both epochs: float16 is the float32 logit rounded to nearest (relative error <= 2^-11),
    int8 within half a step of its row, top-k keeps the k largest and the true class to float16."""
    data, teacher, _ = setup
    for form in ("float16", "int8", "topk"):
        stored, loader, forward = _store(tmp_path / form, data, teacher, form, k=1)
        for epoch in (1, 2):
            loader.set_epoch(epoch)
            for batch in loader:
                got, ref = stored(batch), forward(batch)
                assert got.dtype == torch.float32 and got.shape == ref.shape
                if form == "float16":
                    assert torch.equal(got, ref.half().float()) and torch.allclose(got, ref, rtol=2**-11, atol=0)
                elif form == "int8":
                    step = (ref.amax(1) - ref.amin(1)) / forms.INT8_LEVELS
                    assert ((got - ref).abs() <= step[:, None] / 2 * (1 + 1e-5) + 1e-6).all()
                else:
                    top = ref.argmax(1, keepdim=True)
                    kept = torch.cat([top, batch.targets[:, None]], 1)
                    assert torch.equal(got.gather(1, kept), ref.gather(1, kept).half().float())
                    # the classes not kept share the softmax mass the kept ones leave over
                    torch.testing.assert_close(got.softmax(1).sum(1), torch.ones(len(got)), rtol=0, atol=2e-3)


def test_records_pack_into_one_fixed_size_structured_record_per_sample():
    g = torch.Generator().manual_seed(0)
    logits, targets = 4 * torch.randn(6, 1000, generator=g), torch.randint(0, 1000, (6,), generator=g)
    for form in forms.FORMS:
        dtype = record_dtype(form, 1000)
        assert dtype.itemsize == forms.record_bytes(form, 1000) and dtype.isalignedstruct is False
        record = forms.encode(logits, targets, form)
        rows = torch.from_numpy(pack(record, dtype).view(np.uint8).reshape(6, dtype.itemsize).copy())
        back = unpack(rows, dtype)
        assert back.keys() == record.keys() and all(torch.equal(back[n], record[n]) for n in record), form


def test_topk_is_refused_for_rld_without_the_opt_in_and_trains_with_it(setup, tmp_path, capsys):
    data, teacher, over = setup
    over = [*over, "train.cache_precision=topk", "train.cache_topk=2", "train.teacher_cache=full"]
    code = main(["train", "demo/rld", *over, "--out", str(tmp_path / "refused")])
    message = "teacher outputs stored as topk change the loss or gradient of method 'rld'"
    assert_user_error(code, capsys.readouterr().err, message)
    assert main(["cache", "demo/rld", *over]) == 2  # the same settings: refused by `rld cache` too
    assert_user_error(2, capsys.readouterr().err, message)
    assert not (tmp_path / "refused").exists() and not (tmp_path / "cache").exists()
    over.append("train.cache_inexact=true")
    assert "top-2, 210 B per epoch" in _cache(capsys, over)
    assert main(["train", "demo/rld", *over, "--out", str(tmp_path / "run")]) == 0
    assert len(metric_rows(tmp_path / "run" / "metrics.csv")) == 2


# ----------------------------------------------------------------------------- resume, ranks


def test_a_run_resumed_mid_epoch_reads_the_same_records(setup, tmp_path, capsys, monkeypatch):
    """A stored-output run that crashes inside step 2 of epoch 2 (step.pt saved after every step: the
    position after step 1) and is resumed ends exactly as the run never stopped; its lookups after the
    resume are the epoch's from step 2 on, record for record."""
    data, teacher, over = setup
    over = [*over, "train.cache_precision=float32", "train.teacher_cache=full", "train.checkpoint_every_steps=1"]
    _cache(capsys, over)
    lookups: list[tuple[int, list[int], torch.Tensor]] = []
    call = StoredTeacher.__call__

    def recording(self, batch):
        out = call(self, batch)
        lookups.append((self.loader.epoch, batch.indices.tolist(), out))
        return out

    monkeypatch.setattr(StoredTeacher, "__call__", recording)
    train(resolve("demo/rld", over), tmp_path / "ref")
    whole = [x for x in lookups if x[0] == 2]
    lookups.clear()

    class Crash(BaseException):
        pass

    monkeypatch.setattr(faults.os, "_exit", lambda status: (_ for _ in ()).throw(Crash(status)))
    monkeypatch.setattr(faults, "_spec", faults._parse("after_step:6"))  # epoch 2, step 2 of 4
    monkeypatch.setattr(faults, "_counts", dict.fromkeys(faults.POINTS, 0))
    with pytest.raises(Crash):
        train(resolve("demo/rld", over), tmp_path / "run")
    monkeypatch.setattr(faults, "_spec", None)
    lookups.clear()
    train(resolve("demo/rld", over), tmp_path / "run", resume=True)
    assert [(e, i) for e, i, _ in lookups] == [(e, i) for e, i, _ in whole[1:]]
    assert all(torch.equal(a[2], b[2]) for a, b in zip(lookups, whole[1:]))
    assert metric_rows(tmp_path / "run" / "metrics.csv") == metric_rows(tmp_path / "ref" / "metrics.csv")
    assert_same_run_state(load_last(tmp_path / "ref"), load_last(tmp_path / "run"))


def test_rank_1_of_2_looks_up_the_records_rank_0_would_for_the_same_samples(setup, tmp_path):
    data, teacher, _ = setup
    stored, loader, forward = _store(tmp_path, data, teacher, "float32")
    ranks = [_loader(data, rank=r, world_size=2) for r in (0, 1)]
    providers = [StoredTeacher(stored.store, shard) for shard in ranks]
    for shard in ranks:
        shard.set_epoch(2)
    shards = [list(shard) for shard in ranks]
    order = loader.sampler.order(2).tolist()
    padded = order + order[:1]  # 15 samples padded to 16 by repeating the start, as DistributedSampler
    assert torch.cat([b.indices for b in shards[1]]).tolist() == padded[1::2]  # the sampler's shard
    for batch in shards[1]:
        mine = providers[1](batch)
        assert torch.equal(mine, forward(batch))  # the live teacher on rank 1's own rendering
        ranks[0].epoch = 2  # rank 0's provider, asked for rank 1's samples of the same epoch
        assert torch.equal(providers[0](batch), mine)


# ----------------------------------------------------------------------------- refusals


def _flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["truncated", "flipped", "flipped-epoch-2", "meta-edited", "meta-garbled"])
def test_a_damaged_store_is_refused_in_one_line_and_left_as_it_is(setup, tmp_path, capsys, damage):
    data, teacher, over = setup
    over = [*over, "train.cache_precision=float32", "train.teacher_cache=full"]
    _cache(capsys, over)
    folder = _store_folder(tmp_path)
    epoch1, epoch2, meta = folder / "epoch-0001.npy", folder / "epoch-0002.npy", folder / "meta.json"
    if damage == "truncated":
        epoch1.write_bytes(epoch1.read_bytes()[:-7])
        message = "epoch 1: epoch-0001.npy is truncated: 301 of 308 bytes; it is not used. Delete epoch-0001.npy"
    elif damage.startswith("flipped"):
        _flip_byte(epoch2 if damage.endswith("2") else epoch1, -30)
        epoch = 2 if damage.endswith("2") else 1
        message = f"epoch {epoch}: the records of samples 0-14 do not match their checksum"
    elif damage == "meta-edited":
        text = meta.read_text()
        meta.write_text(text.replace('"num_samples": 15', '"num_samples": 14'))
        message = "meta.json does not match its checksum: it was edited"
    else:
        meta.write_text(meta.read_text()[:40])
        message = "meta.json is unreadable"
    before = folder_snapshot(folder)
    code = main(["train", "demo/rld", *over, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert_user_error(code, err, message)
    assert "rld cache" in err
    assert folder_snapshot(folder) == before
    # epoch 1 is checked when the store opens: nothing written; epoch 2 when it begins: epoch 1 is kept
    if damage == "flipped-epoch-2":
        assert load_last(tmp_path / "run")["epoch"] == 1
    else:
        assert not (tmp_path / "run").exists()
    if damage.startswith("flipped"):  # `rld cache --verify` finds it too; deleting the epoch recomputes it
        code = main(["cache", "demo/rld", *over, "--verify"])
        assert_user_error(code, capsys.readouterr().err, message)
        (epoch2 if damage.endswith("2") else epoch1).unlink()
        assert "(1 computed now" in _cache(capsys, over, "--verify")


def test_missing_epochs_are_refused_before_anything_is_written(setup, tmp_path, capsys):
    data, teacher, over = setup
    over = [*over, "train.teacher_cache=full"]
    code = main(["train", "demo/rld", *over, "--out", str(tmp_path / "run")])
    assert_user_error(code, capsys.readouterr().err, "does not exist; this run needs epochs 1-2 (missing: 1-2)")
    assert not (tmp_path / "cache").exists()  # a student run never creates a store
    _cache(capsys, over, "--epochs", "1")
    code = main(["train", "demo/rld", *over, "--out", str(tmp_path / "run")])
    message = "holds epoch 1; this run needs epochs 1-2 (missing: 2): run `rld cache PRESET … --epochs 2`"
    assert_user_error(code, capsys.readouterr().err, message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "setting,message",
    [
        ("data.pipeline=pil", "train.teacher_cache=full on image folders needs data.pipeline=device"),
        ("train.teacher_cache=lazy", "train.teacher_cache=lazy is for the array data sets (digits, cifar100)"),
        ("train.cache_precision=int8 method.name=lr", "stored as int8 change the loss or gradient of method 'lr'"),
    ],
)
def test_settings_the_store_cannot_serve_are_refused(setup, tmp_path, capsys, setting, message):
    data, teacher, over = setup
    over = [*over, "train.teacher_cache=full", *setting.split()]
    if "pil" in setting:
        _cache(capsys, [o for o in over if o != setting])
    code = main(["train", "demo/rld", *over, "--out", str(tmp_path / "run")])
    assert_user_error(code, capsys.readouterr().err, message)
    assert not (tmp_path / "run").exists()


def test_array_data_keeps_float16_and_float32():
    with pytest.raises(UserError, match="train.cache_precision=int8 is a storage form of image-folder stores"):
        resolve("demo/rld", ["train.cache_precision=int8"])
    with pytest.raises(UserError, match="train.cache_topk must be >= 1"):
        resolve("demo/rld", ["train.cache_topk=0"])
    assert resolve("demo/rld").train.cache_topk == forms.TOPK_DEFAULT
    assert resolve("demo/rld", ["train.teacher_cache=off"]).train.teacher_cache == "off"  # not YAML's false


# ----------------------------------------------------------------------------- key, filling


def test_another_teacher_seed_or_data_file_gives_another_store(setup, tmp_path):
    data, teacher, _ = setup
    from rld.fast.key import store_key

    def key(loader=None, weights=None, form="float16"):
        model = _forward(teacher).teacher
        if weights is not None:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] += weights
        kw = dict(teacher_name="resnet8", num_classes=3, teacher_precision="float32", form=form, k=20)
        return store_key(teacher=model, loader=loader or _loader(data), **kw)[0]

    base = key()
    assert key() == base and len(base) == 64
    others = [key(weights=1e-3), key(loader=_loader(data, seed=1)), key(form="int8")]
    extra = data / "train" / "c" / "new.JPEG"
    Image.new("RGB", (30, 30), (1, 2, 3)).save(extra)
    others.append(key())
    os.utime(extra, ns=(1, 1))  # the same list, one file's modification time changed
    others.append(key())
    assert len({base, *others}) == 6


def test_rld_cache_twice_writes_nothing_the_second_time_and_an_interrupted_epoch_is_redone(setup, tmp_path, capsys):
    data, teacher, over = setup
    _cache(capsys, over)
    folder = _store_folder(tmp_path)

    def state():
        return folder_snapshot(folder), {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    before = state()
    assert "(0 computed now" in _cache(capsys, over)
    assert state() == before
    # an epoch whose writing was interrupted: its temporary file is all there is; the next fill redoes it
    stale = folder / ".epoch-0002.npy.tmp-99999-deadbeef"
    os.replace(folder / "epoch-0002.npy", stale)
    assert "(1 computed now" in _cache(capsys, over)
    # the redone epoch is a new file (its time and inode differ) with the same bytes
    contents = {name: entry[0] for name, entry in folder_snapshot(folder).items()}
    assert not stale.exists() and contents == {name: entry[0] for name, entry in before[0].items()}
    # a fill that fails mid-epoch leaves no epoch file and no temporary file behind
    stored, loader, forward = _store(tmp_path / "again", data, teacher, "float16", epochs=1)

    calls = []

    def failing(batch):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return forward(batch)

    with pytest.raises(RuntimeError, match="out of memory"):
        fill_store(stored.store, loader, failing, [2], batch_size=4)
    names = sorted(p.name for p in stored.store.folder.iterdir())
    assert names == ["epoch-0001.npy", "fill.lock", "meta.json"] and stored.store.missing([1, 2]) == [2]
    meta = json.loads((stored.store.folder / "meta.json").read_text())
    assert list(meta["epochs"]) == ["1"]


def test_an_epoch_file_holding_another_array_is_refused(setup, tmp_path):
    data, teacher, _ = setup
    stored, _, _ = _store(tmp_path, data, teacher, "float16", epochs=1)
    store = stored.store
    path = store.path(1)
    np.save(path, np.zeros(store.n, dtype=np.float32))  # the right length, another record type
    store.release()
    with pytest.raises(UserError) as err:
        store.load_epoch(1)
    assert str(err.value) == (
        f"the teacher-output store {store.folder} is damaged: epoch 1: it holds another array; it is not used. "
        f"Delete {path.name} (rm '{path}') and run `rld cache PRESET … --epochs E` again: it recomputes only that "
        "epoch"
    )
    with pytest.raises(UserError) as err:
        store.load_epoch(7)
    assert str(err.value) == (
        f"the teacher-output store {store.folder} holds no epoch 7 (it holds epoch 1): run `rld cache PRESET … "
        "--epochs 7`"
    )


@pytest.mark.parametrize("free_mib, copied", [(4096, True), (0, False)])
def test_on_cuda_an_epoch_is_copied_to_the_device_when_it_fits(setup, tmp_path, monkeypatch, free_mib, copied):
    """The CUDA branch of load_epoch on a simulated device: the free memory asked of the device it
    names, the epoch copied when it takes at most a quarter of it, memory-mapped otherwise."""
    import rld.fast.store as store_module

    data, teacher, _ = setup
    stored, _, _ = _store(tmp_path, data, teacher, "float32", epochs=1)
    store = stored.store
    asked, made = [], []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: asked.append(device) or (free_mib << 20, 1 << 40))
    real_empty = torch.empty

    def empty(shape, dtype, device):
        made.append(torch.device(device))
        return real_empty(shape, dtype=dtype)  # the simulated device's memory is the CPU's

    monkeypatch.setattr(store_module.torch, "empty", empty)
    expected = store.lookup(1, torch.arange(store.n))
    store.release()
    store.load_epoch(1, "cuda:1")
    assert asked == [torch.device("cuda:1")]
    assert made == ([torch.device("cuda:1")] if copied else [])
    records = store._epoch[1]
    assert torch.equal(records, torch.from_numpy(np.asarray(store._map(1))))
    assert records.dtype == torch.uint8
    got = store.lookup(1, torch.arange(store.n))
    assert all(torch.equal(got[k], expected[k]) for k in expected)
