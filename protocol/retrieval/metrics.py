"""Retrieval metrics exactly as DESIGN "Retrieval metrics" defines them.

Each mode ranks once: `topk` over the catalog (attribute precision, mAP@10, galleries)
and `topk` over the query split's own items, merged with the first into the ranking
over catalog + queries (recall@K, mrr@10). Every metric is then a vectorised function of
those rankings.

Definitions (K in `ks`, attribute A, value v):
- A@K: over queries whose A is known, mean of (results among the top K with the
  query's A) / K. Unknown (`unknown`, empty, missing) is never a match; for
  category (column category2) `graphic` is treated as unknown too (graphic policy):
  graphic queries are left out, graphic results never match. A@K[v]: same over
  queries with A == v. Fewer than K results (tiny catalog) count as misses.
- mAP@10 (`map10`): AP@10 = (1 / min(R, 10)) * sum_{k<=10} P@k * rel_k, where R is the
  number of items in the whole attribute gallery with the query's A (the query item
  itself not counted in i2i). Normalising by min(R, 10) makes a perfect top 10 score 1
  even when R > 10; R = 0 gives AP 0 and the query still counts.
- recall@K / mrr@10: a result is a hit when it belongs to the query's product
  (`group_id`; per row falling back to product_id, then item_id, when empty). The
  gallery is the catalog plus the query split's items, so in t2i/t2f the query's own
  image is a hit. Queries whose product has no item in that gallery (in i2i: a
  product with one image, the query itself being excluded) cannot be answered and
  are left out; the count says how many remain.
- i2i excludes the query item itself from both galleries (matched by item_id when
  the catalog happens to hold it).

Per-query evidence: each mode's ranking gives one table, a row per query (`query_table`):
`query_id`, `group_id`, the query's attribute values, `top10` (result item ids) and, per
attribute A, `A.p{K}` and `A.map10` (NaN where the query's A is not scored), `recall{K}`
and `rr10` (NaN where the query's product cannot be found). Every aggregate is computed
from that table by `aggregate_metrics`, and `metric_per_query` picks the queries behind
any one figure with the same rules, so the scoreboard can pair two evaluations on them.

Names follow DESIGN: `{mode}.{A}.p{K}`, `{mode}.{A}.p{K}.{v}`, `{mode}.{A}.map10[.{v}]`,
`{mode}.recall{K}`, `{mode}.mrr10`, `{mode}.n_queries`; every key has a count (queries
behind it) and keys with fewer than 5 queries are marked thin.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from protocol.retrieval.attribute_scoring import AttributeScores, extend_items, extend_queries
from protocol.retrieval.catalog import fuse
from protocol.retrieval.queries import group_keys, stratified_sample
from protocol.retrieval.search import APPROX_MIN_CATALOG, combine_reports, merge_topk, topk

logger = logging.getLogger(__name__)

ATTRIBUTES = ("category", "material", "pattern", "neckline", "sleeve", "color")
MODES = ("t2i", "t2f", "i2i")
TEXT_QUERY_MODES = ("t2i", "t2f")  # the modes whose queries are texts: late fusion applies to them
UNKNOWN = "unknown"
GRAPHIC = "graphic"
THIN_BELOW = 5  # DESIGN: a figure with fewer than 5 queries behind it is reported but marked thin
RANK_DEPTH = 10  # mAP@10 and mrr@10 look this deep
# The version of the definitions in this module. Bump it whenever a definition changes
# (what counts as a match, a query, a hit, the normalisation of AP, ...): the scoreboard
# refuses to compare evaluations made under different versions.
METRIC_VERSION = 1
QUERY_ID, TOP_RESULTS = "query_id", "top10"  # per-query table: the query item, its top-10 result item ids
RECIPROCAL_RANK = "rr10"  # per-query column whose mean is `mrr10`


@dataclass
class EvalResult:
    metrics: dict[str, float]  # DESIGN names -> fraction in [0, 1] (n_queries: a count)
    counts: dict[str, int]  # same keys -> number of queries behind the figure
    thin: set[str]  # keys with fewer than THIN_BELOW queries
    rankings: dict[str, np.ndarray]  # mode -> [Q, depth] catalog rows (-1 = no result)
    query_rows: np.ndarray  # rows of `queries` that were used, in ranking order
    ks: tuple[int, ...] = field(default=(1, 5, 10))
    queries: dict[str, pd.DataFrame] = field(default_factory=dict)  # mode -> per-query table (`query_table`)
    search: dict[str, dict] = field(default_factory=dict)  # mode -> search.topk report (backend, recall)
    class_queries: pd.DataFrame | None = None  # the c2i per-query table (protocol.retrieval.class_queries)


# ---- attribute values -------------------------------------------------------------


def attribute_column(attribute: str) -> str:
    """The dataset column holding an attribute (category lives in category2)."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; use one of {ATTRIBUTES}")
    return "category2" if attribute == "category" else attribute


