"""The on-disk feature cache: its layout, its state, and the lock that keeps it whole.

One cache is `<cache_dir>/<dataset_fp[:16]>-<backbone_fp[:16]>/`:

    manifest.json        fingerprints, model spec, n, dim, dtype, shard_size, created, complete,
                         and `files`: the sha256 and size of each consolidated array
    item_ids.json        item ids in dataset row order (written before the manifest)
    text_00000.npy ...   shards of `shard_size` rows, each written atomically while extracting
    image_00000.npy ...
    text.npy image.npy   [n, dim] float32 L2-normalised: when every shard exists, each kind's
                         shards are consolidated into one array, then removed

`<cache_dir>/.<cache name>.lock` is held by whoever fills the cache, so a second
extraction of the same (dataset, backbone) waits and then finds it complete, instead of
racing the first one's consolidation. Every array is checked before it is trusted:
a shard of the wrong size or an unreadable one is computed again, a consolidated array
whose size or sha256 disagrees with the manifest is named by path and rebuilt (or, from
`load_features`, which never runs a backbone, reported with what to do).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from protocol.io import atomic_path, read_json, write_json
from protocol.model.backbone import Backbone, check_fingerprint

log = logging.getLogger(__name__)

CACHE_FORMAT = "protocol-feature-cache/2"  # /2 adds `files` (sha256 of the consolidated arrays)
DTYPE = "float32"
KINDS = ("text", "image")
LOCK_REPORT_EVERY_S = 60.0  # how often a waiting extraction says it is still waiting
HASH_CHUNK_BYTES = 16 << 20


class DamagedCacheError(ValueError):
    """A cache file that cannot be trusted; `path` names it."""

    def __init__(self, path: Path, reason: str, advice: str):
        self.path = path
        super().__init__(f"feature cache file {path} is damaged ({reason}): {advice}")


def cache_path(cache_dir: str | Path, dataset_fingerprint: str, backbone_fingerprint: str) -> Path:
    return Path(cache_dir) / f"{dataset_fingerprint[:16]}-{backbone_fingerprint[:16]}"


def lock_path(root: Path) -> Path:
    return root.parent / f".{root.name}.lock"


@contextmanager
def cache_lock(root: Path) -> Iterator[None]:
    """Hold the cache's lock; a process that finds it taken logs that it waits, and waits."""
    root.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path(root))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        started = time.monotonic()
        log.info("features: another process is filling %s; waiting for it to finish (lock %s)",
                 root, lock.lock_file)
        while True:
            try:
                lock.acquire(timeout=LOCK_REPORT_EVERY_S)
                break
            except Timeout:
                log.info("features: still waiting for %s after %.0fs", lock.lock_file, time.monotonic() - started)
        log.info("features: lock on %s acquired after waiting %.1fs", root, time.monotonic() - started)
    try:
        yield
    finally:
        lock.release()


# --- manifest -----------------------------------------------------------------------


def open_cache(root: Path, dataset_fp: str, backbone: Backbone, item_ids: list[str], shard_size: int) -> dict:
    """The cache's manifest, after checking it matches; a fresh one when there is none."""
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        manifest = read_json(manifest_path)
        check_manifest_fingerprints(root, manifest, dataset_fp, backbone.fingerprint)
        if read_json(root / "item_ids.json") != item_ids:
            raise ValueError(
                f"feature cache {root} was made for dataset fingerprint {dataset_fp} but with other item ids "
                "or another row order: the dataset fingerprint passed in is stale. Recompute it (prepare), "
                "or delete this cache directory to rebuild it"
            )
        if manifest["shard_size"] != shard_size and not manifest["complete"]:
            log.info("resuming %s with its shard_size %d (asked: %d)", root, manifest["shard_size"], shard_size)
        return manifest
    manifest = {
        "format": CACHE_FORMAT,
        "dataset_fingerprint": dataset_fp,
        "backbone_fingerprint": backbone.fingerprint,
        "backbone_source": backbone.source,
        "backbone_runtime": backbone.runtime,  # how the forward ran (provenance only; not in the fingerprint)
        "model_spec": backbone.spec.to_dict(),
        "n": len(item_ids),
        "dim": backbone.embed_dim,
        "dtype": DTYPE,
        "shard_size": shard_size,
        "created": _now(),
        "complete": False,
        "files": {},
    }
    write_json(root / "item_ids.json", item_ids)  # before the manifest: a manifest implies item_ids.json
    write_json(manifest_path, manifest)
    return manifest


