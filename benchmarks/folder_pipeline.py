"""Training images per second of an image folder: the PIL DataLoader path vs the device pipeline.

    python benchmarks/folder_pipeline.py [--device cpu|cuda] [--images 320] [--workers 2] [--batch 64]
                                         [--epochs 3] [--size 224] [--threads 1] [--json PATH]

Makes a synthetic ImageFolder in a temporary folder (deleted afterwards): ``--images`` training
JPEGs of ImageNet's usual sizes (500 x 375 and 375 x 500, quality 90, photo-like content of about
100 KB each, as ImageNet's average file) in 10 classes. Then measures:

* ``decode``: milliseconds per image of decoding batches of ``--batch`` files (bytes already in memory)
  with each decoder that imports (torchvision; TorchCodec when installed), on ``--device``;
* ``pipelines``: images per second of the training loader over one epoch, the median of ``--epochs``
  epochs after a warm-up epoch (workers started, files in the page cache): ``pil`` (TorchLoader:
  workers decode with PIL and run RandomResizedCrop + flip + Normalize) and ``device`` with each
  decoder (DeviceFolderLoader: workers read bytes, the training process decodes and augments on
  ``--device``), with the same ``--workers`` and ``--batch``. The loop only takes the batches (and
  synchronises on CUDA): what a loader delivers, not a training step; on a CPU the device
  pipeline's work happens in the training process, where it would also take the step's time.

``--threads``: torch's intra-op threads in the measuring process (DataLoader workers always use
one); on a small shared CPU, more threads than idle cores make every torch call wait for the others.
Prints a table and writes JSON (with the load average before and after, as the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rld.data import build_data
from rld.data.decode import ImageDecoder, torchcodec_available


def make_folder(root: Path, images: int, classes: int = 10, seed: int = 0) -> list[Path]:
    """``images`` photo-like JPEGs under ``root/train/<class>/`` (and one per class under ``root/val``)."""
    rng = np.random.default_rng(seed)
    files = []
    for split, count in (("train", images), ("val", classes)):
        for i in range(count):
            c = i % classes
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            w, h = (500, 375) if i % 4 else (375, 500)
            small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
            base = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32)
            pixels = np.clip(base + rng.normal(0, 14, base.shape), 0, 255).astype(np.uint8)
            path = folder / f"{split}_{i:06d}.JPEG"
            Image.fromarray(pixels).save(path, quality=90)
            files.append(path)
    return files


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_decode(files: list[Path], decoder: str, device: torch.device, batch: int, rounds: int) -> float:
    """Median milliseconds per image of decoding the files in batches of ``batch``."""
    blobs = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files]
    dec = ImageDecoder(device, decoder)
    dec(blobs[:batch])  # warm-up (library initialisation, nvJPEG handles)
    times = []
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        for i in range(0, len(blobs), batch):
            dec(blobs[i : i + batch])
        _sync(device)
        times.append((time.perf_counter() - start) / len(blobs) * 1e3)
    return statistics.median(times)


def time_loader(root: Path, pipeline: str, decoder: str, args, device: torch.device) -> dict:
    data = build_data(
        "imagefolder",
        str(root),
        batch_size=args.batch,
        device=device,
        seed=0,
        num_workers=args.workers,
        pipeline=pipeline,
        decoder=decoder,
        image_size=args.size,
    )
    loader = data.train
    rates = []
    for epoch in range(args.epochs + 1):
        loader.set_epoch(epoch)
        _sync(device)
        start, count = time.perf_counter(), 0
        for batch in loader:
            count += batch.images.shape[0]
        _sync(device)
        if epoch:  # the first epoch warms up
            rates.append(count / (time.perf_counter() - start))
    del data, loader
    return {"images_per_s": statistics.median(rates), "epochs": [round(r, 1) for r in rates]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()
    decoders = ["torchvision"] + (["torchcodec"] if torchcodec_available() else [])
    root = Path(tempfile.mkdtemp(prefix="rld-folder-bench-"))
    try:
        files = make_folder(root, args.images)
        train_files = [f for f in files if "/train/" in str(f)]
        sizes = [f.stat().st_size for f in train_files]
        decode = {d: round(time_decode(train_files, d, device, args.batch, 3), 3) for d in decoders}
        pipelines = {"pil": time_loader(root, "pil", "auto", args, device)}
        for d in decoders:
            pipelines[f"device ({d})"] = time_loader(root, "device", d, args, device)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    versions = {"torch": torch.__version__}
    import torchvision

    versions["torchvision"] = torchvision.__version__
    if "torchcodec" in decoders:
        import torchcodec

        versions["torchcodec"] = torchcodec.__version__
    out = {
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "versions": versions,
        "images": args.images,
        "mean_file_kb": round(sum(sizes) / len(sizes) / 1024, 1),
        "image_size": args.size,
        "batch": args.batch,
        "workers": args.workers,
        "decode_ms_per_image": decode,
        "pipelines": pipelines,
    }
    print(f"{args.images} JPEGs of 500x375 / 375x500 ({out['mean_file_kb']} KB on average), device {out['device']}")
    print(f"{'decoder':<16} ms/image")
    for d, ms in decode.items():
        print(f"{d:<16} {ms:8.2f}")
    print(f"{'pipeline':<24} images/s  (workers {args.workers}, batch {args.batch}, {args.size}x{args.size})")
    for name, r in pipelines.items():
        print(f"{name:<24} {r['images_per_s']:8.1f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
