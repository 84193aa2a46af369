"""Top-k inner-product search: exact (chunked matrix product, bounded memory) or faiss.

Both backends return the same contract: `(scores [Q, k] float32, indices [Q, k] int64)`,
each row sorted by descending score with ties broken by the lower catalog index, so
rankings are deterministic. Slots that cannot be filled (k larger than the catalog, or
the only candidate excluded) hold index -1 and score -inf.

Exact search walks the catalog in row chunks. For each chunk it computes the score
block with one matrix product and keeps only the entries that beat the running k-th
score of their query: after the first chunk almost nothing does, so selection costs one
comparison pass instead of a partition of the whole block. When many entries qualify
(the first chunk) the chunk's own k-th value, found with `np.partition`, tightens the
threshold first. Candidates are merged with the running top-k by one `np.lexsort`.
"""

from __future__ import annotations

import logging

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

BACKENDS = ("exact", "faiss", "auto")

# Memory for one score block and its temporaries (float32 scores, a boolean mask and a
# partition copy: ~9 bytes per score; 12 leaves room for candidate arrays). Small blocks
# stay in cache for the selection pass and cost no matmul speed at 1,000 queries.
DEFAULT_BLOCK_BYTES = 64 * 2**20
_BYTES_PER_SCORE = 12


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
) -> tuple[np.ndarray, np.ndarray]:
    """The k catalog rows with the highest inner product for every query.

    queries [Q, D], catalog [N, D]: float32 or float16 (scores are computed in float32;
    pass L2-normalised rows for cosine similarity). `chunk_size` is the number of catalog
    rows per block (chosen from `block_bytes` when None); queries are blocked too so one
    score block never exceeds `block_bytes`. `exclude` [Q] holds one catalog row to drop
    per query (-1 = none). `backend="faiss"` uses `faiss.IndexFlatIP`; it agrees with
    "exact" except in the order of tied scores at the k-th place. `backend="auto"` picks the
    search by catalog size. `report`, when given, is filled with what was used
    (`{"backend": ...}`, and for an approximate index its parameters and measured recall).
    """
    queries, catalog = _check_matrices(queries, catalog)
    k = _check_k(k)
    exclude = _check_exclude(exclude, len(queries), len(catalog))
    if backend == "auto":
        backend = "exact"
    if report is not None:
        report["backend"] = backend
    if backend == "exact":
        return _exact_topk(queries, catalog, k, exclude, chunk_size, block_bytes)
    if backend == "faiss":
        return _faiss_topk(queries, catalog, k, exclude)
    raise ValueError(f"unknown search backend {backend!r}; use one of {BACKENDS}")


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
    return _merge_candidates(scores_a, indices_a, rows_b, scores_b.ravel(), indices_b.ravel(), k)


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


