"""Reading the processed dataset that `prepare` writes (layout: docs/ARCHITECTURE.md).

```
<dir>/dataset/        datasets.Dataset.save_to_disk, one Dataset with a `split` column
<dir>/manifest.json   fingerprint, counts, source, created
<dir>/rejects.csv     rows skipped by ingest
<dir>/grounding.json  grounding precision/recall vs gt_* (when the source has gt_*)
```
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import pandas as pd

from protocol.data.schema import IMAGE_COLUMN, validate_processed
from protocol.io import read_json

logger = logging.getLogger(__name__)

DATASET_DIR = "dataset"
MANIFEST = "manifest.json"
REJECTS = "rejects.csv"
GROUNDING = "grounding.json"
# Manifests record which fingerprint definition they use; older ones covered fewer columns.
FINGERPRINT_SCHEME = 2
HASH_BATCH_ROWS = 256


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


def load_processed(path: str | Path, verify: bool = False) -> ProcessedDataset:
    """Open a processed dataset; `verify` recomputes the fingerprint from the rows (reads every image)."""
    path = Path(path)
    manifest_path, dataset_path = path / MANIFEST, path / DATASET_DIR
    if not manifest_path.is_file() or not dataset_path.is_dir():
        missing = [str(p) for p in (manifest_path, dataset_path) if not p.exists()]
        raise FileNotFoundError(
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
