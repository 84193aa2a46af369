"""Stage inputs as local paths: by reference on a local store, else one cached download per artifact.

A stage names its inputs as local paths or MLflow URIs (`runs:/<run_id>/<path>`, as the
pipeline passes them). `resolve_input` turns either into a local path:

- a run whose artifacts live on this machine (a sqlite store, `file:` artifact location):
  the artifact's own path in the store, read by reference, never copied;
- otherwise (a tracking server, object storage): one download per (run id, artifact path)
  into the input cache, reused by every later stage and process. Downloads land in a temp
  folder and are renamed into place, under a lock, so a crash or a second process never
  sees half an artifact.

Inputs are read-only: a stage never writes into what `resolve_input` returns.

The cache lives in `$PROTOCOL_INPUT_CACHE`, else `<project>/.cache/inputs`:

    python -m protocol.tracking.artifact_cache clean     # delete it (make clean does too)
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock

from protocol.tracking.store import PROJECT_ROOT, tracking_uri

log = logging.getLogger(__name__)

CACHE_ENV = "PROTOCOL_INPUT_CACHE"
REMOTE_SCHEMES = ("runs", "models", "mlflow-artifacts", "dbfs", "s3", "gs", "wasbs", "http", "https")
LOCAL_SCHEMES = ("", "file")


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or PROJECT_ROOT / ".cache" / "inputs").resolve()


def resolve_input(path_or_uri: str | Path, what: str) -> Path:
    """A local path for a stage input given as a path or an MLflow URI; `what` names the parameter."""
    s = str(path_or_uri)
    if not s:
        raise ValueError(f"parameter {what!r} is empty: pass a local path or a runs:/<run_id>/<path> URI")
    scheme = urlparse(s).scheme
    if scheme in REMOTE_SCHEMES:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri())
        try:
            return _resolve_uri(s)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"parameter {what!r}: {e}") from e
        except Exception as e:  # noqa: BLE001 - rewrap with the parameter name
            raise ValueError(f"parameter {what!r}: cannot fetch {s} ({e})") from e
    path = Path(s[len("file://"):] if scheme == "file" else s)
    if not path.exists():
        raise FileNotFoundError(f"parameter {what!r}: {path} does not exist (run the stage that makes it first)")
    return path


def stable_reference(path_or_uri: str | Path) -> str:
    """What to record for an input so that it still names the same thing later: a URI as given,
    a local path made absolute with its links (`latest`) resolved."""
    s = str(path_or_uri)
    return s if urlparse(s).scheme in REMOTE_SCHEMES else str(Path(s).resolve())


def _resolve_uri(uri: str) -> Path:
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    scheme = urlparse(uri).scheme
    if scheme == "runs":
        run_id, artifact_path = RunsArtifactRepository.parse_runs_uri(uri)
        underlying = RunsArtifactRepository.get_underlying_uri(uri)
        key = Path("runs", run_id, artifact_path or "")
    elif scheme == "models":
        base, artifact_path = ModelsArtifactRepository.split_models_uri(uri)
        name, version, root = ModelsArtifactRepository._get_model_uri_infos(base)
        underlying = root.rstrip("/") + (f"/{artifact_path}" if artifact_path else "")
        # an alias moves; the version (or logged model id) it names today does not
        key = Path("models", *(("version", name, str(version)) if name else ("id", Path(root).name)),
                   artifact_path or "")
    else:
        underlying = uri
        key = Path("uri", hashlib.sha256(uri.encode()).hexdigest()[:24], Path(urlparse(uri).path).name)
    if urlparse(underlying).scheme in LOCAL_SCHEMES:
        from mlflow.utils.file_utils import local_file_uri_to_path

        local = Path(local_file_uri_to_path(underlying))
        if not local.exists():
            raise FileNotFoundError(f"{uri} names {local}, which does not exist: the run logged no such artifact")
        return local
    return _cached_download(uri, cache_dir() / key)


def _cached_download(uri: str, target: Path) -> Path:
    if target.exists():
        log.info("input %s: cached at %s", uri, target)
        return target
    import mlflow

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name or 'root'}.lock")):
        if target.exists():  # another process finished the download while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
        try:
            fetched = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp)))
            os.replace(fetched, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("input %s: downloaded once to %s", uri, target)
    return target


def clean_cache() -> Path:
    """Delete the input cache; returns where it was."""
    where = cache_dir()
    shutil.rmtree(where, ignore_errors=True)
    return where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protocol.tracking.artifact_cache", allow_abbrev=False,
                                     description=f"The stage input cache (${CACHE_ENV}, else <project>/.cache/inputs).")
    parser.add_argument("action", choices=("clean", "where"))
    args = parser.parse_args(argv)
    if args.action == "clean":
        print(f"deleted the input cache {clean_cache()}")
    else:
        print(cache_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
