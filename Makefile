# `make demo` and `make test` are the README's two commands; `make test` (what CI runs) lints and type-checks
# first, then runs every test; `make check` is the same; `make test-fast` skips the slow end-to-end tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast lint typecheck check clean-results

$(BIN)/ablate: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch (a CUDA user installs their own build first; see README).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/ablate

setup: $(BIN)/ablate

demo: setup
	$(BIN)/ablate launch sweeps/demo.yaml
	$(BIN)/ablate plot --sweep demo

test: lint typecheck
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check ablate analysis tests bench
	$(BIN)/ruff format --check ablate analysis tests bench

# mypy over the library and the figures (settings in pyproject.toml).
typecheck: setup
	$(BIN)/mypy

check: test
