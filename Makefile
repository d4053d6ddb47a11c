# Every target does its own set-up on a fresh machine: it creates .venv if missing and installs
# the project with what the target needs, once per change of pyproject.toml. `make demo` installs
# only what the demo runs (.[cli,data], about 1.3 GB with torch); the other targets install the
# dev extra on top (lightning, transformers, TorchJD's solvers, mkdocs, mypy: about 2 GB).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# torch is installed first, so that the extras do not pull another build of it. TORCH_SPEC is
# what these machines have on disk (the CPU build, through pip's configuration). Elsewhere pip's
# default index gives, on Linux, the CUDA build (several GB); TORCH_INDEX=<PyTorch's CPU index>
# installs the CPU build (README, "Installing torch"). A TORCH_SPEC or TORCH_INDEX set after the
# first run has no effect until `make clean`.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
TORCH_PIP := $(PIP) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
DEMO_STAMP := $(VENV)/.labelgrad-demo-installed
STAMP := $(VENV)/.labelgrad-installed

.PHONY: demo test lint typecheck unit docs-check bench docs clean

$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(TORCH_PIP)
	$(PIP) -e ".[cli,data]"
	touch $(DEMO_STAMP)

# dev includes cli and data: its install also brings the demo's set-up up to date.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(TORCH_PIP)
	$(PIP) -e ".[dev]"
	touch $(STAMP) $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/labelgrad demo

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(PY) -m mypy

unit: $(STAMP)
	$(PY) -m pytest -q --doctest-modules src/labelgrad tests

# Strict: a broken link, a missing page or a docstring griffe cannot parse fails the build.
# Not --quiet: it hides warnings from the counter --strict reads (mkdocs/mkdocs#4126).
docs-check: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

test: lint typecheck unit docs-check

bench: $(STAMP)
	$(VENV)/bin/labelgrad bench

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build site src/*.egg-info
