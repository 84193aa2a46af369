"""Skip a pipeline step whose parameters, upstream runs and code are unchanged.

Unlike MLflow's `multistep_workflow` example (which compares parameters as strings,
reuses the oldest match and ignores upstream changes), the cache key here hashes
the step's full config (whose inputs are the upstream runs' artifact URIs, so an
upstream re-run changes every key below it) and a hash of the project's code, and
the newest FINISHED run with that key is reused.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from mlflow.tracking import MlflowClient

from protocol.tracking.runs import PROJECT_ROOT, config_params

CACHE_KEY_TAG = "pipeline.cache_key"
CODE_DIRS = ("protocol", "entrypoints")
CODE_SUFFIXES = {".py", ".yaml", ".yml", ".json"}


def code_version(root: Path = PROJECT_ROOT) -> str:
    """sha256 of the project's source files: catches uncommitted edits that a git commit id would miss."""
    digest = hashlib.sha256()
    for d in CODE_DIRS:
        for path in sorted((root / d).rglob("*")):
            if path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def git_commit(root: Path = PROJECT_ROOT) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cache_key(stage: str, cfg, code: str) -> str:
    payload = json.dumps({"stage": stage, "params": config_params(cfg), "code": code}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def find_cached_run(experiment_id: str, key: str) -> str | None:
    """The newest finished run of this experiment carrying `key`, or None."""
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{CACHE_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def mark_cached(run_id: str, key: str) -> None:
    """Tag a step run only after it finished, so a failed run is never reused."""
    MlflowClient().set_tag(run_id, CACHE_KEY_TAG, key)
