"""Backbone features of a dataset, computed once per (dataset, backbone) and cached.

`extract_features` computes what the cache lacks and returns every row's features;
`load_features` returns a complete cache and never calls a backbone. The cache's layout,
its lock and its checks live in `feature_cache.py`; the engines that fill it in
`extract_local.py` (DataLoader workers beside one model, the default) and
`extract_ray.py` (Ray Data actors across a cluster); what the model eats in
`feature_inputs.py`.

The local engine runs two phases, texts then images; the Ray engine sends both kinds to one
actor pool. Each shard is written atomically as soon as it is full; when all exist, each
kind's shards are consolidated into one array. A run that
dies keeps its finished shards; the next call, with either engine, computes only the
missing ones. Two processes on one cache take turns: the second waits for the cache's
lock, then finds it complete. `FeatureSet.n_computed` counts the rows for which the
backbone ran in this call, so later stages can prove they did not call it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import datasets
import numpy as np

from protocol.io import read_json
from protocol.model import feature_cache as fc
from protocol.model.backbone import Backbone, FingerprintMismatchError
from protocol.model.engines import ENGINES
from protocol.model.extract_local import default_num_workers, embed_shards_local
from protocol.model.feature_cache import DamagedCacheError, cache_path  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("item_id", "text", "image")
KINDS = fc.KINDS


@dataclass
class FeatureSet:
    item_ids: list[str]  # dataset row order
    image: np.ndarray  # [N, D] float32, L2-normalised
    text: np.ndarray  # [N, D] float32, L2-normalised
    dataset_fingerprint: str
    backbone_fingerprint: str
    n_computed: int  # items embedded by the backbone in THIS call (0 = fully cached)
    _row_of: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def rows(self, item_ids: Iterable[str]) -> np.ndarray:
        """Row indices of these item ids; KeyError names the ids that are not in the set."""
        if not self._row_of:
            self._row_of = {item_id: i for i, item_id in enumerate(self.item_ids)}
        ids = list(item_ids)
        missing = [i for i in ids if i not in self._row_of]
        if missing:
            raise KeyError(
                f"{len(missing)} item id(s) have no features, e.g. {missing[:5]}: they are not in the "
                f"dataset the cache was made from (dataset fingerprint {self.dataset_fingerprint[:16]})"
            )
        return np.fromiter((self._row_of[i] for i in ids), dtype=np.int64, count=len(ids))

    def take(self, item_ids: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """(image, text) rows for these item ids, in the order given."""
        rows = self.rows(item_ids)
        return self.image[rows], self.text[rows]


def extract_features(
    dataset: datasets.Dataset,
    dataset_fingerprint: str,
    backbone: Backbone,
    cache_dir: str | Path,
    batch_size: int = 32,
    num_workers: int | None = None,
    shard_size: int = 256,
    engine: str = "local",
) -> FeatureSet:
    """Features of every row of `dataset` (columns item_id, text, image), computing only
    what the cache lacks. Rows come back in dataset row order. `num_workers` (local
    engine): DataLoader workers, None = `extract_local.default_num_workers`."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if num_workers is None:
        num_workers = default_num_workers(backbone.device)
    if batch_size < 1 or shard_size < 1 or num_workers < 0:
        raise ValueError(f"need batch_size >= 1, shard_size >= 1, num_workers >= 0; got "
                         f"{batch_size}, {shard_size}, {num_workers}")
    item_ids = _validated_item_ids(dataset)
    root = cache_path(cache_dir, dataset_fingerprint, backbone.fingerprint)
    with fc.cache_lock(root):
        manifest = fc.open_cache(root, dataset_fingerprint, backbone, item_ids, shard_size)
        if manifest["complete"]:
            try:
                features = _load_complete(root, manifest, n_computed=0)
                log.info("features: all %d items cached in %s", len(item_ids), root)
                return features
            except DamagedCacheError:
                pass  # `_consolidated` below names the damaged file and has it computed again
        shards = fc.shards_of(len(item_ids), manifest["shard_size"])
        done = {kind: _consolidated(root, kind, manifest, shards) for kind in KINDS}
        for kind in KINDS:
            if not done[kind] and fc.consolidated_path(root, kind).name in manifest.get("files", {}):
                manifest = fc.forget_consolidated(root, kind, manifest)
        todo = {kind: [] if done[kind] else [s for s in shards if not fc.shard_done(root, kind, s, manifest["dim"])]
                for kind in KINDS}
        log.info("features: %d items, %d shards in %s; engine %s; to compute: %s", len(item_ids), len(shards),
                 root, engine, {kind: len(todo[kind]) for kind in KINDS})
        timings = _embed(dataset, todo, backbone, root, manifest["shard_size"], batch_size, num_workers, engine)
        for kind in KINDS:
            if not done[kind]:
                manifest = fc.consolidate(root, kind, shards, manifest)
        manifest = fc.finish(root, manifest, timings)
        n_computed = len({row for kind in KINDS for shard in todo[kind] for row in shard.rows})
        return _load_complete(root, manifest, n_computed=n_computed)


