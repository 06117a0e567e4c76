# One command each for the main job and the tests; both create .venv idempotently on a fresh machine.
#   make run    -> kedro run --pipelines finetune   (embedded shapes-world default, CPU, offline)
#   make test   -> pytest -m "not slow"             (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dpok-installed

# Offline by default: nothing configured here needs a hub, and telemetry/analytics would try the network.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export KEDRO_DISABLE_TELEMETRY ?= 1
export DO_NOT_TRACK ?= 1
export DVC_NO_ANALYTICS ?= 1
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR ?= false

.PHONY: install run test test-slow viz repro bench clean-venv

install: $(STAMP)

# torch first (the CPU wheel on local disk here), then everything else with torch held at that version,
# so no dependency can pull a multi-GB CUDA build. A GPU user installs their CUDA torch 2.13.0 first.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
	  echo "dpok needs Python 3.11 (pyproject.toml: requires-python), but $(PYTHON) is $$($(PYTHON) -V 2>&1)."; \
	  echo "Install 3.11 and run: make PYTHON=python3.11 $(MAKECMDGOALS)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

run: install
	$(BIN)/kedro run --pipelines finetune

test: install
	$(BIN)/python -m pytest -m "not slow"

test-slow: install
	$(BIN)/python -m pytest -m slow

viz: install
	$(BIN)/kedro viz build

repro: install
	$(BIN)/dvc repro

bench: install
	$(BIN)/python scripts/bench_world.py

# Start over: the next `make run` / `make test` builds .venv afresh.
clean-venv:
	rm -rf $(VENV)
