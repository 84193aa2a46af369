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
import logging
from collections.abc import Iterable
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


@dataclass
class ProcessedDataset:
    dataset: datasets.Dataset   # row i == meta row i == feature-cache row i
    meta: pd.DataFrame          # every column but `image`
    fingerprint: str
    path: Path
    manifest: dict


def dataset_fingerprint(item_ids: Iterable[str], texts: Iterable[str], splits: Iterable[str],
                        image_bytes: Iterable[bytes]) -> str:
    """sha256 over (item_id, text, split, sha256(image bytes)) of every row, in row order."""
    h = hashlib.sha256()
    for item_id, text, split, data in zip(item_ids, texts, splits, image_bytes, strict=True):
        image_hash = hashlib.sha256(data).hexdigest()
        h.update(f"{item_id}\0{text}\0{split}\0{image_hash}\n".encode())
    return h.hexdigest()


def image_bytes_of(dataset: datasets.Dataset) -> list[bytes]:
    """The encoded image of each row, without decoding it."""
    raw = dataset.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))[IMAGE_COLUMN]
    out = []
    for i, cell in enumerate(raw):
        if cell.get("bytes") is not None:
            out.append(cell["bytes"])
        elif cell.get("path"):
            out.append(Path(cell["path"]).read_bytes())
        else:
            raise ValueError(f"row {i} has no image bytes or path")
    return out


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
    dataset = datasets.load_from_disk(str(dataset_path))
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(f"{dataset_path} holds a {type(dataset).__name__}, expected one Dataset with a split column")
    if IMAGE_COLUMN not in dataset.column_names:
        raise ValueError(f"{dataset_path} has no {IMAGE_COLUMN!r} column; re-run the prepare stage")
    meta = dataset.select_columns([c for c in dataset.column_names if c != IMAGE_COLUMN]).to_pandas()
    validate_processed(meta, where=f"processed dataset {dataset_path}")
    fingerprint = manifest["fingerprint"]
    if verify:
        actual = dataset_fingerprint(meta["item_id"], meta["text"], meta["split"], image_bytes_of(dataset))
        if actual != fingerprint:
            raise ValueError(f"{path}: rows hash to fingerprint {actual[:12]}, manifest says {fingerprint[:12]}; "
                             "the dataset was changed after prepare; re-run the prepare stage")
    logger.info("loaded processed dataset %s: %d items [fingerprint %s]", path, len(meta), fingerprint[:12])
    return ProcessedDataset(dataset=dataset, meta=meta, fingerprint=fingerprint, path=path, manifest=manifest)
