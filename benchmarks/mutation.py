"""Mutation testing of the core packages with mutmut 3 (``make mutation``; see docs/testing.md).

    python benchmarks/mutation.py [--config TOML] [--mutmut PATH] [--max-children N]
                                  [--resume | --survivors | --unreached | --sample N [--seed S]]
                                  [PACKAGE ...]

PACKAGE: names from benchmarks/mutation.toml (default: all of them, in the file's order). Each
package runs in ``.mutation/<package>/``: ``src``, ``tests`` and ``benchmarks`` link to the project's, and a
``pyproject.toml`` adds the package's ``[tool.mutmut]`` section to the project's, so mutmut mutates
only that package and collects which test covers which function from that package's tests alone.
Every run starts afresh (``--resume`` continues an interrupted one; ``--survivors`` runs again only
the mutants that survived the last run or were not reached, and all those of a function whose code
changed since; ``--unreached`` only those not reached and those changed, against the tests as they
are now: mutmut's own resume starts again from scratch once the tests differ). The script prints
one line per package (generated, killed, survived, equivalent, ...) and writes, in
``.mutation/<package>/``, ``summary.json``, ``statuses.json`` (every mutant's result),
``survivors.txt`` and ``survivors.diff`` (the change of every survivor and of every mutant without a
test; ``mutmut show NAME`` in that folder prints one).

Functions that run when their package is imported (a method's registration) run in mutmut's
server, before any mutant is chosen, so mutmut can only see them survive: the mutants of the
functions listed under ``[fresh_process]`` that survive it are run again, each in a new Python
process that imports the mutated package with the mutant already chosen.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "benchmarks" / "mutation.toml"
WORK = ROOT / ".mutation"

# mutmut's statuses, grouped as the summary counts them
KILLED = {"killed", "timeout", "segfault"}  # a mutant that hangs or crashes the tests is caught too
SURVIVED = {"survived", "suspicious"}
NOT_RUN = {"no tests", "skipped", "not checked", "check was interrupted by user", "caught by type check"}


def toml_value(value) -> str:
    """A TOML value for the strings, numbers, booleans and lists of strings the config holds."""
    return json.dumps(value)  # their JSON spelling is valid TOML


def write_workdir(name: str, pkg: dict, common: dict, fresh: bool) -> Path:
    work = WORK / name
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for link in ("src", "tests", "benchmarks"):
        if not (work / link).is_symlink():
            (work / link).symlink_to(ROOT / link)
    deselect = [arg for test in pkg.get("deselect", []) for arg in ("--deselect", test)]
    section = {
        **common,
        "only_mutate": pkg["mutate"],
        "pytest_add_cli_args_test_selection": pkg["tests"],
        "pytest_add_cli_args": common.get("pytest_add_cli_args", []) + deselect,
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {toml_value(v)}" for k, v in section.items()]
    (work / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + "\n".join(lines) + "\n")
    return work


def mutmut_section(work: Path) -> dict:
    """The ``[tool.mutmut]`` section ``write_workdir`` wrote for the package."""
    return tomllib.loads((work / "pyproject.toml").read_text())["tool"]["mutmut"]


def mutant_statuses(mutmut: str, work: Path) -> dict[str, str]:
    out = subprocess.run([mutmut, "results", "--all", "true"], cwd=work, capture_output=True, text=True, check=True)
    statuses = {}
    for line in out.stdout.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            statuses[name] = status
    return statuses


def fresh_process_status(returncode: int | None) -> str:
    """A mutant's status from the exit status of pytest run in a fresh process (None: timed out)."""
    if returncode is None:
        return "timeout"
    if returncode == 4:  # pytest's usage error: the command is wrong, not the mutant caught
        raise RuntimeError("pytest refused the command line of a fresh-process run")
    # 0: every test passed; 5: none was collected; any other: a test failed, or importing the mutated
    # package or collecting the tests failed, which the mutant caused (the unmutated code imports)
    return {0: "survived", 5: "no tests"}.get(returncode, "killed")


