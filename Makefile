# make demo: set up .venv and run the pipeline on the built-in synthetic cohort.
# make test: set up .venv and run the whole test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin

# No telemetry, ever: there is no network here, and hospital software must not phone home unasked.
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export PATH := $(BIN):$(PATH)

# The demo trains a smaller U-Net on 64 x 64 slices so that it finishes in minutes on 2 CPU cores: it
# writes these values into params.yaml (see `git diff params.yaml`; `git checkout params.yaml` restores the
# full-size setup: 128 x 128, base 32, 20 epochs) and runs the pipeline flow through Prefect.
DEMO_PARAMS := slice.size=64 train.base=16 train.depth=3 train.batch_size=16 train.epochs=12

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned, so that no requirement range pulls a multi-gigabyte CUDA build on CPU machines
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/brats-seg params set $(DEMO_PARAMS)
	$(BIN)/python -m flows.demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src stages flows tests benchmarks

bench: setup
	$(BIN)/python benchmarks/slice_throughput.py
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf data models reports/validation mlflow/mlflow.db mlflow/artifacts
