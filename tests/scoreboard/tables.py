"""Per-query tables built by hand, as test input for the scoreboard: the layout of `query_table`.

Queries come in classes (category2, material): cardigans/wool, shorts/denim,
jackets/leather and tees/cotton, each query with a known neckline. Every attribute's
p@K of a query starts at a base value; `shift` moves one target's queries by points:
"neckline" (neckline.p10 of every query), "cardigans"/"shorts" (category.p10 of those
queries), "denim"/"leather" (material.p10 of those queries).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from protocol.retrieval.eval_files import EvalManifest, query_ids_sha256, write_eval_dir
from protocol.retrieval.metrics import ATTRIBUTES, METRIC_VERSION, THIN_BELOW, EvalResult, aggregate_metrics
from protocol.scoreboard import Evidence

CLASSES = {"cardigans": "wool", "shorts": "denim", "jackets": "leather", "tees": "cotton"}
TARGET_COLUMN = {"neckline": "neckline.p10", "cardigans": "category.p10", "shorts": "category.p10",
                 "denim": "material.p10", "leather": "material.p10"}
BASE = {"neckline": 0.40, "category": 0.30, "material": 0.20}
DATASET, BACKBONE = "d" * 64, "b" * 64


def per_query_table(shift: dict[str, float] | None = None, *, n_per_class: int = 40, absent: tuple[str, ...] = (),
                    noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """One t2i per-query table; `absent` drops classes (by category2 or material) from the queries."""
    shift = shift or {}
    rows = []
    for category, material in CLASSES.items():
        if category in absent or material in absent:
            continue
        rows += [{"query_id": f"{category}_{i:03d}", "group_id": f"g_{category}_{i:03d}", "category2": category,
                  "material": material, "pattern": "solid", "neckline": "v-neck", "sleeve": "long",
                  "color": "black", "top10": [f"c{j}" for j in range(10)]} for i in range(n_per_class)]
    table = pd.DataFrame(rows)
    rng = np.random.default_rng(seed)
    for attribute in ATTRIBUTES:
        values = np.full(len(table), BASE.get(attribute, 0.5))
        for target, column in TARGET_COLUMN.items():
            if column.startswith(attribute + ".") and target in shift:
                picked = np.ones(len(table), bool) if target == "neckline" else (
                    (table["category2"] == target) | (table["material"] == target)).to_numpy()
                values[picked] += shift[target] / 100
        if noise:
            values = values + rng.normal(0, noise, len(values))
        values = np.clip(values, 0, 1)
        for k in ("p1", "p5", "p10", "map10"):
            table[f"{attribute}.{k}"] = values
    for k in (1, 5, 10):
        table[f"recall{k}"] = 0.5
    table["rr10"] = 0.25
    return table


def manifest_of(table: pd.DataFrame, **changes) -> EvalManifest:
    fields = dict(dataset_fingerprint=DATASET, backbone_fingerprint=BACKBONE, catalog_splits=("train", "val"),
                  query_split=("test",), query_ids_sha256=query_ids_sha256(table["query_id"]),
                  n_queries=len(table), metric_version=METRIC_VERSION, modes=("t2i",))
    return EvalManifest(**(fields | changes))


def evidence(table: pd.DataFrame, what: str, **manifest_changes) -> Evidence:
    return Evidence(what, manifest_of(table, **manifest_changes), {"t2i": table})


def write_eval(table: pd.DataFrame, eval_dir: Path, **manifest_changes) -> Path:
    """A real eval/ directory (metrics JSON, queries_t2i.parquet, manifest.json) holding `table`."""
    metrics, counts = aggregate_metrics("t2i", table)
    result = EvalResult(metrics, counts, {k for k, n in counts.items() if n < THIN_BELOW}, rankings={},
                        query_rows=np.arange(len(table)), ks=(1, 5, 10), queries={"t2i": table})
    return write_eval_dir(result, manifest_of(table, **manifest_changes), eval_dir)
