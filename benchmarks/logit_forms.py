"""What each storage form of teacher logits changes in each logit method's loss and gradient.

For 1000-class logits (ImageNet-sized) it stores the teacher's logits in every form of
:mod:`rld.fast.forms` (float16, int8 with a per-row step, top-k with the filled tail), decodes them and
compares each logit method's loss — with its ImageNet ResNet34→ResNet18 preset values — and the
gradient of that loss with respect to the student's logits against the float32 originals: the
relative error of the loss, ``|L' − L| / |L|``, and of the gradient, ``‖g' − g‖ / ‖g‖``, the largest
over a few batches (seeds).
It also reports the bytes per sample and per epoch of ImageNet's 1,281,167 training images, and
which methods each form is exact enough for (loss ≤ 1e-3, gradient ≤ 1e-2 relative).

The logits are synthetic (no ImageNet teacher ships with rld): per sample, the teacher's logits are
N(0, 1.5²) per class with a N(10, 2²) bump on one class — the true class for 75 % of the samples, another
otherwise (a 75 % top-1 teacher) — and the student's are the teacher's plus N(0, 1) noise; the bump
makes the teacher's mean top-1 probability about 0.75, as a ResNet34's is. The report prints what the
draw gave. Top-k is measured for several k.

    python benchmarks/logit_forms.py [--out FILE.json] [--batch 512] [--k 5 20 100] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from rld.config import resolve
from rld.fast import forms
from rld.methods import build_method, get_spec, list_methods, logits_only

NUM_CLASSES = 1000
IMAGENET_TRAIN = 1_281_167
PAIR = "ResNet34-ResNet18"


def synthetic_logits(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(teacher logits, student logits, targets), float32, as the module docstring describes."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    right = torch.rand(batch, generator=g) < 0.75
    other = (targets + torch.randint(1, NUM_CLASSES, (batch,), generator=g)) % NUM_CLASSES
    peak = torch.where(right, targets, other)
    teacher = 1.5 * torch.randn(batch, NUM_CLASSES, generator=g)
    teacher[torch.arange(batch), peak] += 10.0 + 2.0 * torch.randn(batch, generator=g)
    student = teacher + torch.randn(batch, NUM_CLASSES, generator=g)
    return teacher, student, targets


def logit_methods() -> list[str]:
    """The registered methods that read only the teacher's logits of the weak view (those a stored
    teacher output can serve)."""
    out = []
    for name in list_methods():
        spec = get_spec(name)
        if spec.teacher_needs == ("logits",) and not spec.student_features and not spec.strong_view:
            out.append(name)
    return out


def loss_and_grad(method, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor):
    z = student.clone().requires_grad_(True)
    loss, _ = method(logits_only(z), logits_only(teacher), targets, 1000.0, None)
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


def measure(batch: int, k: list[int], seeds: list[int]) -> dict:
    """The largest error over the batches drawn with ``seeds``."""
    runs = [measure_one(batch, k, seed) for seed in seeds]
    errors = runs[0]["errors"]
    for run in runs[1:]:
        for method, row in run["errors"].items():
            for form, err in row.items():
                for key, value in err.items():
                    errors[method][form][key] = max(errors[method][form][key], value)
    out = runs[0]
    out["seeds"] = seeds
    out["logits"] = [run["logits"] for run in runs]
    out["exact_enough"] = {
        form: sorted(
            m
            for m, row in errors.items()
            if row[form]["loss_rel"] <= forms.INEXACT_LOSS and row[form]["grad_rel"] <= forms.INEXACT_GRAD
        )
        for form in next(iter(errors.values()))
    }
    return out


def measure_one(batch: int, k: list[int], seed: int) -> dict:
    teacher, student, targets = synthetic_logits(batch, seed)
    p = teacher.softmax(dim=1)
    stats = {
        "mean_top1_probability": round(p.max(dim=1).values.mean().item(), 4),
        "teacher_top1": round((teacher.argmax(dim=1) == targets).float().mean().item(), 4),
        "true_class_rank_mean": round(
            (teacher > teacher.gather(1, targets[:, None])).sum(dim=1).float().mean().item(), 2
        ),
    }
    variants = {"float16": ("float16", 0), "int8": ("int8", 0), **{f"top{kk}": ("topk", kk) for kk in k}}
    stored = {name: forms.roundtrip(teacher, targets, form, kk or 1) for name, (form, kk) in variants.items()}
    results = {}
    for name in logit_methods():
        cfg = resolve(f"imagenet/{PAIR}/{name}").method
        torch.manual_seed(0)  # CTKD's temperature module is built from the global stream
        method = build_method(cfg)
        method.train()
        ref_loss, ref_grad = loss_and_grad(method, student, teacher, targets)
        row = {}
        for form in variants:
            loss, grad = loss_and_grad(method, student, stored[form], targets)
            row[form] = {
                "loss_rel": float((loss - ref_loss).abs() / ref_loss.abs().clamp_min(1e-12)),
                "grad_rel": float((grad - ref_grad).norm() / ref_grad.norm().clamp_min(1e-12)),
            }
        results[name] = row
    exact_enough = {
        form: sorted(
            m
            for m, row in results.items()
            if row[form]["loss_rel"] <= forms.INEXACT_LOSS and row[form]["grad_rel"] <= forms.INEXACT_GRAD
        )
        for form in variants
    }
    sizes = {
        name: (form, kk or forms.TOPK_DEFAULT) for name, (form, kk) in {"float32": ("float32", 0), **variants}.items()
    }
    return {
        "logits": stats,
        "batch": batch,
        "bytes_per_sample": {n: forms.record_bytes(f, NUM_CLASSES, kk) for n, (f, kk) in sizes.items()},
        "gb_per_imagenet_epoch": {
            n: round(forms.per_epoch_gb(f, IMAGENET_TRAIN, NUM_CLASSES, kk), 3) for n, (f, kk) in sizes.items()
        },
        "errors": results,
        "exact_enough": exact_enough,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--k", type=int, nargs="+", default=[5, forms.TOPK_DEFAULT, 100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    report = measure(args.batch, args.k, args.seeds)
    report["machine"] = {"python": sys.version.split()[0], "torch": torch.__version__, "cpu": platform.processor()}
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
