"""Validation during training: retrieval metrics on a mini catalog, from cached features only.

Queries are the val-split items (up to `max_queries`, stratified by evaluate_retrieval).
The catalog is, by default, the val split itself (`catalog_split="val"`, the query's own item
included): no item the heads were trained on, as in the evaluation's held-out view. A catalog
of training items (`"train"`, a seeded sample of up to `max_catalog`) rewards heads that
recall the labels they were trained on: on hm-dev it fitted the late-fusion weight at the
grid's top (0.5), which ranked the held-out catalog worse than 0.1 did (neckline, leather).
Embeddings are
the heads applied to the cached backbone features, so a validation costs a few matrix
products. The same call with `ProtocolHeads.identity` is the zero-shot reference that
training deltas are measured against.

Text-query modes rank with the heads' attribute late fusion at `heads.config.attribute_weight`,
as evaluation and serving do; `fit_attribute_weight` first picks that weight on these queries
(`protocol.retrieval.attribute_scoring.fit_attribute_weight`) and reports it as `attribute_weight`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from protocol.data.schema import require_columns
from protocol.model.protocol_model import ProtocolHeads
from protocol.retrieval import attribute_scoring
from protocol.retrieval.metrics import MODES, EvalResult, evaluate_retrieval, metric_per_query

QUERY_SPLIT = "val"
CATALOG_SPLITS = ("val", "train")  # held out (the default), or a sample of the items trained on
COUNT_SUFFIX = "n_queries"  # evaluate_retrieval also reports how many queries a mode used
ATTRIBUTE_WEIGHT = "attribute_weight"  # the fitted late-fusion weight, among the returned figures


def validation_rows(meta: pd.DataFrame, max_catalog: int, seed: int,
                    catalog_split: str = CATALOG_SPLITS[0]) -> tuple[np.ndarray, np.ndarray]:
    """(query rows, catalog rows): every val row, and a seeded sample of up to max_catalog rows of
    `catalog_split` (sorted)."""
    if catalog_split not in CATALOG_SPLITS:
        raise ValueError(f"the validation catalog split must be one of {CATALOG_SPLITS}, got {catalog_split!r}")
    require_columns(meta, ["split"], "validation meta", "the processed dataset has it")
    split = meta["split"].to_numpy()
    queries = np.flatnonzero(split == QUERY_SPLIT)
    catalog = np.flatnonzero(split == catalog_split)
    if len(queries) == 0 or len(catalog) == 0:
        raise ValueError(
            f"validation needs items of split {QUERY_SPLIT!r} (queries) and {catalog_split!r} (catalog); "
            f"meta has {len(queries)} and {len(catalog)}: re-run prepare with a val split"
        )
    if len(catalog) > max_catalog:
        catalog = np.sort(np.random.default_rng(seed).choice(catalog, size=max_catalog, replace=False))
    return queries, catalog


def validate(
    heads: ProtocolHeads,
    features,
    meta: pd.DataFrame,
    *,
    max_catalog: int = 5000,
    max_queries: int = 500,
    seed: int = 0,
    fusion_weight: float | None = None,
    modes=MODES,
    fit_attribute_weight: bool = False,
    catalog_split: str = CATALOG_SPLITS[0],
) -> dict[str, float]:
    """Retrieval metrics (DESIGN names, e.g. "t2i.neckline.p10") of `heads` on the mini catalog."""
    if len(meta) != len(features.image):
        raise ValueError(f"meta has {len(meta)} rows but the features have {len(features.image)}: "
                         "they must come from the same dataset, in the same row order")
    query_rows, catalog_rows = validation_rows(meta, max_catalog, seed, catalog_split)
    rows = np.concatenate([query_rows, catalog_rows])
    image, text = heads.embed_numpy(features.image[rows], features.text[rows])
    n = len(query_rows)
    queries, catalog = meta.iloc[query_rows].reset_index(drop=True), meta.iloc[catalog_rows].reset_index(drop=True)
    scores = heads.attribute_scores(queries["text"].astype(str).tolist(), image[:n], image[n:], weight=1.0)

    def evaluate(weight: float, eval_modes) -> EvalResult:
        return evaluate_retrieval(
            queries, text[:n], image[:n], catalog, image[n:], text[n:],
            modes=eval_modes,
            fusion_weight=heads.fusion_weight if fusion_weight is None else fusion_weight,
            max_queries=max_queries,
            seed=seed,
            attribute_scores=scores.with_weight(weight) if scores is not None and weight > 0 else None,
        )

    weight = heads.config.attribute_weight
    if fit_attribute_weight and scores is not None:
        weight, _ = attribute_scoring.fit_attribute_weight(lambda w: objective_per_query(evaluate(w, ("t2i",))))
    metrics = evaluate(weight, modes).metrics
    return metrics | {ATTRIBUTE_WEIGHT: weight} if scores is not None else metrics


def objective_per_query(result: EvalResult) -> dict[str, pd.Series]:
    """The per-query t2i values of each metric the late-fusion weight is fitted on."""
    table = result.queries["t2i"]
    return {metric: metric_per_query(table, metric) for metric in attribute_scoring.FIT_OBJECTIVE}


def deltas(metrics: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """"delta.<name>": (metric - reference) in points (x100), for the fractions in both (counts left out)."""
    return {f"delta.{name}": 100.0 * (value - reference[name]) for name, value in metrics.items()
            if name in reference and not name.endswith(COUNT_SUFFIX) and name != ATTRIBUTE_WEIGHT}