def known_values(values: Sequence, attribute: str) -> np.ndarray:
    """True where a value can be scored: not unknown/empty/missing, and not graphic for category."""
    values = pd.Series(values, dtype=object)
    known = values.notna() & ~values.isin(["", UNKNOWN])
    if attribute == "category":
        known &= values != GRAPHIC
    return known.to_numpy()


def _value_codes(query_values: Sequence, gallery_values: Sequence, attribute: str):
    """Shared integer codes for both sides; -1 marks values that never match."""
    q = np.asarray(pd.Series(query_values, dtype=object))
    g = np.asarray(pd.Series(gallery_values, dtype=object))
    both = np.concatenate([q, g])
    codes, uniques = pd.factorize(both)
    codes = np.where(known_values(both, attribute), codes, -1)
    return codes[: len(q)], codes[len(q) :], len(uniques)


def attribute_relevance(query_values, gallery_values, rankings: np.ndarray, attribute: str) -> np.ndarray:
    """[Q, depth] bool: result j of query i has the query's (known) attribute value."""
    q_codes, g_codes, _ = _value_codes(query_values, gallery_values, attribute)
    # Index -1 (no result) picks the appended -1, which never matches.
    result_codes = np.append(g_codes, -1)[rankings]
    return (result_codes == q_codes[:, None]) & (q_codes[:, None] >= 0)


def count_relevant(query_values, gallery_values, attribute: str) -> np.ndarray:
    """[Q] int: gallery items sharing each query's known value (0 for unknown queries)."""
    q_codes, g_codes, n_codes = _value_codes(query_values, gallery_values, attribute)
    per_code = np.bincount(g_codes[g_codes >= 0], minlength=n_codes)
    return np.where(q_codes >= 0, per_code[np.maximum(q_codes, 0)], 0)


# ---- metrics on rankings ----------------------------------------------------------


def precision_at(relevant: np.ndarray, k: int) -> np.ndarray:
    """[Q] fraction of the top k results that are relevant (missing results count as misses)."""
    return relevant[:, :k].sum(axis=1) / k


def average_precision(relevant: np.ndarray, n_relevant: np.ndarray, depth: int = RANK_DEPTH) -> np.ndarray:
    """[Q] AP@depth = (1/min(R, depth)) * sum_{k<=depth} P@k * rel_k; 0 when R = 0."""
    rel = relevant[:, :depth].astype(np.float64)
    precision_at_each = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
    denominator = np.minimum(n_relevant, depth)
    total = (precision_at_each * rel).sum(axis=1)
    return np.divide(total, denominator, out=np.zeros(len(rel)), where=denominator > 0)


def recall_at(hits: np.ndarray, k: int) -> np.ndarray:
    """[Q] 1.0 when any of the top k results is a hit."""
    return hits[:, :k].any(axis=1).astype(np.float64)


def reciprocal_rank(hits: np.ndarray, depth: int = RANK_DEPTH) -> np.ndarray:
    """[Q] 1/rank of the first hit within depth, else 0."""
    hits = hits[:, :depth]
    first = hits.argmax(axis=1)
    return np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)


# ---- evaluation ---------------------------------------------------------------------


