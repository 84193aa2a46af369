"""The public fashion leaderboard's metrics (marqo-ai/marqo-FashionCLIP), on ranked relevance.

Marqo computes precision and recall with BEIR (pytrec_eval) and MRR with its own loop over
the whole ranked list it retrieved; its summary then averages the `@k` figures of one kind:
AvgRecall = mean(Recall@1, Recall@10) for text-to-image, AvgP = mean(P@1, P@10) for the
class-name tasks (category-to-product and the like). Each figure is a mean over queries,
so the per-query columns here average to the published figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from protocol.retrieval.metrics import precision_at, reciprocal_rank

LEADERBOARD_KS = (1, 10)
RECALL_KIND = "recall"  # text-to-image: Recall@k, MRR, AvgRecall
PRECISION_KIND = "precision"  # class name -> product: P@k, MRR, AvgP
KINDS = (RECALL_KIND, PRECISION_KIND)
# MLflow metric names allow no '@': each leaderboard column as a metric key's last part.
METRIC_NAMES = {"P@1": "p1", "P@10": "p10", "Recall@1": "recall1", "Recall@10": "recall10", "MRR": "mrr",
                "AvgP": "avgp", "AvgRecall": "avgrecall"}


def metric_name(column: str) -> str:
    """The metric-key form of a leaderboard column (`P@10` -> `p10`)."""
    if column not in METRIC_NAMES:
        raise ValueError(f"{column!r} is not a leaderboard column; they are {sorted(METRIC_NAMES)}")
    return METRIC_NAMES[column]


def recall_fraction_at(relevant: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """[Q] share of each query's relevant documents found in its top k (pytrec_eval's recall_k); 0 when none."""
    found = relevant[:, :k].sum(axis=1).astype(np.float64)
    return np.divide(found, n_relevant, out=np.zeros(len(found)), where=np.asarray(n_relevant) > 0)


def leaderboard_column_names(kind: str, ks: tuple[int, ...] = LEADERBOARD_KS) -> tuple[str, ...]:
    """The columns of `leaderboard_columns` for one kind, in Marqo's order: the @k figures, MRR, the average."""
    if kind not in KINDS:
        raise ValueError(f"unknown leaderboard metric kind {kind!r}; use one of {KINDS}")
    at, average = ("Recall", "AvgRecall") if kind == RECALL_KIND else ("P", "AvgP")
    return (*(f"{at}@{k}" for k in ks), "MRR", average)


def leaderboard_columns(relevant: np.ndarray, n_relevant: np.ndarray, kind: str,
                        ks: tuple[int, ...] = LEADERBOARD_KS) -> pd.DataFrame:
    """Per-query leaderboard figures, named as Marqo names them; their column means are its row.

    `relevant` is [Q, depth] bool over each query's ranked results, as deep as the ranking
    goes (MRR looks that deep); `n_relevant` [Q] counts each query's relevant documents.
    """
    names = leaderboard_column_names(kind, ks)
    if relevant.shape[1] < max(ks):
        raise ValueError(f"rankings are {relevant.shape[1]} deep but the leaderboard needs @{max(ks)}")
    if kind == RECALL_KIND:
        at = [recall_fraction_at(relevant, n_relevant, k) for k in ks]
    else:
        at = [precision_at(relevant, k) for k in ks]
    table = pd.DataFrame(dict(zip(names, at)))
    table[names[-2]] = reciprocal_rank(relevant, depth=relevant.shape[1])
    table[names[-1]] = table[list(names[: len(ks)])].mean(axis=1)
    return table
