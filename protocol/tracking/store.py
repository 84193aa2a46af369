"""The tracking store: created and migrated once, under a lock, with its artifacts beside it.

Two processes that open a fresh sqlite store at once race in MLflow's schema migration
(`table latest_metrics already exists`, `duplicate column name: step`), and the first to
create an experiment would give it MLflow's default artifact root, `./mlruns` of whatever
directory it ran in. `prepare_store` takes a file lock beside the sqlite file
(`<db>.lock`) and, under it, creates or migrates the schema and creates the experiment
with its artifacts in the store's own artifact root (`artifact_root`), before any run
starts. `make setup` runs it for the project's store, so `mlflow run` on the project
never meets a fresh store.

    python -m protocol.tracking.store            # prepare the store MLFLOW_TRACKING_URI names (or the project's)
    python -m protocol.tracking.store clean      # delete the PROJECT's store and exactly the artifacts it owns

A tracking server (`http://...`) decides about its own schema and artifacts; nothing here
touches it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT_NAME = "fashion-retrieval"
SQLITE_PREFIX = "sqlite:///"
DEFAULT_DB_NAME = "mlflow.db"
LOCK_TIMEOUT_ENV = "PROTOCOL_STORE_LOCK_TIMEOUT"
LOCK_TIMEOUT_S = 600.0  # a migration of a large store can take minutes; a stuck holder should not hang forever


class StoreBusyError(RuntimeError):
    """Another process held the store's lock for longer than the timeout."""


@contextmanager
def store_lock(db: Path) -> Iterator[None]:
    """The file lock beside a sqlite store (`<db>.lock`); released when its holder exits, even on a crash."""
    lock = str(db) + ".lock"
    timeout = float(os.environ.get(LOCK_TIMEOUT_ENV) or LOCK_TIMEOUT_S)
    file_lock = FileLock(lock, timeout=timeout)
    try:
        file_lock.acquire()
    except Timeout:
        raise StoreBusyError(
            f"the tracking store {db} is being created or migrated by another process, which has held {lock} "
            f"for more than {timeout:g}s; wait for it to finish (or raise ${LOCK_TIMEOUT_ENV})") from None
    try:
        yield
    finally:
        file_lock.release()


def project_store_uri() -> str:
    return f"{SQLITE_PREFIX}{PROJECT_ROOT / DEFAULT_DB_NAME}"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else `sqlite:///<project root>/mlflow.db`; always absolute."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or project_store_uri()
    if uri.startswith(SQLITE_PREFIX) and not uri.startswith(SQLITE_PREFIX + "/"):
        uri = f"{SQLITE_PREFIX}{Path(uri[len(SQLITE_PREFIX):]).resolve()}"
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        raise ValueError(
            f"MLFLOW_TRACKING_URI={uri!r} points at the file store, which MLflow 3 has deprecated; "
            "use a sqlite URI (sqlite:////abs/path/mlflow.db) or a tracking server (http://...)"
        )
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI, None for any other store."""
    return Path(uri[len(SQLITE_PREFIX):]) if uri.startswith(SQLITE_PREFIX) else None


def artifact_root(db: Path) -> Path:
    """Where a sqlite store keeps its artifacts: `mlruns/` beside `mlflow.db` (MLflow's own
    default, so a store that `mlflow run` created in the project agrees), `<name>-mlruns/`
    beside any other `<name>.db`, so two stores in one folder never share one."""
    return db.parent / ("mlruns" if db.name == DEFAULT_DB_NAME else f"{db.stem}-mlruns")


@dataclass(frozen=True)
class StoreInfo:
    uri: str
    artifact_root: Path | None  # None for a tracking server
    experiment_id: str | None  # the experiment asked for, None when none was


_prepared: set[tuple[str, str | None]] = set()


def prepare_store(uri: str | None = None, experiment: str | None = EXPERIMENT_NAME) -> StoreInfo:
    """Create or migrate the store and create `experiment` (artifacts beside the store), under a lock.

    Idempotent and cheap after the first call in a process. For a tracking server, only
    looks up (or creates) the experiment.
    """
    uri = uri or tracking_uri()
    db = sqlite_path(uri)
    if db is None:
        return StoreInfo(uri, None, _server_experiment(uri, experiment) if experiment else None)
    root = artifact_root(db)
    db.parent.mkdir(parents=True, exist_ok=True)
    with store_lock(db):
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = SqlAlchemyStore(uri, root.as_uri())  # creates or migrates the schema
        try:
            experiment_id = None
            if experiment:
                exp = store.get_experiment_by_name(experiment)
                # created by this store object, the experiment's artifacts go to <root>/<id>
                experiment_id = exp.experiment_id if exp is not None else store.create_experiment(experiment)
        finally:
            store.engine.dispose()
    if (uri, experiment) not in _prepared:
        log.info("tracking store %s ready (artifacts in %s)", uri, root)
        _prepared.add((uri, experiment))
    return StoreInfo(uri, root, experiment_id)


def _server_experiment(uri: str, name: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else client.create_experiment(name)


class ArtifactsNotBesideStoreError(RuntimeError):
    """A run of a sqlite store would write its artifacts outside the store's artifact root."""


