"""Top-k inner-product search: exact (chunked matrix product, bounded memory) or faiss, exact or approximate.

Every backend returns the same contract: `(scores [Q, k] float32, indices [Q, k] int64)`,
each row sorted by descending score with ties broken by the lower catalog index, so
rankings are deterministic. Slots that cannot be filled (k larger than the catalog, or
the only candidate excluded) hold index -1 and score -inf.

Backends: `exact` (numpy, `protocol/retrieval/exact.py`), `faiss` (`IndexFlatIP`, exact),
`ivf` (faiss IVF-Flat, approximate, `protocol/retrieval/ann.py`) and `auto`, which
searches exactly unless the catalog has at least APPROX_MIN_CATALOG rows AND there are
enough queries for an index to pay for itself; then IVF, with its recall against exact
search measured on a sample and the search falling back to exact when the recall target
is not reached.
"""

from __future__ import annotations

import logging
import time
from typing import Mapping, Sequence

import numpy as np

from protocol.retrieval.ann import IvfPlan, flat_topk, ivf_topk
from protocol.retrieval.exact import DEFAULT_BLOCK_BYTES, default_chunk_size, exact_topk, merge_candidates

logger = logging.getLogger(__name__)

__all__ = ["APPROX_MIN_CATALOG", "BACKENDS", "choose_backend", "combine_reports", "default_chunk_size", "merge_topk",
           "search_log_entries", "topk"]

BACKENDS = ("exact", "faiss", "ivf", "auto")

# Catalog rows from which `auto` may use the approximate index. Measured on 2 cores with
# evaluation-shaped work (queries = 0.3 x catalog, as a 20% test split against a 70%
# catalog; `benchmarks/bench_search.py --sweep`): below this size exact search of all
# queries takes seconds and IVF (build + recall check + search) is not twice as fast;
# at this size exact takes ~20 s per mode and IVF is ~3x faster, and the gap grows as N
# (exact is Q x N = 0.3 N^2, IVF ~ N^1.5).
APPROX_MIN_CATALOG = 100_000


def topk(
    queries: np.ndarray,
    catalog: np.ndarray,
    k: int,
    *,
    chunk_size: int | None = None,
    exclude: np.ndarray | None = None,
    backend: str = "exact",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    report: dict | None = None,
    approx_min_catalog: int = APPROX_MIN_CATALOG,
) -> tuple[np.ndarray, np.ndarray]:
    """The k catalog rows with the highest inner product for every query.

    queries [Q, D], catalog [N, D]: float32 or float16 (scores are computed in float32;
    pass L2-normalised rows for cosine similarity). `chunk_size` is the number of catalog
    rows per block (chosen from `block_bytes` when None); queries are blocked too so one
    score block never exceeds `block_bytes`. `exclude` [Q] holds one catalog row to drop
    per query (-1 = none). `backend="faiss"` uses `faiss.IndexFlatIP`; it agrees with
    "exact" except in the order of tied scores at the k-th place. `backend="ivf"` uses an
    approximate IVF-Flat index; `backend="auto"` chooses (`choose_backend`, with the catalog
    threshold `approx_min_catalog`).

    `report`, when given, is cleared and filled with what this call used: `backend`
    ("exact" | "faiss" | "ivf"), `reason` (why auto chose it), `n_queries`, `n_catalog`,
    `search_seconds`, and for the IVF index `index`, `nlist`, `nprobe`, `train_points`,
    `build_seconds`, `recall_seconds`, `recall10_vs_exact` (measured on `n_recall_queries`
    sampled queries searched exactly, at `recall_at` = min(k, 10)) and `recall_target`.
    Numbers are meant as metrics, strings as tags.
    """
    queries, catalog = _check_matrices(queries, catalog)
    k = _check_k(k)
    exclude = _check_exclude(exclude, len(queries), len(catalog))
    if backend not in BACKENDS:
        raise ValueError(f"unknown search backend {backend!r}; use one of {BACKENDS}")
    report = {} if report is None else report
    report.clear()
    requested, reason = backend, f"backend={backend!r} requested"
    if backend == "auto":
        backend, reason = choose_backend(len(queries), len(catalog), approx_min_catalog)
    report.update(backend=backend, reason=reason, n_queries=len(queries), n_catalog=len(catalog))
    start = time.perf_counter()
    result = None
    if backend == "ivf":
        result = ivf_topk(queries, catalog, k, exclude, report, require_recall=requested == "auto")
        if result is None:
            report.update(backend="exact", reason=f"auto: IVF recall {report['recall10_vs_exact']:.3f} "
                                                  f"< target {report['recall_target']} at nprobe={report['nprobe']}")
            backend = "exact"
    if backend == "faiss":
        result = flat_topk(queries, catalog, k, exclude)
    elif backend == "exact":
        result = exact_topk(queries, catalog, k, exclude, chunk_size, block_bytes)
    report.setdefault("search_seconds", time.perf_counter() - start)
    return result


