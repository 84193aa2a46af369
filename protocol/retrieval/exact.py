"""Exact top-k inner-product search: a chunked matrix product with bounded memory.

The exact search walks the catalog in row chunks. For each chunk it computes the score
block with one matrix product and keeps only the entries that beat the running k-th
score of their query: after the first chunk almost nothing does, so selection costs one
comparison pass instead of a partition of the whole block. When many entries qualify
(the first chunk) the chunk's own k-th value, found with `np.partition`, tightens the
threshold first. Candidates are merged with the running top-k by one `np.lexsort`.

Rankings are sorted by descending score with ties broken by the lower catalog index;
unfilled slots hold index -1 and score -inf (`merge_candidates` enforces both, and the
faiss backends reuse it so every backend orders results the same way).
"""

from __future__ import annotations

import logging

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

# Memory for one score block and its temporaries (float32 scores, a boolean mask and a
# partition copy: ~9 bytes per score; 12 leaves room for candidate arrays). Small blocks
# stay in cache for the selection pass and cost no matmul speed at 1,000 queries.
DEFAULT_BLOCK_BYTES = 64 * 2**20
_BYTES_PER_SCORE = 12


def default_chunk_size(n_queries: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Catalog rows per block so that a block of all queries fits `block_bytes` (at least 1024)."""
    return max(1024, block_bytes // (_BYTES_PER_SCORE * max(n_queries, 1)))


def check_finite_rows(chunk: np.ndarray, offset: int = 0, rows: np.ndarray | None = None) -> None:
    """Refuse catalog rows that hold NaN or inf, naming the first: rows [offset, offset+len(chunk)), or `rows`."""
    if not np.isfinite(chunk).all():
        first = int(np.flatnonzero(~np.isfinite(chunk).all(axis=1))[0])
        bad = offset + first if rows is None else int(rows[first])
        raise ValueError(f"catalog row {bad} contains NaN or inf; rebuild the catalog embeddings")


def exact_topk(queries, catalog, k, exclude, chunk_size=None, block_bytes=DEFAULT_BLOCK_BYTES):
    """Top-k of float32 `queries` over `catalog` (float32/float16) with checked inputs (see search.topk)."""
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
    check_finite_rows(chunk, offset)
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
    run_scores[touched], run_indices[touched] = merge_candidates(
        run_scores[touched], run_indices[touched], local_rows, block.ravel()[flat], cols + offset, k
    )


def merge_candidates(run_scores, run_indices, rows, cand_scores, cand_indices, k):
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


def sort_rankings(scores: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """[Q, w] candidate rankings (any order, -1 = none) as [Q, k] in the contract's order."""
    n_queries = len(scores)
    rows = np.repeat(np.arange(n_queries), indices.shape[1])
    empty = np.empty((n_queries, 0))
    return merge_candidates(empty.astype(np.float32), empty.astype(np.int64), rows, scores.ravel(),
                            indices.ravel(), k)
