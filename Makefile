# make demo: set up .venv and run the pipeline on the built-in synthetic cohort.
# make test: set up .venv and run the whole test suite (installs Debian's postgresql and chromium first if missing).
# make test-fast: the unit tests only (no DVC pipeline, Prefect flow or server), for the edit-test loop.
# make mlflow-server: a tracking server for a team (mlflow/README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin

# No telemetry, ever: there is no network here, and hospital software must not phone home unasked.
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export PATH := $(BIN):$(PATH)

# The demo trains a smaller U-Net on 64 x 64 slices so that it finishes in minutes on 2 CPU cores, on 28 cases
# of which a quarter are tested (6 test patients decide its promotion, not 2): it writes these values into
# params.yaml and runs the pipeline flow through Prefect, which records params.yaml with the results on branch
# brats-seg-demo (`git diff main -- params.yaml` shows the values there; the README's "Back to the full-size setup"
# sets the committed ones again: 128 x 128, base 32, 20 epochs, 24 cases split 0.7 / 0.15 / 0.15).
DEMO_PARAMS := download.synthetic.n_cases=28 'slice.split=[0.6,0.15,0.25]' slice.size=64 train.base=16 \
	train.depth=3 train.batch_size=16 train.epochs=12

.PHONY: setup demo test test-fast test-durations test-services lint bench clean clean-checkpoints clean-tracking mlflow-server

# pip compiles every installed module to bytecode one file at a time; compileall does it on every core afterwards
# (the same .pyc files; 64 s instead of 86 s on 2 cores). Two files are Python 3.12 syntax that nothing imports on
# 3.11; pip skips them the same way, so they are left out rather than reported as errors.
NOT_COMPILED := /torch/testing/_internal/py312_intrinsics\.py$$|/whenever/_typing_312\.py$$

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned, so that no requirement range pulls a multi-gigabyte CUDA build on CPU machines
	$(BIN)/python -m pip install --quiet --no-compile torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-compile -c constraints.txt -e '.[dev]'
	$(BIN)/python -m compileall -q -j 0 -x '$(NOT_COMPILED)' \
		"$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null
	touch $@

# The telemetry defaults above also for what a user starts by hand once the environment is active (mlflow ui,
# prefect server start); a value the user exported is kept. And mlflow's job runner off (seven processes beside
# `mlflow ui` for GenAI jobs; this project logs no traces), as for `make mlflow-server`. Each line is added where
# missing, so an older .venv gets the ones added since.
ACTIVATE_DEFAULTS := '\# brats-seg: no telemetry unless asked' \
	'export DO_NOT_TRACK="$${DO_NOT_TRACK:-1}"' \
	'export MLFLOW_DISABLE_TELEMETRY="$${MLFLOW_DISABLE_TELEMETRY:-true}"' \
	'export PREFECT_SERVER_ANALYTICS_ENABLED="$${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"' \
	'export DVC_NO_ANALYTICS="$${DVC_NO_ANALYTICS:-1}"' \
	'export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="$${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"'
setup: $(VENV)/.installed
	@for line in $(ACTIVATE_DEFAULTS); do grep -qxF "$$line" $(BIN)/activate || echo "$$line" >> $(BIN)/activate; done

demo: setup
	@echo "make demo: params.yaml set to the demo's sizes, then the pipeline flow (it records them with the results on branch brats-seg-demo: git diff main -- params.yaml)"
	@$(BIN)/brats-seg params set $(DEMO_PARAMS)
	@$(BIN)/python -m flows.demo

# Every test, a worker per core (at most 4: each may run a dvc repro of its own); a test file (or a group of files
# sharing session fixtures: SHARED in tests/conftest.py) stays on one worker, so that its fixtures are built once;
# the longest start first (tests/durations.json). The Python environment and the system packages are installed side by
# side (on a fresh machine pip took 64 s and apt-get 23 s here; 70 s together).
test:
	@$(MAKE) --no-print-directory -j 2 setup test-services
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

# Measure every test file again for the order above (after adding or much changing a slow test), then commit
# tests/durations.json.
test-durations: setup test-services
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder --durations=0 --durations-min=0 -q \
		| tee /dev/stderr | $(BIN)/python scripts/test_durations.py

# The unit tests: every test not marked slow (slow: a DVC pipeline, a Prefect flow, a server, or a process per
# case), on every core.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" -n auto