def load_features(cache_dir: str | Path, dataset_fingerprint: str, backbone_fingerprint: str) -> FeatureSet:
    """The complete cache for this (dataset, backbone); never calls a backbone."""
    root = cache_path(cache_dir, dataset_fingerprint, backbone_fingerprint)
    if not (root / "manifest.json").exists():
        _raise_missing_cache(Path(cache_dir), dataset_fingerprint, backbone_fingerprint)
    manifest = read_json(root / "manifest.json")
    fc.check_manifest_fingerprints(root, manifest, dataset_fingerprint, backbone_fingerprint)
    if not manifest.get("complete"):
        raise RuntimeError(
            f"feature cache {root} is incomplete (an extraction was interrupted or is running): run "
            "extract_features (the baseline stage) again; it resumes from the finished shards"
        )
    return _load_complete(root, manifest, n_computed=0)


def _consolidated(root: Path, kind: str, manifest: dict, shards: list[fc.Shard]) -> bool:
    """Whether `<kind>.npy` is there and intact. A damaged one is named and computed again."""
    path = fc.consolidated_path(root, kind)
    if not path.exists():
        return False
    try:
        fc.check_consolidated(root, kind, manifest, advice="computing it again")
    except DamagedCacheError as e:
        if path.name in manifest.get("files", {}) or not all(s.path(root, kind).exists() for s in shards):
            log.warning("%s", e)  # a consolidation that was cut short, with its shards intact, is not news
        return False
    return True


def _embed(dataset, todo, backbone, root, shard_size, batch_size, num_workers, engine) -> dict:
    """Compute the missing shards of every kind with `engine`; per kind {"items", "seconds", "engine"}."""
    pending = {kind: sum(len(s.rows) for s in todo[kind]) for kind in KINDS}
    if not any(pending.values()):
        return {kind: {"items": 0, "seconds": 0.0, "engine": engine} for kind in KINDS}
    if engine == "ray":
        from protocol.model.extract_ray import embed_ray  # Ray is an optional extra

        log.info("embedding %s on Ray, batch %d", pending, batch_size)
        timings = embed_ray(dataset, todo, backbone, root, shard_size, batch_size)
    else:
        timings = {}
        for kind in KINDS:  # texts first: they are cheap, so a bad text row fails before the long image phase
            if not todo[kind]:
                timings[kind] = {"items": 0, "seconds": 0.0}
                continue
            log.info("%s phase: embedding %d items in %d shard(s), batch %d, %d worker(s)", kind, pending[kind],
                     len(todo[kind]), batch_size, num_workers)
            started = time.perf_counter()
            embed_shards_local(dataset, kind, todo[kind], backbone, root, shard_size, batch_size, num_workers)
            timings[kind] = {"items": pending[kind], "seconds": round(time.perf_counter() - started, 3)}
    for kind, timing in timings.items():
        if timing["items"]:
            log.info("%s phase: %d items in %.1fs (%.1f items/s)", kind, timing["items"], timing["seconds"],
                     timing["items"] / max(timing["seconds"], 1e-9))
    return {kind: {**timing, "engine": engine} for kind, timing in timings.items()}


