"""Shared fixtures: a real sqlite tracking store per test (migrated once per session, then copied)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory) -> Path:
    """One sqlite store with MLflow's migrations applied; migrating per test is slow."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    d = tmp_path_factory.mktemp("mlflow-template")
    store = SqlAlchemyStore(f"sqlite:///{d / 'mlflow.db'}", (d / "mlruns").as_uri())
    store.engine.dispose()
    return d / "mlflow.db"


@pytest.fixture
def new_store(migrated_store):
    """new_store(db) -> sqlite URI: an empty migrated store at `db`, a copy of the session's template.

    The same schema a first open would create, without the migration (about a second each)."""
    def make(db: Path) -> str:
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(migrated_store, db)
        return f"sqlite:///{db}"
    return make


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch, migrated_store) -> str:
    """A fresh tracking store in tmp_path, set as MLFLOW_TRACKING_URI for this test and its subprocesses."""
    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copy(migrated_store, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run("FAILED")


TINY_MODEL = "protocol-tiny"  # protocol/configs/open_clip/protocol-tiny.json, built by the same factory


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    """A processed dataset of a small rendered synthetic catalog (64 px), saved to disk once per session."""
    from protocol.data.prepare import finalize, save_processed
    from protocol.data.synthetic import generate_catalog

    out = tmp_path_factory.mktemp("tiny") / "prepared"
    raw = generate_catalog(n_products=80, seed=0, image_size=64, show_progress=False)
    save_processed(finalize(raw, seed=0, show_progress=False), out, source="synthetic(tiny)")
    return out