def run_fresh(python: str, work: Path, mutant: str, section: dict, env: dict, timeout: float) -> str:
    """Run the package's tests against ``mutant`` in a new process that imports the mutated copy
    with the mutant chosen (from ``mutants/``, as mutmut runs them; fastest tests first)."""
    mutants = work / "mutants"
    cmd = [python, "-m", "pytest", "--rootdir=.", "--tb=native", "-x", "-q", "-p", "no:randomly"]
    cmd += [*section["pytest_add_cli_args_test_selection"], *section["pytest_add_cli_args"]]
    env = {**env, "MUTANT_UNDER_TEST": mutant, "PYTHONPATH": str(mutants / "src")}
    try:
        done = subprocess.run(
            cmd, cwd=mutants, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return fresh_process_status(None)
    return fresh_process_status(done.returncode)


def fresh_candidates(statuses: dict[str, str], config: dict) -> list[str]:
    """The surviving mutants (or those without a test) of the functions listed under
    ``[fresh_process]`` that are not listed as equivalent."""
    patterns, equivalent = config.get("fresh_process", {}), config.get("equivalent", {})
    return sorted(
        m
        for m, s in statuses.items()
        if s in SURVIVED | {"no tests"} and m not in equivalent and any(fnmatch.fnmatchcase(m, p) for p in patterns)
    )


# run by mutmut's Python in the package folder: the diffs of the mutants named on stdin, in one process
# (``mutmut show`` starts a process per mutant)
_DIFFS = """
import sys
from mutmut.__main__ import find_mutant
from mutmut.mutation.diff_apply import get_diff_for_mutant
for name in sys.stdin.read().split():
    print(f"# {name}\\n" + get_diff_for_mutant(name, path=find_mutant(name).path) + "\\n")
"""


# run by mutmut's Python in the package folder: the mutants, as mutmut would now generate them, of
# the source files named after the first argument; with "changed" only those of the functions whose
# code differs from (or is not in) mutmut's record of its last generation (the files' ``.meta``,
# hashed as mutmut hashes them), with "all" every one
_MUTANTS = """
import json, sys
from pathlib import Path
from mutmut.mutation.file_mutation import mutate_file_contents
from mutmut.utils.format_utils import get_mutant_name, mangled_name_from_mutant_name
names = []
for path in sys.argv[2:]:
    meta = Path("mutants") / (path + ".meta")
    old = json.loads(meta.read_text()).get("hash_by_function_name", {}) if meta.exists() else {}
    mutated = mutate_file_contents(path, Path(path).read_text())
    changed = {f for f, h in mutated.hash_by_function_name.items() if sys.argv[1] == "all" or old.get(f) != h}
    for name in mutated.mutant_names:
        key = get_mutant_name(Path(path), name)
        if mangled_name_from_mutant_name(key).rpartition(".")[2] in changed:
            names.append(key)
print(json.dumps(names))
"""


def package_mutants(python: str, work: Path, pkg: dict, which: str = "changed") -> list[str]:
    """The package's mutants as mutmut now generates them: ``"all"``, or ``"changed"``, those of the
    functions changed since mutmut last generated them in ``work`` (their names now may mean other
    changes than the last run's, so their results do not carry over)."""
    files = sorted(
        {str(p.relative_to(ROOT)) for pattern in pkg["mutate"] for p in ROOT.glob(pattern) if p.suffix == ".py"}
    )
    cmd = [python, "-c", _MUTANTS, which, *files]
    return json.loads(subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=True).stdout)


def draw_sample(names: list[str], size: int, seed: int) -> list[str]:
    """``size`` of ``names`` drawn uniformly without replacement (all of them if fewer), in name order;
    the same for the same names and seed."""
    return sorted(random.Random(seed).sample(sorted(names), min(size, len(names))))


def wilson_interval(killed: int, scored: int, z: float = 1.96) -> tuple[float, float] | None:
    """The 95 % Wilson score interval (in %) of the share killed when ``scored`` mutants of many
    were drawn at random: how far a sample's score may be from the package's."""
    if not scored:
        return None
    p = killed / scored
    centre = (p + z * z / (2 * scored)) / (1 + z * z / scored)
    half = z * math.sqrt(p * (1 - p) / scored + z * z / (4 * scored * scored)) / (1 + z * z / scored)
    return round(100 * (centre - half), 1), round(100 * (centre + half), 1)


def write_diffs(python: str, work: Path, names: list[str]) -> None:
    """Write ``survivors.diff`` in ``work``: the change of each mutant in ``names``."""
    done = subprocess.run(
        [python, "-c", _DIFFS], cwd=work, input="\n".join(names), capture_output=True, text=True, check=False
    )
    (work / "survivors.diff").write_text(done.stdout if done.returncode == 0 else f"# no diffs: {done.stderr}")


