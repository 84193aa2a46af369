"""Class-name queries (`c2i`): the label itself is the query, as on the public fashion leaderboard.

Marqo's leaderboard (marqo-ai/marqo-FashionCLIP) asks with a class name ("cardigans",
"denim") and counts as relevant every document carrying that class. Here each known value
of each attribute in the processed dataset becomes one query: its prompt (the attribute's
template below, filled with the value) embedded by the backbone's text tower when features
are extracted and cached beside the item features, so `evaluate` never needs the backbone.
The relevant results are the catalog items carrying the value, with the item modes' rules
(`metrics.attribute_relevance`: unknown never matches, `graphic` is no category).

Each query ranks the whole catalog (Marqo's MRR looks that deep) and is scored with
`leaderboard_columns(PRECISION_KIND)`: P@1, P@10, MRR, AvgP. Metric keys:
`c2i.{A}.{stat}` is the mean over A's classes (n = classes scored) and `c2i.{A}.{stat}.{v}`
is the one class v (n = 1 query, so always marked thin; `n_relevant` in the per-query table
says how many catalog items carry it). A class no catalog item carries cannot be answered:
it stays in the table with n_relevant 0 and no figures, and is logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from protocol.retrieval.leaderboard_metrics import (
    LEADERBOARD_KS,
    PRECISION_KIND,
    leaderboard_column_names,
    leaderboard_columns,
    metric_name,
)
from protocol.retrieval.metrics import (
    ATTRIBUTES,
    attribute_column,
    attribute_relevance,
    count_relevant,
    known_values,
    metric_value_name,
)

log = logging.getLogger(__name__)

CLASS_QUERY_MODE = "c2i"
# One prompt per attribute value; the value's underscores read as spaces. Product-photo
# wording because the catalog is product photos; the attribute named where the bare value
# would be ambiguous ("short" sleeves, "collar" neckline).
PROMPT_TEMPLATES = {
    "category": "a product photo of {value}",
    "material": "a product photo of a {value} garment",
    "pattern": "a product photo of a {value} garment",
    "neckline": "a product photo of a garment with a {value} neckline",
    "sleeve": "a product photo of a garment with {value} sleeves",
    "color": "a product photo of a {value} garment",
}
CLASS_COLUMNS = ("attribute", "value", "prompt")
N_RELEVANT = "n_relevant"
TOP_RESULTS = "top10"


def class_prompts(meta: pd.DataFrame, attributes: tuple[str, ...] = ATTRIBUTES) -> pd.DataFrame:
    """One row per known value of each attribute in `meta` (sorted): attribute, value, prompt."""
    rows = []
    for attribute in attributes:
        values = meta[attribute_column(attribute)].astype(object)
        for value in sorted(set(values[known_values(values, attribute)].astype(str))):
            rows.append((attribute, value, prompt_of(attribute, value)))
    return pd.DataFrame(rows, columns=list(CLASS_COLUMNS))


def prompt_of(attribute: str, value: str) -> str:
    return PROMPT_TEMPLATES[attribute].format(value=str(value).replace("_", " "))


@dataclass(frozen=True)
class ClassQueries:
    """The class-name queries and their embeddings in the catalog's space (heads applied)."""

    prompts: pd.DataFrame  # CLASS_COLUMNS, one row per query
    embeddings: np.ndarray  # [C, D]

    def __post_init__(self) -> None:
        missing = [c for c in CLASS_COLUMNS if c not in self.prompts.columns]
        if missing or len(self.prompts) != len(self.embeddings):
            raise ValueError(f"class queries: need columns {list(CLASS_COLUMNS)} (missing {missing}) and one "
                             f"embedding per row; got {len(self.prompts)} rows and {len(self.embeddings)} embeddings")