def choose_backend(n_queries: int, n_catalog: int, approx_min_catalog: int = APPROX_MIN_CATALOG) -> tuple[str, str]:
    """("exact" | "ivf", why) for `backend="auto"`: IVF only for a big catalog and enough queries to pay for it."""
    if n_catalog < approx_min_catalog:
        return "exact", f"auto: catalog of {n_catalog} rows < {approx_min_catalog}"
    plan = IvfPlan.for_catalog(n_catalog)
    if not plan.pays_off(n_queries):
        return "exact", (f"auto: {n_queries} queries are too few to pay for an index of "
                         f"{plan.nlist} lists over {n_catalog} rows")
    return "ivf", f"auto: catalog of {n_catalog} rows >= {approx_min_catalog} and {n_queries} queries"


def combine_reports(reports: Sequence[dict]) -> dict:
    """One report for the several searches of one job (evaluation's two galleries, mining's blocks).

    Counts and seconds are summed; `backend` names every backend used ("exact", "ivf" or
    "exact+ivf"); the index parameters and `recall10_vs_exact` are those of the search with
    the lowest measured recall (the worst case is what a reader must know), else of the
    largest catalog searched. `n_searches` / `n_approx_searches` say how many there were.
    """
    reports = [r for r in reports if r]
    if not reports:
        return {}
    measured = [r for r in reports if "recall10_vs_exact" in r]
    headline = (min(measured, key=lambda r: r["recall10_vs_exact"]) if measured
                else max(reports, key=lambda r: r["n_catalog"]))
    combined = dict(headline)
    combined.update(
        backend="+".join(sorted({r["backend"] for r in reports})),
        n_searches=len(reports),
        n_approx_searches=sum(r["backend"] == "ivf" for r in reports),
        n_queries=sum(r["n_queries"] for r in reports),
        n_catalog=max(r["n_catalog"] for r in reports),
    )
    for key in ("search_seconds", "build_seconds", "recall_seconds"):
        if any(key in r for r in reports):
            combined[key] = sum(r.get(key, 0.0) for r in reports)
    return combined


def search_log_entries(report: Mapping, prefix: str = "search") -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, tags) to log for a `topk` report: numbers become metrics, strings tags, as `<prefix>.<key>`.

    A mapping of reports (e.g. one per evaluation mode) is flattened as `<prefix>.<name>.<key>`.
    """
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for key, value in report.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            sub_metrics, sub_tags = search_log_entries(value, name)
            metrics.update(sub_metrics)
            tags.update(sub_tags)
        elif isinstance(value, str):
            tags[name] = value
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            metrics[name] = float(value)
    return metrics, tags


def merge_topk(
    scores_a: np.ndarray, indices_a: np.ndarray, scores_b: np.ndarray, indices_b: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of the union of two rankings of the same queries (e.g. two galleries).

    Indices must already be in one shared index space (offset the second gallery);
    -1 entries are padding and stay at the end.
    """
    if scores_a.shape[0] != scores_b.shape[0]:
        raise ValueError(f"cannot merge rankings of {scores_a.shape[0]} and {scores_b.shape[0]} queries")
    n_queries, width_b = scores_b.shape
    rows_b = np.repeat(np.arange(n_queries), width_b)
    return merge_candidates(scores_a, indices_a, rows_b, scores_b.ravel(), indices_b.ravel(), k)


def _check_matrices(queries: np.ndarray, catalog: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    queries, catalog = np.asarray(queries), np.asarray(catalog)
    for name, m in (("queries", queries), ("catalog", catalog)):
        if m.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array [rows, dim], got shape {m.shape}")
        if m.dtype not in (np.float32, np.float16):
            raise ValueError(f"{name} must be float32 or float16, got {m.dtype}; cast it with .astype(np.float32)")
    if queries.shape[1] != catalog.shape[1]:
        raise ValueError(
            f"queries have dimension {queries.shape[1]} but the catalog has {catalog.shape[1]}; "
            "embed both with the same model"
        )
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if not np.isfinite(queries).all():
        raise ValueError("queries contain NaN or inf; check the embeddings that produced them")
    return queries, catalog


def _check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _check_exclude(exclude: np.ndarray | None, n_queries: int, n_catalog: int) -> np.ndarray | None:
    if exclude is None:
        return None
    exclude = np.asarray(exclude)
    if exclude.shape != (n_queries,) or not np.issubdtype(exclude.dtype, np.integer):
        raise ValueError(f"exclude must be an integer array of shape ({n_queries},), got {exclude.dtype} {exclude.shape}")
    bad = (exclude < -1) | (exclude >= n_catalog)
    if bad.any():
        q = int(np.flatnonzero(bad)[0])
        raise ValueError(f"exclude[{q}] = {exclude[q]} is not a catalog row (0..{n_catalog - 1}) or -1")
    return exclude.astype(np.int64)
