"""Which dataset and backbone a derived file was made from, recorded inside the file.

Every derived file (feature cache, catalog, hard_negatives.parquet, pairs.parquet,
groups.json, checkpoints) carries the fingerprints of the processed dataset and, where
one was involved, the backbone it was made from. A stage that reads such a file passes
the fingerprints it expects; a mismatch is a `FingerprintMismatchError` that names both.

Parquet files keep them in the schema metadata (key `protocol.provenance`, JSON), so
pandas/pyarrow readers see an ordinary table. JSON documents keep them under a
top-level "provenance" key.

No torch here: reading a parquet file's provenance must not import a model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from protocol.io import atomic_path

PARQUET_KEY = b"protocol.provenance"
FIELDS = ("dataset_fingerprint", "backbone_fingerprint")


class FingerprintMismatchError(ValueError):
    """A cache, catalog, supervision file or checkpoint was made with another backbone or dataset."""


class MissingProvenanceError(ValueError):
    """A derived file records no fingerprints (made by an older version, or by hand)."""


def check_fingerprint(expected: str, actual: str, what: str) -> None:
    """Raise FingerprintMismatchError unless `actual == expected`; `what` names the artifact."""
    if expected != actual:
        raise FingerprintMismatchError(
            f"{what} was made with fingerprint {actual}, but fingerprint {expected} was expected. "
            "Mixing them would compare embeddings from different models or data: rebuild it with "
            "the expected backbone/dataset (or point to the one made with it)."
        )


def provenance(dataset_fingerprint: str, backbone_fingerprint: str | None = None) -> dict[str, str]:
    """The record a derived file carries; a file made without a backbone leaves it out."""
    if not dataset_fingerprint:
        raise ValueError("a derived file needs the fingerprint of the dataset it was made from")
    record = {"dataset_fingerprint": dataset_fingerprint}
    if backbone_fingerprint:
        record["backbone_fingerprint"] = backbone_fingerprint
    return record


def check_provenance(record: dict[str, Any] | None, what: str, *, dataset: str | None = None,
                     backbone: str | None = None, made_by: str = "the stage that writes it") -> None:
    """Check a file's record against the fingerprints the reader expects (None: not checked)."""
    if not record:
        raise MissingProvenanceError(
            f"{what} records no dataset/backbone fingerprints, so nothing shows which data it was made "
            f"from: re-run {made_by} to rewrite it"
        )
    for key, expected in (("dataset_fingerprint", dataset), ("backbone_fingerprint", backbone)):
        if expected is None:
            continue
        if key not in record:
            raise MissingProvenanceError(f"{what} records no {key}: re-run {made_by} to rewrite it")
        try:
            check_fingerprint(expected, record[key], f"{what} ({key.split('_')[0]})")
        except FingerprintMismatchError as err:
            # the reader knows which stage makes the file: say which one to re-run
            raise FingerprintMismatchError(f"{err} To make it from this data, re-run {made_by}.") from None


def write_parquet(df: pd.DataFrame, path: str | os.PathLike, record: dict[str, str]) -> Path:
    """`df` as parquet with `record` in its schema metadata, written atomically."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    metadata = dict(table.schema.metadata or {})
    metadata[PARQUET_KEY] = json.dumps(record, sort_keys=True).encode()
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(metadata), tmp)
    return Path(path)


def parquet_provenance(path: str | os.PathLike) -> dict[str, str] | None:
    """The record stored in a parquet file, or None when it has none."""
    metadata = pq.read_schema(path).metadata or {}
    raw = metadata.get(PARQUET_KEY)
    return json.loads(raw) if raw else None


def read_parquet(path: str | os.PathLike, what: str, *, dataset: str | None = None, backbone: str | None = None,
                 made_by: str = "the stage that writes it") -> tuple[pd.DataFrame, dict[str, str]]:
    """(table, its record) after checking the record against the expected fingerprints."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist: run {made_by} first")
    record = parquet_provenance(path)
    check_provenance(record, f"{what} {path}", dataset=dataset, backbone=backbone, made_by=made_by)
    return pd.read_parquet(path), record
