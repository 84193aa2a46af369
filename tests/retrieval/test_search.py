"""Exact top-k against numpy brute force; faiss against exact; the IVF index against exact (recall) and auto's choice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from protocol.retrieval.ann import RECALL_QUERIES, RECALL_TARGET, IvfPlan, recall_vs_exact
from protocol.retrieval.search import combine_reports, merge_topk, search_log_entries, topk


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


# ---------------------------------------------------------------- approximate search (IVF)

def clustered_rows(rng, n, centres, spread=0.35):
    """Unit rows around the given cluster centres: the structure real embeddings have and an index exploits."""
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, centres.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def clustered():
    """A 4,000-row catalog and 3,000 queries: enough queries that an index pays for itself (IvfPlan.pays_off)."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((60, 32))
    return clustered_rows(rng, 3000, centres), clustered_rows(rng, 4000, centres)


def recall_at_10(approx_indices, exact_indices):
    return np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx_indices[:, :10], exact_indices[:, :10])])


def test_auto_switches_to_ivf_above_the_threshold_and_reports_its_recall(clustered):
    queries, catalog = clustered
    report = {"stale": 1}
    scores, indices = topk(queries, catalog, 10, backend="auto", report=report, approx_min_catalog=1000)
    exact_scores, exact_indices = topk(queries, catalog, 10)
    plan = IvfPlan.for_catalog(len(catalog))
    assert plan.pays_off(len(queries))
    assert "stale" not in report  # the report describes this call only
    assert report["backend"] == "ivf" and report["index"] == "IVFFlat"
    assert report["nlist"] == plan.nlist == 63 and plan.nprobe_start <= report["nprobe"] <= plan.nprobe_max
    assert report["n_recall_queries"] == RECALL_QUERIES and report["recall_at"] == 10
    assert report["n_queries"] == 3000 and report["n_catalog"] == 4000
    for key in ("build_seconds", "recall_seconds", "search_seconds"):
        assert report[key] >= 0
    # the sampled estimate agrees with recall over every query, and both are high on clustered data
    true_recall = recall_at_10(indices, exact_indices)
    assert report["recall10_vs_exact"] >= RECALL_TARGET and true_recall >= 0.9
    assert abs(report["recall10_vs_exact"] - true_recall) < 0.05
    assert scores.dtype == np.float32 and indices.dtype == np.int64 and indices.shape == (3000, 10)
    # returned scores are exact inner products of the returned rows, in descending order
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, catalog[indices]), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_auto_stays_exact_below_the_threshold_or_with_few_queries(clustered):
    queries, catalog = clustered
    exact = topk(queries, catalog, 10)
    for kwargs, reason in (({}, "catalog of 4000 rows < 100000"),
                           ({"approx_min_catalog": 1000, "q": 500}, "500 queries are too few")):
        n = kwargs.pop("q", len(queries))
        report = {}
        scores, indices = topk(queries[:n], catalog, 10, backend="auto", report=report, **kwargs)
        assert report["backend"] == "exact" and reason in report["reason"], report
        assert "recall10_vs_exact" not in report
        np.testing.assert_array_equal(indices, exact[1][:n])
        np.testing.assert_allclose(scores, exact[0][:n], atol=1e-6)  # BLAS blocking differs with Q


def test_ivf_honours_exclude_and_pads(clustered):
    _, catalog = clustered
    rows = np.arange(0, 4000, 2)
    report = {}
    scores, indices = topk(catalog[rows], catalog, 5, exclude=rows, backend="ivf", report=report)
    assert report["backend"] == "ivf" and report["recall10_vs_exact"] >= RECALL_TARGET and report["recall_at"] == 5
    assert not (indices == rows[:, None]).any()  # the query's own row (its best match) is gone
    assert (indices >= 0).all()
    # k beyond the catalog: -1 / -inf padding, as the exact backend pads
    small = catalog[:40]
    s, i = topk(small[:3], small, 50, exclude=np.array([0, -1, 2]), backend="ivf")
    assert (i[:, 40:] == -1).all() and (i[[0, 2], 39] == -1).all() and (i[1, :40] >= 0).all()
    assert np.isneginf(s[i == -1]).all() and 0 not in i[0] and 2 not in i[2]


