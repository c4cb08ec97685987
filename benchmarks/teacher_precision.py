"""The teacher's logits under ``train.amp=true``: what each way of keeping them float32 costs.

    python benchmarks/teacher_precision.py [--device cpu|cuda] [--teacher resnet32x4] [--batch 64]
                                           [--repeats 15] [--json PATH]

Three ways to compute a batch of teacher logits (frozen, eval mode, channels-last, no grad):

* ``float32``: the whole teacher in float32;
* ``bf16 body + float32 classifier``: the body under bf16 autocast, the final linear layer in
  float32 on the float32-cast pooled feature (what :class:`rld.engine.trainer.TeacherForward`
  does with ``amp``);
* ``bf16 (reference, not used)``: the whole teacher under autocast, logits rounded to bf16.

Each time is the median over ``--repeats`` interleaved rounds of a timed loop (CUDA: synchronised
before reading the clock). Next to the times: how far each way's logits are from the float32 ones
and how many rows of RLD's mask M_ge differ from the float32 teacher's (on random CIFAR-shaped
inputs, labels = the float32 teacher's second-ranked class, so that masks are non-trivial).
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from rld.losses import mask_ge
from rld.models import create_model


def _ways(teacher: torch.nn.Module, x: torch.Tensor) -> dict:
    device = x.device.type

    def fp32():
        return teacher(x).float()

    def body_bf16():
        with torch.autocast(device, dtype=torch.bfloat16, cache_enabled=False):
            pooled = teacher.forward_features(x).pooled
        return teacher.get_classifier()(pooled.float())

    def all_bf16():
        with torch.autocast(device, dtype=torch.bfloat16, cache_enabled=False):
            return teacher(x).float()

    return {"float32": fp32, "bf16 body + float32 classifier": body_bf16, "bf16 (reference, not used)": all_bf16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--loops", type=int, default=5, help="forward passes per timed loop")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(0)
    teacher = create_model(args.teacher, num_classes=100).to(device).eval().requires_grad_(False)
    teacher = teacher.to(memory_format=torch.channels_last)
    # BatchNorm statistics of a trained-looking network: random weights with unit statistics give
    # near-constant logits; a short pass in train mode spreads them as training would
    teacher.train()
    for _ in range(3):
        teacher(torch.randn(256, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last))
    teacher.eval()
    x = torch.randn(args.batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    ways = _ways(teacher, x)

    reference = ways["float32"]()
    target = reference.topk(2, dim=1).indices[:, 1]
    ref_mask = mask_ge(reference, target)
    quality = {}
    for name, fn in ways.items():
        z = fn()
        quality[name] = {
            "max_abs_diff": float((z - reference).abs().max()),
            "mask_rows_changed": int((mask_ge(z, target) != ref_mask).any(dim=1).sum()),
        }

    for fn in ways.values():  # warm-up (autocast and oneDNN caches, cuDNN plans)
        fn()
    times: dict[str, list[float]] = {name: [] for name in ways}
    gc.disable()
    try:
        for _ in range(args.repeats):
            for name, fn in ways.items():
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(args.loops):
                    fn()
                _sync(device)
                times[name].append(1000 * (time.perf_counter() - t0) / args.loops)
    finally:
        gc.enable()

    base = statistics.median(times["float32"])
    results = {
        name: {
            "ms": statistics.median(t),
            "x_float32": statistics.median(t) / base,
            **quality[name],
        }
        for name, t in times.items()
    }
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "teacher": args.teacher,
        "batch": args.batch,
        "repeats": args.repeats,
        "results": results,
    }
    print(f"{args.teacher} teacher forward, batch {args.batch}, {device} ({torch.get_num_threads()} threads)")
    print(f"{'way':34s} {'ms':>8s} {'x fp32':>7s} {'max |dz|':>9s} {'M_ge rows changed':>18s}")
    for name, r in results.items():
        print(
            f"{name:34s} {r['ms']:8.2f} {r['x_float32']:7.2f} {r['max_abs_diff']:9.4f} "
            f"{r['mask_rows_changed']:>10d} / {args.batch}"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
