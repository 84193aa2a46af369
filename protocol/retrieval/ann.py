"""faiss search: exact `IndexFlatIP`, and an approximate IVF-Flat index whose recall is measured on every use.

IVF-Flat splits the catalog into `nlist` k-means cells and scans only the `nprobe` cells
nearest each query. Vectors are stored uncompressed, so every returned score is the
exact inner product and only membership of the top-k is approximate.

Why IVF-Flat, and these parameters (measured on 2 cores, 512-d clustered unit vectors,
text-like queries offset from the image cloud; `benchmarks/bench_search.py`):
- HNSW (M=16/32, efConstruction=80) took 22-24 s to build at 100,000 rows against
  0.8 s for IVF, and text queries, which sit apart from the catalog (the modality
  gap), needed efSearch=256 to reach recall@10 = 0.95 where IVF reached 1.0 at nprobe=8.
- nlist = sqrt(N): k-means costs ~39 * nlist^2 products per iteration, so 4*sqrt(N)
  (the usual advice for search-only workloads) built 7-9x slower (6.6 s vs 0.75 s at
  100,000) and needs twice the nprobe for the same recall; it pays back only after ~40,000
  queries at 100,000 rows.
- nprobe starts at NPROBE_START and doubles until recall on the check sample reaches
  RECALL_TARGET, up to scanning MAX_SCAN_FRACTION of the catalog: faiss scans lists at
  ~1/12 of the scores per second of a BLAS matrix product, so a wider scan is slower than
  exact search. On real catalogs the structure differs from any synthetic set, which is
  why the nprobe is measured, not fixed.

Every use searches a seeded sample of the queries exactly too (`RECALL_QUERIES` of them,
so the check costs RECALL_QUERIES x N scores whatever Q is) and reports
`recall10_vs_exact` for it: the fraction of the exact top-10 (top-k when k < 10) that the
index returned, a tie at the 10th score counting as found.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from protocol.retrieval.exact import check_finite_rows, exact_topk, sort_rankings

logger = logging.getLogger(__name__)

INDEX_NAME = "IVFFlat"
TRAIN_POINTS_PER_LIST = 39  # faiss's own minimum for a stable k-means; 64 gave no better recall
NPROBE_START = 8
MAX_SCAN_FRACTION = 1 / 16
RECALL_TARGET = 0.95
RECALL_QUERIES = 256  # recall@10 to within ~±0.02 (95%), for ~N/600,000 s of exact search on 2 cores
RECALL_AT = 10
KMEANS_ITERATIONS = 10  # faiss's default, set explicitly because the payback estimate below depends on it
# Building and checking the index costs about as much as exact search of
# nlist (assigning N rows to nlist centroids) + TRAIN_POINTS_PER_LIST * KMEANS_ITERATIONS
# (k-means: 39*nlist points x nlist centroids x 10 = 390 N products) + RECALL_QUERIES queries:
# predicted 962 / measured ~1,300 at 100,000 rows, 1,646 / ~1,800 at 1,000,000. With INDEX_PAYBACK
# times that many queries, IVF measured 1.6x (100,000 rows) to 2.7x (1,000,000) faster than exact.
INDEX_PAYBACK = 4
SEED = 0  # training sample, k-means init and recall sample: the same inputs give the same ranking
ADD_CHUNK_ROWS = 65536  # float16 catalogs are widened to float32 this many rows at a time
SEARCH_CHUNK_QUERIES = 16384
SCORE_TOLERANCE = 1e-5  # float32 inner products of unit vectors from two code paths agree to ~1e-6


@dataclass(frozen=True)
class IvfPlan:
    """IVF parameters for a catalog of `n_catalog` rows (module docstring: why these)."""

    n_catalog: int
    nlist: int
    train_points: int
    nprobe_start: int
    nprobe_max: int

    @classmethod
    def for_catalog(cls, n_catalog: int) -> IvfPlan:
        # sqrt(N) lists, but never fewer than TRAIN_POINTS_PER_LIST rows per list to train on
        nlist = max(1, min(round(math.sqrt(n_catalog)), n_catalog // TRAIN_POINTS_PER_LIST))
        nprobe_max = min(nlist, max(NPROBE_START, int(nlist * MAX_SCAN_FRACTION)))
        return cls(n_catalog, nlist, min(n_catalog, TRAIN_POINTS_PER_LIST * nlist),
                   min(NPROBE_START, nprobe_max), nprobe_max)

    @property
    def overhead_queries(self) -> int:
        """Exact queries that cost as much as building the index and checking its recall."""
        return self.nlist + TRAIN_POINTS_PER_LIST * KMEANS_ITERATIONS + RECALL_QUERIES

    def pays_off(self, n_queries: int) -> bool:
        """Enough queries that the index, its build and its recall check included, clearly beats exact search."""
        return n_queries >= INDEX_PAYBACK * self.overhead_queries


def flat_topk(queries: np.ndarray, catalog: np.ndarray, k: int, exclude: np.ndarray | None):
    """Exact top-k with `faiss.IndexFlatIP` (same contract as search.topk)."""
    import faiss  # imported here: the numpy backend does not need it

    index = faiss.IndexFlatIP(catalog.shape[1])
    _add_rows(index, catalog)
    return _search(index, queries, k, exclude)


def ivf_topk(queries: np.ndarray, catalog: np.ndarray, k: int, exclude: np.ndarray | None, report: dict,
             *, require_recall: bool):
    """Approximate top-k with an IVF-Flat index; fills `report` with its parameters and measured recall.

    Returns None, without searching every query, when `require_recall` is set and no
    nprobe up to the plan's maximum reaches RECALL_TARGET on the check sample: the caller
    then searches exactly.
    """
    plan = IvfPlan.for_catalog(len(catalog))
    start = time.perf_counter()
    index = build_ivf(catalog, plan)
    build_seconds = time.perf_counter() - start

    start = time.perf_counter()
    sample = recall_sample(len(queries), RECALL_QUERIES)
    sample_exclude = None if exclude is None else exclude[sample]
    exact = exact_topk(queries[sample], catalog, k, sample_exclude)
    nprobe = plan.nprobe_start
    while True:
        index.nprobe = nprobe
        recall = recall_vs_exact(*_search(index, queries[sample], k, sample_exclude), *exact)
        logger.info("IVF nlist=%d nprobe=%d: recall@%d vs exact %.3f on %d sampled queries",
                    plan.nlist, nprobe, min(k, RECALL_AT), recall, len(sample))
        if recall >= RECALL_TARGET or nprobe >= plan.nprobe_max:
            break
        nprobe = min(2 * nprobe, plan.nprobe_max)
    recall_seconds = time.perf_counter() - start

    report.update(index=INDEX_NAME, nlist=plan.nlist, nprobe=nprobe, train_points=plan.train_points,
                  recall10_vs_exact=recall, recall_at=min(k, RECALL_AT), n_recall_queries=len(sample),
                  recall_target=RECALL_TARGET, build_seconds=build_seconds, recall_seconds=recall_seconds)
    if recall < RECALL_TARGET and require_recall:
        logger.warning("IVF recall@%d %.3f < %.2f even at nprobe=%d (%.0f%% of the catalog scanned): "
                       "searching exactly instead", min(k, RECALL_AT), recall, RECALL_TARGET, nprobe,
                       100 * nprobe / plan.nlist)
        return None
    start = time.perf_counter()
    result = _search(index, queries, k, exclude)
    report["search_seconds"] = time.perf_counter() - start
    return result


def build_ivf(catalog: np.ndarray, plan: IvfPlan):
    """A trained, filled `faiss.IndexIVFFlat` (inner product) over `catalog`; holds a float32 copy of it."""
    import faiss

    dim = catalog.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, plan.nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed, index.cp.niter = SEED, KMEANS_ITERATIONS
    rows = np.sort(np.random.default_rng(SEED).choice(len(catalog), plan.train_points, replace=False))
    train = np.ascontiguousarray(catalog[rows], dtype=np.float32)
    check_finite_rows(train, rows=rows)
    logger.info("building IVF index: %d rows, nlist=%d, k-means on %d rows", len(catalog), plan.nlist, len(train))
    index.train(train)
    _add_rows(index, catalog)
    return index


def recall_sample(n_queries: int, size: int) -> np.ndarray:
    """Sorted rows of a seeded sample of `size` of `n_queries` queries (all of them when fewer)."""
    if n_queries <= size:
        return np.arange(n_queries)
    return np.sort(np.random.default_rng(SEED).choice(n_queries, size, replace=False))


def recall_vs_exact(approx_scores, approx_indices, exact_scores, exact_indices, at: int = RECALL_AT) -> float:
    """Fraction of the exact top-`at` results that the approximate search returned in its top-`at`.

    A result counts as found when its score reaches the exact `at`-th score, so a tie at
    the boundary (duplicate images) is not counted as a miss. Approximate scores must be
    exact inner products (IVF-Flat's are). Queries with no exact result do not count.
    """
    at = min(at, exact_indices.shape[1])
    exact_valid = exact_indices[:, :at] >= 0
    n_true = exact_valid.sum(axis=1)
    if n_true.sum() == 0:
        return 1.0
    boundary = exact_scores[np.arange(len(exact_scores)), np.maximum(n_true - 1, 0)]
    found = (approx_indices[:, :at] >= 0) & (approx_scores[:, :at] >= boundary[:, None] - SCORE_TOLERANCE)
    return float(np.minimum(found.sum(axis=1), n_true).sum() / n_true.sum())


def _add_rows(index, catalog: np.ndarray) -> None:
    with tqdm(total=len(catalog), unit="item", unit_scale=True, desc="index", leave=False,
              disable=len(catalog) < 10 * ADD_CHUNK_ROWS) as bar:
        for c0 in range(0, len(catalog), ADD_CHUNK_ROWS):
            chunk = np.ascontiguousarray(catalog[c0 : c0 + ADD_CHUNK_ROWS], dtype=np.float32)
            check_finite_rows(chunk, c0)
            index.add(chunk)
            bar.update(len(chunk))


def _search(index, queries: np.ndarray, k: int, exclude: np.ndarray | None):
    """faiss search as the search.topk contract: `exclude` dropped, -1/-inf padding, ties to the lower index."""
    extra = 0 if exclude is None or (exclude < 0).all() else 1
    scores = np.empty((len(queries), k + extra), dtype=np.float32)
    indices = np.empty((len(queries), k + extra), dtype=np.int64)
    with tqdm(total=len(queries), unit="item", desc="search", leave=False,
              disable=len(queries) < 4 * SEARCH_CHUNK_QUERIES) as bar:
        for q0 in range(0, len(queries), SEARCH_CHUNK_QUERIES):
            q1 = min(q0 + SEARCH_CHUNK_QUERIES, len(queries))
            scores[q0:q1], indices[q0:q1] = index.search(queries[q0:q1], k + extra)
            bar.update(q1 - q0)
    scores[indices < 0] = -np.inf
    if extra:
        dropped = indices == exclude[:, None]
        scores[dropped], indices[dropped] = -np.inf, -1
    return sort_rankings(scores, indices, k)
