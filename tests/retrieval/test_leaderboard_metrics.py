"""Marqo's leaderboard figures on hand-worked rankings: each definition pinned by a case worked on paper."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.retrieval.leaderboard_metrics import (
    PRECISION_KIND, RECALL_KIND, leaderboard_columns, recall_fraction_at,
)


def ranking(depth: int, *hits: int) -> list[bool]:
    """A ranked list `depth` deep with relevant results at these 1-based ranks."""
    return [r + 1 in hits for r in range(depth)]


def test_text_to_image_recall_is_the_share_of_relevant_documents_found_and_avgrecall_the_mean_of_its_ks():
    relevant = np.array([ranking(10, 2, 5),   # 3 relevant, 2 found at ranks 2 and 5
                         ranking(10, 1),      # 1 relevant, first
                         ranking(10),         # 2 relevant, none found
                         ranking(10)])        # no relevant document at all
    table = leaderboard_columns(relevant, np.array([3, 1, 2, 0]), RECALL_KIND)
    assert list(table.columns) == ["Recall@1", "Recall@10", "MRR", "AvgRecall"]
    assert table["Recall@1"].tolist() == [0, 1, 0, 0]
    assert table["Recall@10"].tolist() == pytest.approx([2 / 3, 1, 0, 0])
    assert table["MRR"].tolist() == pytest.approx([1 / 2, 1, 0, 0])
    assert table["AvgRecall"].tolist() == pytest.approx([1 / 3, 1, 0, 0])  # mean of Recall@1 and Recall@10
    # the published row is the mean over queries: a zero-relevant query counts as 0, never NaN
    assert table.mean().to_dict() == pytest.approx({"Recall@1": 1 / 4, "Recall@10": 5 / 12, "MRR": 3 / 8,
                                                    "AvgRecall": 1 / 3})
    assert not table.isna().any().any()


def test_recall_divides_by_all_relevant_documents_not_by_k():
    # 12 relevant, all 10 results relevant: pytrec_eval's recall_10 is 10/12, not 1
    table = leaderboard_columns(np.ones((1, 10), dtype=bool), np.array([12]), RECALL_KIND)
    assert table["Recall@10"].item() == pytest.approx(10 / 12)
    assert table["Recall@1"].item() == pytest.approx(1 / 12)
    assert recall_fraction_at(np.ones((2, 10), dtype=bool), np.array([0, 4]), 10).tolist() == [0.0, 2.5]


def test_class_name_precision_counts_relevant_results_in_the_top_k_and_avgp_is_the_mean_of_p1_and_p10():
    relevant = np.array([ranking(10, 1, 3, 4),   # P@1 1, P@10 3/10, MRR 1
                         ranking(10, 7)])        # P@1 0, P@10 1/10, MRR 1/7
    table = leaderboard_columns(relevant, np.array([500, 40]), PRECISION_KIND)
    assert list(table.columns) == ["P@1", "P@10", "MRR", "AvgP"]
    assert table["P@1"].tolist() == [1, 0]
    assert table["P@10"].tolist() == pytest.approx([0.3, 0.1])
    assert table["MRR"].tolist() == pytest.approx([1, 1 / 7])
    assert table["AvgP"].tolist() == pytest.approx([0.65, 0.05])
    # precision ignores how many documents are relevant: only the ranking counts
    again = leaderboard_columns(relevant, np.array([3, 1]), PRECISION_KIND)
    assert again["P@10"].tolist() == table["P@10"].tolist()


def test_mrr_looks_as_deep_as_the_ranking_goes_not_only_to_the_largest_k():
    # Marqo's MRR loops over every result it retrieved; a first hit at rank 15 of 20 counts 1/15
    relevant = np.array([ranking(20, 15)])
    table = leaderboard_columns(relevant, np.array([1]), PRECISION_KIND)
    assert table["MRR"].item() == pytest.approx(1 / 15)
    assert table["P@10"].item() == 0 and table["P@1"].item() == 0
    recall = leaderboard_columns(relevant, np.array([1]), RECALL_KIND)
    assert recall["MRR"].item() == pytest.approx(1 / 15) and recall["Recall@10"].item() == 0


def test_other_ks_name_their_columns_and_average_them():
    relevant = np.array([ranking(5, 2, 3)])
    table = leaderboard_columns(relevant, np.array([4]), PRECISION_KIND, ks=(1, 5))
    assert list(table.columns) == ["P@1", "P@5", "MRR", "AvgP"]
    assert table.iloc[0].tolist() == pytest.approx([0, 0.4, 0.5, 0.2])


def test_an_unknown_kind_or_a_ranking_shallower_than_the_largest_k_is_refused():
    with pytest.raises(ValueError,
                       match=r"unknown leaderboard metric kind 'ndcg'; use one of \('recall', 'precision'\)"):
        leaderboard_columns(np.zeros((1, 10), dtype=bool), np.array([1]), "ndcg")
    with pytest.raises(ValueError, match=r"rankings are 5 deep but the leaderboard needs @10"):
        leaderboard_columns(np.zeros((1, 5), dtype=bool), np.array([1]), RECALL_KIND)