# What tests need besides Python packages, installed here when missing (as root; anyone else is told the command;
# without them those tests fail under CI=true and are skipped elsewhere): the server binaries (initdb, postgres) of
# Debian's `postgresql` package, for the team-mode tests' throwaway PostgreSQL on 127.0.0.1, and Debian's
# `chromium`, for the run report's browser test.
test-services:
	@missing=""; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing=" postgresql"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's$$missing for the tests (postgresql: the team-mode tests; chromium: the report's browser test)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "not installed:$$missing; run 'sudo apt-get install -y$$missing' (postgresql: the team-mode tests;" \
		"chromium: the report's browser test)"; fi

# A tracking server for a team (mlflow/README.md): runs and registry in BACKEND, artifacts proxied to ARTIFACTS
# (clients need no storage credentials). Bound to 127.0.0.1: expose it only behind a reverse proxy with TLS and
# authentication. Override on the command line, e.g.
#   make mlflow-server BACKEND=postgresql://mlflow@127.0.0.1:5432/mlflow ARTIFACTS=/srv/mlflow/artifacts
# OPTS passes more `mlflow server` options (--cors-allowed-origins, --app-name basic-auth, ...). The defaults
# serve the local store. Set with `=`, not `?=`: a HOST or PORT variable in someone's environment never rebinds
# the server. This project logs no GenAI traces, so mlflow's job runner (seven extra processes) stays off.
HOST = 127.0.0.1
PORT = 5000
BACKEND = sqlite:///$(CURDIR)/mlflow/mlflow.db
ARTIFACTS = $(CURDIR)/mlflow/artifacts
WORKERS = 4
OPTS =

# BACKEND may hold a database password: make does not echo this recipe, the line it prints masks user:***@, and
# the URI reaches mlflow through its environment (MLFLOW_BACKEND_STORE_URI), not the command line `ps` shows.
MASK_CREDENTIALS = sed -E 's,(://[^/:@]*):[^/@]*@,\1:***@,g'

mlflow-server: setup
	@echo "mlflow server --backend-store-uri '$(BACKEND)' --artifacts-destination '$(ARTIFACTS)' --host '$(HOST)'" \
		"--port '$(PORT)' --workers '$(WORKERS)' $(OPTS)" | $(MASK_CREDENTIALS)
	@MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_BACKEND_STORE_URI='$(BACKEND)' $(BIN)/mlflow server \
		--artifacts-destination '$(ARTIFACTS)' --host '$(HOST)' --port '$(PORT)' --workers '$(WORKERS)' $(OPTS)

lint: setup
	$(BIN)/ruff check src stages flows tests benchmarks scripts

bench: setup
	$(BIN)/python benchmarks/slice_throughput.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/train_scale.py
	$(BIN)/python benchmarks/predict_throughput.py

# Rebuildable outputs only, where params.yaml puts them now (brats_seg/orchestration/clean.py): DVC stage outputs
# (restored by `dvc checkout` from the DVC cache, or rebuilt by `dvc repro`), reports and download staging; a folder
# only when brats-seg made it, a file only when it is what dvc.lock records. Kept: training checkpoints (hours of an
# interrupted run; `make clean-checkpoints`, or `make clean CLEAN_CHECKPOINTS=1`, deletes them), downloaded
# archives, the source manifest and the MLflow tracking store with every registered model version (see
# clean-tracking).
clean: setup
	@$(BIN)/brats-seg clean $(if $(filter 1,$(CLEAN_CHECKPOINTS)),all,outputs)

clean-checkpoints: setup
	@$(BIN)/brats-seg clean checkpoints

TRACKING_STORE := mlflow/mlflow.db mlflow/artifacts

# Deletes every MLflow run, registered model version and alias (champion history) of the local store, after
# saying so and asking: type 'delete' at the prompt, or pass CONFIRM=1 where there is no terminal.
clean-tracking:
	@echo "clean-tracking deletes the local MLflow tracking store: every run, every registered model version"
	@echo "and the champion/challenger aliases. That is:"
	@for p in $(TRACKING_STORE); do if [ -e "$$p" ]; then du -sh -- "$$p"; else echo "  $$p (not there)"; fi; done
	@if [ -n "$$MLFLOW_TRACKING_URI" ]; then echo "The server at MLFLOW_TRACKING_URI=$$MLFLOW_TRACKING_URI is not" \
		"touched." | $(MASK_CREDENTIALS); fi
	@if [ "$(CONFIRM)" = 1 ]; then :; \
	elif [ -t 0 ]; then read -r -p "Type 'delete' to delete it: " answer; \
		if [ "$$answer" != delete ]; then echo "nothing deleted"; exit 1; fi; \
	else echo "nothing deleted: no terminal to ask; run 'make clean-tracking CONFIRM=1' to delete it"; exit 1; fi
	rm -rf -- $(TRACKING_STORE)
