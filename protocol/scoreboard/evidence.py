"""The evidence behind a verdict: per-query tables and manifests of evaluations, paired on query ids.

An evaluation's eval/ directory (`protocol.retrieval.eval_files`) holds one per-query
table per mode and a manifest naming what it was made on. Two evaluations are compared
only when their manifests agree on the five COMPARED fields; otherwise the comparison
is refused with an error naming each field that differs and both values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from protocol.retrieval.eval_files import EvalManifest, read_class_query_table, read_eval_manifest, read_query_table
from protocol.retrieval.metrics import EvalResult, metric_per_query

# What two evaluations must share to be compared (EvalManifest.comparable_fields names them).
COMPARED = ("dataset_fingerprint", "query_ids", "catalog_splits", "backbone_fingerprint", "metric_version")


class NotComparableError(ValueError):
    """Two evaluations were not made on the same data, queries, catalog, backbone or metric definitions."""


class MissingMetricError(KeyError):
    """A target metric is not computed by an evaluation's per-query table."""

    def __str__(self) -> str:  # KeyError would repr() the message with quotes
        return str(self.args[0])


@dataclass(frozen=True)
class Evidence:
    """One side of a comparison: what its evaluation was made on, and its per-query tables by mode."""

    what: str  # names it in messages, e.g. "candidate (version 3)"
    manifest: EvalManifest
    tables: Mapping[str, pd.DataFrame]
    class_queries: pd.DataFrame | None = None  # the c2i table; None for an evaluation made without c2i

    def table(self, mode: str) -> pd.DataFrame:
        if mode not in self.tables:
            raise ValueError(f"{self.what}: no per-query table for mode {mode!r} (has {sorted(self.tables)}); "
                             "evaluate that mode with the baseline or evaluate stage")
        return self.tables[mode]

    def values(self, mode: str, metric: str) -> pd.Series:
        """Per-query values behind `metric`, indexed by query id (empty when no query is behind it)."""
        try:
            return metric_per_query(self.table(mode), metric)
        except ValueError as e:
            raise MissingMetricError(f"{self.what}: {e}") from e


def read_evidence(eval_dir: str | Path, what: str, modes: Sequence[str] | None = None) -> Evidence:
    """The manifest and per-query tables (of `modes`, default all) of an eval/ directory."""
    manifest = read_eval_manifest(eval_dir, what)
    tables = {mode: read_query_table(eval_dir, mode, manifest, what) for mode in (modes or manifest.modes)}
    return Evidence(what, manifest, tables, read_class_query_table(eval_dir, manifest, what))


def evidence_of(result: EvalResult, manifest: EvalManifest, what: str) -> Evidence:
    """An evaluation still in memory (e.g. the candidate inside the evaluate stage)."""
    return Evidence(what, manifest, result.queries, result.class_queries)


def check_comparable(sides: Sequence[Evidence]) -> dict[str, Any]:
    """{"checked": COMPARED, "<what>": {field: value}, ...} when all sides agree; else NotComparableError.

    The error names every field that differs, with each side's value, and what to re-run.
    """
    values = [side.manifest.comparable_fields() for side in sides]
    differing = [name for name in COMPARED if any(v[name] != values[0][name] for v in values[1:])]
    if differing:
        lines = [f"  {name}: " + "; ".join(f"{side.what} {v[name]}" for side, v in zip(sides, values))
                 for name in differing]
        raise NotComparableError(
            f"{' and '.join(side.what for side in sides)} were not evaluated on the same things, so their "
            f"metrics cannot be compared; these differ:\n" + "\n".join(lines) + "\n"
            "Evaluate both on the same processed dataset, query split and catalog splits, with the same "
            "backbone and metric code (re-run baseline/evaluate for the side that is out of date)."
        )
    return {"checked": list(COMPARED), **{side.what: v for side, v in zip(sides, values)}}


@dataclass(frozen=True)
class Paired:
    """The queries both sides scored for one metric, aligned: baseline[i] and candidate[i] are query_ids[i]."""

    query_ids: np.ndarray
    baseline: np.ndarray
    candidate: np.ndarray
    n_baseline: int  # queries behind the figure on each side, before pairing
    n_candidate: int

    @property
    def n(self) -> int:
        return len(self.query_ids)


def paired_values(baseline: Evidence, candidate: Evidence, mode: str, metric: str) -> Paired:
    """Pair the two sides' per-query values of `metric` on their query ids (sorted)."""
    base, cand = baseline.values(mode, metric), candidate.values(mode, metric)
    ids = np.array(sorted(set(base.index) & set(cand.index)), dtype=object)
    return Paired(ids, base.loc[ids].to_numpy(np.float64) if len(ids) else np.zeros(0),
                  cand.loc[ids].to_numpy(np.float64) if len(ids) else np.zeros(0), len(base), len(cand))