def full_ranking(query_vectors: np.ndarray, catalog_vectors: np.ndarray, depth: int) -> np.ndarray:
    """[Q, max(N, depth)] every catalog row by descending score, ties to the lower row; -1 pads a short catalog."""
    scores = np.asarray(query_vectors, np.float32) @ np.asarray(catalog_vectors, np.float32).T
    ranking = np.argsort(-scores, axis=1, kind="stable")
    if ranking.shape[1] < depth:
        ranking = np.pad(ranking, ((0, 0), (0, depth - ranking.shape[1])), constant_values=-1)
    return ranking


def class_query_table(prompts: pd.DataFrame, catalog: pd.DataFrame, ranking: np.ndarray) -> pd.DataFrame:
    """Per class query: attribute, value, prompt, n_relevant, P@1, P@10, MRR, AvgP, top10 result item ids."""
    item_ids = np.append(catalog["item_id"].astype(str).to_numpy(), "")  # index -1 (padding) -> ""
    parts = []
    for attribute, rows in prompts.groupby("attribute", sort=False).indices.items():
        values = prompts["value"].to_numpy()[rows]
        gallery = catalog[attribute_column(attribute)]
        relevant = attribute_relevance(values, gallery, ranking[rows], attribute)
        n_relevant = count_relevant(values, gallery, attribute)
        figures = leaderboard_columns(relevant, n_relevant, PRECISION_KIND)
        figures.loc[n_relevant == 0, :] = np.nan  # nothing to find: no figure, rather than a zero
        part = prompts.iloc[rows][list(CLASS_COLUMNS)].reset_index(drop=True)
        part[N_RELEVANT] = n_relevant
        part = part.join(figures)
        part[TOP_RESULTS] = [[i for i in row if i] for row in item_ids[ranking[rows, :max(LEADERBOARD_KS)]]]
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(CLASS_COLUMNS))


def class_query_metrics(table: pd.DataFrame) -> tuple[dict[str, float], dict[str, int]]:
    """(metrics, counts): c2i.{A}.{stat} over A's answerable classes and c2i.{A}.{stat}.{v} per class."""
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    stats = [c for c in table.columns if c in leaderboard_column_names(PRECISION_KIND)]
    for attribute, group in table.groupby("attribute", sort=True):
        scored = group[group[N_RELEVANT] > 0]
        if scored.empty:
            continue
        for column in stats:
            key = f"{CLASS_QUERY_MODE}.{attribute}.{metric_name(column)}"
            metrics[key], counts[key] = float(scored[column].mean()), len(scored)
            for value, figure in zip(scored["value"], scored[column]):
                metrics[f"{key}.{metric_value_name(value)}"], counts[f"{key}.{metric_value_name(value)}"] = \
                    float(figure), 1
    return metrics, counts


def evaluate_class_queries(queries: ClassQueries, catalog: pd.DataFrame, catalog_vectors: np.ndarray,
                           query_vectors: np.ndarray | None = None,
                           ) -> tuple[dict[str, float], dict[str, int], pd.DataFrame]:
    """(metrics, counts, per-query table) of the class-name queries over one catalog.

    `query_vectors` / `catalog_vectors` are what ranks (late fusion extends both); the
    query side defaults to the plain embeddings.
    """
    if len(catalog) != len(catalog_vectors):
        raise ValueError(f"class queries: {len(catalog)} catalog rows but {len(catalog_vectors)} catalog vectors")
    vectors = queries.embeddings if query_vectors is None else query_vectors
    ranking = full_ranking(vectors, catalog_vectors, max(LEADERBOARD_KS))
    table = class_query_table(queries.prompts, catalog, ranking)
    unanswerable = table.loc[table[N_RELEVANT] == 0, ["attribute", "value"]]
    if len(unanswerable):
        log.warning("c2i: %d of %d classes have no item in this catalog and are not scored: %s", len(unanswerable),
                    len(table), ", ".join(f"{a}={v}" for a, v in unanswerable.itertuples(index=False)))
    metrics, counts = class_query_metrics(table)
    log.info("c2i: %d classes, %s", len(table),
             ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k.endswith(".avgp")))
    return metrics, counts, table
