"""Two real processes on one fresh sqlite store: the schema is created once, under the store's lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from filelock import FileLock
from mlflow.tracking import MlflowClient

from protocol.tracking.store import EXPERIMENT_NAME, LOCK_TIMEOUT_ENV, artifact_root

ROOT = Path(__file__).resolve().parents[2]


def clean_env(uri: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PROTOCOL_"))}
    return env | {"MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT), **extra}


def test_two_stages_at_once_on_a_fresh_store_both_finish(tmp_path):
    db = tmp_path / "fresh.db"
    uri = f"sqlite:///{db}"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "entrypoints.prepare", "--n_products", "20", "--image_size", "32",
         "--output_dir", str(tmp_path / f"prepared{i}")],
        cwd=ROOT, env=clean_env(uri), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
        assert "already exists" not in out and "duplicate column" not in out
    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == EXPERIMENT_NAME]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    for run in runs:
        assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(artifact_root(db))


def test_a_stage_waits_for_the_store_lock_and_never_touches_a_store_being_created(tmp_path):
    db = tmp_path / "fresh.db"
    with FileLock(str(db) + ".lock"):  # another process is creating the store
        proc = subprocess.run(
            [sys.executable, "-m", "protocol.tracking.store"], cwd=ROOT,
            env=clean_env(f"sqlite:///{db}", **{LOCK_TIMEOUT_ENV: "1"}), capture_output=True, text=True, timeout=120,
        )
        assert not db.exists()  # it waited instead of migrating beside the other process
    assert proc.returncode != 0
    assert f"the tracking store {db} is being created or migrated by another process" in proc.stderr
    again = subprocess.run([sys.executable, "-m", "protocol.tracking.store"], cwd=ROOT,
                           env=clean_env(f"sqlite:///{db}"), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert db.exists() and f"experiment '{EXPERIMENT_NAME}'" in again.stdout
