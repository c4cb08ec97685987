"""The ``rld`` command: thin; it parses arguments and calls the library.

A mistake the user can fix (:class:`rld.errors.UserError`, bad arguments) is printed as one line
on stderr and ends the command with exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from rld.errors import UserError

DEMO_RUNS = ("vanilla", "kd", "dkd", "rld")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _overrides(args: argparse.Namespace) -> list[str]:
    flags = {
        "train.epochs": args.epochs,
        "seed": args.seed,
        "model.teacher_checkpoint": args.teacher,
        "data.path": args.data,
        "train.device": args.device,
    }
    return [*args.overrides, *(f"{k}={v}" for k, v in flags.items() if v is not None)]


def _default_out(source: str) -> Path:
    return Path("runs") / Path(source).stem if source.endswith((".yaml", ".yml")) else Path("runs") / source


def _cmd_train(args: argparse.Namespace) -> None:
    from rld.config import resolve
    from rld.engine import train

    cfg = resolve(args.preset, _overrides(args))
    summary = train(cfg, args.out or _default_out(args.preset), resume=args.resume)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    print(
        f"done: best test top-1 {summary['best_top1']:.2f}% (epoch {summary['best_epoch']}), "
        f"last {summary['last_top1']:.2f}%  →  {summary['out']}"
    )


def _cmd_eval(args: argparse.Namespace) -> None:
    from rld.engine import evaluate_checkpoint

    r = evaluate_checkpoint(args.checkpoint, args.data, args.device or "auto")
    scores = f"top-1 {r['test_top1']:.2f}%  top-5 {r['test_top5']:.2f}%  loss {r['test_loss']:.4f}"
    print(f"{r['model']} (epoch {r['epoch']}): {scores}")


def _cmd_presets(args: argparse.Namespace) -> None:
    from rld.config import list_presets

    for name in list_presets():
        if not args.filter or args.filter in name:
            print(name)


def _cmd_demo(args: argparse.Namespace) -> None:
    from rld.config import resolve
    from rld.engine import train

    out = Path(args.out)
    device = [f"train.device={args.device}"] if args.device else []
    results = {"teacher": train(resolve("demo/teacher", device), out / "teacher", resume=True)}
    teacher = out / "teacher" / "checkpoints" / "best.pt"
    for name in DEMO_RUNS:
        cfg = resolve(f"demo/{name}", [*device, f"model.teacher_checkpoint={teacher}"])
        results[name] = train(cfg, out / name, resume=True)
    print(f"\nrld demo — handwritten digits (scikit-learn), resnet20 teacher → resnet8 students; runs in {out}")
    print(f"{'run':10s} {'best top-1':>10s} {'last top-1':>10s} {'train time':>11s}")
    for name, r in results.items():
        print(f"{name:10s} {r['best_top1']:9.2f}% {r['last_top1']:9.2f}% {r['train_time']:10.1f}s")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rld", description="Knowledge distillation with Refined Logits (RLD).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a teacher or distill a student")
    p.add_argument("preset", metavar="PRESET_OR_YAML", help="a preset name (`rld presets`) or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. method.beta=4 train.lr=0.01")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--out", type=Path, help="run folder (default: runs/PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (fresh start if none)")
    p.add_argument("--teacher", metavar="CKPT", help="teacher checkpoint")
    p.add_argument("--data", metavar="PATH", help="data set location")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on its data set's test split")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--data", metavar="PATH")
    p.add_argument("--device")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("presets", help="list the presets")
    p.add_argument("filter", nargs="?", help="only names containing this text")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("demo", help="teacher + vanilla/KD/DKD/RLD students on the embedded digits data")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--device")
    p.set_defaults(func=_cmd_demo)
    from rld.experiments.cli import add_commands as _add_experiment_commands

    _add_experiment_commands(sub)
    from rld.fast.cli import add_commands as _add_fast_commands

    _add_fast_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may also follow the options (argparse stops collecting them at the first option).
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    try:
        args.func(args)
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops; rank 0 says why
            print(f"rld: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rld: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
