#!/usr/bin/env bash
# Everything a fresh GPU machine runs, in one command from the repository root:
#     bash benchmarks/gpu_run.sh OUT [gpu_check.py arguments, e.g. --small or --budget-s 240]
# 1. makes rld importable without a package registry: the wheels of .carry/wheels (benchmarks/gpu_wheels.sh)
#    unpacked into .carry/site, the project from src/ (skipped when rld and omegaconf already import);
# 2. OUT/env.txt: Python, torch, torchvision, CUDA, the GPUs;
# 3. OUT/pytest_cuda.log: `pytest -m cuda -x` (killed after RLD_PYTEST_TIMEOUT_S, default 150 s);
# 4. OUT/gpu_check.json and .log: benchmarks/gpu_check.py within its budget (--budget-s, default 300 s;
#    killed 30 s after it), the JSON rewritten after each section;
# 5. OUT/summary.txt, written line by line as the steps end.
# Each step runs whatever happened before it. Worst case about 150 + 330 s plus start-up: give the
# command 540 s. PYTHON (default python3) is the interpreter; RLD_GPU_DEVICE (default cuda) the device,
# cpu for the CPU twin the test suite runs (`... OUT --small`). Exit status 1 when a step failed.
set -u
OUT=${1:?usage: bash benchmarks/gpu_run.sh OUT [gpu_check.py arguments]}
shift
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${RLD_GPU_DEVICE:-cuda}
PYTEST_TIMEOUT_S=${RLD_PYTEST_TIMEOUT_S:-150}
BUDGET_S=300
previous=
for arg in "$@"; do # the budget gpu_check gets (its last --budget-s wins), for the time limit below
    [ "$previous" = --budget-s ] && BUDGET_S=${arg%.*}
    previous=$arg
done
export PYTHONUNBUFFERED=1
failed=0
: >"$OUT/summary.txt"
note() { echo "$*" | tee -a "$OUT/summary.txt"; }

# 1. install
if "$PY" -c "import rld, omegaconf" 2>/dev/null; then
    note "install: not needed (rld and omegaconf import)"
else
    "$PY" -m pip install -q --no-index --no-deps --upgrade --target .carry/site .carry/wheels/*.whl ||
        for wheel in .carry/wheels/*.whl; do "$PY" -m zipfile -e "$wheel" .carry/site; done
    export PYTHONPATH="$PWD/src:$PWD/.carry/site${PYTHONPATH:+:$PYTHONPATH}"
    if "$PY" -c "import rld, omegaconf" 2>/dev/null; then
        note "install: $(cd .carry/wheels && echo *.whl) into .carry/site; rld from src/"
    else
        note "install: FAILED (rld or omegaconf does not import; run benchmarks/gpu_wheels.sh and carry .carry/wheels)"
        failed=1
    fi
fi

# 2. the environment
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(uname -n)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)," \
        "$(git status --porcelain 2>/dev/null | wc -l) paths changed or added since"
    echo "C compiler: $(command -v gcc || command -v cc || echo none)"
    "$PY" - <<'EOF'
import os, platform, sys

import torch, torchvision

print("python", sys.version.split()[0], platform.platform(), "|", len(os.sched_getaffinity(0)), "cores")
print("torch", torch.__version__, "| torchvision", torchvision.__version__)
print("CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version(), "| available", torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
try:
    import triton

    print("triton", triton.__version__)
except ImportError:
    print("triton: none")
import omegaconf, rld

print("omegaconf", omegaconf.__version__, "| rld from", rld.__file__)
EOF
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi -L
        nvidia-smi --query-gpu=driver_version,memory.total,clocks.max.sm,power.limit --format=csv
    fi
} >"$OUT/env.txt" 2>&1
note "env: $(grep -m1 '^torch' "$OUT/env.txt")"

# 3. the tests only a GPU can run (all skipped without CUDA; exit status 5: none collected)
start=$SECONDS
timeout -k 10 "$PYTEST_TIMEOUT_S" "$PY" -m pytest -m cuda -x -q -p no:cacheprovider 2>&1 | tee "$OUT/pytest_cuda.log"
status=${PIPESTATUS[0]}
case $status in
0 | 5) outcome="passed" ;;
124 | 137) outcome="TIMED OUT after ${PYTEST_TIMEOUT_S} s" failed=1 ;;
*) outcome="FAILED (exit status $status)" failed=1 ;;
esac
last=$(tail -n 1 "$OUT/pytest_cuda.log")
if [ "$outcome" = passed ] && [[ $DEVICE == cuda* && $last != *" passed"* ]]; then
    outcome="NOT RUN (no CUDA device?)" failed=1
fi
note "pytest -m cuda: $outcome in $((SECONDS - start)) s: $last"

# 4. the checks and figures
start=$SECONDS
timeout -k 10 $((BUDGET_S + 30)) "$PY" benchmarks/gpu_check.py --device "$DEVICE" --out "$OUT/gpu_check.json" \
    --budget-s "$BUDGET_S" "$@" 2>&1 | tee "$OUT/gpu_check.log"
status=${PIPESTATUS[0]}
case $status in
0) outcome="finished" ;;
124 | 137) outcome="KILLED after $((BUDGET_S + 30)) s" failed=1 ;;
*) outcome="FAILED (exit status $status)" failed=1 ;;
esac
note "gpu_check: $outcome in $((SECONDS - start)) s"
"$PY" - "$OUT/gpu_check.json" <<'EOF' 2>&1 | tee -a "$OUT/summary.txt"
import json, sys

try:
    report = json.load(open(sys.argv[1]))
except (OSError, ValueError) as exc:
    sys.exit(f"  no report: {exc}")
errors = 0
for name in ("equality", "host_syncs", "bench", "stacked", "cache_build"):
    section = report.get(name)
    if section is None:
        print(f"  {name}: not reached")
    elif "skipped" in section or "error" in section:
        errors += "error" in section
        print(f"  {name}: {'skipped' if 'skipped' in section else 'ERROR'}: {section.get('skipped') or section['error']}")
    else:
        print(f"  {name}: measured in {report[name + '_seconds']:.0f} s")
for name, t in report.get("targets", {}).items():
    verdict = "met" if t["met"] else "NOT MET" if t["met"] is False else t.get("note", "not measured")
    measured = f"{t['measured']:.3g}" if isinstance(t["measured"], float) else t["measured"]
    print(f"  target {name} {t['target']}: {measured}: {verdict}")
sys.exit(1 if errors else 0)
EOF
[ "${PIPESTATUS[0]}" = 0 ] || failed=1
note "total: $SECONDS s"
exit $failed
