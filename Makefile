# Every target does its own set-up on a fresh machine: it creates .venv if missing and installs
# the project with what the target needs, once per change of pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The dev/CI install is the CPU build of torch: it is what these machines have on disk, and it is
# 1/10 the size of the default CUDA build. Override with `make TORCH_SPEC=torch test` elsewhere.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.labelgrad-installed

.PHONY: demo test lint typecheck unit docs-check bench docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
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
