"""Exact top-k against numpy brute force; faiss against exact."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.retrieval.search import merge_topk, topk


def brute_force(queries, catalog, k, exclude=None):
    """Full score matrix, stable sort by (-score, index); excluded rows removed."""
    scores = queries.astype(np.float32) @ catalog.astype(np.float32).T
    if exclude is not None:
        has = exclude >= 0
        scores[np.flatnonzero(has), exclude[has]] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, axis=1)
    order[np.isneginf(top)] = -1
    return top, order


def unit_rows(rng, n, dim=16, dtype=np.float32):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


@pytest.mark.parametrize("n_catalog, k, chunk_size", [(100, 5, 13), (100, 10, 10), (64, 7, 64), (50, 3, 1), (300, 10, None)])
def test_exact_matches_brute_force_across_chunk_boundaries(n_catalog, k, chunk_size):
    rng = np.random.default_rng(n_catalog + k)
    queries, catalog = unit_rows(rng, 9), unit_rows(rng, n_catalog)
    exclude = rng.integers(-1, n_catalog, size=9)
    scores, indices = topk(queries, catalog, k, chunk_size=chunk_size, exclude=exclude)
    expected_scores, expected_indices = brute_force(queries, catalog, k, exclude)
    assert scores.dtype == np.float32 and indices.dtype == np.int64 and indices.shape == (9, k)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6, atol=1e-6)
    assert not (indices == exclude[:, None]).any()


def test_ties_go_to_the_lower_index_in_every_chunking():
    catalog = np.array([[1, 0], [1, 0], [0, 1], [1, 0], [1, 0], [1, 0]], np.float32)
    queries = np.array([[1, 0], [0, 1]], np.float32)
    for chunk_size in (1, 2, 4, 6):
        _, indices = topk(queries, catalog, 3, chunk_size=chunk_size)
        # query 0 ties at 1.0 on rows 0,1,3,4,5 -> lowest three; query 1: row 2, then ties at 0 -> 0, 1
        np.testing.assert_array_equal(indices, [[0, 1, 3], [2, 0, 1]])


def test_small_catalog_and_exclusion_pad_with_minus_one():
    rng = np.random.default_rng(1)
    catalog = unit_rows(rng, 3)
    scores, indices = topk(unit_rows(rng, 2), catalog, 5, exclude=np.array([1, -1]), chunk_size=2)
    assert (indices[0, 2:] == -1).all() and 1 not in indices[0]
    assert sorted(indices[1, :3]) == [0, 1, 2] and (indices[1, 3:] == -1).all()
    assert np.isneginf(scores[indices == -1]).all()


def test_float16_inputs_are_scored_in_float32():
    rng = np.random.default_rng(2)
    queries, catalog = unit_rows(rng, 5, dtype=np.float16), unit_rows(rng, 40, dtype=np.float16)
    scores, indices = topk(queries, catalog, 4, chunk_size=7)
    expected_scores, expected_indices = brute_force(queries, catalog, 4)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)


def test_faiss_agrees_with_exact():
    rng = np.random.default_rng(3)
    queries, catalog = unit_rows(rng, 20, 32), unit_rows(rng, 500, 32)
    exclude = rng.integers(-1, 500, size=20)
    exact_scores, exact_indices = topk(queries, catalog, 10, exclude=exclude)
    faiss_scores, faiss_indices = topk(queries, catalog, 10, exclude=exclude, backend="faiss")
    np.testing.assert_array_equal(faiss_indices, exact_indices)
    np.testing.assert_allclose(faiss_scores, exact_scores, atol=1e-5)
    # k beyond the catalog: faiss pads the same way
    _, small = topk(queries[:2], catalog[:3], 5, backend="faiss")
    assert (small[:, 3:] == -1).all()


def test_merge_of_two_galleries_equals_search_of_their_union():
    rng = np.random.default_rng(4)
    queries, a, b = unit_rows(rng, 6), unit_rows(rng, 30), unit_rows(rng, 20)
    sa, ia = topk(queries, a, 8)
    sb, ib = topk(queries, b, 8)
    _, merged = merge_topk(sa, ia, sb, ib + len(a), 8)
    _, union = topk(queries, np.concatenate([a, b]), 8)
    np.testing.assert_array_equal(merged, union)


def test_bad_input_is_refused_with_a_reason():
    rng = np.random.default_rng(5)
    q, c = unit_rows(rng, 2, 8), unit_rows(rng, 4, 8)
    with pytest.raises(ValueError, match="dimension 8 but the catalog has 4"):
        topk(q, c[:, :4].copy(), 2)
    with pytest.raises(ValueError, match="exclude\\[1\\] = 4 is not a catalog row"):
        topk(q, c, 2, exclude=np.array([0, 4]))
    with pytest.raises(ValueError, match="float32 or float16"):
        topk(q.astype(np.float64), c, 2)
    c[2, 3] = np.nan
    with pytest.raises(ValueError, match="catalog row 2 contains NaN"):
        topk(q, c, 2, chunk_size=2)
    with pytest.raises(ValueError, match="unknown search backend"):
        topk(q, c, 2, backend="annoy")
