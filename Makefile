# The two commands a user needs: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
SERVER_STAMP := $(VENV)/.installed-server
export PATH := $(VENV)/bin:$(PATH)
export MLFLOW_EXPERIMENT_NAME ?= fashion-retrieval

.PHONY: setup demo test ui clean server server-stop server-status

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# The suite also runs the team server (PostgreSQL, from Debian's packages when missing) and Ray.
$(TEST_STAMP): $(STAMP)
	$(VENV)/bin/python -m pip install --quiet -e ".[dev,ray,server]"
	scripts/server.sh install
	touch $(TEST_STAMP)

$(SERVER_STAMP): $(STAMP)
	$(VENV)/bin/python -m pip install --quiet -e ".[dev,server]"
	scripts/server.sh install
	touch $(SERVER_STAMP)

# Runs every stage on the embedded default (synthetic catalog, ViT-B-32 random init).
demo: setup
	mlflow run . -e pipeline --env-manager local --experiment-name $(MLFLOW_EXPERIMENT_NAME)

test: $(TEST_STAMP)
	python -m pytest -q

# Opens the MLflow UI on the project's tracking store.
ui: setup
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port 5000

# A team tracking server, left running: PostgreSQL (data in .server/pgdata, unix socket only) and
# `mlflow server` on http://127.0.0.1:5050 with proxied artifacts in .server/artifacts.
server: $(SERVER_STAMP)
	scripts/server.sh start

server-stop:
	scripts/server.sh stop

server-status:
	scripts/server.sh status

clean:
	rm -rf outputs mlruns mlflow.db
