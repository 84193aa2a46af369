# The two commands a user needs: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
STAMP := $(VENV)/.installed
export PATH := $(VENV)/bin:$(PATH)
export MLFLOW_EXPERIMENT_NAME ?= fashion-retrieval

.PHONY: setup demo test ui clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# Runs every stage on the embedded default (synthetic catalog, ViT-B-32 random init).
demo: setup
	mlflow run . -e pipeline --env-manager local --experiment-name $(MLFLOW_EXPERIMENT_NAME)

test: setup
	python -m pytest -q

# Opens the MLflow UI on the project's tracking store.
ui: setup
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port 5000

clean:
	rm -rf outputs mlruns mlflow.db