def test_auto_falls_back_to_exact_when_the_index_misses_the_recall_target():
    rng = np.random.default_rng(8)
    # uniform noise in 64 dimensions has no cells to exploit: scanning 1/8 of it finds far too few true neighbours
    queries, catalog = unit_rows(rng, 3000, 64), unit_rows(rng, 4000, 64)
    report = {}
    scores, indices = topk(queries, catalog, 10, backend="auto", report=report, approx_min_catalog=1000)
    assert report["backend"] == "exact" and "recall" in report["reason"]
    assert report["recall10_vs_exact"] < RECALL_TARGET and report["nprobe"] == IvfPlan.for_catalog(4000).nprobe_max
    np.testing.assert_array_equal(indices, topk(queries, catalog, 10)[1])
    # asked for explicitly, the index answers anyway and says how good it was
    forced = {}
    _, approx = topk(queries, catalog, 10, backend="ivf", report=forced)
    assert forced["backend"] == "ivf" and forced["recall10_vs_exact"] < RECALL_TARGET
    assert recall_at_10(approx, indices) < RECALL_TARGET


def test_recall_vs_exact_counts_boundary_ties_as_found_and_misses_as_missed():
    exact_scores = np.array([[0.9, 0.8, 0.5], [0.7, -np.inf, -np.inf]], np.float32)
    exact_indices = np.array([[1, 2, 3], [4, -1, -1]])
    tie = np.array([[0.9, 0.8, 0.5], [0.7, -np.inf, -np.inf]], np.float32)
    assert recall_vs_exact(tie, np.array([[1, 2, 7], [4, -1, -1]]), exact_scores, exact_indices, at=3) == 1.0
    miss = np.array([[0.9, 0.5, 0.4], [0.6, -np.inf, -np.inf]], np.float32)
    assert recall_vs_exact(miss, np.array([[1, 3, 8], [5, -1, -1]]), exact_scores, exact_indices, at=3) == 0.5


def test_ivf_takes_float16_and_refuses_nan_naming_the_row(clustered):
    queries, catalog = clustered
    scores, indices = topk(queries[:300], catalog.astype(np.float16), 10, backend="ivf")
    assert scores.dtype == np.float32 and recall_at_10(indices, topk(queries[:300], catalog, 10)[1]) >= 0.9
    bad = catalog.copy()
    bad[3210, 5] = np.nan
    with pytest.raises(ValueError, match="catalog row 3210 contains NaN"):
        topk(queries[:300], bad, 10, backend="ivf")


def test_combine_reports_keeps_the_worst_recall_and_sums_the_work():
    exact = {"backend": "exact", "reason": "small", "n_queries": 10, "n_catalog": 50, "search_seconds": 1.0}
    good = {"backend": "ivf", "n_queries": 100, "n_catalog": 5000, "nlist": 70, "nprobe": 8,
            "recall10_vs_exact": 0.99, "search_seconds": 2.0, "build_seconds": 0.5}
    worse = {**good, "nprobe": 16, "recall10_vs_exact": 0.96, "n_catalog": 3000}
    combined = combine_reports([exact, good, {}, worse])
    assert combined["backend"] == "exact+ivf" and combined["n_searches"] == 3 and combined["n_approx_searches"] == 2
    assert combined["recall10_vs_exact"] == 0.96 and combined["nprobe"] == 16  # the worst search speaks
    assert combined["n_queries"] == 210 and combined["n_catalog"] == 5000
    assert combined["search_seconds"] == 5.0 and combined["build_seconds"] == 1.0
    only_exact = combine_reports([exact, {**exact, "n_catalog": 80}])
    assert only_exact["backend"] == "exact" and "recall10_vs_exact" not in only_exact and only_exact["n_catalog"] == 80
    assert combine_reports([{}, {}]) == {}


