"""A task's queries and what is relevant to each, as Marqo's ground-truth files define them.

Marqo's `data/<Name>/gt_query_doc/ground_truth_<query_col>-<doc_cols>.json` maps each query (a
distinct value of the query column: a product text, or a class name such as "V-neck") to every
item_ID whose row holds that value, with relevance 1; eval.py reads its keys as "randomly sampled
queries (up to 2000)". So here:
- the queries are the distinct non-empty values of the query column, in order of first
  appearance; a column of lists (several labels per item) contributes each of its values;
- the relevant documents of a query are the distinct item_IDs of the rows holding that value,
  so a product text shared by several rows (sizes, colourways) has them all relevant;
- more than `max_queries` distinct values are sampled without replacement with `seed`. Marqo's
  sample is fixed in its files, not by a seed: pass its files (`queries_from_ground_truth`) to
  evaluate on exactly its queries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from protocol.benchmark.specs import DatasetSpec, TaskSpec


class TaskUnavailable(Exception):
    """A task that cannot run on this dataset (no query values, no ground-truth file); the message says why."""


@dataclass
class TaskQueries:
    values: list[str]                # the query strings, embedded through the text side
    relevant: list[frozenset[str]]   # per query, the item_IDs that are relevant
    n_values: int                    # distinct values before sampling (what a capped sample was drawn from)
    origin: str                      # "dataset" | the ground-truth file read

    def __len__(self) -> int:
        return len(self.values)


def cell_values(cell: Any) -> tuple[str, ...]:
    """The labels a cell holds: none for None or blank text, each element of a list."""
    if cell is None:
        return ()
    if isinstance(cell, (list, tuple)):
        return tuple(v for c in cell for v in cell_values(c))
    text = str(cell)
    return (text,) if text.strip() else ()


def queries_from_column(cells: Sequence[Any], doc_ids: Sequence[str], max_queries: int, seed: int,
                        column: str = "query column") -> TaskQueries:
    """Distinct values of a column as queries; each one's relevant documents are the rows holding it."""
    if len(cells) != len(doc_ids):
        raise ValueError(f"{len(cells)} cells of {column!r} for {len(doc_ids)} documents")
    docs_of: dict[str, set[str]] = {}
    for cell, doc_id in zip(cells, doc_ids):
        for value in cell_values(cell):
            docs_of.setdefault(value, set()).add(doc_id)
    if not docs_of:
        raise TaskUnavailable(f"column {column!r} holds no value to query with (every cell is empty)")
    values = list(docs_of)
    if len(values) > max_queries:
        picked = np.sort(np.random.default_rng(seed).choice(len(values), size=max_queries, replace=False))
        values = [values[i] for i in picked]
    return TaskQueries(values=values, relevant=[frozenset(docs_of[v]) for v in values], n_values=len(docs_of),
                       origin="dataset")


def ground_truth_path(ground_truth_dir: str | Path, spec: DatasetSpec, task: TaskSpec) -> Path:
    """Where Marqo keeps a task's ground truth: `<dir>/<Name>/gt_query_doc/ground_truth_<query>-<docs>.json`."""
    return Path(ground_truth_dir) / spec.name / "gt_query_doc" / f"ground_truth_{task.query}-{'+'.join(task.docs)}.json"


def queries_from_ground_truth(path: str | Path) -> TaskQueries:
    """Marqo's own queries and relevance ({query: {item_ID: relevance}}; relevance > 0 counts, as in its MRR)."""
    path = Path(path)
    if not path.is_file():
        raise TaskUnavailable(f"no ground-truth file {path} (Marqo's data/<Name>/gt_query_doc/ holds them)")
    try:
        qrels = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TaskUnavailable(f"ground-truth file {path} cannot be read as JSON: {e}") from e
    if not isinstance(qrels, dict) or not all(isinstance(v, dict) for v in qrels.values()):
        raise TaskUnavailable(f"ground-truth file {path} is not {{query: {{item_ID: relevance}}}}")
    values = [str(q) for q in qrels]
    relevant = [frozenset(str(d) for d, r in docs.items() if float(r) > 0) for docs in qrels.values()]
    if not values:
        raise TaskUnavailable(f"ground-truth file {path} holds no query")
    return TaskQueries(values=values, relevant=relevant, n_values=len(values), origin=str(path))
