"""The processed dataset that `prepare` writes and every later stage reads (docs/ARCHITECTURE.md).

```
<dir>/dataset/        datasets.Dataset.save_to_disk, one Dataset with a `split` column
<dir>/manifest.json   fingerprint, counts, quotas, rejects by reason, source, created
<dir>/rejects.csv     rows skipped by ingest
<dir>/grounding.json  grounding precision/recall vs gt_* (when the source has gt_*)
```

`write_processed` builds the whole directory in a temp directory beside `<dir>` and
renames it into place in one step, manifest inside: a prepare killed at any point leaves
the old complete directory or the new one, never a mix. It streams: image bytes are
fetched, hashed and written one shard at a time (datasets' ArrowWriter), so memory does
not grow with the catalog's image bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
from datasets.arrow_writer import ArrowWriter
from tqdm import tqdm

from protocol.data.raw import ImageSource, empty_rejects
from protocol.data.schema import IMAGE_COLUMN, REJECT_COLUMNS, SchemaError, validate_processed
from protocol.io import InputError, InputNotFoundError, atomic_path, read_json, write_json

logger = logging.getLogger(__name__)

DATASET_DIR = "dataset"
MANIFEST = "manifest.json"
REJECTS = "rejects.csv"
GROUNDING = "grounding.json"
# Manifests record which fingerprint definition they use; older ones covered fewer columns.
FINGERPRINT_SCHEME = 2
HASH_BATCH_ROWS = 256
# Rows whose images are in memory at once while the dataset is written: ~64 MB of
# 250 KB product photos, a few MB of small synthetic renders.
SHARD_ROWS = 256
# Rows per arrow file of the saved dataset: ~500 MB of product photos (save_to_disk's own default size).
ROWS_PER_FILE = 2048


@dataclass
class ProcessedDataset:
    dataset: datasets.Dataset   # row i == meta row i == feature-cache row i
    meta: pd.DataFrame          # every column but `image`
    fingerprint: str
    path: Path
    manifest: dict


def image_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dataset_fingerprint(meta: pd.DataFrame, image_hashes: Sequence[str]) -> str:
    """sha256 over everything a later stage can read: every column of every row, and its image.

    The column names (sorted) come first, then per row, in row order, the JSON list of that
    row's values in those columns followed by sha256 of its image bytes. Re-grounded
    attributes, other groups, splits, categories or ids all give another fingerprint.
    """
    if len(image_hashes) != len(meta):
        raise ValueError(f"dataset_fingerprint: {len(image_hashes)} image hashes for {len(meta)} rows")
    columns = sorted(str(c) for c in meta.columns)
    h = hashlib.sha256(json.dumps(columns).encode() + b"\n")
    values = meta[columns].fillna("").astype(str).itertuples(index=False, name=None)
    for row, image_hash in zip(values, image_hashes, strict=True):
        h.update(json.dumps([*row, image_hash], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def image_hashes_of(dataset: datasets.Dataset, batch_size: int = HASH_BATCH_ROWS) -> list[str]:
    """sha256 of each row's encoded image, read a batch at a time (never all bytes at once)."""
    images = dataset.select_columns([IMAGE_COLUMN]).cast_column(IMAGE_COLUMN, datasets.Image(decode=False))
    hashes = []
    for batch in images.iter(batch_size=batch_size):
        for cell in batch[IMAGE_COLUMN]:
            if not cell or not cell.get("bytes"):
                raise ValueError(f"row {len(hashes)} of the processed dataset has no image bytes; "
                                 "re-run the prepare stage")
            hashes.append(image_sha256(cell["bytes"]))
    return hashes


def write_rejects(rejects: pd.DataFrame, path: str | Path) -> Path:
    """rejects.csv, written atomically; header only when nothing was rejected."""
    with atomic_path(path) as tmp:
        rejects.reindex(columns=list(REJECT_COLUMNS)).to_csv(tmp, index=False)
    return Path(path)


