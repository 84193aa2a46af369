# The two commands a user needs: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
SERVER_STAMP := $(VENV)/.installed-server
export PATH := $(VENV)/bin:$(PATH)
export MLFLOW_EXPERIMENT_NAME ?= fashion-retrieval

.PHONY: setup store demo test ui serve search clean clean-cache server server-stop server-status

# The tracking store every target reads, by protocol.tracking.store's own rule (MLFLOW_TRACKING_URI, else
# sqlite:///<project>/mlflow.db, made absolute): one rule, so `make ui` and `make serve` see what the runs wrote.
STORE_URI = python -c 'import sys; sys.excepthook = lambda t, e, tb: print(f"error: {e}", file=sys.stderr); \
	from protocol.tracking.store import tracking_uri; print(tracking_uri())'
REGISTERED_MODEL := fashion-retrieval-protocol

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
	scripts/install_chromium.sh
	touch $(TEST_STAMP)

# The test install (newer than the base one) holds the server extra and PostgreSQL too: nothing to install then.
$(SERVER_STAMP): $(STAMP)
	if [ ! -f $(TEST_STAMP) ] || [ $(STAMP) -nt $(TEST_STAMP) ]; then \
	  $(VENV)/bin/python -m pip install --quiet -e ".[dev,server]" && scripts/server.sh install; fi
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

# The MLflow UI on the tracking store, at http://127.0.0.1:$(PORT). A tracking server (http://...) serves its own UI.
ui: PORT ?= 5000
ui: setup
	@uri=$$($(STORE_URI)) || exit 1; \
	if [[ $$uri == http* ]]; then echo "error: MLFLOW_TRACKING_URI=$$uri is a tracking server: its UI is at $$uri" >&2; exit 2; fi; \
	echo "mlflow ui on $$uri at http://127.0.0.1:$(PORT)"; \
	exec mlflow ui --backend-store-uri "$$uri" --host 127.0.0.1 --port $(PORT)

# Serves a registered version of the model (VERSION: @alias or a number) at http://127.0.0.1:$(PORT)/invocations.
# `mlflow models serve` starts uvicorn from PATH, which this Makefile puts .venv/bin on.
serve: PORT ?= 5001
serve: VERSION ?= @champion
serve: setup
	@[[ "$(VERSION)" =~ ^(@[A-Za-z0-9_-]+|[0-9]+)$$ ]] \
	  || { echo "error: VERSION='$(VERSION)' is neither an alias (VERSION=@champion) nor a version number (VERSION=3)" >&2; exit 2; }; \
	uri=$$($(STORE_URI)) || exit 1; \
	MLFLOW_TRACKING_URI="$$uri" python -m protocol.tracking.registry "$(VERSION)" > /dev/null || exit 1; \
	model="models:/$(REGISTERED_MODEL)$(if $(filter @%,$(VERSION)),$(VERSION),/$(VERSION))"; \
	echo "serving $$model of $$uri at http://127.0.0.1:$(PORT)/invocations"; \
	MLFLOW_TRACKING_URI="$$uri" exec mlflow models serve -m "$$model" --env-manager local --host 127.0.0.1 --port $(PORT)

# The search page at http://127.0.0.1:$(PORT): what VERSION (@alias or a number) finds beside @baseline.
# Its model links open the MLflow UI at MLFLOW_UI (`make ui`'s address).
search: PORT ?= 8000
search: VERSION ?= @champion
search: MLFLOW_UI ?= http://127.0.0.1:5000
search: setup
	@uri=$$($(STORE_URI)) || exit 1; \
	echo "search page for $(VERSION) beside @baseline, on $$uri"; \
	MLFLOW_TRACKING_URI="$$uri" exec python -m protocol.search_app --port $(PORT) --version "$(VERSION)" --mlflow-ui "$(MLFLOW_UI)"

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
