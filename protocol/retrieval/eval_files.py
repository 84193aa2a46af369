"""The eval/ directory an evaluation leaves, and what makes two evaluations comparable.

```
<eval_dir>/metrics.json                 every overall figure: {"value", "n", "thin"}
<eval_dir>/metrics_by_<attribute>.json  {mode: {value: {p1, p5, p10, map10, n, thin}}}
<eval_dir>/queries_<mode>.parquet       the per-query table of each mode (protocol.retrieval.metrics)
<eval_dir>/queries_c2i.parquet          the class-name queries' table, when c2i was evaluated
                                        (protocol.retrieval.class_queries; one row per class)
<eval_dir>/manifest.json                what was evaluated: EvalManifest, written last
```
The directory is written as a whole, atomically. The parquet tables carry the dataset
and backbone fingerprints (`protocol.provenance`); manifest.json carries them under
"provenance", beside the catalog splits, the query split, the query ids' sha256 and the
metric-definition version: the five things the scoreboard checks before comparing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from protocol.io import atomic_path, read_json, write_json
from protocol.provenance import check_provenance, provenance, read_parquet, write_parquet
from protocol.retrieval.class_queries import CLASS_QUERY_MODE
from protocol.retrieval.metrics import ATTRIBUTES, METRIC_VERSION, EvalResult, by_attribute_table, parse_metric_key

MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.json"
MADE_BY = "the baseline or evaluate stage"


def query_table_file(mode: str) -> str:
    return f"queries_{mode}.parquet"


def query_ids_sha256(query_ids: Iterable[str]) -> str:
    """sha256 of the sorted query ids, one per line: equal exactly when two query sets are."""
    return hashlib.sha256("\n".join(sorted(map(str, query_ids))).encode()).hexdigest()


@dataclass(frozen=True)
class EvalManifest:
    """What one evaluation was made from and on; two evaluations compare only when these agree."""

    dataset_fingerprint: str
    backbone_fingerprint: str
    catalog_splits: tuple[str, ...]
    query_split: tuple[str, ...]
    query_ids_sha256: str
    n_queries: int
    metric_version: int
    modes: tuple[str, ...]

    def comparable_fields(self) -> dict[str, Any]:
        """The five things compared across evaluations, by name (JSON-ready)."""
        return {
            "dataset_fingerprint": self.dataset_fingerprint,
            "query_ids": {"sha256": self.query_ids_sha256, "n": self.n_queries},
            "catalog_splits": list(self.catalog_splits),
            "backbone_fingerprint": self.backbone_fingerprint,
            "metric_version": self.metric_version,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "provenance": provenance(self.dataset_fingerprint, self.backbone_fingerprint),
            "catalog_splits": list(self.catalog_splits),
            "query_split": list(self.query_split),
            "query_ids_sha256": self.query_ids_sha256,
            "n_queries": self.n_queries,
            "metric_version": self.metric_version,
            "modes": list(self.modes),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "EvalManifest":
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}; re-run {MADE_BY}")
        record = data.get("provenance")
        check_provenance(record, where, made_by=MADE_BY)
        missing = [k for k in ("catalog_splits", "query_split", "query_ids_sha256", "n_queries", "metric_version",
                               "modes") if k not in data]
        if missing or "backbone_fingerprint" not in record:
            raise ValueError(f"{where} lacks {missing or ['provenance.backbone_fingerprint']}: it was written by an "
                             f"older version; re-run {MADE_BY}")
        return cls(
            dataset_fingerprint=record["dataset_fingerprint"], backbone_fingerprint=record["backbone_fingerprint"],
            catalog_splits=tuple(data["catalog_splits"]), query_split=tuple(data["query_split"]),
            query_ids_sha256=str(data["query_ids_sha256"]), n_queries=int(data["n_queries"]),
            metric_version=int(data["metric_version"]), modes=tuple(data["modes"]),
        )


def eval_manifest(result: EvalResult, *, dataset_fingerprint: str, backbone_fingerprint: str,
                  catalog_splits: Iterable[str], query_split: Iterable[str]) -> EvalManifest:
    """The manifest of `result`: its query ids are those of its per-query tables (the same in every mode)."""
    tables = list(result.queries.values())
    if not tables:
        raise ValueError("the evaluation has no per-query table: evaluate at least one mode")
    ids = tables[0]["query_id"]
    return EvalManifest(
        dataset_fingerprint=dataset_fingerprint, backbone_fingerprint=backbone_fingerprint,
        catalog_splits=tuple(sorted(set(catalog_splits))), query_split=tuple(sorted(set(query_split))),
        query_ids_sha256=query_ids_sha256(ids), n_queries=len(ids), metric_version=METRIC_VERSION,
        modes=tuple(result.queries),
    )


def write_eval_dir(result: EvalResult, manifest: EvalManifest, eval_dir: str | Path) -> Path:
    """The whole eval/ directory (layout above), in one rename."""
    eval_dir = Path(eval_dir)
    record = provenance(manifest.dataset_fingerprint, manifest.backbone_fingerprint)
    with atomic_path(eval_dir) as tmp:
        tmp.mkdir()
        write_eval_json(result, tmp)
        for mode, table in result.queries.items():
            write_parquet(table, tmp / query_table_file(mode), record)
        if result.class_queries is not None:
            write_parquet(result.class_queries, tmp / query_table_file(CLASS_QUERY_MODE), record)
        write_json(tmp / MANIFEST_FILE, manifest.to_dict())
    return eval_dir


def write_eval_json(result: EvalResult, eval_dir: str | Path) -> None:
    """eval/metrics.json (every non-per-value key) and metrics_by_{attribute}.json, atomically."""
    eval_dir = Path(eval_dir)
    overall = {
        key: {"value": value, "n": result.counts[key], "thin": key in result.thin}
        for key, value in sorted(result.metrics.items())
        if parse_metric_key(key)[3] is None
    }
    write_json(eval_dir / METRICS_FILE, overall)
    for attribute in ATTRIBUTES:
        table = by_attribute_table(result, attribute)
        nested: dict[str, dict[str, dict]] = {}
        for record in table.to_dict(orient="records"):
            mode, value = record.pop("mode"), record.pop("value")
            nested.setdefault(mode, {})[value] = record
        write_json(eval_dir / f"metrics_by_{attribute}.json", nested)


def read_eval_manifest(eval_dir: str | Path, what: str) -> EvalManifest:
    """The manifest of an eval/ directory; `what` names it in errors (e.g. "eval of version 3")."""
    path = Path(eval_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{what}: {path} does not exist, so nothing says what this evaluation was made on "
            f"(it predates per-query evidence, or is not an eval directory); re-run {MADE_BY}"
        )
    return EvalManifest.from_dict(read_json(path), f"{what}: {path}")


def read_query_table(eval_dir: str | Path, mode: str, manifest: EvalManifest, what: str) -> pd.DataFrame:
    """One mode's per-query table, checked against the manifest's fingerprints and query ids."""
    if mode not in manifest.modes:
        raise ValueError(f"{what}: mode {mode!r} was not evaluated (modes: {', '.join(manifest.modes)}); "
                         f"re-run {MADE_BY} with it")
    path = Path(eval_dir) / query_table_file(mode)
    table, _ = read_parquet(path, f"{what}: per-query table", dataset=manifest.dataset_fingerprint,
                            backbone=manifest.backbone_fingerprint, made_by=MADE_BY)
    if query_ids_sha256(table["query_id"]) != manifest.query_ids_sha256:
        raise ValueError(f"{what}: {path} holds other queries than its manifest names; the directory was "
                         f"altered after it was written: re-run {MADE_BY}")
    return table


def read_class_query_table(eval_dir: str | Path, manifest: EvalManifest, what: str) -> pd.DataFrame | None:
    """The c2i table of an eval/ directory, checked against its manifest; None when c2i was not evaluated."""
    path = Path(eval_dir) / query_table_file(CLASS_QUERY_MODE)
    if not path.is_file():
        return None
    table, _ = read_parquet(path, f"{what}: class-query table", dataset=manifest.dataset_fingerprint,
                            backbone=manifest.backbone_fingerprint, made_by=MADE_BY)
    return table