# --- dataset checks -----------------------------------------------------------------


def _validated_item_ids(dataset: datasets.Dataset) -> list[str]:
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"dataset lacks column(s) {missing} (has {dataset.column_names}): feature extraction needs "
            f"{list(REQUIRED_COLUMNS)}; build it with the prepare stage"
        )
    if not isinstance(dataset.features["image"], datasets.Image):
        raise ValueError(
            f"dataset column 'image' is {dataset.features['image']!r}, not datasets.Image: "
            "cast it with dataset.cast_column('image', datasets.Image())"
        )
    if len(dataset) == 0:
        raise ValueError("dataset has no rows: nothing to extract features from")
    item_ids = dataset.select_columns(["item_id"]).with_format("arrow")["item_id"].to_pylist()
    bad = [row for row, item_id in enumerate(item_ids) if not isinstance(item_id, str) or not item_id]
    if bad:
        raise ValueError(f"dataset column 'item_id' is empty or not a string at rows {bad[:10]}: fix them in prepare")
    first_row: dict[str, int] = {}
    duplicates = []  # (item_id, first row, repeated row)
    for row, item_id in enumerate(item_ids):
        if first_row.setdefault(item_id, row) != row:
            duplicates.append((item_id, first_row[item_id], row))
    if duplicates:
        shown = ", ".join(f"{i!r} (rows {a} and {b})" for i, a, b in duplicates[:5])
        raise ValueError(f"dataset column 'item_id' has {len(duplicates)} duplicate(s): {shown}; item ids must be unique")
    return item_ids


# --- cache lookups ------------------------------------------------------------------


def _load_complete(root: Path, manifest: dict, n_computed: int) -> FeatureSet:
    advice = ("run extract_features (the baseline stage) again, which recomputes it, or delete that file")
    item_ids = read_json(root / "item_ids.json")
    if len(item_ids) != manifest["n"]:
        raise DamagedCacheError(root / "item_ids.json", f"{len(item_ids)} ids, manifest.json says {manifest['n']}",
                                "delete the cache directory and run extract_features again")
    arrays = {kind: fc.load_consolidated(root, kind, manifest, advice) for kind in KINDS}
    return FeatureSet(
        item_ids=item_ids,
        image=arrays["image"],
        text=arrays["text"],
        dataset_fingerprint=manifest["dataset_fingerprint"],
        backbone_fingerprint=manifest["backbone_fingerprint"],
        n_computed=n_computed,
    )


def _raise_missing_cache(cache_dir: Path, dataset_fp: str, backbone_fp: str) -> None:
    """Name the caches of the same dataset or backbone, if any: the usual cause is the wrong one."""
    others = []
    for manifest_path in sorted(cache_dir.glob("*/manifest.json")):
        found = read_json(manifest_path)
        if found.get("dataset_fingerprint") == dataset_fp or found.get("backbone_fingerprint") == backbone_fp:
            others.append(f"{manifest_path.parent} (dataset {found.get('dataset_fingerprint')}, "
                          f"backbone {found.get('backbone_fingerprint')})")
    if others:
        raise FingerprintMismatchError(
            f"no feature cache under {cache_dir} for dataset {dataset_fp} and backbone {backbone_fp}; "
            f"found only: {'; '.join(others)}. Use the matching backbone/dataset, or run extract_features "
            "(the baseline stage) with this one"
        )
    raise FileNotFoundError(
        f"no feature cache under {cache_dir} for dataset {dataset_fp[:16]} and backbone {backbone_fp[:16]}: "
        "run extract_features (the baseline stage) first"
    )
