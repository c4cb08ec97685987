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
    if args.dry_run:
        print(dry_run_text(cfg), end="")
        return
    summary = train(cfg, args.out or _default_out(args.preset), resume=args.resume)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    print(
        f"done: best test top-1 {summary['best_top1']:.2f}% (epoch {summary['best_epoch']}), "
        f"last {summary['last_top1']:.2f}%  →  {summary['out']}"
    )


def dry_run_text(cfg) -> str:
    """The resolved configuration as config.yaml would hold it, then the method's resolved
    parameters and the precision of each part, as YAML comments."""
    from rld.config import precision_summary, to_yaml
    from rld.methods import resolved_params

    params = ", ".join(f"{k}={v}" for k, v in resolved_params(cfg.method).items())
    precision = ", ".join(f"{k} {v}" for k, v in precision_summary(cfg).items())
    return f"{to_yaml(cfg)}# method parameters: {params}\n# precision: {precision}\n"


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
    from rld.experiments.demo import run_demo

    try:
        seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers, e.g. 0,1,2; got {args.seeds!r}") from None
    overrides = [*args.overrides, *([f"train.device={args.device}"] if args.device else [])]
    r = run_demo(args.out, overrides, **({"seeds": seeds} if seeds else {}))
    print(
        "\nrld demo — handwritten digits (scikit-learn): a resnet20 teacher trained on all 1,347 training images, "
        f"resnet8 students that see 10 labelled images per class; {len(r.seeds)} seeds per method"
    )
    print(f"teacher: last-epoch test top-1 {r.teacher['last_top1']:.2f}%")
    print(f"{'student':10s} {'test top-1 (last epoch)':>24s}  per seed")
    for m in r.methods:
        per_seed = " ".join(f"{v:.2f}" for v in m.values)
        print(f"{m.method:10s} {m.mean:14.2f} ± {m.std:5.2f} %  {per_seed}")
    for c in r.comparisons:
        print(f"  {c.sentence()}")
    print("(a difference is called clear when it exceeds the sum of the two standard deviations)")
    print(f"wall time: {r.wall_time:.0f} s")
    if r.report is not None:
        print(f"report: {r.report.resolve()}")


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
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit (trains nothing)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on its data set's test split")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--data", metavar="PATH")
    p.add_argument("--device")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("presets", help="list the presets")
    p.add_argument("filter", nargs="?", help="only names containing this text")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser(
        "demo", help="teacher + vanilla/KD/DKD/RLD students (several seeds) on the embedded digits data, HTML report"
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--seeds", metavar="S1,S2,…", help="student seeds (default: 0,1,2)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides for every run, e.g. train.epochs=2")
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
        print(f"rld: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rld: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
