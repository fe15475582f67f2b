# `make demo` and `make test` are the README's two commands; `make test` (what CI runs) lints and type-checks
# first, then runs every test; `make check` is the same; `make test-fast` skips the slow end-to-end tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# FID's extra (torch-fidelity) needs torchvision, which installs here only beside torch 2.14.1: its tests
# run in a second venv (see test-fid).
FID_VENV ?= .venv-fid
FID_BIN := $(FID_VENV)/bin

.PHONY: setup setup-demo setup-fid demo test test-fid test-fast lint typecheck check clean-results

$(BIN)/ablate: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch (a CUDA user installs their own build first; see README).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $(BIN)/ablate

# The tests' and checks' tools (pytest, ruff, mypy) on top; the demo does without them (12 s less set-up).
$(BIN)/pytest: $(BIN)/ablate
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/pytest

setup: $(BIN)/pytest

setup-demo: $(BIN)/ablate

$(FID_BIN)/ablate: pyproject.toml
	$(PY) -m venv $(FID_VENV)
	$(FID_BIN)/pip install -q --upgrade pip
	$(FID_BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(FID_BIN)/pip install -q -e '.[dev,fid]'
	touch $(FID_BIN)/ablate

setup-fid: $(FID_BIN)/ablate

demo: setup-demo
	$(BIN)/ablate launch sweeps/demo.yaml
	$(BIN)/ablate report --sweep demo
	@echo "ablate is installed in $(VENV): 'source $(VENV)/bin/activate' once per shell, then 'ablate ui', 'ablate status demo'"

# Every test: those of the fid extra (marker fid) in the FID venv, all others in the main one.
test: lint typecheck test-fid
	$(BIN)/python -m pytest -q -m "not fid" --durations=15

test-fid: setup-fid
	$(FID_BIN)/python -m pytest -q -m fid

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not fid"

lint: setup
	$(BIN)/ruff check ablate analysis tests bench
	$(BIN)/ruff format --check ablate analysis tests bench

# mypy over the library and the figures (settings in pyproject.toml).
typecheck: setup
	$(BIN)/mypy

check: test