def evaluate_retrieval(
    queries: pd.DataFrame,
    query_text: np.ndarray,
    query_image: np.ndarray,
    catalog: pd.DataFrame,
    catalog_image: np.ndarray,
    catalog_text: np.ndarray,
    *,
    modes: Sequence[str] = MODES,
    ks: Sequence[int] = (1, 5, 10),
    fusion_weight: float = 0.5,
    max_queries: int | None = None,
    seed: int = 0,
    approx_min_catalog: int = APPROX_MIN_CATALOG,
    attribute_scores: AttributeScores | None = None,
) -> EvalResult:
    """Every DESIGN retrieval metric for each mode; embeddings are L2-normalised rows.

    `queries` / `catalog` are metadata frames in the row order of their embeddings.
    Search is `topk(backend="auto")` (approximate from `approx_min_catalog` catalog rows);
    `EvalResult.search` holds what answered each mode, with its recall vs exact.
    `attribute_scores` (rows as `queries` and `catalog`) adds the attribute heads' late fusion
    to the text-query modes t2i and t2f (`protocol.retrieval.attribute_scoring`).
    """
    _check_inputs(queries, query_text, query_image, "queries")
    _check_inputs(catalog, catalog_image, catalog_text, "catalog")
    if attribute_scores is not None and (len(attribute_scores.query_indicators) != len(queries)
                                         or len(attribute_scores.catalog_log_probs) != len(catalog)):
        raise ValueError(f"attribute scores cover {len(attribute_scores.query_indicators)} queries and "
                         f"{len(attribute_scores.catalog_log_probs)} catalog items, but there are {len(queries)} "
                         f"and {len(catalog)}: make them from the same rows")
    bad_modes = [m for m in modes if m not in MODES]
    if bad_modes:
        raise ValueError(f"unknown modes {bad_modes}; use a subset of {MODES}")
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    depth = max(ks[-1], RANK_DEPTH)

    rows = stratified_sample(queries["category2"], max_queries, seed)
    query_meta = queries.iloc[rows].reset_index(drop=True)
    # The query split's items join the catalog in the recall gallery, unless already there.
    catalog_row_of = pd.Index(catalog["item_id"]).get_indexer(queries["item_id"])
    extra = np.flatnonzero(catalog_row_of < 0)
    extra_row_of = np.full(len(queries), -1)
    extra_row_of[extra] = np.arange(len(extra))
    gallery_groups = np.concatenate([group_keys(catalog), group_keys(queries)[extra]])

    query_groups = group_keys(query_meta)
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    rankings: dict[str, np.ndarray] = {}
    tables: dict[str, pd.DataFrame] = {}
    searches: dict[str, dict] = {}
    for mode in modes:
        query_vecs, catalog_vecs, extra_vecs = _mode_vectors(
            mode, query_text[rows], query_image[rows], catalog_image, catalog_text,
            query_image[extra], query_text[extra], fusion_weight,
        )
        if attribute_scores is not None and mode in TEXT_QUERY_MODES:
            s = attribute_scores
            query_vecs = extend_queries(query_vecs, s.query_indicators[rows], s.weight)
            catalog_vecs = extend_items(catalog_vecs, s.catalog_log_probs)
            extra_vecs = extend_items(extra_vecs, s.query_log_probs[extra])
        self_in_catalog = catalog_row_of[rows] if mode == "i2i" else None
        self_in_extra = extra_row_of[rows] if mode == "i2i" else None
        catalog_search, extra_search = {}, {}
        scores, ranking = topk(query_vecs, catalog_vecs, depth, exclude=self_in_catalog, backend="auto",
                               report=catalog_search, approx_min_catalog=approx_min_catalog)
        rankings[mode] = ranking
        extra_scores, extra_ranking = topk(query_vecs, extra_vecs, depth, exclude=self_in_extra, backend="auto",
                                           report=extra_search, approx_min_catalog=approx_min_catalog)
        searches[mode] = combine_reports([catalog_search, extra_search])
        extra_ranking = np.where(extra_ranking >= 0, extra_ranking + len(catalog), -1)
        _, full_ranking = merge_topk(scores, ranking, extra_scores, extra_ranking, depth)

        table = query_table(query_meta, query_groups, catalog, ranking, self_in_catalog, ks)
        table = table.join(_product_columns(query_groups, gallery_groups, full_ranking, mode == "i2i", ks))
        tables[mode] = table
        mode_metrics, mode_counts = aggregate_metrics(mode, table)
        metrics |= mode_metrics
        counts |= mode_counts
        logger.info("%s: %d queries, %s", mode, len(rows),
                    ", ".join(f"{k}={v:.3f}" for k, v in mode_metrics.items() if k.count(".") == 2))

    return EvalResult(metrics, counts, thin_keys(counts), rankings, rows, ks, tables, searches)


def thin_keys(counts: dict[str, int]) -> set[str]:
    """The keys with fewer than THIN_BELOW queries behind them."""
    return {key for key, n in counts.items() if n < THIN_BELOW}


