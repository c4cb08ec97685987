# PYTHON_ARGCOMPLETE_OK
"""The ``rld`` command: thin; it parses arguments and calls the library.

Exit statuses: 0 done; 1 a bug in rld (its traceback, then one line saying what to report); 2 a
mistake the user can fix (:class:`rld.errors.UserError`, bad arguments: one line on stderr, no
traceback); 3 training diverged (:class:`rld.errors.DivergedError`; for
``rld sweep``: some of its runs did, the others finished); 130 / 143 stopped by SIGINT / SIGTERM
(:class:`rld.errors.Interrupted`: the run's position is saved, ``--resume`` continues it).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import shlex
import sys
import traceback
from pathlib import Path

from rld.errors import DivergedError, Interrupted, UserError

_LINE_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` with the characters that would break or garble its line (newlines, carriage returns,
    other control characters, as in a path or value the user gave) written as escapes."""
    return _LINE_BREAKING.sub(lambda m: repr(m.group())[1:-1], text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def _flags(args: argparse.Namespace) -> dict:
    return {
        "seed": getattr(args, "seed", None),
        "model.teacher_checkpoint": args.teacher,
        "data.path": args.data,
        "train.device": args.device,
    }


def _default_out(source: str) -> Path:
    return Path("runs") / Path(source).stem if source.endswith((".yaml", ".yml")) else Path("runs") / source


def _train_source(args: argparse.Namespace) -> tuple[str, list[str], Path]:
    """The configuration source, the overrides and the run folder of ``rld train``.

    With ``--resume --out RUN`` and no preset, the source is the configuration stored in RUN."""
    source, overrides = args.preset, list(args.overrides)
    if source is not None and "=" in source and not Path(source).exists():
        source, overrides = None, [source, *overrides]  # a KEY=VALUE taken for the preset
    if source is None:
        if not (args.resume and args.out):
            raise UserError("give a PRESET_OR_YAML (rld presets lists them), or --resume --out RUN to continue a run")
        stored = args.out / "config.yaml"
        if not stored.is_file():
            raise UserError(f"{args.out} holds no run to resume (no config.yaml); give a PRESET_OR_YAML to start one")
        source = str(stored)
    return source, overrides, args.out or _default_out(source)


def _cmd_train(args: argparse.Namespace) -> None:
    from rld.config import resolve_with_flags
    from rld.engine import train
    from rld.trackers import Tracking

    source, overrides, out = _train_source(args)
    cfg = resolve_with_flags(source, overrides, _flags(args), args.epochs)
    args.resume_hint = f"rld train --resume --out {shlex.quote(str(out))}"
    if args.dry_run:
        print(dry_run_text(cfg), end="")
        return
    if os.environ.get("RANK", "0") == "0":
        logging.getLogger("rld").info("preset   %s%s", source, f" {' '.join(overrides)}" if overrides else "")
    stored = args.out is not None and source == str(args.out / "config.yaml")  # --resume --out RUN, no preset
    preset = None if stored else source
    summary = train(cfg, out, resume=args.resume, tracking=Tracking(preset=preset))
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

    path = Path(args.checkpoint)
    results = []
    if path.is_dir():  # a run folder: its last and best checkpoints, and its teacher
        for name in ("last", "best"):
            ckpt = path / "checkpoints" / f"{name}.pt"
            if not ckpt.is_file():
                raise UserError(f"{path} has no checkpoints/{name}.pt: it is not a run folder with a finished epoch")
            results.append({"which": name, **evaluate_checkpoint(ckpt, args.data, args.device or "auto")})
        results += _eval_teacher(path, args)
    else:
        if args.teacher:
            raise UserError("--teacher applies to a run folder (rld eval RUN_FOLDER --teacher CKPT)")
        results.append(evaluate_checkpoint(path, args.data, args.device or "auto"))
    if args.json:
        import json

        print(json.dumps(results, indent=2))
        return
    for r in results:
        scores = f"top-1 {r['test_top1']:.2f}%  top-5 {r['test_top5']:.2f}%  loss {r['test_loss']:.4f}"
        which = f"{r['which']}: " if "which" in r else ""
        epoch = f" (epoch {r['epoch']})" if r.get("epoch") is not None else ""
        print(f"{which}{r['model']}{epoch}: {scores}")


def _eval_teacher(run_dir: Path, args: argparse.Namespace) -> list[dict]:
    from rld.engine import evaluate_weights
    from rld.experiments.runs import RunRecord
    from rld.viz.compute import teacher_checkpoint

    record = RunRecord.load(run_dir)
    if not record.config.model.teacher_checkpoint:
        if args.teacher:
            raise UserError(f"{run_dir} was trained without a teacher: --teacher does not apply")
        return []
    ckpt = teacher_checkpoint(record, args.teacher)
    device = args.device or "auto"
    metrics = evaluate_weights(record.config, record.config.model.teacher, ckpt, args.data, device, run_dir=run_dir)
    return [{"which": "teacher", "checkpoint": str(ckpt), "model": record.config.model.teacher, **metrics}]


def _cmd_export(args: argparse.Namespace) -> None:
    from rld.export import export

    out = export(args.checkpoint, args.format, args.out, data_path=args.data)
    print(f"exported ({args.format}) → {out}")


def _cmd_predict(args: argparse.Namespace) -> None:
    from rld.export import predict, write_predictions

    rows = predict(args.source, args.images, top_k=args.top_k, data_path=args.data)
    if args.out:
        write_predictions(rows, args.out)
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['image']}: " + ", ".join(f"{c} {100 * p:.1f}%" for c, p in r["top"]))
    if args.out:
        print(f"predictions → {args.out}")


