"""Backbone features of a dataset, computed once per (dataset, backbone) and cached.

Layout of one cache, `<cache_dir>/<dataset_fp[:16]>-<backbone_fp[:16]>/`:

    manifest.json        fingerprints, model spec, n, dim, dtype, shard_size, created, complete
    item_ids.json        item ids in dataset row order (written before any shard)
    text_00000.npy ...   shards of `shard_size` rows, each written atomically while extracting
    image_00000.npy ...
    text.npy image.npy   [n, dim] float32 L2-normalised, written when every shard exists;
                         the shards are then removed

Extraction runs two phases, texts then images (texts are cheap, so a bad text row
fails before the long image phase). In each phase a DataLoader reads rows in batches
that never straddle a shard; its workers decode and preprocess images (or tokenise
texts) while the main process runs the model under `torch.inference_mode`. A run that
dies keeps its finished shards; the next call computes only the missing ones.
`FeatureSet.n_computed` counts the rows for which the backbone ran in this call, so
later stages can prove they did not call it. Two processes filling the same cache at
the same time are not supported.
"""

from __future__ import annotations

import io
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import datasets
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from protocol.io import atomic_path, read_json, write_json
from protocol.model.backbone import Backbone, FingerprintMismatchError, check_fingerprint

log = logging.getLogger(__name__)

CACHE_FORMAT = "protocol-feature-cache/1"
DTYPE = "float32"
KINDS = ("text", "image")  # extraction order
REQUIRED_COLUMNS = ("item_id", "text", "image")


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


def cache_path(cache_dir: str | Path, dataset_fingerprint: str, backbone_fingerprint: str) -> Path:
    return Path(cache_dir) / f"{dataset_fingerprint[:16]}-{backbone_fingerprint[:16]}"


def extract_features(
    dataset: datasets.Dataset,
    dataset_fingerprint: str,
    backbone: Backbone,
    cache_dir: str | Path,
    batch_size: int = 32,
    num_workers: int = 2,
    shard_size: int = 256,
) -> FeatureSet:
    """Features of every row of `dataset` (columns item_id, text, image), computing only
    what the cache lacks. Rows come back in dataset row order."""
    if batch_size < 1 or shard_size < 1 or num_workers < 0:
        raise ValueError(f"need batch_size >= 1, shard_size >= 1, num_workers >= 0; got "
                         f"{batch_size}, {shard_size}, {num_workers}")
    item_ids = _validated_item_ids(dataset)
    root = cache_path(cache_dir, dataset_fingerprint, backbone.fingerprint)
    manifest = _open_cache(root, dataset_fingerprint, backbone, item_ids, shard_size)
    if manifest["complete"]:
        log.info("features: all %d items cached in %s", len(item_ids), root)
        return _load_complete(root, manifest, n_computed=0)

    shards = _shards(len(item_ids), manifest["shard_size"])
    todo = {kind: [s for s in shards if not _shard_done(root, kind, s, manifest["dim"])] for kind in KINDS}
    missing = {shard for kind in KINDS for shard in todo[kind]}
    log.info(
        "features: %d items, %d shards in %s; to compute: %s",
        len(item_ids), len(shards), root, {kind: len(todo[kind]) for kind in KINDS},
    )
    timings = {}
    for kind in KINDS:
        timings[kind] = _embed_shards(dataset, kind, todo[kind], backbone, root, batch_size, num_workers)
    manifest = _consolidate(root, manifest, shards, timings)
    return _load_complete(root, manifest, n_computed=sum(len(shard.rows) for shard in missing))


def load_features(cache_dir: str | Path, dataset_fingerprint: str, backbone_fingerprint: str) -> FeatureSet:
    """The complete cache for this (dataset, backbone); never calls a backbone."""
    root = cache_path(cache_dir, dataset_fingerprint, backbone_fingerprint)
    if not (root / "manifest.json").exists():
        _raise_missing_cache(Path(cache_dir), dataset_fingerprint, backbone_fingerprint)
    manifest = read_json(root / "manifest.json")
    _check_manifest_fingerprints(root, manifest, dataset_fingerprint, backbone_fingerprint)
    if not manifest.get("complete"):
        raise RuntimeError(
            f"feature cache {root} is incomplete (an extraction was interrupted): run extract_features "
            "(the baseline stage) again; it resumes from the finished shards"
        )
    return _load_complete(root, manifest, n_computed=0)


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