def check_artifacts_beside_store(artifact_uri: str, experiment: str, uri: str | None = None) -> None:
    """Refuse a run whose artifacts would land outside its sqlite store's artifact root.

    That happens when `mlflow run` met a fresh store and created the experiment itself, with
    MLflow's default `./mlruns` of the directory it ran in: two stores would then share one
    artifact folder, and cleaning one would delete the other's artifacts.
    """
    uri = uri or tracking_uri()
    db = sqlite_path(uri)
    if db is None or urlparse(artifact_uri).scheme not in ("", "file"):
        return
    root = artifact_root(db).resolve()
    where = Path(urlparse(artifact_uri).path).resolve()
    if not where.is_relative_to(root):
        raise ArtifactsNotBesideStoreError(
            f"experiment {experiment!r} of the tracking store {uri} keeps its artifacts in {where}, "
            f"not beside the store in {root}: `mlflow run` created the experiment on a fresh store. "
            f"Prepare a new store before its first run with `python -m protocol.tracking.store` "
            f"(make setup does it for the project's store), or use another experiment name."
        )


def owned_artifact_dirs(uri: str) -> list[Path]:
    """The artifact folders that the runs and logged models of a sqlite store point to, inside its root."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    db = sqlite_path(uri)
    if db is None:
        raise ValueError(f"{uri} is not a sqlite store: a tracking server manages its own artifacts")
    root = artifact_root(db).resolve()
    client = MlflowClient(uri)
    # runs and models, not experiments: another store's experiment may share a folder with ours
    ids = [e.experiment_id for e in _every_page(client.search_experiments, view_type=ViewType.ALL)]
    locations = []
    if ids:
        locations += [r.info.artifact_uri for r in _every_page(client.search_runs, ids, run_view_type=ViewType.ALL)]
        locations += [m.artifact_location for m in _every_page(client.search_logged_models, ids)]
    owned = []
    for location in locations:
        if urlparse(location).scheme not in ("", "file"):
            continue
        path = Path(urlparse(location).path).resolve()
        if path.is_relative_to(root) and path != root:
            owned.append(path)
    return owned


def _every_page(search, *args, **kwargs) -> list:
    items, token = [], None
    while True:
        page = search(*args, page_token=token, **kwargs)
        items.extend(page)
        token = page.token
        if not token:
            return items


def clean_store(uri: str) -> list[Path]:
    """Delete a sqlite store and exactly the artifact folders it owns (never another store's).

    Returns what was deleted. Folders left empty under the store's artifact root go too.
    """
    db = sqlite_path(uri)
    if db is None or not db.exists():
        return []
    with store_lock(db):
        owned = owned_artifact_dirs(uri)
        for path in owned:
            shutil.rmtree(path, ignore_errors=True)
        db.unlink()
        root = artifact_root(db)
        for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
    Path(str(db) + ".lock").unlink(missing_ok=True)
    return [db, *owned]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m protocol.tracking.store", allow_abbrev=False,
        description="prepare: create or migrate the store MLFLOW_TRACKING_URI names (else the project's "
                    "mlflow.db) and its experiment. clean: delete the project's own mlflow.db and the "
                    "artifacts its runs and models own (never MLFLOW_TRACKING_URI's store, never another "
                    "store's artifacts).")
    parser.add_argument("action", nargs="?", choices=("prepare", "clean"), default="prepare")
    parser.add_argument("--experiment", default=EXPERIMENT_NAME, help="experiment to create (prepare)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.action == "prepare":
        info = prepare_store(tracking_uri(), args.experiment)
        print(f"tracking store {info.uri}: experiment {args.experiment!r} (id {info.experiment_id}), "
              f"artifacts in {info.artifact_root or 'the server'}")
    else:
        uri = project_store_uri()
        deleted = clean_store(uri)
        print(f"deleted {len(deleted)} paths of {uri}" if deleted else f"nothing to delete: {uri} does not exist")
    return 0


if __name__ == "__main__":
    sys.exit(main())
