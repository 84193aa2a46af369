"""One real `mlflow run . -e pipeline` on tiny data per session; end-to-end tests read its store.

That one run proves the MLproject wiring (parameters, launch.sh, the run `mlflow run` opens).
A test whose behaviour is a stage's, not a process's, runs the entry point's main() in this
process instead (`run_in_process`), on a real sqlite store: the same parsing and the same
stage, without a process start (the mlflow CLI, then torch and the project imported again).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import mlflow
import pytest

from entrypoints.cli import main
from protocol.tracking.artifact_cache import CACHE_ENV
from protocol.tracking.store import artifact_root, prepare_store

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


def run_in_process(config_cls: type, run: Callable[[Any], Any], params: dict[str, str], env: dict,
                   monkeypatch: pytest.MonkeyPatch) -> Any:
    """What `mlflow run . -e <entry> -P k=v ...` runs, in this process: main(config_cls, run) with the same
    values, on the store and input cache of `env` (see pipeline_env). monkeypatch restores the environment."""
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):  # no run of `mlflow run` to resume: the stage opens one
        monkeypatch.delenv(var, raising=False)
    for var in ("MLFLOW_TRACKING_URI", CACHE_ENV):
        monkeypatch.setenv(var, env[var])
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        return main(config_cls, run, [x for k, v in params.items() for x in (f"--{k}", str(v))])
    finally:
        while mlflow.active_run() is not None:  # a failed stage leaves no run open for the next test
            mlflow.end_run("FAILED")


def pipeline_env(uri: str, cache_dir: Path | None = None) -> dict:
    """A pipeline's environment on store `uri`; its input cache beside a sqlite store, else in `cache_dir`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = uri
    if cache_dir is None:
        assert uri.startswith("sqlite:///"), f"{uri}: give the input cache a folder of its own"
        cache_dir = Path(uri[len("sqlite:///"):]).parent / "input-cache"
    env[CACHE_ENV] = str(cache_dir)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


# The columns where a sqlite store records absolute artifact locations.
ARTIFACT_COLUMNS = {"experiments": ("artifact_location",), "runs": ("artifact_uri",),
                    "logged_models": ("artifact_location",), "model_versions": ("source", "storage_location")}


def copy_store(src_db: Path, dst_dir: Path) -> str:
    """An independent copy of a sqlite store: its database and its artifacts, relocated.

    A plain copy of the database would still point at the original's artifact folder, so
    two stores would share it (and our runs refuse that): the artifacts are copied too and
    every recorded location is rewritten to the copy's artifact root.
    """
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst_db = dst_dir / "mlflow.db"
    shutil.copy(src_db, dst_db)
    old_root, new_root = artifact_root(src_db), artifact_root(dst_db)
    if old_root.is_dir():
        shutil.copytree(old_root, new_root, symlinks=True)
    with sqlite3.connect(dst_db) as db:
        for old, new in ((old_root.as_uri(), new_root.as_uri()), (str(old_root), str(new_root))):
            for table, columns in ARTIFACT_COLUMNS.items():
                for column in columns:
                    db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new))
    return f"sqlite:///{dst_db}"


@pytest.fixture(scope="session")
def pipeline_store(tmp_path_factory, migrated_store) -> PipelineStore:
    d = tmp_path_factory.mktemp("pipeline")
    uri = copy_store(migrated_store, d)
    prepare_store(uri)  # the experiment, with its artifacts beside the store, before `mlflow run` meets it
    env = pipeline_env(uri)
    work = d / "outputs"
    proc = mlflow_run("pipeline", TINY_PIPELINE_PARAMS | {"work_dir": str(work)}, env)
    return PipelineStore(uri=uri, work_dir=work, stdout=proc.stdout + proc.stderr, env=env)
