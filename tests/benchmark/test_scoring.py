"""Queries, relevance, documents and Marqo's result keying on vectors whose ranking is known by construction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from protocol.benchmark.scoring import document_vectors, ranked_doc_ids, score_task
from protocol.benchmark.specs import TaskSpec, load_protocol
from protocol.benchmark.tasks import (
    TaskQueries, TaskUnavailable, cell_values, ground_truth_path, queries_from_column, queries_from_ground_truth,
)

KS = (1, 10)
PRECISION = TaskSpec("category-to-product", "category1", ("image", "text"), (0.9, 0.1), "precision")
RECALL = TaskSpec("text-to-image", "text", ("image",), (1.0,), "recall")


def docs_scoring(scores: list[float]) -> np.ndarray:
    """Unit documents whose inner product with the query [1, 0, 0] is the given score."""
    s = np.asarray(scores, dtype=np.float32)
    return np.stack([s, np.sqrt(1 - s ** 2), np.zeros_like(s)], axis=1).astype(np.float32)


QUERY = np.array([[1, 0, 0]], dtype=np.float32)
SCORES = [0.95 - 0.05 * i for i in range(12)]  # row i ranks i-th


def test_a_repeated_item_id_is_one_result_ranked_at_its_last_retrieved_score_as_marqo_keys_its_results():
    rows = np.array([[0, 1, 2, 3, 4, 5, -1]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.0]])
    ids = ["a", "x", "c", "d", "e", "x"]
    # {item_ID: score} keeps x's later score 0.4, so x ranks after e; -1 (no result) is dropped
    assert ranked_doc_ids(rows, scores, ids) == [["a", "c", "d", "e", "x"]]


def test_class_name_task_scores_hand_worked():
    ids = ["a", "x", "c", "d", "e", "x", "g", "h", "i", "j", "k", "l"]  # x at rows 1 and 5; k, l below the top 10
    queries = TaskQueries(values=["Shoes"], relevant=[frozenset({"x", "l"})], n_values=1, origin="dataset")
    score = score_task(PRECISION, queries, QUERY, docs_scoring(SCORES), ids, KS)
    # top 10 rows -> 9 distinct ids: a c d e x g h i j; x is 5th (its row-5 score), l is beyond the top 10
    assert score.per_query["top"][0] == ["a", "c", "d", "e", "x", "g", "h", "i", "j"]
    assert score.metrics == pytest.approx({"P@1": 0, "P@10": 1 / 10, "MRR": 1 / 5, "AvgP": 1 / 20})
    assert score.n_queries == 1 and score.per_query["n_relevant"].tolist() == [2]


def test_text_to_image_recall_counts_every_item_sharing_the_query_text():
    ids = [f"d{i}" for i in range(12)]
    queries = TaskQueries(values=["red tee", "blue jeans"],
                          relevant=[frozenset({"d1", "d3", "d11"}), frozenset({"d0"})], n_values=2, origin="dataset")
    score = score_task(RECALL, queries, np.repeat(QUERY, 2, axis=0), docs_scoring(SCORES), ids, KS)
    # red tee: d1 (rank 2) and d3 (rank 4) found of 3; blue jeans: d0 first
    assert score.per_query["Recall@10"].tolist() == pytest.approx([2 / 3, 1])
    assert score.per_query["MRR"].tolist() == pytest.approx([1 / 2, 1])
    assert score.metrics == pytest.approx({"Recall@1": 1 / 2, "Recall@10": 5 / 6, "MRR": 3 / 4,
                                           "AvgRecall": (1 / 2 + 5 / 6) / 2})


def test_a_multi_column_document_is_the_normalised_weighted_sum_of_its_embeddings():
    image = np.array([[1, 0], [0, 1]], dtype=np.float32)
    text = np.array([[0, 1], [0, 1]], dtype=np.float32)
    docs = document_vectors(PRECISION, image, text)
    assert docs[0] == pytest.approx(np.array([0.9, 0.1]) / np.hypot(0.9, 0.1))
    assert docs[1] == pytest.approx([0, 1])
    assert document_vectors(RECALL, image, text) is image


def test_queries_are_the_distinct_values_in_order_and_their_documents_the_rows_holding_them():
    cells = ["Shoes", None, "Bags", "  ", "Shoes", ["Bags", "Belts"], ""]
    ids = ["1", "2", "3", "4", "5", "6", "7"]
    q = queries_from_column(cells, ids, max_queries=2000, seed=0)
    assert q.values == ["Shoes", "Bags", "Belts"]
    assert q.relevant == [frozenset({"1", "5"}), frozenset({"3", "6"}), frozenset({"6"})]
    assert q.n_values == 3 and q.origin == "dataset"
    assert [cell_values(c) for c in (None, "", " ", "a", ["a", None, "b"])] == [(), (), (), ("a",), ("a", "b")]


def test_more_values_than_max_queries_are_sampled_by_seed_keeping_their_order():
    cells = [f"text {i}" for i in range(50)]
    ids = [str(i) for i in range(50)]
    a = queries_from_column(cells, ids, max_queries=10, seed=3)
    assert len(a) == 10 and a.n_values == 50
    assert a.values == sorted(a.values, key=lambda v: int(v.split()[1]))  # order of first appearance
    assert all(r == frozenset({v.split()[1]}) for v, r in zip(a.values, a.relevant))
    assert queries_from_column(cells, ids, max_queries=10, seed=3).values == a.values


def test_a_column_without_any_value_cannot_be_a_task():
    with pytest.raises(TaskUnavailable, match=r"column 'neckline' holds no value to query with"):
        queries_from_column([None, "", " "], ["1", "2", "3"], 2000, 0, column="neckline")


def test_marqos_ground_truth_files_give_its_exact_queries_and_relevance(tmp_path):
    spec = load_protocol().datasets["KAGL"]
    task = spec.tasks[1]  # category-to-product, query category1, documents image+text
    path = ground_truth_path(tmp_path, spec, task)
    assert path == tmp_path / "KAGL" / "gt_query_doc" / "ground_truth_category1-image+text.json"  # Marqo's name
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"Accessories": {"25865": 1, "29452": 1}, "Home": {"1": 0, "2": 1}}))
    q = queries_from_ground_truth(path)
    assert q.values == ["Accessories", "Home"]
    assert q.relevant == [frozenset({"25865", "29452"}), frozenset({"2"})]
    assert q.origin == str(path)
    with pytest.raises(TaskUnavailable, match=r"no ground-truth file .*ground_truth_season-image\+text.json"):
        queries_from_ground_truth(ground_truth_path(tmp_path, spec, spec.tasks[5]))
    path.write_text("[1, 2]")
    with pytest.raises(TaskUnavailable, match=r"is not \{query: \{item_ID: relevance\}\}"):
        queries_from_ground_truth(path)
