"""The ``rld`` command: thin; it parses arguments and calls the library.

A mistake the user can fix (:class:`rld.errors.UserError`) is printed as one line on stderr
and ends the command with exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from rld.errors import UserError


def _cmd_demo(args: argparse.Namespace) -> None:
    import torch

    from rld.losses import dkd_loss, kd_loss, label_revision_loss, rc_loss, rld_loss, swap_teacher_logits

    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(64, 10, generator=g) * 3
    student = torch.randn(64, 10, generator=g) * 3
    target = torch.randint(0, 10, (64,), generator=g)
    right = (teacher.argmax(1) == target).float().mean().item()
    rows = {
        "kd": kd_loss(student, teacher),
        "dkd": dkd_loss(student, teacher, target),
        "rld": rld_loss(student, teacher, target),
        "la": kd_loss(student, swap_teacher_logits(teacher, target)),
        "rc": rc_loss(student, target),
        "lr": label_revision_loss(student, teacher, target),
    }
    print(f"Distillation losses on random logits (64 samples, 10 classes; teacher right on {right:.0%}):")
    for name, value in rows.items():
        print(f"  {name:4s} {value.item():9.4f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rld", description="Knowledge distillation with Refined Logits (RLD).")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the built-in demonstration")
    demo.add_argument("--out", default="runs/demo", help="output folder")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"rld: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rld: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