def _cmd_presets(args: argparse.Namespace) -> None:
    if args.teachers:
        _print_teachers(args)
        return
    from rld.config import list_presets

    names = [name for name in list_presets() if not args.filter or args.filter in name]
    if args.json:
        import json

        print(json.dumps({name: list_presets()[name] for name in names}, indent=2))
        return
    for name in names:
        print(name)


def _print_teachers(args: argparse.Namespace) -> None:
    from rld.models.sources import named_teachers

    entries = [t for name, t in named_teachers().items() if not args.filter or args.filter in name]
    if args.json:
        import dataclasses
        import json

        print(json.dumps([{**dataclasses.asdict(t), "checkpoint": t.checkpoint} for t in entries], indent=2))
        return
    width = max((len(t.name) for t in entries), default=0)
    arch = max((len(t.architecture) for t in entries), default=0)
    for t in entries:
        top1 = f"{t.top1:.2f}%" if t.top1 is not None else "-"
        print(f"{t.name:{width}s}  {t.architecture:{arch}s}  top-1 {top1:7s}  {t.checkpoint}")


def _cmd_config_keys(args: argparse.Namespace) -> None:
    import json

    from rld.config import key_help, key_types

    helps = key_help()
    rows = [(key, kind, default, helps.get(key, "")) for key, (kind, default) in key_types().items()]
    if args.json:
        print(json.dumps([dict(zip(("key", "type", "default", "help"), r)) for r in rows], indent=2))
        return
    width = max(len(r[0]) for r in rows)
    for key, kind, default, help_text in rows:
        print(f"{key:{width}s}  {kind:14s}  {str(default):18s}  {help_text}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from rld.experiments.demo import run_demo

    try:
        seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers, e.g. 0,1,2; got {args.seeds!r}") from None
    from rld.config import text_override

    overrides = [*args.overrides, *([text_override("train.device", args.device)] if args.device else [])]
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
    from rld import __version__

    parser = _Parser(prog="rld", description="Knowledge distillation with Refined Logits (RLD).")
    parser.add_argument("--version", action="version", version=f"rld {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "train",
        help="train a teacher or distill a student",
        description=(
            "Train the run a preset or YAML file describes, with KEY=VALUE overrides. `rld train --resume --out "
            "RUN [KEY=VALUE ...]` continues the run in RUN from its stored configuration; a changed "
            "train.epochs / lr schedule extends it (the epochs trained stay, the new schedule applies from the "
            "next epoch); other changes that affect results are refused."
        ),
    )
    p.add_argument("preset", nargs="?", metavar="PRESET_OR_YAML", help="a preset name (`rld presets`) or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. method.beta=4 train.lr=0.01")
    p.add_argument(
        "--epochs",
        type=int,
        help="N epochs, with the lr milestones (or step), warm-up and CTKD ramp scaled by N / the preset's "
        "epochs (train.epochs=N sets the count alone)",
    )
    p.add_argument("--seed", type=int, help="random seed (= seed=N)")
    p.add_argument("--out", type=Path, help="run folder (default: runs/PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (fresh start if none)")
    p.add_argument(
        "--teacher",
        metavar="CKPT",
        help="teacher checkpoint: a file, a URL (URL!/MEMBER of a .tar, #sha256=HEX) or a named teacher "
        "(rld presets --teachers) (= model.teacher_checkpoint=CKPT)",
    )
    p.add_argument("--data", metavar="PATH", help="data set location (= data.path=PATH)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (= train.device=…; default auto)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit (trains nothing)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "eval", help="evaluate a checkpoint, or a run folder (last, best and its teacher), on the test split"
    )
    p.add_argument("checkpoint", metavar="CKPT_OR_RUN", help="a run checkpoint (last.pt / best.pt) or a run folder")
    p.add_argument("--data", metavar="PATH", help="the data set, if it has moved since the run was trained")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--teacher", metavar="CKPT", help="the run's teacher checkpoint, if it has moved")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "export", help="write a run's student to safetensors, ONNX or TorchScript with its classes and preprocessing"
    )
    p.add_argument("checkpoint", metavar="CKPT_OR_RUN", help="a run checkpoint, or a run folder (its best.pt)")
    p.add_argument("--format", required=True, choices=["safetensors", "onnx", "torchscript"], help="file format")
    p.add_argument("--out", required=True, type=Path, help="the file to write")
    p.add_argument("--data", metavar="PATH", help="the data set, for checkpoints that do not record their classes")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("predict", help="top-k classes of image files, from a run checkpoint or an export")
    p.add_argument("source", metavar="CKPT_OR_EXPORT", help="a run checkpoint or folder, or an exported file")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--top-k", type=int, default=5, help="classes shown per image (default: 5)")
    p.add_argument("--out", type=Path, metavar="CSV", help="also write the predictions to this CSV file")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument("--data", metavar="PATH", help="the data set, for checkpoints that do not record their classes")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("presets", help="list the presets")
    p.add_argument("filter", nargs="?", help="only names containing this text")
    p.add_argument("--json", action="store_true", help="print each preset's configuration as JSON")
    p.add_argument(
        "--teachers",
        action="store_true",
        help="list the named teachers instead (--teacher cifar100:NAME): architecture, reported top-1, URL",
    )
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("config-keys", help="every configuration key with its type, default and meaning")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_cmd_config_keys)

    p = sub.add_parser(
        "demo", help="teacher + vanilla/KD/DKD/RLD students (several seeds) on the embedded digits data, HTML report"
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--seeds", metavar="S1,S2,…", help="student seeds (default: 0,1,2)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides for every run, e.g. train.epochs=2")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.set_defaults(func=_cmd_demo)
    from rld.experiments.cli import add_commands as _add_experiment_commands

    _add_experiment_commands(sub)
    from rld.fast.cli import add_commands as _add_fast_commands

    _add_fast_commands(sub)
    return parser


class _CurrentStdout(logging.StreamHandler):
    """A log handler writing to whatever ``sys.stdout`` is when a record comes (not the stream of
    the moment ``main`` ran: a caller that swaps stdout, as test runners do, gets the lines)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def _one_line(err: UserError) -> str:
    """The message of a user error; raised in a DataLoader worker, it arrives wrapped in the
    worker's traceback: its last line holds the message."""
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        return last.split("UserError: ", 1)[-1]
    return text


def _completion(parser: argparse.ArgumentParser) -> None:
    """Shell completion when argcomplete is installed (``pip install rld[completion]``, then
    ``eval "$(register-python-argcomplete rld)"``); without it, nothing happens."""
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """The parser, built once per process (parsing leaves it as it was; callers that run ``main``
    many times in one process, as the tests do, build it once)."""
    return build_parser()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    _completion(parser)
    args, extra = parser.parse_known_args(argv)
    if args.command is None:  # bare `rld`
        parser.print_help()
        return 0
    # KEY=VALUE overrides may also follow the options (argparse stops collecting them at the first option).
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[_CurrentStdout()], force=True)
    try:
        status = args.func(args)
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops; rank 0 says why
            print(f"rld: error: {one_line(_one_line(err))}", file=sys.stderr)
        return 2
    except DivergedError as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"rld: error: {one_line(str(err))}", file=sys.stderr)
        return err.exit_status
    except Interrupted as err:
        if os.environ.get("RANK", "0") == "0":
            hint = getattr(args, "resume_hint", None)
            print(f"rld: {err}" + (f"; continue with: {hint}" if hint else ""), file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        hint = getattr(args, "resume_hint", None)
        print("rld: interrupted" + (f"; continue with: {hint}" if hint else ""), file=sys.stderr)
        return 130
    except Exception:  # a bug in rld, not a mistake in the input: the traceback, then what to report
        traceback.print_exc()
        print(
            BUG_FOOTER.format(
                version=_version(), argv=" ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
            ),
            file=sys.stderr,
        )
        return 1
    return status if isinstance(status, int) else 0


BUG_FOOTER = (
    "rld: this is a bug in rld, not a mistake in your input; please report it with the command "
    "(rld {argv}), the version (rld {version}) and the traceback above"
)


def _version() -> str:
    from rld import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