def default_chunk_size(n_queries: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Catalog rows per block so that a block of all queries fits `block_bytes` (at least 1024)."""
    return max(1024, block_bytes // (_BYTES_PER_SCORE * max(n_queries, 1)))


def _exact_topk(queries, catalog, k, exclude, chunk_size, block_bytes):
    n_queries, n_catalog = len(queries), len(catalog)
    chunk_size = int(chunk_size) if chunk_size else default_chunk_size(n_queries, block_bytes)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    query_block = max(1, block_bytes // (_BYTES_PER_SCORE * chunk_size))
    scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    indices = np.full((n_queries, k), -1, dtype=np.int64)
    logger.debug("exact top-%d: %d queries x %d catalog rows in blocks of %d x %d",
                 k, n_queries, n_catalog, query_block, chunk_size)
    with tqdm(total=n_queries * n_catalog, unit="item", unit_scale=True, desc="search", leave=False,
              disable=n_queries * n_catalog < 200_000_000) as bar:
        for q0 in range(0, n_queries, query_block):
            q1 = min(q0 + query_block, n_queries)
            ex = None if exclude is None else exclude[q0:q1]
            for c0 in range(0, n_catalog, chunk_size):
                c1 = min(c0 + chunk_size, n_catalog)
                _scan_chunk(queries[q0:q1], catalog[c0:c1], c0, scores[q0:q1], indices[q0:q1], ex, k)
                bar.update((q1 - q0) * (c1 - c0))
    return scores, indices


def _scan_chunk(queries, chunk, offset, run_scores, run_indices, exclude, k):
    """Fold catalog rows [offset, offset+len(chunk)) into the running top-k, in place."""
    chunk = np.asarray(chunk, dtype=np.float32)
    if not np.isfinite(chunk).all():
        bad = offset + int(np.flatnonzero(~np.isfinite(chunk).all(axis=1))[0])
        raise ValueError(f"catalog row {bad} contains NaN or inf; rebuild the catalog embeddings")
    block = queries @ chunk.T
    if exclude is not None:
        hit = (exclude >= offset) & (exclude < offset + len(chunk))
        block[np.flatnonzero(hit), exclude[hit] - offset] = -np.inf
    # Chunks arrive in increasing row order, so an entry tied with the running k-th score
    # loses the tie-break to it: strictly greater is the exact condition.
    threshold = run_scores[:, -1:]
    mask = block > threshold
    if np.count_nonzero(mask) > 4 * k * len(queries) and block.shape[1] > k:
        kth = np.partition(block, block.shape[1] - k, axis=1)[:, block.shape[1] - k, None]
        mask &= block >= kth
    # 1-D flatnonzero is ~20x faster than 2-D nonzero on a sparse mask.
    flat = np.flatnonzero(mask)
    if flat.size == 0:
        return
    rows, cols = np.divmod(flat, block.shape[1])
    # Late chunks improve few queries: merge only the rows that have candidates.
    touched, local_rows = np.unique(rows, return_inverse=True)
    run_scores[touched], run_indices[touched] = _merge_candidates(
        run_scores[touched], run_indices[touched], local_rows, block.ravel()[flat], cols + offset, k
    )


def _merge_candidates(run_scores, run_indices, rows, cand_scores, cand_indices, k):
    """Top-k per row of the running [Q, w] ranking plus (row, score, index) candidates."""
    n_queries, width = run_scores.shape
    all_rows = np.concatenate([np.repeat(np.arange(n_queries), width), rows])
    all_scores = np.concatenate([run_scores.ravel(), cand_scores.astype(np.float32, copy=False)])
    all_indices = np.concatenate([run_indices.ravel(), cand_indices.astype(np.int64, copy=False)])
    # Padding (-1) must lose every tie, so sort it as the largest index.
    tie_key = np.where(all_indices < 0, np.iinfo(np.int64).max, all_indices)
    order = np.lexsort((tie_key, -all_scores, all_rows))
    per_row = np.bincount(all_rows, minlength=n_queries)
    starts = np.cumsum(per_row) - per_row
    slots = np.arange(k)
    take = starts[:, None] + np.minimum(slots, per_row[:, None] - 1)
    scores = all_scores[order[take]]
    indices = all_indices[order[take]]
    short = slots[None, :] >= per_row[:, None]
    scores[short], indices[short] = -np.inf, -1
    indices[scores == -np.inf] = -1
    return scores, indices


def _faiss_topk(queries, catalog, k, exclude):
    import faiss  # imported here: the exact backend does not need it

    index = faiss.IndexFlatIP(catalog.shape[1])
    for c0 in range(0, len(catalog), 65536):  # float16 catalogs are widened chunk by chunk
        index.add(np.ascontiguousarray(catalog[c0 : c0 + 65536], dtype=np.float32))
    extra = 0 if exclude is None or (exclude < 0).all() else 1
    scores, indices = index.search(queries, k + extra)
    indices = indices.astype(np.int64)
    scores = np.where(indices < 0, -np.inf, scores).astype(np.float32)
    if extra:
        dropped = indices == exclude[:, None]
        scores[dropped], indices[dropped] = -np.inf, -1
    # Re-sort so ties follow the exact backend's rule and dropped slots go last.
    rows = np.repeat(np.arange(len(queries)), indices.shape[1])
    empty = np.empty((len(queries), 0))
    return _merge_candidates(empty.astype(np.float32), empty.astype(np.int64), rows, scores.ravel(), indices.ravel(), k)
