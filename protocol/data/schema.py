"""Column names of the raw catalog and the processed dataset, and their validators.

The contract is in DESIGN.md ("Processed dataset") and docs/ARCHITECTURE.md
("Intermediate raw catalog"); this module is its single source in code.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from protocol.io import InputError

ATTRIBUTES: tuple[str, ...] = ("material", "pattern", "neckline", "sleeve", "color")
UNKNOWN = "unknown"
SPLITS: tuple[str, ...] = ("train", "val", "test")

# The raw catalog's rows; its images travel beside them (protocol.data.raw.RawCatalog), or,
# for a small in-memory catalog, in an extra `image_bytes` column.
RAW_REQUIRED_COLUMNS: tuple[str, ...] = ("item_id", "title", "description", "category2")
RAW_OPTIONAL_COLUMNS: tuple[str, ...] = ("product_id", "url", "category1")
SRC_COLUMNS: tuple[str, ...] = tuple(f"src_{a}" for a in ATTRIBUTES)
GT_COLUMNS: tuple[str, ...] = tuple(f"gt_{a}" for a in ATTRIBUTES) + ("gt_category2",)

# Every column of the processed dataset except `image` (meta == dataset minus image).
REQUIRED_COLUMNS: tuple[str, ...] = (
    "item_id", "product_id", "url", "title", "description", "text",
    "category1", "category2", *ATTRIBUTES, "group_id", "split",
)
IMAGE_COLUMN = "image"
REJECT_COLUMNS: tuple[str, ...] = ("row", "item_id", "reason", "detail")
# Why ingest rejects a row -> what to do about it (the "no item accepted" error quotes these).
REJECT_REASONS: dict[str, str] = {
    "malformed_line": "the line has more fields than the header: quote fields that hold commas",
    "missing_item_id": "fill the id column the mapping names as item_id",
    "control_characters": "an id holds NUL or another control character: fix the id in the source",
    "duplicate_item_id": "ids must be unique: the first row with an id is kept",
    "empty_text": "the mapping's title and description columns are both empty",
    "unsafe_path": "image paths must be relative and stay inside image_dir",
    "missing_image": "no image file where the mapping points: check image_dir and the mapping's image or "
                     "image_pattern",
    "corrupt_image": "the image file does not decode: replace it",
}


class SchemaError(InputError):
    """A table does not have the columns or values the contract requires."""


def missing_columns(df: pd.DataFrame, required: Iterable[str]) -> list[str]:
    return [c for c in required if c not in df.columns]


def require_columns(df: pd.DataFrame, required: Iterable[str], where: str, hint: str = "") -> None:
    missing = missing_columns(df, required)
    if missing:
        raise SchemaError(
            f"{where} is missing column(s) {missing} (has {list(df.columns)})" + (f"; {hint}" if hint else "")
        )


def validate_raw(df: pd.DataFrame, where: str = "raw catalog") -> None:
    """Check a raw catalog (output of synthetic generation or ingest) before `finalize`."""
    require_columns(df, RAW_REQUIRED_COLUMNS, where, "ingest or generate_catalog must provide them")
    _require_unique_ids(df, where)


def validate_processed(df: pd.DataFrame, where: str = "processed dataset") -> None:
    """Check a processed dataset's meta table: required columns, unique item ids, known splits."""
    require_columns(df, REQUIRED_COLUMNS, where, "re-run the prepare stage")
    _require_unique_ids(df, where)
    bad = ~df["split"].isin(SPLITS)
    if bad.any():
        rows = list(df.index[bad][:5])
        raise SchemaError(
            f"{where}: column 'split' has values {sorted(set(df.loc[bad, 'split'].astype(str)))} "
            f"outside {list(SPLITS)} (rows {rows})"
        )
    for column in ("item_id", "group_id"):
        empty = df[column].isna() | (df[column].astype(str).str.strip() == "")
        if empty.any():
            raise SchemaError(f"{where}: column {column!r} is empty in rows {list(df.index[empty][:5])}")


def _require_unique_ids(df: pd.DataFrame, where: str) -> None:
    dup = df["item_id"].duplicated(keep=False)
    if dup.any():
        ids = sorted(set(df.loc[dup, "item_id"].astype(str)))[:5]
        rows = list(df.index[dup][:5])
        raise SchemaError(f"{where}: column 'item_id' must be unique; repeated ids {ids} (rows {rows})")
