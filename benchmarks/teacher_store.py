"""ImageNet distillation with the teacher's stored outputs (rld.fast.store) vs the live teacher.

    python benchmarks/teacher_store.py [--device cpu|cuda] [--images 32] [--batch 8] [--size 224]
                                       [--steps 4] [--warmup 1] [--rounds 2] [--threads 2] [--json PATH]

Makes a synthetic ImageFolder in a temporary folder (deleted afterwards): ``--images`` training JPEGs of
ImageNet's usual sizes (500 x 375 / 375 x 500, about 100 KB, as ``folder_pipeline.py`` makes them) in 10
classes, a random-weight ResNet34 teacher checkpoint, and measures on ``--device``:

* ``fill``: ``rld cache``'s work per image — read, decode, crop and resize on the device (the device
  pipeline's own rendering), the teacher forward, encoding and writing (float16) — as images per second;
* ``steps``: milliseconds per training step of ResNet34→ResNet18 KD and RLD (the ImageNet presets'
  settings) at batch ``--batch``, with the live teacher (``train.teacher_cache=off``) and with its
  stored float16 outputs (``full``), on the same rendered batches: the loader's work is the same for
  both (``folder_pipeline.py`` measures it), so it is left out. The four paths take turns step by step
  (a change of background load hits all of them), ``--warmup`` untimed batches then ``--steps`` timed
  ones, ``--rounds`` times; reported: the median and the minimum wall time per step, and the median
  CPU time of the process per step (all its threads: less sensitive to other processes on a shared
  machine than the wall time);
  ``teacher_part_ms_per_step``: the provider's call alone (the teacher forward, or the lookup and
  decoding), on the same batches;
* ``lookup``: milliseconds of the stored path's part of a step at ImageNet scale — gather and decode of
  256 float16 records of 1000 classes from a memory-mapped epoch file of 200,000 records (400 MB) —
  and the checksum pass an epoch gets before its first lookup (GB/s);
* ``bytes_per_epoch``: what an ImageNet epoch (1,281,167 images, 1000 classes) takes in each form.

The data set has 10 classes (the models' heads have 10 outputs); the step time of ResNet34/ResNet18 at
224 px hardly depends on it. Prints a table and writes JSON (with the load average before and after, as
the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from folder_pipeline import make_folder  # noqa: E402
from rld.config import resolve  # noqa: E402
from rld.engine.distributed import World  # noqa: E402
from rld.engine.loop import Member, group_step  # noqa: E402
from rld.engine.teacher import build_teacher_fn  # noqa: E402
from rld.engine.trainer import Run, build_run_data, setup  # noqa: E402
from rld.fast import forms  # noqa: E402
from rld.fast.store import OutputStore, StoredTeacher, fill_store, open_run_store, record_dtype  # noqa: E402
from rld.models import create_model  # noqa: E402

IMAGENET_TRAIN = 1_281_167
METHODS = ("kd", "rld")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _config(method: str, root: Path, teacher: Path, cache: Path, args, epochs: int, mode: str):
    return resolve(
        f"imagenet/ResNet34-ResNet18/{method}",
        [
            f"data.path={root}",
            "data.pipeline=device",
            f"data.image_size={args.size}",
            f"data.num_workers={args.workers}",
            f"train.batch_size={args.batch}",
            f"train.device={args.device}",
            f"train.epochs={epochs}",
            f"model.teacher_checkpoint={teacher}",
            f"train.cache_dir={cache}",
            f"train.teacher_cache={mode}",
            "train.loggers=[]",
        ],
    )


def measure_steps(root: Path, teacher: Path, cache: Path, args, device: torch.device) -> dict:
    batches_per_epoch = args.images // args.batch
    per_path = args.warmup + args.steps
    epochs = -(-per_path // batches_per_epoch)
    base = _config("kd", root, teacher, cache, args, epochs, "off")
    world = World()
    setup(base, world)
    data = build_run_data(base, device, world)
    loader = data.train
    # the store the stored paths read: filled as `rld cache` fills it, timed
    forward = build_teacher_fn(base, data.num_classes, device, loader)
    store, _ = open_run_store(base, forward.teacher, forward.precision, loader, data.num_classes, create=True)
    _sync(device)
    t0 = time.perf_counter()
    fill_store(store, loader, forward, range(1, epochs + 1))
    _sync(device)
    fill_s = time.perf_counter() - t0
    batches = []  # (epoch, batch): the full batches of the first epochs, rendered once
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        batches += [(epoch, b) for b in loader if len(b.targets) == args.batch]
    batches = batches[:per_path]
    paths = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            for mode in ("off", "full"):
                cfg = _config(method, root, teacher, cache, args, epochs, mode)
                provider = build_teacher_fn(cfg, data.num_classes, device, loader)
                out = Path(tmp) / f"{method}-{mode}"
                (out / "checkpoints").mkdir(parents=True)
                run = Run(
                    cfg, out, world=world, device=device, num_classes=data.num_classes, resume_from=None, resume=False
                )
                run.begin_epoch(1)
                paths[f"{method}, {'live teacher' if mode == 'off' else 'stored float16'}"] = (Member(run), provider)
        wall: dict[str, list[float]] = {name: [] for name in paths}
        cpu: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for k, (epoch, batch) in enumerate(batches):
                for name, (member, provider) in paths.items():  # the paths take turns step by step
                    loader.epoch = epoch  # the epoch a stored lookup reads
                    _sync(device)
                    t0, c0 = time.perf_counter(), time.process_time()
                    group_step([member], batch, provider, epoch)
                    _sync(device)
                    if k >= args.warmup:
                        wall[name].append((time.perf_counter() - t0) * 1e3)
                        cpu[name].append((time.process_time() - c0) * 1e3)
        # the teacher's part of a step alone: the provider's call on the same batches
        teacher_part = {}
        for name, (_, provider) in paths.items():
            if name.startswith(METHODS[0]):
                mine = []
                for _ in range(args.rounds):
                    for epoch, batch in batches:
                        loader.epoch = epoch
                        _sync(device)
                        t0 = time.perf_counter()
                        provider(batch)
                        _sync(device)
                        mine.append((time.perf_counter() - t0) * 1e3)
                teacher_part[name.split(", ", 1)[1]] = round(statistics.median(mine), 2)
    steps = {
        name: {
            "ms_per_step": round(statistics.median(t), 1),
            "min_ms_per_step": round(min(t), 1),
            "cpu_ms_per_step": round(statistics.median(cpu[name]), 1),
            "steps": len(t),
        }
        for name, t in wall.items()
    }
    for method in METHODS:
        live, stored = steps[f"{method}, live teacher"], steps[f"{method}, stored float16"]
        stored["speedup_vs_live"] = round(live["ms_per_step"] / stored["ms_per_step"], 2)
        stored["speedup_vs_live_min"] = round(live["min_ms_per_step"] / stored["min_ms_per_step"], 2)
        stored["speedup_vs_live_cpu"] = round(live["cpu_ms_per_step"] / stored["cpu_ms_per_step"], 2)
    return {
        "fill": {
            "images": epochs * loader.n,
            "seconds": round(fill_s, 2),
            "images_per_s": round(epochs * loader.n / fill_s, 2),
            "bytes_per_epoch": store.epoch_bytes,
        },
        "steps": steps,
        "teacher_part_ms_per_step": teacher_part,
    }


def measure_lookup(folder: Path, device: torch.device, records: int = 200_000, batch: int = 256) -> dict:
    """Gather + decode of ``batch`` float16 records of 1000 classes from an epoch of ``records``."""
    store = OutputStore.open(folder, "lookup", key="0" * 64, num_samples=records, num_classes=1000, form="float16")
    rng = np.random.default_rng(0)
    dtype = record_dtype("float16", 1000)

    def blocks():
        for start in range(0, records, 10_000):
            stop = min(records, start + 10_000)
            rows = np.empty(stop - start, dtype=dtype)
            rows["logits"] = rng.normal(0, 3, (stop - start, 1000)).astype(np.float16)
            yield np.arange(start, stop), rows

    with store.filling():
        store.write_epoch(1, blocks())
    t0 = time.perf_counter()
    store.verify(1)
    verify_s = time.perf_counter() - t0
    stored = StoredTeacher(store, type("L", (), {"epoch": 1})())
    targets = torch.zeros(batch, dtype=torch.int64, device=device)
    order = torch.from_numpy(rng.permutation(records)).to(device)
    times = []
    for k in range(0, min(records, 60 * batch), batch):
        idx = order[k : k + batch]
        _sync(device)
        t0 = time.perf_counter()
        stored(type("B", (), {"indices": idx, "targets": targets})())
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return {
        "records": records,
        "batch": batch,
        "epoch_mb": round(store.epoch_bytes / 1e6, 1),
        "ms_per_batch": round(statistics.median(times[5:]), 3),
        "verify_gb_per_s": round(store.epoch_bytes / verify_s / 1e9, 2),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("RLD_COMPILE_LOSSES", "0")  # the eager loss kernel: no compilation in the timings
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="rld-store-bench-"))
    try:
        root = tmp / "data"
        files = make_folder(root, args.images)
        sizes = [f.stat().st_size for f in files if "/train/" in str(f)]
        teacher = tmp / "resnet34.pt"
        torch.manual_seed(0)
        torch.save({"model": create_model("ResNet34", num_classes=10, dataset="imagenet").state_dict()}, teacher)
        measured = measure_steps(root, teacher, tmp / "cache", args, device)
        lookup = measure_lookup(tmp / "lookup", device)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bytes_per_epoch = {
        (f"top{k}" if form == "topk" else form): {
            "bytes_per_sample": forms.record_bytes(form, 1000, k),
            "gb_per_epoch": round(forms.per_epoch_gb(form, IMAGENET_TRAIN, 1000, k), 3),
        }
        for form, k in (("float32", 20), ("float16", 20), ("int8", 20), ("topk", 5), ("topk", 20), ("topk", 100))
    }
    out = {
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "torch": torch.__version__,
        "images": args.images,
        "mean_file_kb": round(sum(sizes) / len(sizes) / 1024, 1),
        "image_size": args.size,
        "batch": args.batch,
        "pair": "ResNet34 -> ResNet18 (random weights, 10 classes)",
        **measured,
        "lookup_imagenet_scale": lookup,
        "bytes_per_imagenet_epoch": bytes_per_epoch,
    }
    print(
        f"device {out['device']} ({out['cpu_count']} cores, {out['torch_threads']} threads), "
        f"{args.size} px, batch {args.batch}"
    )
    f = out["fill"]
    print(f"fill (rld cache, float16): {f['images']} images in {f['seconds']} s = {f['images_per_s']} images/s")
    print(f"{'path':<26} {'ms/step':>8} {'min':>8} {'CPU ms':>8}")
    for name, r in out["steps"].items():
        extra = f"  ({r['speedup_vs_live']}x the live teacher)" if "speedup_vs_live" in r else ""
        print(f"{name:<26} {r['ms_per_step']:8.1f} {r['min_ms_per_step']:8.1f} {r['cpu_ms_per_step']:8.1f}{extra}")
    part = out["teacher_part_ms_per_step"]
    print("the teacher's part of a step: " + ", ".join(f"{k} {v} ms" for k, v in part.items()))
    print(
        f"lookup at ImageNet scale: {lookup['ms_per_batch']} ms per batch of {lookup['batch']} "
        f"(epoch of {lookup['records']:,} records, {lookup['epoch_mb']} MB); checksums {lookup['verify_gb_per_s']} GB/s"
    )
    print("GB per ImageNet epoch: " + ", ".join(f"{k} {v['gb_per_epoch']}" for k, v in bytes_per_epoch.items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
