"""Raw catalog -> processed dataset: text, categories, grounded attributes, groups, splits.

`prepare_processed(raw, out_dir, ...)` is the whole step: `finalize` does the table work
on the rows (no images), then `protocol.data.processed.write_processed` streams the
images into the dataset and writes the directory in one step. `save_processed` writes a
small finalized table that holds its images in memory (tests, notebooks).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from protocol.data.group_key import derive_group_ids
from protocol.data.attribute_schema import AttributeSchema, load_attribute_schema
from protocol.data.grounding import CONTROL_CHARACTERS, build_text, ground_attributes, grounding_report, map_category
from protocol.data.processed import (MANIFEST, REJECTS, ROWS_PER_FILE, SHARD_ROWS, write_processed,
                                     write_rejects)
from protocol.data.raw import IMAGE_BYTES, ImageSource, InMemoryImages, RawCatalog
from protocol.data.schema import (ATTRIBUTES, GT_COLUMNS, REJECT_REASONS, REQUIRED_COLUMNS, SRC_COLUMNS,
                                  SchemaError, require_columns, validate_raw)
from protocol.data.splits import DEFAULT_FRACTIONS, TestQuota, assign_splits_with_quotas
from protocol.io import InputError
from protocol.retrieval.metrics import attribute_column, known_values
from protocol.scoreboard import focus_classes

logger = logging.getLogger(__name__)


# The headline attribute whose known-value test queries get their own quota.
QUOTA_KNOWN_ATTRIBUTE = "neckline"


@dataclass(frozen=True)
class SplitQuotas:
    """Class-aware test quotas: how many test items each scoreboard focus class (weak class,
    rare material) and the neckline-known items get at least, and the most of a class's
    items they may put in test (see protocol.data.splits)."""

    per_class: int
    known_neckline: int
    max_share: float

    def for_table(self, df: pd.DataFrame) -> list[TestQuota]:
        quotas = []
        for attribute, values in focus_classes().items():
            column = attribute_column(attribute)
            known = known_values(df[column], attribute)
            quotas += [TestQuota(f"{column}.{v}", known & (df[column] == v).to_numpy(), self.per_class,
                                 self.max_share) for v in values]
        column = attribute_column(QUOTA_KNOWN_ATTRIBUTE)
        quotas.append(TestQuota(f"{column}.known", known_values(df[column], QUOTA_KNOWN_ATTRIBUTE),
                                self.known_neckline, self.max_share))
        return quotas


# Ids are keys (files, groups, feature-cache rows): one holding a control character is
# refused, never rewritten, so it cannot silently merge with another id.
ID_COLUMNS = ("item_id", "product_id")
# Free-text columns: control characters are removed (and counted) before `text` is built.
TEXT_COLUMNS = ("title", "description", "url", "category1", "category2")


def _strings(series: pd.Series) -> pd.Series:
    return series.fillna("").astype(str).str.strip()


def _remove_control_characters(df: pd.DataFrame, columns: list[str]) -> dict[str, int]:
    """Remove control characters from `columns` in place; rows changed per column (only those > 0)."""
    for column in ID_COLUMNS:
        bad = df[column].str.contains(CONTROL_CHARACTERS)
        if bad.any():
            raise SchemaError(f"raw catalog: column {column!r} holds control characters (e.g. NUL) in rows "
                              f"{list(df.index[bad][:5])}; fix those ids in the source (ingest rejects such rows)")
    removed = {}
    for column in columns:
        dirty = df[column].str.contains(CONTROL_CHARACTERS)
        if dirty.any():
            df[column] = df[column].str.replace(CONTROL_CHARACTERS, "", regex=True)
            removed[column] = int(dirty.sum())
    if removed:
        logger.warning("removed control characters (NUL etc.) from %s", ", ".join(
            f"{n} value(s) of {c!r}" for c, n in removed.items()))
    return removed


def finalize(raw: pd.DataFrame, schema: AttributeSchema | None = None,
             fractions: Mapping[str, float] = DEFAULT_FRACTIONS, seed: int = 0,
             show_progress: bool = True, quotas: SplitQuotas | None = None) -> pd.DataFrame:
    """The processed table: REQUIRED_COLUMNS, then gt_*/src_* when the raw catalog has them, then
    image_bytes when the raw catalog holds its images in memory. Row i stays row i.

    With `quotas`, the split reserves test groups for the scoreboard's focus classes first;
    the per-quota report is in `out.attrs["split_quotas"]`, the control characters removed per
    column in `out.attrs["control_characters_removed"]` (both go to the manifest).
    """
    validate_raw(raw)
    if raw.empty:
        raise SchemaError("raw catalog has no rows: there is nothing to prepare")
    schema = schema or load_attribute_schema()
    df = raw.reset_index(drop=True).copy()
    for column in ("item_id", "product_id", "url", "title", "description", "category1", "category2"):
        df[column] = _strings(df[column]) if column in df.columns else ""
    empty_ids = df["item_id"] == ""
    if empty_ids.any():
        raise ValueError(f"raw catalog: column 'item_id' is empty in rows {list(df.index[empty_ids][:5])}")
    src_columns = [c for c in SRC_COLUMNS if c in df.columns]
    for column in src_columns:
        df[column] = _strings(df[column])
    control_characters = _remove_control_characters(df, [*TEXT_COLUMNS, *src_columns])

    df["text"] = [build_text(t, d) for t, d in zip(df["title"], df["description"])]
    mapped = [map_category(c2, schema, c1) for c2, c1 in zip(df["category2"], df["category1"])]
    df["category1"] = [c1 for c1, _ in mapped]
    df["category2"] = [c2 for _, c2 in mapped]

    # Views of a product share their text: ground each distinct (text, category, labels) once.
    keys = ["title", "description", "category2", *src_columns]
    key_table = df[keys].fillna("").astype(str)
    distinct = key_table.drop_duplicates()
    grounded = {}
    for row in tqdm(distinct.itertuples(index=False), total=len(distinct), unit="item",
                    desc="grounding attributes", disable=not show_progress):
        labels = {c.removeprefix("src_"): getattr(row, c) for c in src_columns}
        grounded[tuple(row)] = ground_attributes(row.title, row.description, row.category2, schema, labels)
    values = [grounded[k] for k in key_table.itertuples(index=False, name=None)]
    for attribute in ATTRIBUTES:
        df[attribute] = [v[attribute] for v in values]

    df["group_id"] = derive_group_ids(df).to_numpy()
    df["split"], quota_report = assign_splits_with_quotas(
        df["group_id"], fractions, seed, stratify=df["material"] + "|" + df["category2"],
        quotas=quotas.for_table(df) if quotas else ())

    extra = [c for c in (*GT_COLUMNS, "gt_product_id", *SRC_COLUMNS) if c in df.columns]
    out = df[[*REQUIRED_COLUMNS, *extra, *([IMAGE_BYTES] if IMAGE_BYTES in df.columns else [])]].copy()
    out.attrs["split_quotas"] = quota_report
    out.attrs["control_characters_removed"] = control_characters
    logger.info("finalized %d items, %d groups: %s", len(out), out["group_id"].nunique(),
                out["split"].value_counts().to_dict())
    return out


class EmptyCatalogError(InputError):
    """No source row was accepted; `rejects_path` holds every rejected row."""

    def __init__(self, message: str, rejects_path: Path):
        super().__init__(message)
        self.rejects_path = rejects_path


def _no_items_error(raw: RawCatalog, out_dir: Path) -> EmptyCatalogError:
    """Write the rejects where a user finds them, and say why nothing was accepted and what to do."""
    inside = not (out_dir / MANIFEST).exists()  # never beside another run's complete output
    rejects_path = write_rejects(raw.rejects, out_dir / REJECTS if inside else
                                 out_dir.with_name(f"{out_dir.name}.{REJECTS}"))
    counts = raw.rejects_by_reason()
    if raw.n_read == 0:
        cause = "it has no data rows (only a header?)"
    else:
        cause = f"all {raw.n_read} rows were rejected ({', '.join(f'{r}: {n}' for r, n in counts.items())})"
    first = "; ".join(f"row {r.row} item {r.item_id!r}: {r.reason} ({r.detail})"
                      for r in raw.rejects.head(3).itertuples())
    todo = "; ".join(f"{r}: {REJECT_REASONS[r]}" for r in counts if r in REJECT_REASONS)
    return EmptyCatalogError(
        f"{raw.source}: no item to prepare: {cause}." + (f" First: {first}." if first else "")
        + (f" What to do: {todo}." if todo else "") + f" Every rejected row is in {rejects_path}.",
        rejects_path)


def _write(table: pd.DataFrame, images: ImageSource, out_dir: Path, source: str, rejects: pd.DataFrame | None,
           **kwargs) -> dict:
    meta = table.drop(columns=[IMAGE_BYTES], errors="ignore")
    grounding = grounding_report(meta) if any(c.startswith("gt_") for c in meta.columns) else None
    extra = {"split_quotas": table.attrs.get("split_quotas", {}),
             "control_characters_removed": table.attrs.get("control_characters_removed", {})}
    return write_processed(meta, images, out_dir, source=source, rejects=rejects, grounding=grounding,
                           extra=extra, **kwargs)


def prepare_processed(raw: RawCatalog, out_dir: str | Path, *, schema: AttributeSchema | None = None,
                      fractions: Mapping[str, float] = DEFAULT_FRACTIONS, seed: int = 0,
                      quotas: SplitQuotas | None = None, shard_rows: int = SHARD_ROWS,
                      rows_per_file: int = ROWS_PER_FILE, show_progress: bool = True) -> dict:
    """Ground, group and split the raw catalog's rows, then write the processed directory `out_dir`
    in one step, images streamed a shard at a time; returns the manifest.

    No accepted row is an EmptyCatalogError that names the source and the cause, with the
    rejects written to `out_dir/rejects.csv`.
    """
    out_dir = Path(out_dir)
    if raw.meta.empty:
        raise _no_items_error(raw, out_dir)
    table = finalize(raw.meta, schema, fractions, seed, show_progress, quotas)
    return _write(table, raw.images, out_dir, raw.source, raw.rejects, n_read=raw.n_read,
                  expected_sha256=raw.image_sha256, shard_rows=shard_rows, rows_per_file=rows_per_file,
                  show_progress=show_progress)


def save_processed(df: pd.DataFrame, out_dir: str | Path, source: str,
                   rejects: pd.DataFrame | None = None) -> dict:
    """Write a finalized table that holds its images in an `image_bytes` column (small catalogs, tests)."""
    require_columns(df, [IMAGE_BYTES], "finalized table", "pass the output of finalize() on a raw DataFrame")
    images = list(df[IMAGE_BYTES])
    bad = [i for i, b in enumerate(images) if not isinstance(b, (bytes, bytearray)) or not b]
    if bad:
        raise SchemaError(f"finalized table: column 'image_bytes' is empty or not bytes in rows {bad[:5]}")
    return _write(df, InMemoryImages(images), Path(out_dir), source, rejects, show_progress=False)
