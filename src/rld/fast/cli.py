"""The ``cache``, ``sweep`` and ``bench`` commands of ``rld``: thin, they parse and call the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rld.errors import DivergedError, UserError

SWEEP_EPILOG = """\
Every KEY=V1,V2 override is an axis of the grid (commas inside [...] do not split: \
train.lr_milestones=[3,5],[4,6]); single values apply to every run. Runs that share the seed, data, \
batch size, device and teacher train in lockstep on one data stream (one teacher forward or cache \
lookup per step); different seeds cannot share a stream, so each seed's group runs after the \
previous one. Each run gets its own folder OUT/KEY=VALUE,...,seed=S with config.yaml, metrics.csv and \
checkpoints, exactly as `rld train` would write it; OUT/sweep.csv summarises them. --resume continues \
every run from its last.pt (or the step it stopped at); runs that are behind catch up with the group. \
A run that diverges stops and the others go on; the exit status is then 3. \
--executor ray makes every group a task of a Ray cluster (RAY_ADDRESS, else this machine), the \
groups side by side, one GPU each by default; a group another process is training is left to it, the \
others go on, and the exit status is 2 when a group did not finish for another reason than \
divergence (its runs are listed at the end; --resume continues them)."""


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers (e.g. 0,1,2), got {text!r}") from None
    if not values:
        raise UserError(f"{what} must list at least one integer, got {text!r}")
    return values


def _flags(args: argparse.Namespace) -> dict:
    return {"model.teacher_checkpoint": args.teacher, "data.path": args.data, "train.device": args.device}


def _cmd_cache(args: argparse.Namespace) -> None:
    from rld.config import FOLDER_DATA, resolve, text_override, with_flags
    from rld.fast.build import build_cache
    from rld.fast.cache import human_size

    extra = [text_override("train.cache_dir", args.cache_dir)] if args.cache_dir else []
    extra += [f"train.cache_precision={args.precision}"] if args.precision else []
    cfg = resolve(args.preset, [*with_flags(list(args.overrides), _flags(args)), *extra])
    folder = cfg.data.name.lower() in FOLDER_DATA
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        what = ("teacher outputs", " images") if folder else ("teacher logits", " views")
        bar = tqdm(desc=what[0], unit=what[1], dynamic_ncols=True, leave=False)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    r = build_cache(cfg, progress, epochs=args.epochs, verify=args.verify)
    if bar is not None:
        bar.close()
    if folder:
        checked = f", {r['verified']} checked" if args.verify else ""
        print(
            f"teacher-output store: epochs 1-{r['epochs']} of {r['samples']:,} samples ({r['computed']} computed now "
            f"in {r['seconds']:.1f}s{checked}; {r['form']}, {human_size(r['bytes'])} per epoch) → {r['path']}"
        )
        return
    print(
        f"teacher-logit cache: {r['entries']:,} entries ({r['computed']:,} computed now in {r['seconds']:.1f}s, "
        f"{human_size(r['bytes'])}) → {r['path']}"
    )


def _cmd_sweep(args: argparse.Namespace) -> int:
    from rld.config import with_flags
    from rld.engine.sweep import sweep
    from rld.executor import exit_status, failure_summary, import_ray, options_from_args

    executor = options_from_args(args, args.device)
    if executor.kind == "ray" and not args.dry_run:
        import_ray()
    seeds = _ints(args.seeds, "--seeds") if args.seeds else None
    name = Path(args.preset).stem if args.preset.endswith((".yaml", ".yml")) else args.preset
    out = args.out or Path("runs") / "sweeps" / name
    extra = with_flags([], _flags(args))
    args.resume_hint = "the same rld sweep command with --resume"
    if args.dry_run:
        from rld.config import to_yaml
        from rld.engine.sweep import describe_group, group_runs, plan_sweep

        # --epochs: the same meaning as in `rld train`, each run's schedule scaled with the count
        runs = plan_sweep(args.preset, args.overrides, seeds=seeds, out=out, extra=extra, epochs=args.epochs)
        groups = group_runs(runs, share_seeds=executor.kind == "local")
        which = "; ".join(map(describe_group, groups))
        print(f"sweep: {len(runs)} runs in {len(groups)} lockstep group(s) ({which}) -> {out}")
        for run in runs:
            t = run.cfg.train
            schedule = f"lr_step={t.lr_step}" if t.lr_step else f"lr_milestones={t.lr_milestones}"
            print(f"  {run.name}  (epochs={t.epochs} {schedule})")
        if len(runs) == 1:
            print(to_yaml(runs[0].cfg), end="")
        return 0
    rows = sweep(
        args.preset,
        args.overrides,
        out=out,
        seeds=seeds,
        resume=args.resume,
        extra=extra,
        executor=executor,
        epochs=args.epochs,
    )
    diverged = [r for r in rows if r.get("status") == "diverged"]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print(f"{'run':40s} {'best top-1':>10s} {'last top-1':>10s}")
        for r in rows:
            if "best_epoch" not in r:  # a group that did not train (--executor ray)
                print(f"{r['run']:40s} {'—':>10s} {r['status']:>10s}")
                continue
            last = f"diverged @ {r['diverged_epoch']}" if r.get("status") == "diverged" else r["last_top1"]
            last = "—" if last is None else last if isinstance(last, str) else f"{last:9.2f}%"
            best = "—" if r["best_epoch"] == 0 else f"{r['best_top1']:9.2f}%"
            print(f"{r['run']:40s} {best:>10s} {last:>10s}")
        print(f"summary → {Path(out) / 'sweep.csv'}")
    if executor.kind != "local":
        outcomes = [_outcome(r) for r in rows]
        if exit_status(outcomes):
            print(
                f"rld: error: {failure_summary(outcomes, 'the same command with --resume continues them')}",
                file=sys.stderr,
            )
        return exit_status(outcomes)
    if diverged:
        names = ", ".join(r["run"] for r in diverged)
        message = f"{len(diverged)} of {len(rows)} runs diverged ({names}); the others finished"
        print(f"rld: error: {message}", file=sys.stderr)
        return DivergedError.exit_status
    return 0