# --- cache state --------------------------------------------------------------------


def _open_cache(root: Path, dataset_fp: str, backbone: Backbone, item_ids: list[str], shard_size: int) -> dict:
    """The cache's manifest, after checking it matches; a fresh one when there is none."""
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        manifest = read_json(manifest_path)
        _check_manifest_fingerprints(root, manifest, dataset_fp, backbone.fingerprint)
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
        "model_spec": backbone.spec.to_dict(),
        "n": len(item_ids),
        "dim": backbone.embed_dim,
        "dtype": DTYPE,
        "shard_size": shard_size,
        "created": datetime.now(timezone.utc).isoformat(),
        "complete": False,
    }
    write_json(root / "item_ids.json", item_ids)  # before the manifest: a manifest implies item_ids.json
    write_json(manifest_path, manifest)
    return manifest


def _check_manifest_fingerprints(root: Path, manifest: dict, dataset_fp: str, backbone_fp: str) -> None:
    check_fingerprint(dataset_fp, manifest["dataset_fingerprint"], f"feature cache {root} (dataset fingerprint)")
    check_fingerprint(backbone_fp, manifest["backbone_fingerprint"], f"feature cache {root} (backbone fingerprint)")


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


@dataclass(frozen=True)
class _Shard:
    index: int
    rows: range

    def path(self, root: Path, kind: str) -> Path:
        return root / f"{kind}_{self.index:05d}.npy"


def _shards(n: int, shard_size: int) -> list[_Shard]:
    return [_Shard(i, range(start, min(start + shard_size, n))) for i, start in enumerate(range(0, n, shard_size))]


def _shard_done(root: Path, kind: str, shard: _Shard, dim: int) -> bool:
    path = shard.path(root, kind)
    if not path.exists():
        return False
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        log.warning("shard %s is unreadable (%s): computing it again", path, e)
        return False
    if array.shape != (len(shard.rows), dim) or array.dtype != np.float32:
        log.warning("shard %s is %s %s, expected (%d, %d) float32: computing it again",
                    path, array.shape, array.dtype, len(shard.rows), dim)
        return False
    return True


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array, dtype=np.float32))


def _consolidate(root: Path, manifest: dict, shards: list[_Shard], timings: dict) -> dict:
    """Shards -> one array per kind, then mark the cache complete and drop the shards."""
    log.info("features: consolidating %d shards in %s", len(shards), root)
    for kind in KINDS:
        _save_npy(root / f"{kind}.npy", np.concatenate([np.load(s.path(root, kind)) for s in shards]))
    manifest = {**manifest, "complete": True, "completed": datetime.now(timezone.utc).isoformat(),
                "last_run": timings}
    write_json(root / "manifest.json", manifest)
    for kind in KINDS:
        for shard in shards:
            shard.path(root, kind).unlink(missing_ok=True)
    for stale in root.glob(".*.tmp"):  # temp dirs of a run that was killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    return manifest


def _load_complete(root: Path, manifest: dict, n_computed: int) -> FeatureSet:
    item_ids = read_json(root / "item_ids.json")
    arrays = {kind: np.load(root / f"{kind}.npy") for kind in KINDS}
    expected = (manifest["n"], manifest["dim"])
    for kind, array in arrays.items():
        if array.shape != expected or array.dtype != np.float32 or len(item_ids) != manifest["n"]:
            raise ValueError(
                f"feature cache {root} is damaged: {kind}.npy is {array.shape} {array.dtype} with "
                f"{len(item_ids)} item ids, manifest.json says {expected} {DTYPE}. Delete the directory "
                "and run extract_features again"
            )
    return FeatureSet(
        item_ids=item_ids,
        image=arrays["image"],
        text=arrays["text"],
        dataset_fingerprint=manifest["dataset_fingerprint"],
        backbone_fingerprint=manifest["backbone_fingerprint"],
        n_computed=n_computed,
    )


# --- embedding, with decoding / tokenising in DataLoader workers -------------------------


