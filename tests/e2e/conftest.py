"""One real `mlflow run . -e pipeline` on tiny data per session; end-to-end tests read its store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A tiny open_clip config and a small synthetic catalog keep the whole pipeline well under a minute.
TINY_PIPELINE_PARAMS = {
    "n_products": "120", "image_size": "64", "model": "protocol-tiny", "epochs": "3", "n_pairs": "3000",
    "num_workers": "0", "batch_size": "32",
}


@dataclass
class PipelineStore:
    uri: str
    work_dir: Path
    stdout: str
    env: dict

    def __str__(self) -> str:
        return self.uri


def mlflow_run(entry: str, params: dict[str, str], env: dict, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "mlflow"), "run", str(cwd), "-e", entry, "--env-manager", "local",
           "--experiment-name", "fashion-retrieval"]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"mlflow run -e {entry} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-8000:]}")
    return proc


def pipeline_env(uri: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = uri
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def pipeline_store(tmp_path_factory, migrated_store) -> PipelineStore:
    d = tmp_path_factory.mktemp("pipeline")
    shutil.copy(migrated_store, d / "mlflow.db")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    env = pipeline_env(uri)
    work = d / "outputs"
    proc = mlflow_run("pipeline", TINY_PIPELINE_PARAMS | {"work_dir": str(work)}, env)
    return PipelineStore(uri=uri, work_dir=work, stdout=proc.stdout + proc.stderr, env=env)
