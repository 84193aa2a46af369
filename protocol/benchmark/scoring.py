"""One task on embeddings: documents as Marqo builds them, its top-k retrieval, its leaderboard figures.

Marqo's run_retrieval takes the top max(ks) rows by cosine and keys them by item_ID
(`{item_ID: score}`): a repeated item_ID is one result, and the dict keeps the score of its
last, lower-ranked row; its MRR loop and BEIR then rank the results by score. `ranked_doc_ids`
does the same, so a dataset with repeated item_IDs scores as Marqo scores it. P@k divides by k
whatever the number of distinct results (BEIR/pytrec_eval); ties keep rank order (Marqo's own
MRR loop sorts stably; pytrec_eval may order exactly tied scores by document id).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from protocol.benchmark.specs import TaskSpec
from protocol.benchmark.tasks import TaskQueries
from protocol.retrieval.leaderboard_metrics import leaderboard_columns
from protocol.retrieval.search import topk


@dataclass
class TaskScore:
    metrics: dict[str, float]   # Marqo's names: Recall@1 ... AvgRecall, or P@1 ... AvgP; means over queries
    n_queries: int
    per_query: pd.DataFrame     # query, n_relevant, top (ranked item_IDs), and each metric for that query


def document_vectors(task: TaskSpec, image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """[N, D] documents: the image embedding, or normalize(sum of w x each column's embedding) (doc_weights)."""
    parts = {"image": image, "text": text}
    if task.docs == ("image",):
        return image
    fused = sum(np.float32(w) * np.asarray(parts[c], dtype=np.float32) for c, w in zip(task.docs, task.weights))
    norms = np.linalg.norm(fused, axis=1, keepdims=True)
    return (fused / np.maximum(norms, 1e-12)).astype(np.float32)


def ranked_doc_ids(rows: np.ndarray, scores: np.ndarray, doc_ids: Sequence[str]) -> list[list[str]]:
    """Per query, the distinct item_IDs of its retrieved rows, ranked as Marqo ranks its `{item_ID: score}` dict."""
    ranked = []
    for query_rows, query_scores in zip(rows, scores):
        by_id: dict[str, float] = {}
        for row, score in zip(query_rows, query_scores):
            if row >= 0:  # topk pads with -1 when the catalog is smaller than k
                by_id[doc_ids[row]] = float(score)  # a repeated id keeps its later (lower) score, as in Marqo
        ranked.append([d for d, _ in sorted(by_id.items(), key=lambda item: item[1], reverse=True)])
    return ranked


def relevance_matrix(ranked: list[list[str]], relevant: list[frozenset[str]], depth: int) -> np.ndarray:
    """[Q, depth] bool: whether each ranked result is relevant to its query (missing results are not)."""
    out = np.zeros((len(ranked), depth), dtype=bool)
    for q, (ids, rel) in enumerate(zip(ranked, relevant)):
        for r, doc_id in enumerate(ids[:depth]):
            out[q, r] = doc_id in rel
    return out


def score_task(task: TaskSpec, queries: TaskQueries, query_vectors: np.ndarray, doc_vectors: np.ndarray,
               doc_ids: Sequence[str], ks: tuple[int, ...]) -> TaskScore:
    """Rank every document for every query by inner product, keep the top max(ks), and score as Marqo does."""
    if len(query_vectors) != len(queries):
        raise ValueError(f"task {task.name}: {len(query_vectors)} query vectors for {len(queries)} queries")
    if len(doc_vectors) != len(doc_ids):
        raise ValueError(f"task {task.name}: {len(doc_vectors)} document vectors for {len(doc_ids)} item_IDs")
    depth = max(ks)
    # exact search: the leaderboard's figures are exact cosine rankings, never an approximate index
    scores, rows = topk(query_vectors, doc_vectors, min(depth, len(doc_vectors)), backend="exact")
    ranked = ranked_doc_ids(rows, scores, doc_ids)
    relevant = relevance_matrix(ranked, queries.relevant, depth)
    n_relevant = np.array([len(r) for r in queries.relevant], dtype=np.int64)
    table = leaderboard_columns(relevant, n_relevant, task.kind, ks)
    per_query = pd.concat([pd.DataFrame({"query": queries.values, "n_relevant": n_relevant,
                                         "top": [ids[:depth] for ids in ranked]}), table], axis=1)
    return TaskScore(metrics={c: float(table[c].mean()) for c in table.columns}, n_queries=len(queries),
                     per_query=per_query)
