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

# The demo trains a smaller U-Net on 64 x 64 slices so that it finishes in minutes on 2 CPU cores;
# `dvc repro` with params.yaml as committed is the full-size setup (128 x 128, base 32, 20 epochs).
DEMO_PARAMS := -S slice.size=64 -S train.base=16 -S train.depth=3 -S train.batch_size=16 -S train.epochs=12

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
	$(BIN)/dvc exp run $(DEMO_PARAMS)
	$(BIN)/brats-seg summary

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src stages flows tests benchmarks

bench: setup
	$(BIN)/python benchmarks/slice_throughput.py
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf data models reports/validation mlflow/mlflow.db mlflow/artifacts