def check_manifest_fingerprints(root: Path, manifest: dict, dataset_fp: str, backbone_fp: str) -> None:
    check_fingerprint(dataset_fp, manifest["dataset_fingerprint"], f"feature cache {root} (dataset fingerprint)")
    check_fingerprint(backbone_fp, manifest["backbone_fingerprint"], f"feature cache {root} (backbone fingerprint)")


def write_manifest(root: Path, manifest: dict) -> dict:
    write_json(root / "manifest.json", manifest)
    return manifest


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


# --- shards -------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    index: int
    rows: range

    def path(self, root: Path, kind: str) -> Path:
        return root / f"{kind}_{self.index:05d}.npy"


def shards_of(n: int, shard_size: int) -> list[Shard]:
    return [Shard(i, range(start, min(start + shard_size, n))) for i, start in enumerate(range(0, n, shard_size))]


def shard_done(root: Path, kind: str, shard: Shard, dim: int) -> bool:
    """A finished, readable shard of the right shape; anything else is computed again."""
    path = shard.path(root, kind)
    if not path.exists():
        return False
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        log.warning("shard %s is unreadable (%s): computing it again", path, e)
        return False
    if array.shape != (len(shard.rows), dim) or array.dtype != np.float32:
        log.warning("shard %s is %s %s, expected (%d, %d) float32: computing it again",
                    path, array.shape, array.dtype, len(shard.rows), dim)
        return False
    return True


