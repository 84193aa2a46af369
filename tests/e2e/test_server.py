"""The team server (`scripts/server.sh`, `make server`): MLflow on PostgreSQL with proxied artifacts.

Two pipelines against it at once; every run, registered version, alias and artifact of each
must be in the server's store. Each of them is a whole pipeline on a fresh server, so a lone
pipeline first would prove nothing more (and cost the suite a pipeline).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from protocol.tracking import registry
from protocol.tracking.runs import EXPERIMENT_NAME
from protocol.tracking.store import prepare_store
from tests.e2e.conftest import ROOT, TINY_PIPELINE_PARAMS, pipeline_env

pytestmark = pytest.mark.e2e
SERVER = ROOT / "scripts" / "server.sh"
STAGES = ["prepare", "baseline", "audit", "groups", "mine", "pairs", "train", "evaluate", "scoreboard"]
PARAMS = TINY_PIPELINE_PARAMS | {"epochs": "1"}
# Where each stage's main outputs land, as artifact paths (relative to the run's artifact root).
ARTIFACTS = {"prepare": "processed/manifest.json", "baseline": "catalog/manifest.json", "mine": "hard_negatives.parquet",
             "train": "checkpoints/best.pt", "evaluate": "report/report.md", "scoreboard": "scoreboard.json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TeamServer:
    uri: str
    directory: Path
    env: dict


@pytest.fixture(scope="module")
def team_server():
    # As root, PostgreSQL runs as the postgres user, which cannot enter pytest's private
    # (0700) temp root: the server's folder is a temp folder of its own, searchable by others.
    directory = Path(tempfile.mkdtemp(prefix="protocol-server-"))
    directory.chmod(0o711)
    port = free_port()
    env = dict(os.environ, SERVER_DIR=str(directory), MLFLOW_PORT=str(port), PG_PORT=str(free_port()),
               MLFLOW=str(Path(sys.executable).parent / "mlflow"))
    try:
        started = subprocess.run([str(SERVER), "start"], env=env, capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, f"server start failed:\n{started.stdout}\n{started.stderr}"
        assert f"ready at http://127.0.0.1:{port}" in started.stdout
        yield TeamServer(f"http://127.0.0.1:{port}", directory, env)
    finally:
        stopped = subprocess.run([str(SERVER), "stop"], env=env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(directory, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert "mlflow server stopped" in stopped.stdout and "PostgreSQL stopped" in stopped.stdout


def start_pipeline(server: TeamServer, work_dir: Path, log: Path, threads: int | None = None, **params):
    env = pipeline_env(server.uri, cache_dir=work_dir.parent / f"{work_dir.name}-input-cache")
    if threads:  # two pipelines on 2 cores: one torch thread each, or their threads fight for the cores
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "-e", "pipeline", "--env-manager", "local",
           "--experiment-name", EXPERIMENT_NAME]
    for key, value in (PARAMS | {"work_dir": str(work_dir)} | params).items():
        cmd += ["-P", f"{key}={value}"]
    out = open(log, "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT), out


def finish(proc, out, log: Path) -> str:
    try:
        code = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
    assert code == 0, f"pipeline failed ({code}):\n{log.read_text()[-6000:]}"
    return log.read_text()


def check_pipeline(client: MlflowClient, parent_id: str, server: TeamServer) -> dict[str, str]:
    """Every child run, artifact and registered version of one pipeline run; returns stage -> run id."""
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    steps = {stage: parent.data.tags[f"step.{stage}.run_id"] for stage in STAGES}
    for stage, run_id in steps.items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED", stage
        assert run.data.tags["mlflow.parentRunId"] == parent_id, stage
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri  # proxied
        if stage in ARTIFACTS:
            folder, _, name = ARTIFACTS[stage].rpartition("/")
            assert ARTIFACTS[stage] in {a.path for a in client.list_artifacts(run_id, folder or None)}, stage
            # ... and stored where the server keeps artifacts
            assert list(server.directory.joinpath("artifacts").rglob(f"{run_id}/artifacts/{ARTIFACTS[stage]}")), stage
    baseline_v, candidate_v = registry.version_for_run(steps["baseline"]), registry.version_for_run(steps["train"])
    assert candidate_v.tags[registry.EVALUATION_RUN_TAG] == steps["evaluate"]
    assert candidate_v.tags["scoreboard.verdict"] in ("pass", "fail")
    board = client.get_run(steps["scoreboard"]).data.tags  # each pipeline judged its own two versions
    assert (board["baseline.version"], board["candidate.version"]) == (baseline_v.version, candidate_v.version)
    assert Path(mlflow.artifacts.download_artifacts(f"runs:/{steps['scoreboard']}/scoreboard.txt")).read_text()
    return steps


def test_pipelines_on_the_team_server_keep_every_run_alias_and_artifact(team_server, tmp_path):
    mlflow.set_tracking_uri(team_server.uri)
    client = MlflowClient(team_server.uri)
    # The experiment first, as `python -m protocol.tracking.store` makes it: two `mlflow run`s that both
    # find it missing would both create it (MLflow's get-or-create is not atomic).
    experiment = prepare_store(team_server.uri).experiment_id
    assert client.get_experiment(experiment).artifact_location.startswith("mlflow-artifacts:/")  # proxied

    # Two at once: the job with every step forced, and the job on another backbone.
    names = {"forced": {"force": "true"}, "other": {"backbone_seed": "1"}}
    both = [start_pipeline(team_server, tmp_path / name, tmp_path / f"{name}.log", threads=1, **extra)
            for name, extra in names.items()]
    for (proc, out), name in zip(both, names):
        finish(proc, out, tmp_path / f"{name}.log")

    parents = client.search_runs([experiment], "tags.stage = 'pipeline'", order_by=["attributes.start_time ASC"])
    assert len(parents) == 2
    steps = [check_pipeline(client, parent.info.run_id, team_server) for parent in parents]
    # each pipeline has its own work_dir, so no step is reused from the other: two full sets of runs
    assert len({run_id for s in steps for run_id in s.values()}) == 2 * len(STAGES)
    assert len(client.search_runs([experiment], max_results=1000)) == 2 * (1 + len(STAGES))  # none lost, none doubled
    versions = client.search_model_versions(f"name = '{registry.REGISTERED_MODEL}'")
    assert len(versions) == 4  # a baseline and a candidate per pipeline
    assert {v.version for v in versions} == {registry.version_for_run(s[stage]).version
                                             for s in steps for stage in ("baseline", "train")}
    aliases = registry.aliases()
    assert aliases["baseline"] in {registry.version_for_run(s["baseline"]).version for s in steps}
    assert aliases["candidate"] in {registry.version_for_run(s["train"]).version for s in steps}
    if "champion" in aliases:
        assert aliases["champion"] in {v.version for v in versions if v.tags.get("scoreboard.verdict") == "pass"}
