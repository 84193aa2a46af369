"""Raw catalog -> processed dataset: text, categories, grounded attributes, groups, splits.

`finalize` does the table work; `save_processed` writes the layout that
`protocol.data.processed.load_processed` reads, atomically, manifest last.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import datasets
import pandas as pd
from tqdm import tqdm

from protocol.data.group_key import derive_group_ids
from protocol.data.grounding import (AttributeSchema, build_text, ground_attributes, grounding_report,
                                     load_attribute_schema, map_category)
from protocol.data.processed import (DATASET_DIR, FINGERPRINT_SCHEME, GROUNDING, MANIFEST, REJECTS,
                                     dataset_fingerprint, image_sha256)
from protocol.data.schema import (ATTRIBUTES, GT_COLUMNS, IMAGE_COLUMN, REJECT_COLUMNS, REQUIRED_COLUMNS,
                                  SRC_COLUMNS, require_columns, validate_processed, validate_raw)
from protocol.data.splits import DEFAULT_FRACTIONS, TestQuota, assign_splits_with_quotas
from protocol.io import atomic_path, write_json
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


def _strings(series: pd.Series) -> pd.Series:
    return series.fillna("").astype(str).str.strip()


def finalize(raw: pd.DataFrame, schema: AttributeSchema | None = None,
             fractions: Mapping[str, float] = DEFAULT_FRACTIONS, seed: int = 0,
             show_progress: bool = True, quotas: SplitQuotas | None = None) -> pd.DataFrame:
    """The processed table: REQUIRED_COLUMNS, then gt_*/src_* when the raw catalog has them, then image_bytes.

    With `quotas`, the split reserves test groups for the scoreboard's focus classes first;
    the per-quota report is in `out.attrs["split_quotas"]` (save_processed puts it in the manifest).
    """
    validate_raw(raw)
    schema = schema or load_attribute_schema()
    df = raw.reset_index(drop=True).copy()
    for column in ("item_id", "product_id", "url", "title", "description", "category1", "category2"):
        df[column] = _strings(df[column]) if column in df.columns else ""
    empty_ids = df["item_id"] == ""
    if empty_ids.any():
        raise ValueError(f"raw catalog: column 'item_id' is empty in rows {list(df.index[empty_ids][:5])}")

    df["text"] = [build_text(t, d) for t, d in zip(df["title"], df["description"])]
    mapped = [map_category(c2, schema, c1) for c2, c1 in zip(df["category2"], df["category1"])]
    df["category1"] = [c1 for c1, _ in mapped]
    df["category2"] = [c2 for _, c2 in mapped]

    src_columns = [c for c in SRC_COLUMNS if c in df.columns]
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
    out = df[[*REQUIRED_COLUMNS, *extra, "image_bytes"]].copy()
    out.attrs["split_quotas"] = quota_report
    logger.info("finalized %d items, %d groups: %s", len(out), out["group_id"].nunique(),
                out["split"].value_counts().to_dict())
    return out


def _features(columns: list[str]) -> datasets.Features:
    return datasets.Features({c: datasets.Image() if c == IMAGE_COLUMN else datasets.Value("string")
                              for c in columns})


def save_processed(df: pd.DataFrame, out_dir: str | Path, source: str,
                   rejects: pd.DataFrame | None = None) -> dict:
    """Write dataset/, rejects.csv, grounding.json (when gt_* exists) and manifest.json (last) under out_dir."""
    out_dir = Path(out_dir)
    validate_processed(df, where="finalized table")
    require_columns(df, ["image_bytes"], "finalized table", "pass the output of finalize()")
    meta = df.drop(columns=["image_bytes"]).reset_index(drop=True)
    image_bytes = list(df["image_bytes"])
    bad = [i for i, b in enumerate(image_bytes) if not isinstance(b, (bytes, bytearray)) or not b]
    if bad:
        raise ValueError(f"finalized table: column 'image_bytes' is empty or not bytes in rows {bad[:5]}")

    columns = {c: meta[c].fillna("").astype(str).tolist() for c in meta.columns}
    columns[IMAGE_COLUMN] = [{"bytes": bytes(b), "path": None} for b in image_bytes]
    dataset = datasets.Dataset.from_dict(columns, features=_features(list(columns)))
    with atomic_path(out_dir / DATASET_DIR) as tmp:
        dataset.save_to_disk(str(tmp))

    rejects = pd.DataFrame(columns=list(REJECT_COLUMNS)) if rejects is None else rejects
    with atomic_path(out_dir / REJECTS) as tmp:
        rejects.to_csv(tmp, index=False)
    if any(c.startswith("gt_") for c in meta.columns):
        write_json(out_dir / GROUNDING, grounding_report(meta))

    manifest = {
        "fingerprint": dataset_fingerprint(meta, [image_sha256(b) for b in image_bytes]),
        "fingerprint_scheme": FINGERPRINT_SCHEME,
        "n_items": int(len(meta)),
        "n_products": int(meta["group_id"].nunique()),
        "counts_by_split": {k: int(v) for k, v in meta["split"].value_counts().sort_index().items()},
        "n_rejects": int(len(rejects)),
        "split_quotas": df.attrs.get("split_quotas", {}),
        "source": source,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "columns": list(columns),
    }
    write_json(out_dir / MANIFEST, manifest)
    logger.info("wrote processed dataset %s: %d items, %d rejects [fingerprint %s]", out_dir, len(meta),
                len(rejects), manifest["fingerprint"][:12])
    return manifest