def _features(columns: list[str]) -> datasets.Features:
    return datasets.Features({c: datasets.Image() if c == IMAGE_COLUMN else datasets.Value("string")
                              for c in columns})


def _write_dataset(meta: pd.DataFrame, images: ImageSource, path: Path, expected_sha256: list[str] | None,
                   shard_rows: int, rows_per_file: int, show_progress: bool) -> str:
    """Write meta + images as a Dataset at `path`, one shard of images in memory at a time; the dataset
    fingerprint (rows and image hashes).

    The layout is `Dataset.save_to_disk`'s (arrow files + dataset_info.json + state.json), written
    by datasets' ArrowWriter directly: save_to_disk itself re-reads up to ~100 MB of images at a
    time into Python objects, which would make the memory a shard holds meaningless.
    """
    text = {c: meta[c].fillna("").astype(str).tolist() for c in meta.columns}
    item_ids = text["item_id"]
    features = _features([*meta.columns, IMAGE_COLUMN])
    n_files = -(-len(meta) // rows_per_file)
    names = [f"data-{i:05d}-of-{n_files:05d}.arrow" for i in range(n_files)]
    hashes: list[str] = []
    path.mkdir()
    with tqdm(total=len(meta), unit="item", desc="writing dataset", disable=not show_progress) as bar:
        for i, name in enumerate(names):
            writer = ArrowWriter(features=features, path=str(path / name), writer_batch_size=shard_rows)
            try:
                for start in range(i * rows_per_file, min(len(meta), (i + 1) * rows_per_file), shard_rows):
                    rows = range(start, min(len(meta), start + shard_rows, (i + 1) * rows_per_file))
                    data = images.fetch(rows)
                    if len(data) != len(rows):
                        raise ValueError(f"image source gave {len(data)} images for rows {rows.start}-{rows.stop - 1}")
                    for row, blob in zip(rows, data):
                        if not isinstance(blob, (bytes, bytearray)) or not blob:
                            raise SchemaError(f"row {row} (item {item_ids[row]!r}) has no image bytes")
                        digest = image_sha256(blob)
                        if expected_sha256 is not None and digest != expected_sha256[row]:
                            raise InputError(f"the image of row {row} (item {item_ids[row]!r}) changed after "
                                             "ingest checked it; leave the images alone while prepare runs, "
                                             "and re-run it")
                        hashes.append(digest)
                    batch: dict[str, list[Any]] = {c: values[rows.start:rows.stop] for c, values in text.items()}
                    batch[IMAGE_COLUMN] = [{"bytes": bytes(blob), "path": None} for blob in data]
                    writer.write_batch(batch)
                    bar.update(len(rows))
                writer.finalize()
            finally:
                writer.close()
    # Info and state come from what is already known (features, the content fingerprint):
    # the written files are not opened again, and datasets' cache key follows the content.
    fingerprint = dataset_fingerprint(meta, hashes)
    datasets.DatasetInfo(features=features).write_to_directory(str(path))
    state = {"_data_files": [{"filename": name} for name in names], "_fingerprint": fingerprint[:16],
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": None}
    (path / datasets.config.DATASET_STATE_JSON_FILENAME).write_text(json.dumps(state, indent=2, sort_keys=True))
    return fingerprint


def write_processed(meta: pd.DataFrame, images: ImageSource, out_dir: str | Path, *, source: str,
                    rejects: pd.DataFrame | None = None, n_read: int | None = None,
                    expected_sha256: list[str] | None = None, grounding: dict | None = None,
                    extra: dict[str, Any] | None = None, shard_rows: int = SHARD_ROWS,
                    rows_per_file: int = ROWS_PER_FILE, show_progress: bool = True) -> dict:
    """Write the processed directory `out_dir` (dataset/, rejects.csv, grounding.json, manifest.json) in one step.

    `meta`: the processed columns, row i's image is `images.fetch([i])`; `expected_sha256`:
    the hashes ingest saw (a changed image is an error); `extra`: more manifest keys.
    """
    out_dir = Path(out_dir)
    validate_processed(meta, where="finalized table")
    if meta.empty:
        raise SchemaError("finalized table has no rows: there is nothing to write")
    meta = meta.reset_index(drop=True)
    rejects = empty_rejects() if rejects is None else rejects
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        fingerprint = _write_dataset(meta, images, tmp / DATASET_DIR, expected_sha256, shard_rows, rows_per_file,
                                     show_progress)
        rejects.reindex(columns=list(REJECT_COLUMNS)).to_csv(tmp / REJECTS, index=False)
        if grounding is not None:
            write_json(tmp / GROUNDING, grounding)
        manifest = {
            "fingerprint": fingerprint,
            "fingerprint_scheme": FINGERPRINT_SCHEME,
            "n_items": int(len(meta)),
            "n_products": int(meta["group_id"].nunique()),
            "counts_by_split": {k: int(v) for k, v in meta["split"].value_counts().sort_index().items()},
            "n_read": int(len(meta) + len(rejects) if n_read is None else n_read),
            "n_rejects": int(len(rejects)),
            "rejects_by_reason": {k: int(v) for k, v in rejects["reason"].value_counts().items()},
            **(extra or {}),
            "source": source,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "columns": [*meta.columns, IMAGE_COLUMN],
        }
        write_json(tmp / MANIFEST, manifest)
    logger.info("wrote processed dataset %s: %d items, %d rejects [fingerprint %s]", out_dir, len(meta),
                len(rejects), manifest["fingerprint"][:12])
    return manifest


def load_processed(path: str | Path, verify: bool = False) -> ProcessedDataset:
    """Open a processed dataset; `verify` recomputes the fingerprint from the rows (reads every image)."""
    path = Path(path)
    manifest_path, dataset_path = path / MANIFEST, path / DATASET_DIR
    if not manifest_path.is_file() or not dataset_path.is_dir():
        missing = [str(p) for p in (manifest_path, dataset_path) if not p.exists()]
        raise InputNotFoundError(
            f"{path} is not a processed dataset (missing {', '.join(missing)}); run the prepare stage first"
        )
    manifest = read_json(manifest_path)
    if "fingerprint" not in manifest:
        raise ValueError(f"{manifest_path} has no 'fingerprint'; re-run the prepare stage")
    if manifest.get("fingerprint_scheme") != FINGERPRINT_SCHEME:
        raise ValueError(f"{manifest_path} was written by an older prepare (fingerprint scheme "
                         f"{manifest.get('fingerprint_scheme', 1)}, now {FINGERPRINT_SCHEME}: the fingerprint "
                         "now covers every column); re-run the prepare stage")
    dataset = datasets.load_from_disk(str(dataset_path))
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(f"{dataset_path} holds a {type(dataset).__name__}, expected one Dataset with a split column")
    if IMAGE_COLUMN not in dataset.column_names:
        raise ValueError(f"{dataset_path} has no {IMAGE_COLUMN!r} column; re-run the prepare stage")
    meta = dataset.select_columns([c for c in dataset.column_names if c != IMAGE_COLUMN]).to_pandas()
    validate_processed(meta, where=f"processed dataset {dataset_path}")
    fingerprint = manifest["fingerprint"]
    if verify:
        actual = dataset_fingerprint(meta, image_hashes_of(dataset))
        if actual != fingerprint:
            raise ValueError(f"{path}: rows hash to fingerprint {actual[:12]}, manifest says {fingerprint[:12]}; "
                             "the dataset was changed after prepare; re-run the prepare stage")
    logger.info("loaded processed dataset %s: %d items [fingerprint %s]", path, len(meta), fingerprint[:12])
    return ProcessedDataset(dataset=dataset, meta=meta, fingerprint=fingerprint, path=path, manifest=manifest)
