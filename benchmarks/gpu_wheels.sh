#!/usr/bin/env bash
# Run once on a machine with a package registry, from anywhere in the repository:
#     bash benchmarks/gpu_wheels.sh
# Fills .carry/wheels/ (git-ignored) with the wheels `import rld` needs beyond a stock PyTorch machine
# (torch, torchvision, numpy, tqdm, scikit-learn, matplotlib, PyYAML present): omegaconf, pure
# Python. benchmarks/gpu_run.sh installs them there without a registry. OMEGACONF=2.3.0 takes the
# older release, which also needs antlr4-python3-runtime 4.9.3 (published as a source archive only:
# its pure-Python wheel is built here). Running it again gives the same folder.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OMEGACONF=${OMEGACONF:-2.4.0} # the release the dev environment (make test) runs
DIR=.carry/wheels

mkdir -p "$DIR"
rm -f "$DIR"/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --dest "$DIR" "omegaconf==$OMEGACONF"
case $OMEGACONF in
2.3.*) "$PY" -m pip wheel -q --no-deps --wheel-dir "$DIR" antlr4-python3-runtime==4.9.3 ;;
esac
echo "$DIR:"
ls -l "$DIR"
