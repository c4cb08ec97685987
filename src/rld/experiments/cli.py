"""``rld reproduce``, ``tune``, ``plot``, ``report`` and ``runs``: argument parsing and printing only."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rld.errors import UserError


def _csv_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return items or None


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _csv_list(text) or []]
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers (e.g. 0,1,2), got {text!r}") from None


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from rld.config import text_override
    from rld.executor import failure_summary, import_ray, options_from_args
    from rld.experiments.plan import parse_teacher_checkpoints, plan_table
    from rld.experiments.reproduce import reproduce

    executor = options_from_args(args, args.device)
    if executor.kind == "ray" and not args.dry_run:
        import_ray()  # before planning: a missing Ray is said at once
    overrides = list(args.overrides) + ([text_override("train.device", args.device)] if args.device else [])
    plan = plan_table(
        args.table,
        args.out,
        seeds=_seeds(args.seeds),
        data=args.data,
        epochs=args.epochs,
        pairs=_csv_list(args.pairs),
        methods=_csv_list(args.methods),
        overrides=overrides,
        teachers=parse_teacher_checkpoints(args.teacher),
    )
    if args.json:
        try:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(plan.to_json())
        except OSError as err:
            raise UserError(f"cannot write the plan {args.json}: {err.strerror}") from err
    roles: dict[str, int] = {}
    for run in plan.runs:
        key = "+".join(run.roles)
        roles[key] = roles.get(key, 0) + 1
    by_status = ", ".join(f"{n} {s}" for s, n in plan.counts().items())
    by_role = ", ".join(f"{n} {r}" for r, n in roles.items())
    print(f"{plan.table.name}: {len(plan.runs)} runs ({by_role}); {by_status}; folder {plan.root}")
    if args.dry_run:
        for run in plan.runs:
            params = run.method_params() if run.method != "vanilla" else {}
            shown = " ".join(f"{k}={v}" for k, v in params.items() if v is not None and v is not False)
            amp = "  amp" if run.config().train.amp else ""
            print(f"  {run.status:8s} {run.name}" + (f"  [{shown}]" if shown else "") + amp)
        if args.json:
            print(f"plan written to {args.json}")
        return 0
    result = reproduce(plan, metric=args.metric, executor=executor)
    print()
    print(result.files["markdown"].read_text())
    print("written: " + ", ".join(str(p) for p in result.files.values()))
    if result.exit_status:
        print(f"rld: error: {failure_summary(result.outcomes)}", file=sys.stderr)
    return result.exit_status


def _cmd_tune(args: argparse.Namespace) -> None:
    from rld.experiments import tune as tuning

    seeds = _seeds(args.seeds) if args.seeds is not None else None
    name = Path(args.preset).stem if args.preset.endswith((".yaml", ".yml")) else args.preset
    out = Path(args.out) if args.out else Path("runs") / "tune" / name
    flags = {"model.teacher_checkpoint": args.teacher, "data.path": args.data, "train.device": args.device}
    plan = tuning.plan_tune(
        args.preset,
        args.grid,
        out=out,
        overrides=list(args.overrides),
        seeds=seeds,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        epochs=args.epochs,
        flags=flags,
    )
    if args.dry_run:
        print("\n".join(tuning.describe(plan, tuning.probe_data(plan).holdout)))
        return
    result = tuning.tune(plan, resume=args.resume)
    if args.json:
        import json

        print(json.dumps(result, indent=2))
        return
    keys = plan.keys
    seeds_head = " ".join(f"{'seed ' + str(s):>8s}" for s in plan.seeds)
    print(f"\nvalidation top-1 (%) at the last epoch (epoch {plan.train_epochs}):")
    print("  " + " ".join(f"{k:>22s}" for k in keys) + f" {seeds_head} {'mean':>8s}")
    for p in result["points"]:
        mark = "  <- chosen" if p["values"] == result["chosen"] else ""
        per_seed = " ".join(f"{p['val_top1'][str(s)]:8.2f}" for s in plan.seeds)
        values = " ".join(f"{p['values'][k]:>22s}" for k in keys)
        print(f"  {values} {per_seed} {p['val_top1_mean']:8.2f}{mark}")
    final = result["final"]
    print(f"rule: {result['rule']}")
    print(f"chosen: {tuning.point_text(result['chosen'])}")
    print(
        f"final test top-1 (last epoch, whole training set): {final['test_top1_mean']:.2f} ± "
        f"{final['test_top1_std']:.2f} % over {len(final['runs'])} seed(s) -> {plan.out / tuning.FINAL_DIR}"
    )
    print(f"written: {plan.out / tuning.CSV_FILE}" + (f", {plan.out / result['figure']}" if result["figure"] else ""))


def _cmd_plot(args: argparse.Namespace) -> None:
    from rld import viz

    if args.kind == "tsne":
        out = viz.plot_tsne(args.runs, args.out, data_path=args.data, max_samples=args.max_samples, device=args.device)
    elif args.kind == "logit-diff":
        out = viz.plot_logit_difference(
            args.runs, args.out, data_path=args.data, device=args.device, teacher=args.teacher
        )
    elif args.kind == "time-vs-acc":
        out = viz.plot_time_vs_accuracy(args.runs, args.out, metric=args.metric)
    else:
        out = viz.plot_class_correlation(
            args.run,
            args.out,
            classes=_csv_list(args.classes),
            k=args.k,
            sample=args.sample,
            model=args.model,
            data_path=args.data,
            device=args.device,
            teacher=args.teacher,
        )
    print(f"figure written to {out}")


def _cmd_report(args: argparse.Namespace) -> None:
    from rld.experiments.report import write_report

    out = write_report(args.dir, args.out, title=args.title)
    print(f"report written to {out}")


def _cmd_runs(args: argparse.Namespace) -> None:
    from rld.experiments.runs_table import runs_table

    table = runs_table(args.dirs, where=args.where, group_by=_csv_list(args.group_by), sort=args.sort)
    if args.json:
        print(table.to_json())
    elif args.csv:
        print(table.to_csv(), end="")
    else:
        print(table.to_text(), end="")


def _teacher(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher",
        metavar="CKPT",
        help="the runs' teacher checkpoint, if it has moved (checked against the SHA-256 the run recorded)",
    )


def _data_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="PATH", help="the data set, if it has moved since the run was trained")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")


def add_commands(sub) -> None:
    """Register ``reproduce``, ``tune``, ``plot``, ``report`` and ``runs`` on the ``rld`` command's subparsers."""
    _add_reproduce(sub)
    _add_tune(sub)
    _add_plot(sub)
    _add_report(sub)
    _add_runs(sub)


