"""Forward+backward time of every rld loss against kd_loss, on (64, 100) and (512, 1000) logits.

    python benchmarks/losses.py [--device cpu|cuda] [--json PATH] [--repeats N]

The student logits require grad, the teacher's do not (as in training). Each measurement is the
median over ``--repeats`` interleaved rounds of a timed loop (CUDA: synchronised before reading
the clock). DKD and RLD run as the library runs them by default: their kernel compiled with
torch.compile (``rld.losses._fused``); the time of that one-off compile is reported apart
(``compile_s``), and two extra rows show the same kernel run eagerly (what a machine without a
working compiler gets) and ``kd_loss`` itself under torch.compile (a like-for-like baseline).
Prints a table and writes JSON: {"device": ..., "torch": ..., "compile_s": ...,
"results": {shape: {loss: {...}}}}.
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

from rld.losses import (
    _fused,
    dkd_loss,
    kd_loss,
    label_revision_loss,
    rc_loss,
    rld_loss,
    standardize_logits,
    swap_teacher_logits,
)

SHAPES = [(64, 100), (512, 1000)]


_kd_compiled = torch.compile(kd_loss, dynamic=True)


def _eager_kernel(fn):
    def run():
        _fused.use_compiled(False)
        try:
            return fn()
        finally:
            _fused.use_compiled(True)

    _fused._import_cpp_extension_quietly()  # (its warning about a missing CUDA is noise here)

    return run


def losses(zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor) -> dict:
    return {
        "kd_loss": lambda: kd_loss(zs, zt, 4.0),
        "kd_loss (torch.compile)": lambda: _kd_compiled(zs, zt, 4.0),
        "dkd_loss": lambda: dkd_loss(zs, zt, y),
        "rld_loss": lambda: rld_loss(zs, zt, y),
        "rld_loss (scd_temperature=2)": lambda: rld_loss(zs, zt, y, scd_temperature=2.0),
        "rld_loss (kernel run eagerly)": _eager_kernel(lambda: rld_loss(zs, zt, y)),
        "la (kd on swapped)": lambda: kd_loss(zs, swap_teacher_logits(zt, y)),
        "rc_loss": lambda: rc_loss(zs, y),
        "label_revision_loss": lambda: label_revision_loss(zs, zt, y),
        "kd on standardized": lambda: kd_loss(standardize_logits(zs), standardize_logits(zt), 2.0),
    }


def _example(b: int, c: int, device: torch.device, g: torch.Generator | None = None):
    zs = (torch.randn(b, c, generator=g) * 3).to(device).requires_grad_(True)
    zt = (torch.randn(b, c, generator=g) * 3).to(device)
    y = torch.randint(0, c, (b,), generator=g).to(device)
    return zs, zt, y


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def time_losses(fns: dict, zs: torch.Tensor, device: torch.device, repeats: int, inner: int) -> dict[str, float]:
    """Median milliseconds of one forward+backward per loss.

    Rounds are interleaved (every loss once per round), so a burst of load on the machine hits all
    losses alike instead of one loss's whole measurement.
    """

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():
        for _ in range(3):
            fn().backward()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    gc.collect()
    gc.disable()  # as timeit does: a collection landing in one loss's loop is not that loss's cost
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            for _ in range(inner):
                zs.grad = None
                fn().backward()
            sync()
            samples[name].append((time.perf_counter() - start) * 1e3 / inner)
        gc.collect()  # between rounds, outside the timed loops
    gc.enable()
    return {name: statistics.median(ms) for name, ms in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    device = torch.device(args.device)
    _fused.use_compiled(True)
    _fused._import_cpp_extension_quietly()  # (its warning about a missing CUDA is noise here)
    report = {"device": device_name(device), "torch": torch.__version__, "results": {}}
    start = time.perf_counter()  # the one-off compiles: DKD's and RLD's kernels, kd_loss's
    for fn in losses(*_example(8, 10, device)).values():
        fn().backward()
    report["compile_s"] = round(time.perf_counter() - start, 1)
    print(f"first calls (compiling the DKD/RLD kernels and kd_loss): {report['compile_s']} s")
    g = torch.Generator().manual_seed(0)
    for b, c in SHAPES:
        zs, zt, y = _example(b, c, device, g)
        inner = 50 if b * c <= 10_000 else 10
        rows = time_losses(losses(zs, zt, y), zs, device, args.repeats, inner)
        base = rows["kd_loss"]
        key = f"{b}x{c}"
        report["results"][key] = {n: {"ms": round(ms, 4), "vs_kd": round(ms / base, 3)} for n, ms in rows.items()}
        print(f"\n{key} on {report['device']}  (forward+backward, median ms)")
        for name, ms in rows.items():
            print(f"  {name:32s} {ms:8.4f} ms  {ms / base:5.2f}x kd_loss")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
