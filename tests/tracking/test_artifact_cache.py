"""Stage inputs: by reference on a local store; downloaded once per (run, artifact) from a tracking server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from protocol.tracking.artifact_cache import CACHE_ENV, cache_dir, clean_cache, resolve_input
from protocol.tracking.stages.supervision import AuditConfig, GroupsConfig, run_audit, run_groups


def log_dir(client: MlflowClient, run_id: str, src: Path, artifact_path: str) -> None:
    client.log_artifacts(run_id, str(src), artifact_path)


@pytest.fixture
def input_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "input-cache"))
    return tmp_path / "input-cache"


def test_a_local_store_is_read_by_reference(tracking_uri, tiny_prepared, input_cache):
    client = MlflowClient()
    run = client.create_run(client.create_experiment("inputs"))
    log_dir(client, run.info.run_id, tiny_prepared, "processed")
    path = resolve_input(f"runs:/{run.info.run_id}/processed", "prepared")
    stored = Path(run.info.artifact_uri.removeprefix("file://")) / "processed"
    assert path == stored  # the store's own copy: nothing downloaded, nothing cached
    assert not input_cache.exists()
    with pytest.raises(FileNotFoundError, match=r"parameter 'prepared': .* does not exist"):
        resolve_input(f"runs:/{run.info.run_id}/no-such-dir", "prepared")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tracking_server(tmp_path, monkeypatch, new_store):
    """A real `mlflow server` whose artifacts live behind its HTTP proxy (not a file path for clients)."""
    port = free_port()
    served = tmp_path / "server-artifacts"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # its own session: the teardown ends the server and its uvicorn worker at once (SIGKILL to the group)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
         new_store(tmp_path / "server.db"), "--artifacts-destination", str(served),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if proc.poll() is not None or time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                raise AssertionError(f"mlflow server did not start:\n{proc.stdout.read()[-3000:]}")
            time.sleep(0.5)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(url)
    try:
        yield url, served
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run("FAILED")
        # nothing of this server is checked after the test: no graceful shutdown to wait for
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


def test_later_stages_reuse_one_download_from_a_tracking_server(tracking_server, tiny_prepared, input_cache, tmp_path):
    url, served = tracking_server
    client = MlflowClient()
    run = client.create_run(client.create_experiment("upstream"))
    log_dir(client, run.info.run_id, tiny_prepared, "processed")
    client.set_terminated(run.info.run_id)
    prepared = f"runs:/{run.info.run_id}/processed"

    audit = run_audit(AuditConfig(prepared=prepared, n_items=20, output_dir=str(tmp_path / "audit")))
    cached = cache_dir() / "runs" / run.info.run_id / "processed"
    assert (cached / "manifest.json").is_file() and resolve_input(prepared, "prepared") == cached
    shutil.rmtree(served)  # the server has lost the artifact: only a cached copy can serve the next stage
    groups = run_groups(GroupsConfig(prepared=prepared, output_dir=str(tmp_path / "groups")))
    assert MlflowClient().get_run(groups["run_id"]).info.status == "FINISHED"
    assert audit["rows"] > 0
    assert not [p for p in cached.parent.iterdir() if p.name.endswith(".partial")]  # no half download left

    with pytest.raises(ValueError, match=rf"parameter 'prepared': cannot fetch runs:/{run.info.run_id}/other"):
        resolve_input(f"runs:/{run.info.run_id}/other", "prepared")  # a path not cached is really downloaded
    assert clean_cache() == input_cache.resolve() and not input_cache.exists()