def summarise(
    name: str, statuses: dict[str, str], config: dict, seconds: float, sample: list[str] | None = None
) -> tuple[dict, list[str]]:
    """The package's row (counts, the share killed; for a sample its size and 95 % interval) and its
    survivors."""
    counts = Counter(statuses.values())
    equivalent, untestable = config.get("equivalent", {}), config.get("untestable", {})
    alive = sorted(m for m, s in statuses.items() if s in SURVIVED | {"no tests"})
    equiv = [m for m in alive if m in equivalent]
    apart = [m for m in alive if m not in equivalent and any(fnmatch.fnmatchcase(m, p) for p in untestable)]
    survivors = [m for m in alive if m not in equiv and m not in apart and statuses[m] in SURVIVED]
    killed = sum(counts[s] for s in KILLED)
    survived = len(survivors)
    no_tests = sum(1 for m in alive if statuses[m] == "no tests" and m not in equiv and m not in apart)
    scored = killed + survived + no_tests  # a mutant no test runs is a mutant no test catches
    extra = {} if sample is None else {"sample": len(sample), "interval_95": wilson_interval(killed, scored)}
    return {
        "package": name,
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "seconds": round(seconds),
        "generated": len(statuses),
        "killed": killed,
        "survived": survived,
        "no_tests": no_tests,
        "equivalent": len(equiv),
        "untestable": len(apart),
        "not_run": sum(counts[s] for s in NOT_RUN if s != "no tests"),
        "killed_pct": round(100 * killed / scored, 1) if scored else None,
        "statuses": dict(counts),
        **extra,
    }, survivors


def rerun_set(before: dict[str, str], config: dict, *, unreached_only: bool = False) -> list[str]:
    """The mutants of the last run's ``before`` (name: status) that ``--survivors`` runs again: those
    that survived, had no test or were not reached (``unreached_only``: only the last), less those
    listed as equivalent or untestable, and those only a fresh process can catch (run apart)."""
    wanted = {"not checked"} if unreached_only else SURVIVED | {"no tests", "not checked"}
    equivalent, untestable = config.get("equivalent", {}), config.get("untestable", {})
    fresh_only = config.get("fresh_process", {})
    return [
        m
        for m, s in before.items()
        if s in wanted
        and m not in equivalent
        and not any(fnmatch.fnmatchcase(m, p) for p in untestable)
        and not any(fnmatch.fnmatchcase(m, p) for p in fresh_only)
    ]


