"""``benchmarks/gpu_run.sh``, the one command a GPU machine runs, end to end on the CPU (its twin:
``RLD_GPU_DEVICE=cpu``, ``--small``): every output file, written as it goes, and the checks of
``benchmarks/gpu_check.py`` with their figures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["equality", "host_syncs", "bench", "stacked", "cache_build"]


def test_gpu_run_on_the_cpu_writes_every_output_and_every_check(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # the inner pytest's own
    env.update(PYTHON=sys.executable, RLD_GPU_DEVICE="cpu")
    command = ["bash", str(ROOT / "benchmarks/gpu_run.sh"), str(out), "--small"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "env.txt",
        "gpu_check.json",
        "gpu_check.log",
        "pytest_cuda.log",
        "summary.txt",
    ]
    assert f"torch {torch.__version__} | torchvision " in (out / "env.txt").read_text()
    # the CUDA tests are collected and skipped without a GPU
    assert re.search(r"^\d+ skipped, \d+ deselected in ", (out / "pytest_cuda.log").read_text(), re.M)
    log = (out / "gpu_check.log").read_text()
    assert all(f"] {name}: start (~" in log and f"] {name}: done in " in log for name in SECTIONS)
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("install: not needed (rld and omegaconf import)\nenv: torch ")
    assert "pytest -m cuda: passed in " in summary and "gpu_check: finished in " in summary
    assert all(f"  {name}: measured in " in summary for name in SECTIONS) and "\ntotal: " in summary

    report = json.loads((out / "gpu_check.json").read_text())
    assert report["small"] is True and report["budget_s"] == 300 and report["total_seconds"] > 0
    assert all(f"{name}_seconds" in report and not {"skipped", "error"} & set(report[name]) for name in SECTIONS)
    assert report["equality"]["parameters_equal"] is True and report["equality"]["rows_equal"] is True
    assert {k: v["host_syncs"] for k, v in report["host_syncs"].items()} == {"plain": 0, "static": 0}
    assert report["host_syncs"]["static"]["cpu_sgd_lr_reads"] > 0  # the CPU-only exemption is visible
    assert "default_eager" in report["bench"]["results"] and report["cache_build"]["sample_views"] == 32
    assert report["bench"]["config"]["conventional_workers"] == 0 and not report["bench"]["config"]["require_capture"]
    sweeps = report["bench"]["results"]
    assert (sweeps["sweep_2"]["students_stacked"], sweeps["sweep_2_stacked"]["students_stacked"]) == (0, 2)
    assert (sweeps["sweep_2_seeds"]["seeds"], sweeps["sweep_2_seeds"]["students_stacked"]) == (2, 2)
    stacked = report["stacked"]
    # two seeds x two learning rates; after one epoch of 3 steps a stacked run is 0.1-0.15 of the distance
    # between the closest two runs away from its one-by-one twin (float rounding, amplified by training)
    assert len(stacked["runs"]) == 4 and 0 < stacked["max_relative_distance"] < 0.25
    targets = report["targets"]
    assert set(targets) == {"default_ms_per_step", "cached_ms_per_step", "sweep_16_speedup_vs_separate_cached"}
    assert targets["sweep_16_speedup_vs_separate_cached"]["measured"] is None  # sweep_16: CUDA only
    assert all(t["met"] is None for t in targets.values())  # the targets are for the full bench on a GPU
    assert report["other_figures"] == {"sweep_16_speedup_vs_default": None}