def _check_inputs(meta: pd.DataFrame, first: np.ndarray, second: np.ndarray, what: str) -> None:
    needed = ["item_id"] + [attribute_column(a) for a in ATTRIBUTES]
    missing = [c for c in needed if c not in meta.columns]
    if missing:
        raise ValueError(f"{what} metadata lacks columns {missing}; it needs {needed} (run prepare to ground them)")
    if not (len(meta) == len(first) == len(second)):
        raise ValueError(
            f"{what}: {len(meta)} metadata rows but embeddings have {len(first)} and {len(second)} rows; "
            "they must be in the same row order"
        )


def _mode_vectors(mode, q_text, q_image, c_image, c_text, x_image, x_text, weight):
    """(queries, catalog gallery, extra gallery) embeddings for one mode."""
    if mode == "t2i":
        return q_text, c_image, x_image
    if mode == "t2f":
        return q_text, fuse(c_image, c_text, weight), fuse(x_image, x_text, weight)
    return q_image, c_image, x_image


def metric_value_name(value: str) -> str:
    """An attribute value as it appears in a metric key (MLflow allows [\\w.\\- /:])."""
    return re.sub(r"[^\w.\- /:]", "_", str(value))


def query_table(query_meta, query_groups, catalog, ranking, self_rows, ks) -> pd.DataFrame:
    """The per-query table of one mode: ids, attribute values, top-10 result ids, per-attribute precision.

    A query whose attribute is not scored (unknown; graphic for category) has NaN in that
    attribute's columns, so it is left out of every figure of that attribute.
    """
    item_ids = np.append(catalog["item_id"].astype(str).to_numpy(), "")  # index -1 (no result) -> ""
    top = item_ids[ranking[:, :RANK_DEPTH]]
    table = pd.DataFrame({
        QUERY_ID: query_meta["item_id"].astype(str).to_numpy(),
        "group_id": query_groups,
        **{attribute_column(a): query_meta[attribute_column(a)].astype(object).to_numpy() for a in ATTRIBUTES},
        TOP_RESULTS: [[i for i in row if i] for row in top],
    })
    for attribute in ATTRIBUTES:
        column = attribute_column(attribute)
        q_values, g_values = query_meta[column], catalog[column]
        relevant = attribute_relevance(q_values, g_values, ranking, attribute)
        n_relevant = count_relevant(q_values, g_values, attribute)
        if self_rows is not None:
            # The excluded query item is no longer in the gallery: do not count it in R.
            own = attribute_relevance(q_values, g_values, self_rows[:, None], attribute)[:, 0]
            n_relevant = n_relevant - own
        known = known_values(q_values, attribute)
        for k in ks:
            table[f"{attribute}.p{k}"] = np.where(known, precision_at(relevant, k), np.nan)
        table[f"{attribute}.map10"] = np.where(known, average_precision(relevant, n_relevant), np.nan)
    return table


def _product_columns(query_groups, gallery_groups, ranking, self_excluded, ks) -> pd.DataFrame:
    """recall{K} and rr10 per query; NaN where the query's product has no item in the gallery to find."""
    codes, _ = pd.factorize(np.concatenate([gallery_groups, query_groups]))
    g_codes, q_codes = codes[: len(gallery_groups)], codes[len(gallery_groups) :]
    hits = np.append(g_codes, -1)[ranking] == q_codes[:, None]  # index -1 -> padding, never a hit
    findable = np.bincount(g_codes, minlength=codes.max() + 1)[q_codes] - int(self_excluded) > 0
    columns = {f"recall{k}": recall_at(hits, k) for k in ks} | {RECIPROCAL_RANK: reciprocal_rank(hits)}
    return pd.DataFrame({name: np.where(findable, values, np.nan) for name, values in columns.items()})


# ---- aggregates from the per-query table ----------------------------------------------


def _metric_column(stat_column: str) -> str:
    """The metric name of a per-query column (`rr10` is averaged into `mrr10`)."""
    return "mrr10" if stat_column == RECIPROCAL_RANK else stat_column


def query_metric_columns(table: pd.DataFrame) -> list[str]:
    """The per-query metric columns of a table, e.g. `neckline.p10`, `recall10`, `rr10`."""
    return [c for c in table.columns
            if (c.partition(".")[0] in ATTRIBUTES and "." in c) or re.fullmatch(r"recall\d+", c)
            or c == RECIPROCAL_RANK]