def _add_reproduce(sub) -> None:
    from rld.executor import add_arguments as add_executor_arguments
    from rld.experiments.tables import TABLES

    p = sub.add_parser(
        "reproduce",
        help="train and tabulate the runs of a table of the paper",
        description=(
            "Plan every run of a table (teachers first, seed 0; students with every seed), train what is "
            "missing, resume what is unfinished, and write the table beside the paper's numbers to "
            "OUT/tables/TABLE.md and .csv."
        ),
        epilog=(
            "--executor ray: every run is a task of a Ray cluster, teachers before their students, as many at once "
            "as its GPUs (or CPUs) allow. RAY_ADDRESS names the cluster (`ray start --head` on one machine, `ray "
            "start --address HEAD:6379` on the others, or Ray on SLURM / Kubernetes); without it a Ray instance on "
            "this machine uses all its GPUs. --out must be on a file system every machine sees. A run another "
            "process is training is left to it, a finished run is skipped, and a run whose worker died is started "
            "again (--retries) or resumed by the next launch. One line per finished run, the runs that did not "
            "finish at the end. Exit status: 0 every run finished; 3 the only runs that did not finish diverged; 2 "
            "others did not (failed, being trained elsewhere, their teacher did not finish)."
        ),
    )
    p.add_argument("table", metavar="TABLE", help=f"one of {', '.join(TABLES)}")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every run, e.g. train.batch_size=256")
    p.add_argument("--data", metavar="PATH", help="the data set (CIFAR-100 folder/archive/.npz, ImageNet root)")
    p.add_argument("--seeds", default="0,1,2", help="student seeds, comma-separated (default: 0,1,2)")
    p.add_argument("--out", default="runs/reproduce", help="folder of the runs and tables (default: runs/reproduce)")
    p.add_argument(
        "--dry-run", action="store_true", help="only plan: list the runs, their status and resolved method parameters"
    )
    p.add_argument(
        "--json", metavar="PLAN", help="write the plan as JSON (every run with its method_params and precision)"
    )
    p.add_argument("--metric", choices=["best", "last"], default="best", help="epoch the table reports (default: best)")
    p.add_argument("--epochs", type=int, help="shorter runs: N epochs, lr schedule and warm-up scaled to match")
    p.add_argument("--pairs", metavar="T-S,…", help="only these teacher-student pairs, e.g. resnet56-resnet20")
    p.add_argument("--methods", metavar="M,…", help="only these methods (registry names; vanilla = plain student)")
    p.add_argument(
        "--teacher",
        action="append",
        metavar="MODEL=CKPT",
        help="use this checkpoint as the MODEL teacher instead of training one (repeatable)",
    )
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    add_executor_arguments(p)
    p.set_defaults(func=_cmd_reproduce)