class _RowReader(torch.utils.data.Dataset):
    """Reads one batch of rows with one Arrow query (`__getitems__`), images undecoded."""

    def __init__(self, dataset: datasets.Dataset, column: str):
        rows = dataset.select_columns(["item_id", column])
        if column == "image":
            rows = rows.cast_column("image", datasets.Image(decode=False))  # decode in the workers
        self.rows = rows
        self.column = column

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, row: int) -> dict:
        return self.__getitems__([row])

    def __getitems__(self, rows: list[int]) -> dict:
        batch = self.rows[rows]
        return {"rows": list(rows), "item_ids": batch["item_id"], "values": batch[self.column]}


class _PixelBatch:
    """collate_fn: encoded image bytes -> preprocessed pixel tensor [n, 3, H, W]."""

    def __init__(self, preprocess: Callable):
        self.preprocess = preprocess

    def __call__(self, batch: dict) -> tuple[list[int], torch.Tensor]:
        pixels = [
            self.preprocess(_open_image(value, row, item_id))
            for row, item_id, value in zip(batch["rows"], batch["item_ids"], batch["values"])
        ]
        return batch["rows"], torch.stack(pixels)


class _TokenBatch:
    """collate_fn: texts -> token ids [n, context_length]."""

    def __init__(self, tokenizer: Callable):
        self.tokenizer = tokenizer

    def __call__(self, batch: dict) -> tuple[list[int], torch.Tensor]:
        for row, item_id, text in zip(batch["rows"], batch["item_ids"], batch["values"]):
            if not isinstance(text, str):
                raise ValueError(
                    f"dataset row {row} (item_id {item_id!r}): column 'text' is {text!r}, not a string; "
                    "fill it (empty string allowed) in prepare"
                )
        return batch["rows"], self.tokenizer(batch["values"])


def _open_image(value: dict | None, row: int, item_id: str) -> Image.Image:
    try:
        if value and value.get("bytes"):
            image = Image.open(io.BytesIO(value["bytes"]))
        elif value and value.get("path"):
            image = Image.open(value["path"])
        else:
            raise ValueError("the image cell is empty")
        image.load()
    except (OSError, ValueError) as e:
        raise ValueError(
            f"dataset row {row} (item_id {item_id!r}): image cannot be decoded ({e}); fix or drop this row in prepare"
        ) from e
    return image


def _embed_shards(
    dataset: datasets.Dataset,
    kind: str,
    shards: list[_Shard],
    backbone: Backbone,
    root: Path,
    batch_size: int,
    num_workers: int,
) -> dict:
    """Embed `kind` for these shards, writing each shard as soon as it is full."""
    n_items = sum(len(s.rows) for s in shards)
    if not shards:
        log.info("%s phase: every shard cached", kind)
        return {"items": 0, "seconds": 0.0}
    log.info("%s phase: embedding %d items in %d shard(s), batch %d, %d worker(s)",
             kind, n_items, len(shards), batch_size, num_workers)
    # Batches never straddle a shard, so a shard is complete after its last batch.
    batches = [list(s.rows[i : i + batch_size]) for s in shards for i in range(0, len(s.rows), batch_size)]
    if kind == "image":
        collate, embed = _PixelBatch(backbone.preprocess), backbone.embed_pixels
    else:
        collate, embed = _TokenBatch(backbone.tokenizer), backbone.embed_tokens
    loader = DataLoader(
        _RowReader(dataset, kind),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=backbone.device.type == "cuda",
    )
    started = time.perf_counter()
    pending = iter(shards)
    shard, parts, filled = next(pending), [], 0
    with tqdm(total=n_items, unit="item", desc=f"{kind} features", dynamic_ncols=True) as bar:
        for rows, inputs in loader:
            parts.append(embed(inputs))
            filled += len(rows)
            bar.update(len(rows))
            if filled == len(shard.rows):
                _save_npy(shard.path(root, kind), np.concatenate(parts))
                shard, parts, filled = next(pending, None), [], 0
    seconds = time.perf_counter() - started
    log.info("%s phase: %d items in %.1fs (%.1f items/s)", kind, n_items, seconds, n_items / seconds)
    return {"items": n_items, "seconds": round(seconds, 3)}