def main(argv: list[str] | None = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=CONFIG)
    config_path = pre.parse_known_args(argv)[0].config
    config = tomllib.loads(config_path.read_text())
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG, help="the configuration (default: %(default)s)")
    parser.add_argument("packages", nargs="*", help=f"default: all ({', '.join(config['packages'])})")
    parser.add_argument("--mutmut", default=shutil.which("mutmut") or "mutmut", help="the mutmut executable")
    parser.add_argument(
        "--max-children",
        type=int,
        default=os.cpu_count() or 1,
        help="mutants run at the same time (default: one per core)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the package's last, interrupted run")
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="run again only the mutants that survived, had no test or were not reached in the package's last "
        "run and are not listed as equivalent or untestable, and every mutant of a function whose code changed "
        "since, against the tests as they are now; the others keep their last result (a killed mutant stays "
        "killed while tests are only added)",
    )
    parser.add_argument(
        "--unreached",
        action="store_true",
        help="as --survivors, but only the mutants the package's last run did not reach (an interrupted run, "
        "continued after tests were added) and those of changed functions; the survivors keep their result",
    )
    parser.add_argument(
        "--fresh-timeout",
        type=float,
        default=900.0,
        help="seconds a fresh-process mutant's tests may take before it counts as a timeout (default: %(default)s)",
    )
    parser.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="run only N of the package's mutants, drawn at random (the score then comes with its 95 %% interval); "
        "--survivors continues a sample within it",
    )
    parser.add_argument("--seed", type=int, default=0, help="the seed of --sample's draw (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.sample is not None and (args.resume or args.survivors or args.unreached):
        parser.error("--sample starts a new run; --survivors continues one")
    if sum([args.resume, args.survivors, args.unreached]) > 1:
        parser.error("--resume, --survivors and --unreached are different ways to continue: choose one")
    continuing = args.survivors or args.unreached
    if args.sample is not None and args.sample < 1:
        parser.error(f"--sample must be at least 1, got {args.sample}")
    # mutmut runs in the package's folder: a relative path to it must not be read from there
    args.mutmut = str(Path(args.mutmut).resolve()) if os.sep in args.mutmut else args.mutmut
    names = args.packages or list(config["packages"])
    unknown = [n for n in names if n not in config["packages"]]
    if unknown:
        parser.error(f"unknown package(s) {', '.join(unknown)}; known: {', '.join(config['packages'])}")
    env = {**os.environ, "RLD_MUTATION": "1", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)  # mutmut puts its mutated copy first; the project's src must not shadow it
    python = str(Path(args.mutmut).with_name("python")) if os.sep in args.mutmut else sys.executable
    rows = []
    for name in names:
        again, before, sample = [], {}, None
        if args.resume and (WORK / name / "sample.json").exists():
            parser.error(f"the last run of {name} was a sample: continue it with --survivors")
        if continuing:
            before = json.loads((WORK / name / "statuses.json").read_text())
            if (WORK / name / "sample.json").exists():  # a sample is continued within itself
                sample = json.loads((WORK / name / "sample.json").read_text())["mutants"]
                before = {m: s for m, s in before.items() if m in set(sample)}
            again = rerun_set(before, config, unreached_only=args.unreached)
            # every mutant of a function changed since the last run runs again, whatever its last result
            changed = package_mutants(python, WORK / name, config["packages"][name])
            again += [m for m in changed if m not in again and (sample is None or m in set(sample))]
        work = write_workdir(name, config["packages"][name], config["mutmut"], fresh=not (args.resume or continuing))
        if args.sample is not None:
            sample = draw_sample(package_mutants(python, work, config["packages"][name], "all"), args.sample, args.seed)
            (work / "sample.json").write_text(json.dumps({"seed": args.seed, "mutants": sample}, indent=0) + "\n")
            again = sample
        print(f"{name}: mutmut in {work.relative_to(ROOT)} (log: run.log)", flush=True)
        start, rc = time.monotonic(), 0
        if again:  # record anew which test calls which function: mutmut misses new cases of a known test
            (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
        if again or not continuing:
            with open(work / "run.log", "a" if again else "w") as log:
                cmd = [args.mutmut, "run", "--max-children", str(args.max_children), *again]
                rc = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        seconds = time.monotonic() - start
        if continuing:  # a changed test selection resets mutmut's results: the mutants not run again keep theirs
            now = mutant_statuses(args.mutmut, work) if again else dict(before)
            statuses = {m: (s if m in again else before.get(m, s)) for m, s in now.items()}
        else:
            statuses = mutant_statuses(args.mutmut, work)
        fresh = fresh_candidates(statuses, config)
        if fresh:
            print(f"{name}: {len(fresh)} mutants of import-time functions, each in a fresh process", flush=True)
            start_fresh, section = time.monotonic(), mutmut_section(work)
            with ThreadPoolExecutor(args.max_children) as pool:  # one process per core, as mutmut runs them
                n = len(fresh)
                done = pool.map(
                    run_fresh, [python] * n, [work] * n, fresh, [section] * n, [env] * n, [args.fresh_timeout] * n
                )
                statuses.update(zip(fresh, done))
            seconds += time.monotonic() - start_fresh
        (work / "statuses.json").write_text(json.dumps(statuses, indent=0) + "\n")
        row, survivors = summarise(name, statuses, config, seconds, sample)
        row["mutmut_exit_code"] = rc
        (work / "summary.json").write_text(json.dumps(row, indent=2) + "\n")
        (work / "survivors.txt").write_text("".join(f"{m}\n" for m in survivors))
        untested = sorted(m for m, st in statuses.items() if st == "no tests" and m not in config.get("equivalent", {}))
        write_diffs(python, work, survivors + untested)
        rows.append(row)
        print(
            f"{name}: {row['generated']} generated, {row['killed']} killed, {row['survived']} survived, "
            f"{row['no_tests']} without a test, {row['equivalent']} equivalent, {row['untestable']} untestable, "
            f"{row['not_run']} not run; "
            f"{row['killed_pct']} % killed"
            + (f" (a sample of {row['sample']}: 95 % interval {row['interval_95']})" if sample is not None else "")
            + f" ({row['seconds']} s, mutmut exit {rc})",
            flush=True,
        )
    print("\n| package | generated | killed | survived | no test | equivalent | untestable | killed % |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['package']} | {r['generated']} | {r['killed']} | {r['survived']} | {r['no_tests']} "
            f"| {r['equivalent']} | {r['untestable']} | {r['killed_pct']} |"
        )
    return 0 if all(r["mutmut_exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
