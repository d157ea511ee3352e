# Plain entry points. The README's two commands are `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
# DVC stage commands call `python`: make it the environment's.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup run test lint ui

# The environment, rebuilt only when the dependency pins change.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# Set up, then run the whole DAG on the embedded data.
run: setup
	dvc repro

# Set up, then lint and run the whole test suite (slow end-to-end tests included).
test: setup
	ruff check pipeline tests benchmarks
	pytest

lint: setup
	ruff check pipeline tests benchmarks
	ruff format --check pipeline tests benchmarks

# The MLflow UI on the pipeline's store, on this machine only.
ui: setup
	mlflow ui --backend-store-uri "sqlite:///$(CURDIR)/mlflow.db" --host 127.0.0.1 --port 5000