def _outcome(row: dict):
    from rld import executor as ex

    status = row.get("status") or ex.DONE
    diverged = f"training diverged in epoch {row.get('diverged_epoch')}" if status == "diverged" else ""
    message = row.get("error") or diverged
    return ex.Outcome(row["run"], status, message)


def _cmd_bench(args: argparse.Namespace) -> None:
    from rld.fast.bench import BenchOptions, format_report, run_bench

    opts = BenchOptions(
        device=args.device,
        pair=args.pair,
        method=args.method,
        steps=args.steps,
        warmup=args.warmup,
        rounds=args.rounds,
        batch_size=args.batch_size,
        workers=args.workers,
        data=args.data,
        synthetic_size=args.synthetic_size,
        sweep_sizes=None if args.sweep is None else tuple(_ints(args.sweep, "--sweep")) if args.sweep else (),
        sweep_seeds=args.sweep_seeds,
    )
    report = run_bench(opts)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"→ {args.json}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``cache``, ``sweep`` and ``bench`` on the ``rld`` sub-command parser."""
    from rld.executor import add_arguments as add_executor_arguments

    p = sub.add_parser(
        "cache",
        help="compute and store the teacher's logits for every augmentation view (image folders: of epochs 1..E)",
    )
    p.add_argument("preset", metavar="PRESET_OR_YAML", help="the distillation preset the cache is for")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="as for rld train")
    p.add_argument("--teacher", metavar="CKPT", help="teacher checkpoint")
    p.add_argument("--data", metavar="PATH", help="data set location")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--cache-dir", metavar="DIR", help="where caches live (default ~/.cache/rld/teacher-logits)")
    p.add_argument(
        "--cache-precision",
        "--precision",
        dest="precision",
        choices=("float16", "float32", "int8", "topk"),
        help="storage form (= train.cache_precision; default float16; int8 and topk for image folders)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        metavar="E",
        help="image folders: store the views of epochs 1..E (default: train.epochs of the preset)",
    )
    p.add_argument(
        "--verify", action="store_true", help="image folders: also check the checksums of the epochs already stored"
    )
    p.set_defaults(func=_cmd_cache)

    p = sub.add_parser(
        "sweep",
        help="train several students in lockstep on one data stream",
        epilog=SWEEP_EPILOG,
    )
    p.add_argument("preset", metavar="PRESET_OR_YAML", help="a preset name (`rld presets`) or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=V1,V2", help="e.g. method.beta=2,8 train.lr=0.05")
    p.add_argument("--json", action="store_true", help="print the runs' results as JSON")
    p.add_argument("--dry-run", action="store_true", help="list the planned runs and exit (trains nothing)")
    p.add_argument("--seeds", metavar="S1,S2", help="comma-separated seeds (default: the config's seed)")
    p.add_argument("--teacher", metavar="CKPT", help="teacher checkpoint")
    p.add_argument(
        "--epochs", type=int, help="N epochs, lr schedule, warm-up and CTKD ramp scaled to match (as in rld train)"
    )
    p.add_argument("--out", type=Path, help="sweep folder (default: runs/sweeps/PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the runs in --out")
    p.add_argument("--data", metavar="PATH", help="data set location")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    add_executor_arguments(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("bench", help="ms per training step: conventional vs default vs cached teacher logits")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument(
        "--pair",
        default="resnet32x4-resnet8x4",
        metavar="TEACHER-STUDENT",
        help="as in preset names (default: resnet32x4-resnet8x4)",
    )
    p.add_argument("--method", default="rld", help="registry name of the method (default: rld)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    p.add_argument("--steps", type=int, default=40, help="timed steps per path and round (default 40)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per path and round (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the paths take turns (default 3)")
    p.add_argument(
        "--workers", type=int, help="DataLoader workers of the conventional path (default: min(8, CPU cores))"
    )
    p.add_argument("--data", metavar="PATH", help="CIFAR-100 folder/archive/.npz (default: synthetic data)")
    p.add_argument("--synthetic-size", type=int, default=50_000, help=argparse.SUPPRESS)
    p.add_argument("--sweep", metavar="M1,M2", help="students per lockstep sweep (default: 4,16 on CUDA only)")
    p.add_argument(
        "--sweep-seeds",
        type=int,
        default=1,
        metavar="S",
        help="also each sweep with its students over S seeds, one data stream each (default: 1, none)",
    )
    p.add_argument("--json", metavar="PATH", help="write the report as JSON")
    p.set_defaults(func=_cmd_bench)