def _value_names(table: pd.DataFrame, attribute: str) -> pd.Series:
    """Each query's value of `attribute` as metric keys name it (each distinct value converted once)."""
    values = table[attribute_column(attribute)].astype(str)
    return values.map({v: metric_value_name(v) for v in values.unique()})


def aggregate_metrics(mode: str, table: pd.DataFrame) -> tuple[dict[str, float], dict[str, int]]:
    """Every metric of one mode and the number of queries behind it, from its per-query table.

    A figure is the mean of a column over the queries where it is not NaN, overall and per
    value of the attribute; a column no query scores gives no key.
    """
    metrics: dict[str, float] = {f"{mode}.n_queries": float(len(table))}
    counts: dict[str, int] = {f"{mode}.n_queries": len(table)}
    names: dict[str, pd.Series] = {}
    for column in query_metric_columns(table):
        scored = table[column].dropna()
        if scored.empty:
            logger.warning("%s: no query is scored on %s; its metrics are left out", mode, column)
            continue
        key = f"{mode}.{_metric_column(column)}"
        metrics[key], counts[key] = float(scored.mean()), len(scored)
        attribute = column.partition(".")[0]
        if attribute not in ATTRIBUTES:
            continue
        if attribute not in names:
            names[attribute] = _value_names(table, attribute)
        grouped = scored.groupby(names[attribute][scored.index], sort=True)
        means, sizes = grouped.mean(), grouped.size()
        for value in means.index:
            metrics[f"{key}.{value}"], counts[f"{key}.{value}"] = float(means[value]), int(sizes[value])
    return metrics, counts


def metric_per_query(table: pd.DataFrame, metric: str) -> pd.Series:
    """The per-query values behind one metric key (any mode prefix), indexed by query id.

    `t2i.category.p10.cardigans` -> `category.p10` of the cardigans queries scored on it;
    `t2i.mrr10` -> `rr10` of the queries whose product can be found. Empty when no query
    is behind the figure (e.g. no test query is a cardigan). Its mean is the metric that
    `aggregate_metrics` reports under that key.
    """
    _, attribute, stat, value = parse_metric_key(metric)
    column = f"{attribute}.{stat}" if attribute else (RECIPROCAL_RANK if stat == "mrr10" else stat)
    if column not in query_metric_columns(table):
        raise ValueError(
            f"metric {metric!r} is not computed from the per-query table (its column {column!r} is missing; "
            f"columns: {query_metric_columns(table)}); check the name against DESIGN's metric names"
        )
    values = table[column]
    scored = values.notna()
    if value is not None:
        scored &= _value_names(table, attribute) == value
    return pd.Series(values[scored].to_numpy(dtype=np.float64), index=table[QUERY_ID][scored].to_numpy(),
                     name=metric)


# ---- reporting ----------------------------------------------------------------------


def parse_metric_key(key: str) -> tuple[str, str | None, str, str | None]:
    """(mode, attribute or None, stat, value or None) of a metric key; values may contain dots."""
    mode, _, rest = key.partition(".")
    attribute, _, rest_after = rest.partition(".")
    if attribute not in ATTRIBUTES:
        return mode, None, rest, None
    stat, sep, value = rest_after.partition(".")
    return mode, attribute, stat, (value if sep else None)


def by_attribute_table(result: EvalResult, attribute: str) -> pd.DataFrame:
    """Per mode and value of `attribute`: p{K}..., map10, n, thin (one row per value)."""
    attribute_column(attribute)  # validates the name
    cells: dict[tuple[str, str], dict] = {}
    for key, value in result.metrics.items():
        mode, attr, stat, attr_value = parse_metric_key(key)
        if attr == attribute and attr_value is not None and mode in MODES:  # c2i has its own table
            row = cells.setdefault((mode, attr_value), {"mode": mode, "value": attr_value})
            row[stat], row["n"] = value, result.counts[key]
    stats = [f"p{k}" for k in result.ks] + ["map10"]
    table = pd.DataFrame(list(cells.values()), columns=["mode", "value", *stats, "n"])
    table["n"] = table["n"].astype(int)
    table["thin"] = table["n"] < THIN_BELOW
    mode_order = {m: i for i, m in enumerate(MODES)}
    return (table.sort_values(["mode", "value"], key=lambda s: s.map(mode_order) if s.name == "mode" else s)
            .reset_index(drop=True))