def labelled(rng, n, prefix):
    """Metadata for `n` items with random attribute values (evaluate_retrieval's required columns)."""
    from protocol.retrieval.metrics import ATTRIBUTES, attribute_column

    meta = pd.DataFrame({"item_id": [f"{prefix}{i}" for i in range(n)], "group_id": [f"{prefix}g{i // 2}" for i in range(n)]})
    for attribute in ATTRIBUTES:
        meta[attribute_column(attribute)] = rng.choice(["a", "b", "c", "unknown"], n)
    return meta


def test_evaluation_above_a_lowered_threshold_is_approximate_and_logs_its_recall(clustered, tracking_uri):
    from mlflow.tracking import MlflowClient

    from protocol.retrieval.metrics import evaluate_retrieval
    from protocol.tracking.runs import stage_run

    queries, catalog = clustered
    rng = np.random.default_rng(9)
    query_meta, catalog_meta = labelled(rng, len(queries), "q"), labelled(rng, len(catalog), "c")
    args = (query_meta, queries, queries, catalog_meta, catalog, catalog)
    approx = evaluate_retrieval(*args, modes=("t2i",), approx_min_catalog=1000)
    exact = evaluate_retrieval(*args, modes=("t2i",))

    search = approx.search["t2i"]
    # both galleries (4,000 catalog rows; the 3,000 query items) pass the lowered threshold
    assert search["backend"] == "ivf" and search["n_approx_searches"] == search["n_searches"] == 2
    assert search["recall10_vs_exact"] >= RECALL_TARGET
    assert recall_at_10(approx.rankings["t2i"], exact.rankings["t2i"]) >= 0.9
    assert abs(approx.metrics["t2i.category.p10"] - exact.metrics["t2i.category.p10"]) < 0.02
    assert exact.search["t2i"]["backend"] == "exact" and "recall10_vs_exact" not in exact.search["t2i"]

    with stage_run("evaluate") as logger:  # as evaluate_and_log logs it
        metrics, tags = search_log_entries(approx.search)
        logger.log_metrics(metrics)
        logger.set_tags(tags)
    run = MlflowClient().get_run(logger.run_id)
    assert run.data.metrics["search.t2i.recall10_vs_exact"] == pytest.approx(search["recall10_vs_exact"])
    assert run.data.metrics["search.t2i.nlist"] == search["nlist"] and run.data.tags["search.t2i.backend"] == "ivf"
    exact_metrics, exact_tags = search_log_entries(exact.search)
    assert exact_tags["search.t2i.backend"] == "exact" and "search.t2i.recall10_vs_exact" not in exact_metrics


def test_mining_reports_the_search_of_its_blocks():
    from protocol.data.hard_negatives import mine_hard_negatives

    rng = np.random.default_rng(10)
    n = 120
    meta = pd.DataFrame({"item_id": [f"i{i}" for i in range(n)], "group_id": [f"g{i // 2}" for i in range(n)],
                         "product_id": "", "split": "train", "category2": np.where(np.arange(n) < 80, "tees", "shorts"),
                         "material": rng.choice(["cotton", "denim"], n), "neckline": rng.choice(["crew", "v-neck"], n),
                         "pattern": "solid", "sleeve": "short", "color": "black"})
    report = {"stale": 1}
    negatives = mine_hard_negatives(meta, unit_rows(rng, n), max_anchors=50, search_report=report)
    assert len(negatives) and "stale" not in report
    # one exact search per (split, category2) block, its anchors as queries
    assert report["backend"] == "exact" and report["n_searches"] == 2 and report["n_approx_searches"] == 0
    assert negatives["anchor_id"].nunique() <= report["n_queries"] <= 50 and report["n_catalog"] == 80