def _add_tune(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="choose hyper-parameters on a validation split of the training set, then one clean final run",
        description=(
            "Hold out a stratified, seeded part of the TRAINING set (OUT/val_split.json), train every grid point "
            "and seed on the rest in lockstep (OUT/grid/), choose the point with the best mean validation top-1 "
            "at the last epoch (ties: the smaller value of the first grid key, then the next), retrain it on the "
            "whole training set (OUT/final/seed=S, as rld train would) and report its test top-1: the only runs "
            "that read the test split. Writes OUT/tune.csv, OUT/tune.png (two-key grids) and OUT/tune.json."
        ),
        epilog=(
            "--grid items with a single value apply to every run, like KEY=VALUE overrides; write overrides "
            "before --grid or after another option."
        ),
    )
    p.add_argument("preset", metavar="PRESET_OR_YAML", help="a preset name (`rld presets`) or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every run, e.g. data.image_size=16")
    p.add_argument(
        "--grid",
        nargs="+",
        required=True,
        metavar="KEY=V1,V2",
        help="the grid's axes, e.g. --grid method.beta=2,4,8,16 method.temperature=2,3,4,5",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of the training set held out for validation (stratified; default: 0.1)",
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation split (default: 0)")
    p.add_argument("--seeds", metavar="S1,S2", help="training seeds of every point (default: the config's seed)")
    p.add_argument("--teacher", metavar="CKPT", help="teacher checkpoint (= model.teacher_checkpoint=CKPT)")
    p.add_argument("--data", metavar="PATH", help="data set location (= data.path=PATH)")
    p.add_argument("--out", help="tune folder (default: runs/tune/PRESET)")
    p.add_argument("--epochs", type=int, help="N epochs, lr schedule, warm-up and CTKD ramp scaled (as in rld train)")
    p.add_argument("--resume", action="store_true", help="continue the tune in --out (every run from its last.pt)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (= train.device=…)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (grid, seeds, validation split, final run)")
    p.add_argument("--json", action="store_true", help="print the result (what OUT/tune.json holds) as JSON")
    p.set_defaults(func=_cmd_tune)


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="figures of the paper from run folders (PNG)")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    k = kinds.add_parser("tsne", help="t-SNE of the students' pooled test features (Fig. 4)")
    k.add_argument("runs", nargs="+", metavar="RUN", help="run folders, side by side (e.g. a KD and an RLD run)")
    k.add_argument("--out", required=True, metavar="PNG", help="the figure file to write")
    k.add_argument("--max-samples", type=int, default=2000, help="test samples embedded (default: 2000)")
    _data_device(k)
    k = kinds.add_parser("logit-diff", help="per-class mean |teacher - student| logit difference (Fig. 5)")
    k.add_argument("runs", nargs="+", metavar="RUN", help="distilled run folders (e.g. a DKD and an RLD run)")
    k.add_argument("--out", required=True, metavar="PNG", help="the figure file to write")
    _teacher(k)
    _data_device(k)
    k = kinds.add_parser("time-vs-acc", help="training time per batch vs top-1, bubble = extra parameters (Fig. 6)")
    k.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    k.add_argument("--out", required=True, metavar="PNG", help="the figure file to write")
    k.add_argument("--metric", choices=["best", "last"], default="best", help="epoch of the top-1 (default: best)")
    k = kinds.add_parser("class-corr", help="top-10 logits per class and of one sample (Fig. 7)")
    k.add_argument("run", metavar="RUN", help="a run folder")
    k.add_argument("--out", required=True, metavar="PNG", help="the figure file to write")
    k.add_argument(
        "--classes",
        help="class names or indices, comma-separated (default: leopard,television,dinosaur, the paper's; on data "
        "without them the first three classes, said in the log)",
    )
    k.add_argument("--sample", type=int, help="test index of the single sample (default: first of the last class)")
    k.add_argument("--k", type=int, default=10, help="logits shown per panel (default: 10)")
    k.add_argument("--model", choices=["student", "teacher"], default="student", help="whose logits (default: student)")
    _teacher(k)
    _data_device(k)
    p.set_defaults(func=_cmd_plot)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page of the runs, tables and figures under a folder")
    p.add_argument("dir", metavar="DIR", help="a folder holding run folders (searched recursively)")
    p.add_argument("--out", default="report.html", help="the HTML file (default: report.html)")
    p.add_argument("--title", help="the page's title (default: from the folder's name)")
    p.set_defaults(func=_cmd_report)


