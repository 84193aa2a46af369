# The two commands a user needs: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
SERVER_STAMP := $(VENV)/.installed-server
export PATH := $(VENV)/bin:$(PATH)
export MLFLOW_EXPERIMENT_NAME ?= fashion-retrieval

.PHONY: setup store demo test ui clean clean-cache server server-stop server-status

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

# Creates or migrates the tracking store (MLFLOW_TRACKING_URI, else ./mlflow.db) under a file lock,
# with its experiment's artifacts beside it, before any `mlflow run` meets a fresh store.
store: setup
	python -m protocol.tracking.store --experiment $(MLFLOW_EXPERIMENT_NAME)

# Runs every stage on the embedded default (synthetic catalog, ViT-B-32 random init).
demo: store
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

# Deletes stage outputs, the input cache, ./mlflow.db and exactly the artifacts its runs and models
# own; artifacts of any other store (even ones inside mlruns/) are left alone.
clean:
	if [ -x $(VENV)/bin/python ]; then \
	  $(VENV)/bin/python -m protocol.tracking.store clean && $(VENV)/bin/python -m protocol.tracking.artifact_cache clean; \
	else echo "no .venv: outputs/ deleted; mlflow.db and mlruns/ need 'make setup' first to be cleaned safely"; fi
	rm -rf outputs

clean-cache:
	python -m protocol.tracking.artifact_cache clean
