"""Artifacts live beside their own store; cleaning the project's store deletes exactly what it owns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from protocol.tracking.store import (
    ArtifactsNotBesideStoreError, artifact_root, check_artifacts_beside_store, clean_store, prepare_store,
)
from tests.fresh_clone import make_fresh_clone, user_shell_env

ROOT = Path(__file__).resolve().parents[2]
MLFLOW = str(Path(sys.executable).parent / "mlflow")
TINY_PREPARE = ["-P", "n_products=20", "-P", "image_size=32"]


def run_env(uri: str, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PROTOCOL_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env | {"MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}


def mlflow_run_prepare(uri: str, tmp_path: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MLFLOW, "run", str(ROOT), "-e", "prepare", "--env-manager", "local", "--experiment-name", "fashion-retrieval",
         *TINY_PREPARE, "-P", f"output_dir={tmp_path / 'prepared'}"],
        cwd=cwd, env=run_env(uri, tmp_path), capture_output=True, text=True, timeout=300)


def test_artifact_root_is_beside_the_store_and_unique_to_it(tmp_path):
    assert artifact_root(tmp_path / "mlflow.db") == tmp_path / "mlruns"
    assert artifact_root(tmp_path / "team.db") == tmp_path / "team-mlruns"


def test_mlflow_run_on_another_store_keeps_its_artifacts_beside_that_store(tmp_path, new_store):
    uri = new_store(tmp_path / "other.db")
    prepare_store(uri)  # what `make setup` / `python -m protocol.tracking.store` do for a new store
    proc = mlflow_run_prepare(uri, tmp_path, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = MlflowClient(uri).search_runs([prepare_store(uri).experiment_id])
    where = Path(run.info.artifact_uri.removeprefix("file://"))
    assert where.is_relative_to(tmp_path / "other-mlruns") and (where / "processed" / "manifest.json").is_file()
    project_runs = ROOT / "mlruns"
    assert not any(p.name == run.info.run_id for p in project_runs.glob("*/*")) if project_runs.exists() else True


def test_a_run_whose_artifacts_would_leave_its_store_is_refused(tmp_path, new_store):
    """`mlflow run` on an unprepared store creates the experiment in ./mlruns of its working directory.
    (Unprepared: migrated, as a copy of the template, but without the project's experiment.)"""
    uri = new_store(tmp_path / "other.db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = mlflow_run_prepare(uri, tmp_path, cwd=elsewhere)
    assert proc.returncode != 0
    assert "not beside the store" in proc.stderr and "python -m protocol.tracking.store" in proc.stderr
    assert not (elsewhere / "mlruns").exists() or not any((elsewhere / "mlruns").rglob("*.json"))
    with pytest.raises(ArtifactsNotBesideStoreError, match="fashion-retrieval"):
        check_artifacts_beside_store((elsewhere / "mlruns" / "1").as_uri(), "fashion-retrieval", uri)


def log_one_run(uri: str, experiment_location: str | None, name: str) -> Path:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name, artifact_location=experiment_location)
    run = client.create_run(exp_id)
    client.log_text(run.info.run_id, name, "note.txt")
    client.set_terminated(run.info.run_id)
    return Path(run.info.artifact_uri.removeprefix("file://")) / "note.txt"


def test_cleaning_a_store_deletes_its_own_artifacts_and_never_another_stores(tmp_path, new_store):
    ours = new_store(tmp_path / "mlflow.db")
    prepare_store(ours)
    our_note = log_one_run(ours, None, "fashion-retrieval")
    # another store whose experiment was created by `mlflow run` in this folder: inside our mlruns/
    theirs = new_store(tmp_path / "elsewhere" / "mlflow.db")
    prepare_store(theirs, experiment=None)
    their_note = log_one_run(theirs, (tmp_path / "mlruns" / "1").as_uri(), "theirs")
    assert our_note.is_file() and their_note.is_file() and their_note.is_relative_to(tmp_path / "mlruns")

    deleted = clean_store(ours)
    assert tmp_path / "mlflow.db" in deleted and not (tmp_path / "mlflow.db").exists()
    assert not our_note.exists()
    assert their_note.read_text() == "theirs"  # another store's artifacts stay, even inside our folder
    assert clean_store(ours) == []  # nothing left to clean


def test_make_clean_on_a_fresh_clone_keeps_another_stores_artifacts(tmp_path, new_store):
    clone = make_fresh_clone(tmp_path / "clone")
    ours = new_store(clone / "mlflow.db")
    prepare_store(ours)
    our_note = log_one_run(ours, None, "fashion-retrieval")
    theirs = new_store(tmp_path / "team.db")
    prepare_store(theirs, experiment=None)
    their_note = log_one_run(theirs, (clone / "mlruns" / "7").as_uri(), "theirs")
    (clone / "outputs").mkdir()
    proc = subprocess.run(["make", "clean"], cwd=clone, env=user_shell_env(clone) | {"MLFLOW_TRACKING_URI": theirs},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not our_note.exists() and not (clone / "mlflow.db").exists() and not (clone / "outputs").exists()
    assert their_note.read_text() == "theirs" and (tmp_path / "team.db").exists()  # MLFLOW_TRACKING_URI is not cleaned
