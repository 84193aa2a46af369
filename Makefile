# The two commands a user needs: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
STAMP := $(VENV)/.installed
export PATH := $(VENV)/bin:$(PATH)
export MLFLOW_EXPERIMENT_NAME ?= fashion-retrieval

.PHONY: setup store demo test ui clean clean-cache

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# Creates or migrates the tracking store (MLFLOW_TRACKING_URI, else ./mlflow.db) under a file lock,
# with its experiment's artifacts beside it, before any `mlflow run` meets a fresh store.
store: setup
	python -m protocol.tracking.store --experiment $(MLFLOW_EXPERIMENT_NAME)

# Runs every stage on the embedded default (synthetic catalog, ViT-B-32 random init).
demo: store
	mlflow run . -e pipeline --env-manager local --experiment-name $(MLFLOW_EXPERIMENT_NAME)

test: setup
	python -m pytest -q

# Opens the MLflow UI on the project's tracking store.
ui: setup
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port 5000

# Deletes stage outputs, the input cache, ./mlflow.db and exactly the artifacts its runs and models
# own; artifacts of any other store (even ones inside mlruns/) are left alone.
clean:
	if [ -x $(VENV)/bin/python ]; then \
	  $(VENV)/bin/python -m protocol.tracking.store clean && $(VENV)/bin/python -m protocol.tracking.artifact_cache clean; \
	else echo "no .venv: outputs/ deleted; mlflow.db and mlruns/ need 'make setup' first to be cleaned safely"; fi
	rm -rf outputs

clean-cache:
	python -m protocol.tracking.artifact_cache clean