def save_array(path: Path, array: np.ndarray) -> dict:
    """Write a float32 .npy atomically; returns its {"sha256", "bytes"} as written to disk."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array, dtype=np.float32))
        record = file_record(tmp)
    return record


def file_record(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}


class ShardWriter:
    """Collects embedded rows (in any order) and writes each shard as soon as all its rows are in.

    Parts stay on the device they were computed on until their shard is full, so a GPU
    engine copies to the host once per shard, not once per batch.
    """

    def __init__(self, root: Path, kind: str, shards: list[Shard], shard_size: int, desc: str):
        self.root, self.kind, self.shard_size = root, kind, shard_size
        self.shards = {s.index: s for s in shards}
        self.parts: dict[int, list[tuple[np.ndarray, torch.Tensor | np.ndarray]]] = {}
        self.filled: dict[int, int] = {}
        self.bar = tqdm(total=sum(len(s.rows) for s in shards), unit="item", desc=desc, dynamic_ncols=True)

    def add(self, rows: np.ndarray, features: torch.Tensor | np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        indices = rows // self.shard_size
        for index in np.unique(indices).tolist():
            mine = indices == index
            if index not in self.shards:
                raise RuntimeError(f"row(s) {rows[mine][:5].tolist()} belong to no pending {self.kind} shard")
            if mine.all():  # the local engine's batches never straddle a shard: no indexing, no device sync
                part = features
            else:
                part = features[torch.from_numpy(mine).to(features.device)] if isinstance(features, torch.Tensor) \
                    else features[mine]
            self.parts.setdefault(index, []).append((rows[mine], part))
            self.filled[index] = self.filled.get(index, 0) + int(mine.sum())
            if self.filled[index] == len(self.shards[index].rows):
                self._write(self.shards.pop(index))
        self.bar.update(len(rows))

    def _write(self, shard: Shard) -> None:
        parts = self.parts.pop(shard.index)
        rows = np.concatenate([r for r, _ in parts])
        arrays = [f.cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f) for _, f in parts]
        block = np.empty((len(shard.rows), arrays[0].shape[1]), dtype=np.float32)
        block[rows - shard.rows.start] = np.concatenate(arrays)
        if sorted(rows.tolist()) != list(shard.rows):
            raise RuntimeError(f"{self.kind} shard {shard.index} got rows other than {shard.rows}")
        save_array(shard.path(self.root, self.kind), block)

    def close(self) -> None:
        self.bar.close()
        if self.shards:
            raise RuntimeError(f"{self.kind} shard(s) {sorted(self.shards)[:5]} were never completed: the engine "
                               "returned fewer rows than it was given")


# --- consolidated arrays ------------------------------------------------------------


def consolidated_path(root: Path, kind: str) -> Path:
    return root / f"{kind}.npy"


def check_consolidated(root: Path, kind: str, manifest: dict, advice: str) -> None:
    """Raise DamagedCacheError unless `<kind>.npy` is the very file the manifest recorded."""
    path = consolidated_path(root, kind)
    if not path.exists():
        raise DamagedCacheError(path, "missing", advice)
    record = manifest.get("files", {}).get(path.name)
    if record is None and manifest.get("format") != "protocol-feature-cache/1":
        raise DamagedCacheError(path, "not recorded in manifest.json (an interrupted consolidation)", advice)
    if record is not None:
        size = path.stat().st_size
        if size != record["bytes"]:
            raise DamagedCacheError(path, f"{size} bytes, manifest.json recorded {record['bytes']}: truncated?",
                                    advice)
        if file_record(path)["sha256"] != record["sha256"]:
            raise DamagedCacheError(path, "its sha256 differs from the one manifest.json recorded", advice)


def load_consolidated(root: Path, kind: str, manifest: dict, advice: str) -> np.ndarray:
    check_consolidated(root, kind, manifest, advice)
    path = consolidated_path(root, kind)
    try:
        array = np.load(path)
    except (ValueError, OSError, EOFError) as e:
        raise DamagedCacheError(path, f"not a readable .npy file: {e}", advice) from e
    expected = (manifest["n"], manifest["dim"])
    if array.shape != expected or array.dtype != np.float32:
        raise DamagedCacheError(path, f"{array.shape} {array.dtype}, manifest.json says {expected} {DTYPE}", advice)
    return array


def consolidate(root: Path, kind: str, shards: list[Shard], manifest: dict) -> dict:
    """All shards of `kind` -> `<kind>.npy`, recorded in the manifest; then the shards go.

    Order matters for a kill at any point: the array is written (atomically) before the
    manifest records it, and the shards are removed only after that, so a rerun either
    consolidates again from intact shards or finds the recorded array.
    """
    log.info("features: consolidating %d %s shard(s) in %s", len(shards), kind, root)
    path = consolidated_path(root, kind)
    record = save_array(path, np.concatenate([np.load(s.path(root, kind)) for s in shards]))
    manifest = write_manifest(root, {**manifest, "files": {**manifest.get("files", {}), path.name: record}})
    remove_shards(root, kind)
    return manifest


def remove_shards(root: Path, kind: str) -> None:
    for shard_file in root.glob(f"{kind}_*.npy"):
        shard_file.unlink(missing_ok=True)


def forget_consolidated(root: Path, kind: str, manifest: dict) -> dict:
    """Drop a damaged `<kind>.npy` so that the kind is computed again."""
    consolidated_path(root, kind).unlink(missing_ok=True)
    files = {k: v for k, v in manifest.get("files", {}).items() if k != f"{kind}.npy"}
    return write_manifest(root, {**manifest, "complete": False, "files": files})


def finish(root: Path, manifest: dict, timings: dict) -> dict:
    """Mark the cache complete and remove what a killed run may have left (temp dirs, shards)."""
    manifest = write_manifest(root, {**manifest, "complete": True, "completed": _now(), "last_run": timings})
    for kind in KINDS:
        remove_shards(root, kind)
    for stale in root.glob(".*.tmp"):  # temp dirs of a run that was killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    return manifest
