# Everything a fresh machine needs: `make demo` and `make test` create .venv and install into it.
PYTHON ?= python3
VENV   ?= .venv
# torch/torchvision are installed first so that the versions below are used; override for another
# platform, e.g. `make test TORCH="torch torchvision --index-url https://download.pytorch.org/whl/cpu"`.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
PY      = $(VENV)/bin/python
DEMO_OUT ?= runs/demo

.PHONY: demo test lint bench docs clean mutation

$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

$(VENV)/.docs: $(VENV)/.base
	$(PY) -m pip install -q -e '.[docs]'
	touch $@

demo: $(VENV)/.base
	$(VENV)/bin/rld demo --out $(DEMO_OUT)

test: $(VENV)/.dev
	$(PY) -m pytest -q -n 2

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# The documentation site (MkDocs Material + mkdocstrings) in site/, warnings as errors; then every
# public name of rld.losses and rld.models must have its entry in the API reference.
docs: $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site
	$(PY) docs/check_api.py site

bench: $(VENV)/.dev
	$(PY) benchmarks/losses.py --json benchmarks/losses-cpu.json

# Mutation testing of the core (docs/testing.md), not part of `make test`: mutmut in its own
# environment (MUTVENV), which sees the project's environment through a .pth file.
# `make mutation PKG=losses` runs one package (benchmarks/mutation.toml names them).
MUTVENV ?= .mutation/venv
MUTMUT  ?= mutmut==3.8.1
PKG     ?=

$(MUTVENV)/.mutmut: $(VENV)/.dev
	test -x $(MUTVENV)/bin/python || $(PY) -m venv $(MUTVENV)
	$(PY) -c 'import site; print(site.getsitepackages()[0])' \
		> "$$($(MUTVENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/rld-project-venv.pth"
	$(MUTVENV)/bin/python -m pip install -q '$(MUTMUT)'
	touch $@

mutation: $(MUTVENV)/.mutmut
	$(MUTVENV)/bin/python benchmarks/mutation.py --mutmut $(MUTVENV)/bin/mutmut $(MUTARGS) $(PKG)

clean:
	rm -rf $(VENV) build site src/*.egg-info .pytest_cache