def _add_runs(sub) -> None:
    p = sub.add_parser(
        "runs",
        help="every run below some folders in one table: configuration, epochs, top-1, time, status",
        description=(
            "One line per run folder found below DIR (a folder with config.yaml): model (TEACHER-STUDENT), "
            "method, the configuration keys that differ between the listed runs, seed, epochs done/planned, best "
            "and last test top-1 (%), wall time (the epochs in metrics.csv) and status. Read from the small files "
            "of the folders alone (config.yaml, metrics.csv, which checkpoints exist, the lock)."
        ),
        epilog=(
            "Status: running (a process holds the folder's lock; the table names it), finished (every planned "
            "epoch is in metrics.csv), diverged (metrics.csv ends with a diverged epoch), interrupted (a position "
            "is saved: checkpoints/step.pt or last.pt; the table gives the command that continues it), failed "
            "(stopped before its first checkpoint; the same command starts it again). --json prints a list of "
            "objects: run, model, method, seed, epochs_done, epochs_planned, best_top1, best_epoch, last_top1, "
            "wall_time_s, status, diverged_epoch, resume, holder, student, teacher, differs (the differing keys' "
            "values); with --group-by: group (the keys' values), runs, finished, statuses, seeds, best_top1_mean, "
            "best_top1_std, last_top1_mean, last_top1_std, wall_time_s. Exit status 2 with one line when a DIR is "
            "not a folder or no run is found or matches."
        ),
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folders holding run folders (searched recursively)")
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only runs whose column (e.g. status, method, seed) or configuration key (e.g. train.lr) has this "
        "value; repeatable (all must hold)",
    )
    p.add_argument(
        "--group-by",
        metavar="KEY,…",
        help="one line per group of runs sharing these keys' values: top-1 as mean ± std (sample std) over its "
        "finished runs, e.g. --group-by method to average over seeds",
    )
    p.add_argument("--sort", metavar="KEY", help="order by this column or key (--sort=-KEY: descending)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print a JSON list (fields below)")
    fmt.add_argument("--csv", action="store_true", help="print CSV (raw values, the same columns as --json)")
    p.set_defaults(func=_cmd_runs)
