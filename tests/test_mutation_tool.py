"""benchmarks/mutation.py (``make mutation``): the score it reports and the folder it prepares."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location("mutation_tool", ROOT / "benchmarks" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_config() -> dict:
    return load_tool().tomllib.loads((ROOT / "benchmarks" / "mutation.toml").read_text())


def test_the_score_leaves_out_equivalent_and_untestable_mutants_and_counts_untested_ones():
    tool = load_tool()
    statuses = {
        "p.x_f__mutmut_1": "killed",
        "p.x_f__mutmut_2": "timeout",
        "p.x_f__mutmut_3": "survived",
        "p.x_f__mutmut_4": "survived",  # equivalent
        "p.x_g__mutmut_1": "survived",  # untestable by pattern
        "p.x_g__mutmut_2": "no tests",  # untestable by pattern
        "p.x_h__mutmut_1": "no tests",
        "p.x_h__mutmut_2": "segfault",
        "p.x_h__mutmut_3": "not checked",
    }
    config = {"equivalent": {"p.x_f__mutmut_4": "why"}, "untestable": {"p.x_g__mutmut_*": "why"}}
    row, survivors = tool.summarise("p", statuses, config, 12.4)
    assert survivors == ["p.x_f__mutmut_3"]
    picked = {k: row[k] for k in ("generated", "killed", "survived", "no_tests", "equivalent", "untestable", "not_run")}
    assert picked == {
        "generated": 9,
        "killed": 3,
        "survived": 1,
        "no_tests": 1,
        "equivalent": 1,
        "untestable": 2,
        "not_run": 1,
    }
    assert row["killed_pct"] == 60.0  # 3 / (3 + 1 + 1)
    assert row["seconds"] == 12


def test_the_package_folder_links_the_project_and_adds_the_mutmut_section(tmp_path, monkeypatch):
    tool = load_tool()
    monkeypatch.setattr(tool, "WORK", tmp_path)
    config = read_config()
    work = tool.write_workdir("config", config["packages"]["config"], config["mutmut"], fresh=True)
    assert (work / "src").resolve() == ROOT / "src" and (work / "tests").resolve() == ROOT / "tests"
    section = tool.tomllib.loads((work / "pyproject.toml").read_text())["tool"]["mutmut"]
    assert section["only_mutate"] == ["src/rld/config.py"]
    assert section["pytest_add_cli_args_test_selection"] == config["packages"]["config"]["tests"]
    deselected = section["pytest_add_cli_args"][len(config["mutmut"]["pytest_add_cli_args"]) :]
    assert deselected[:2] == ["--deselect", config["packages"]["config"]["deselect"][0]]
    assert section["process_isolation"] == "forkserver"


def test_every_listed_test_file_exists_and_every_equivalent_names_a_listed_package():
    config = read_config()
    for name, package in config["packages"].items():
        for test in package["tests"]:
            assert (ROOT / test.split("::")[0]).is_file(), (name, test)
    prefixes = tuple(f"rld.{p}." for p in config["packages"]) + ("rld.config.",)
    for mutant, reason in config["equivalent"].items():
        assert mutant.startswith(prefixes) and "__mutmut_" in mutant and reason, mutant


def test_a_fresh_process_result_reads_pytest_exit_statuses():
    tool = load_tool()
    got = {rc: tool.fresh_process_status(rc) for rc in (0, 1, 2, 3, 5, None)}
    assert got == {0: "survived", 1: "killed", 2: "killed", 3: "killed", 5: "no tests", None: "timeout"}
    with pytest.raises(RuntimeError, match="pytest refused the command line"):
        tool.fresh_process_status(4)


def test_fresh_process_candidates_are_the_listed_functions_alive_and_not_equivalent():
    tool = load_tool()
    statuses = {
        "p.x_spec__mutmut_1": "survived",
        "p.x_spec__mutmut_2": "killed",
        "p.x_spec__mutmut_3": "no tests",
        "p.x_spec__mutmut_4": "survived",  # equivalent
        "p.x_other__mutmut_1": "survived",
    }
    config = {"fresh_process": {"p.x_spec__mutmut_*": "why"}, "equivalent": {"p.x_spec__mutmut_4": "why"}}
    assert tool.fresh_candidates(statuses, config) == ["p.x_spec__mutmut_1", "p.x_spec__mutmut_3"]


def test_a_fresh_process_imports_the_mutated_copy_with_the_mutant_chosen(tmp_path):
    """The module reads the chosen mutant when it is imported, as a registration would: only a
    process that starts with the mutant chosen can see the change."""
    import sys

    tool = load_tool()
    mutants = tmp_path / "mutants"
    (mutants / "src").mkdir(parents=True)
    (mutants / "tests").mkdir()
    (mutants / "src" / "registry.py").write_text(
        "import os\nNAMES = ['a'] if os.environ['MUTANT_UNDER_TEST'].endswith('_2') else ['a', 'b']\n"
    )
    (mutants / "tests" / "test_registry.py").write_text(
        "import registry\n\ndef test_b():\n    assert 'b' in registry.NAMES\n"
    )
    section = {
        "pytest_add_cli_args_test_selection": ["tests/test_registry.py"],
        "pytest_add_cli_args": ["-p", "no:cacheprovider"],
    }
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = [tool.run_fresh(sys.executable, tmp_path, f"registry.x_f__mutmut_{i}", section, env, 60) for i in (1, 2)]
    assert run == ["survived", "killed"]
    section["pytest_add_cli_args_test_selection"] = ["tests/test_registry.py", "-k", "nothing"]
    assert tool.run_fresh(sys.executable, tmp_path, "registry.x_f__mutmut_1", section, env, 60) == "no tests"


MUTMUT_PYTHON = ROOT / ".mutation" / "venv" / "bin" / "python"


@pytest.mark.skipif(not MUTMUT_PYTHON.exists(), reason="needs mutmut (make mutation installs it in .mutation/venv)")
def test_the_mutants_of_functions_changed_since_the_last_generation_run_again(tmp_path, monkeypatch):
    """``--survivors`` reruns every mutant of a function whose code changed since mutmut's last
    generation (its numbering then names other changes), and only those."""
    import json
    import subprocess

    tool = load_tool()
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    source = tmp_path / "src" / "pkg" / "mod.py"
    source.write_text("def f(x):\n    return x + 1\n\n\ndef g(x):\n    return x * 2\n")
    pkg = {"mutate": ["src/pkg/*"]}
    python = str(MUTMUT_PYTHON)
    first = tool.package_mutants(python, tmp_path, pkg)  # no record yet: every function is new
    assert sorted({m.split("__mutmut_")[0] for m in first}) == ["pkg.mod.x_f", "pkg.mod.x_g"]
    hashes = subprocess.run(
        [
            python,
            "-c",
            "import json, sys; from mutmut.mutation.file_mutation import mutate_file_contents as m; "
            "print(json.dumps(m(sys.argv[1], open(sys.argv[1]).read()).hash_by_function_name))",
            "src/pkg/mod.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    meta = tmp_path / "mutants" / "src" / "pkg" / "mod.py.meta"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"hash_by_function_name": json.loads(hashes)}))
    assert tool.package_mutants(python, tmp_path, pkg) == []
    source.write_text("def f(x):\n    return x + 1\n\n\ndef g(x):\n    return x * 3 - 1\n")
    again = tool.package_mutants(python, tmp_path, pkg)
    assert again and {m.split("__mutmut_")[0] for m in again} == {"pkg.mod.x_g"}


def test_a_sample_is_a_uniform_draw_fixed_by_its_seed_whatever_the_order_of_the_names():
    tool = load_tool()
    names = [f"p.x_f__mutmut_{i}" for i in range(1, 201)]
    sample = tool.draw_sample(names, 20, seed=3)
    assert len(sample) == len(set(sample)) == 20 and set(sample) <= set(names) and sample == sorted(sample)
    assert tool.draw_sample(list(reversed(names)), 20, seed=3) == sample
    assert tool.draw_sample(names, 20, seed=4) != sample
    assert tool.draw_sample(names[:5], 20, seed=3) == sorted(names[:5])
    # uniform: over many seeds every name is drawn about 20/200 of the time
    counts = {n: 0 for n in names}
    for seed in range(400):
        for n in tool.draw_sample(names, 20, seed):
            counts[n] += 1
    assert 15 <= min(counts.values()) and max(counts.values()) <= 70


@pytest.mark.parametrize("killed,scored", [(90, 100), (190, 200), (1, 7), (0, 12), (12, 12)])
def test_the_interval_of_a_sample_is_wilsons(killed, scored):
    """Its ends are the shares p whose normal test at 95 % just admits the sample's share:
    (k/n − p)² = 1.96² p (1 − p) / n, solved here as a quadratic in p."""
    import math

    z2, share = 1.96**2, killed / scored
    a, b, c = 1 + z2 / scored, -(2 * share + z2 / scored), share * share
    root = math.sqrt(b * b - 4 * a * c)
    low, high = (-b - root) / (2 * a), (-b + root) / (2 * a)
    assert load_tool().wilson_interval(killed, scored) == (round(100 * low, 1), round(100 * high, 1))
    assert load_tool().wilson_interval(0, 0) is None


def test_a_sample_neither_resumes_nor_reruns_survivors(capsys):
    tool = load_tool()
    for argv in (["--sample", "10", "--survivors", "engine"], ["--sample", "0", "engine"]):
        with pytest.raises(SystemExit) as stopped:
            tool.main(argv)
        assert stopped.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].endswith("error: --sample must be at least 1, got 0")
    assert any(line.endswith("error: --sample starts a new run; --survivors continues one") for line in err)


def test_survivors_reruns_what_did_not_die_and_unreached_only_what_was_not_run():
    """``--survivors``: survived, suspicious, without a test or not reached; ``--unreached``: not
    reached only (an interrupted run continued after tests were added). Listed equivalents,
    untestable globs and fresh-process functions are left out of both."""
    before = {
        "p.x_f__mutmut_1": "killed",
        "p.x_f__mutmut_2": "survived",
        "p.x_f__mutmut_3": "suspicious",
        "p.x_f__mutmut_4": "no tests",
        "p.x_f__mutmut_5": "not checked",
        "p.x_f__mutmut_6": "timeout",
        "p.x_f__mutmut_7": "survived",  # equivalent
        "p.x_g__mutmut_1": "not checked",  # untestable
        "p.x_h__mutmut_1": "survived",  # fresh process
        "p.x_h__mutmut_2": "not checked",  # fresh process
    }
    config = {
        "equivalent": {"p.x_f__mutmut_7": "why"},
        "untestable": {"p.x_g__*": "why"},
        "fresh_process": {"p.x_h__*": "why"},
    }
    tool = load_tool()
    assert tool.rerun_set(before, config) == [f"p.x_f__mutmut_{i}" for i in (2, 3, 4, 5)]
    assert tool.rerun_set(before, config, unreached_only=True) == ["p.x_f__mutmut_5"]


def test_only_one_way_to_continue_a_run_is_taken(capsys):
    for argv in (["--resume", "--unreached", "fast"], ["--survivors", "--unreached", "fast"]):
        with pytest.raises(SystemExit) as stopped:
            load_tool().main(argv)
        assert stopped.value.code == 2
        assert (
            capsys.readouterr()
            .err.splitlines()[-1]
            .endswith("error: --resume, --survivors and --unreached are different ways to continue: choose one")
        )


def test_a_sample_s_row_gives_its_size_and_interval_and_a_full_run_s_neither():
    tool = load_tool()
    statuses = {"p.x_f__mutmut_1": "killed", "p.x_f__mutmut_2": "survived", "p.x_f__mutmut_3": "not checked"}
    row, survivors = tool.summarise("p", statuses, {}, 1.0, sample=["p.x_f__mutmut_1", "p.x_f__mutmut_2"])
    assert (row["sample"], row["interval_95"], row["killed_pct"], row["not_run"]) == (
        2,
        tool.wilson_interval(1, 2),
        50.0,
        1,
    )
    assert survivors == ["p.x_f__mutmut_2"]
    row, _ = tool.summarise("p", statuses, {}, 1.0)
    assert "sample" not in row and "interval_95" not in row
