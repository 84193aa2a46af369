"""Evaluating embeddings of the processed dataset: the one path that `baseline` and `evaluate` share.

Row selection (catalog splits, query split), the metrics (`protocol.retrieval.metrics`),
the eval/ directory (`protocol.retrieval.eval_files`) and the figures, with no MLflow:
the tracking side only logs what these functions return.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from protocol.data.images import load_image
from protocol.retrieval.class_queries import CLASS_QUERY_MODE, ClassQueries, evaluate_class_queries
from protocol.retrieval.eval_files import EvalManifest, eval_manifest
from protocol.retrieval.gallery import query_gallery, side_by_side_gallery, weakness_gallery
from protocol.retrieval.metrics import (
    MODES,
    QUERY_ID,
    THIN_BELOW,
    TOP_RESULTS,
    EvalResult,
    attribute_column,
    by_attribute_table,
    evaluate_retrieval,
    metric_value_name,
    thin_keys,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EVAL_MODES = (*MODES, CLASS_QUERY_MODE)  # c2i rides along: at least one item mode is evaluated
SIDE_BY_SIDE_QUERIES = 4  # per weak class: two rows each (baseline, candidate) stay readable


def split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@dataclass
class EvalConfigMixin:
    """Evaluation parameters, the same for every stage that evaluates."""

    catalog_splits: str = field(default="train,val", metadata={"help": "splits that form the catalog"})
    query_split: str = field(default="test", metadata={"help": "split whose items are the queries"})
    modes: str = field(default="t2i,t2f,i2i,c2i", metadata={
        "help": "retrieval modes to evaluate; c2i = class-name queries, as on the public leaderboard"})
    max_queries: int | None = field(default=None, metadata={"help": "stratified sample of queries (empty = all)"})
    fusion_weight: float = field(default=0.5, metadata={"help": "image weight w of the fused t2f catalog"})
    eval_seed: int = 0
    gallery_queries: int = field(default=6, metadata={"help": "queries shown per gallery"})

    def __post_init__(self):
        bad = [m for m in split_list(self.modes) if m not in EVAL_MODES]
        if bad or not self.item_modes():
            raise ValueError(f"parameter 'modes' must list some of {', '.join(EVAL_MODES)}, with at least one of "
                             f"{', '.join(MODES)}; got {self.modes!r}")
        for name in ("catalog_splits", "query_split"):
            bad = [s for s in split_list(getattr(self, name)) if s not in SPLITS]
            if bad or not split_list(getattr(self, name)):
                raise ValueError(f"parameter {name!r} must name splits among {', '.join(SPLITS)}, "
                                 f"got {getattr(self, name)!r}")
        if not 0.0 <= self.fusion_weight <= 1.0:
            raise ValueError(f"parameter 'fusion_weight' must be in [0, 1], got {self.fusion_weight}")
        if self.max_queries is not None and self.max_queries < 1:
            raise ValueError(f"parameter 'max_queries' must be >= 1, got {self.max_queries}")

    def item_modes(self) -> tuple[str, ...]:
        """The modes whose queries are the query split's items."""
        return tuple(m for m in split_list(self.modes) if m in MODES)

    def wants_class_queries(self) -> bool:
        return CLASS_QUERY_MODE in split_list(self.modes)

    def catalog_rows(self, meta: pd.DataFrame) -> np.ndarray:
        return np.flatnonzero(meta["split"].isin(split_list(self.catalog_splits)).to_numpy())

    def query_rows(self, meta: pd.DataFrame) -> np.ndarray:
        return np.flatnonzero(meta["split"].isin(split_list(self.query_split)).to_numpy())


@dataclass
class SplitEvaluation:
    """One evaluation of embeddings of the processed dataset, with the frames its rankings index."""

    result: EvalResult
    manifest: EvalManifest
    queries: pd.DataFrame  # the query split's metadata; result.query_rows index it
    catalog: pd.DataFrame  # the catalog's metadata; result.rankings index it


def evaluate_processed(cfg: EvalConfigMixin, processed, image_emb: np.ndarray, text_emb: np.ndarray, *,
                       backbone_fingerprint: str, fusion_weight: float | None = None,
                       heads=None, class_queries: ClassQueries | None = None) -> SplitEvaluation:
    """Evaluate embeddings of every dataset row (catalog and queries) as `cfg` says.

    `heads` (the ProtocolHeads that made the embeddings) adds their attribute late fusion to
    the text-query modes, at their fitted weight: the ranking the served model makes.
    `class_queries` (embedded like the texts) are the c2i queries, needed when `cfg` asks for c2i.
    """
    if cfg.wants_class_queries() and class_queries is None:
        raise ValueError("mode c2i needs the class-name queries' embeddings (the baseline stage caches their "
                         f"backbone features); pass them, or leave c2i out of modes ({cfg.modes!r})")
    meta = processed.meta
    cat, qry = cfg.catalog_rows(meta), cfg.query_rows(meta)
    if len(cat) == 0 or len(qry) == 0:
        raise ValueError(f"evaluation needs catalog ({cfg.catalog_splits}) and query ({cfg.query_split}) items; "
                         f"got {len(cat)} and {len(qry)} in {processed.path}")
    queries, catalog = meta.iloc[qry].reset_index(drop=True), meta.iloc[cat].reset_index(drop=True)
    scores = None if heads is None else heads.attribute_scores(queries["text"].tolist(), image_emb[qry], image_emb[cat])
    result = evaluate_retrieval(
        queries, text_emb[qry], image_emb[qry], catalog, image_emb[cat], text_emb[cat],
        modes=cfg.item_modes(), fusion_weight=cfg.fusion_weight if fusion_weight is None else fusion_weight,
        max_queries=cfg.max_queries, seed=cfg.eval_seed, attribute_scores=scores,
    )
    if cfg.wants_class_queries():
        result = with_class_queries(result, class_queries, catalog, image_emb[cat], heads)
    manifest = eval_manifest(result, dataset_fingerprint=processed.fingerprint,
                             backbone_fingerprint=backbone_fingerprint,
                             catalog_splits=split_list(cfg.catalog_splits), query_split=split_list(cfg.query_split))
    return SplitEvaluation(result, manifest, queries, catalog)


def with_class_queries(result: EvalResult, class_queries: ClassQueries, catalog: pd.DataFrame,
                       catalog_image: np.ndarray, heads=None) -> EvalResult:
    """`result` with the c2i figures and table added; `heads` rank with their late fusion, like text queries."""
    query_vectors, catalog_vectors = class_queries.embeddings, catalog_image
    if heads is not None:
        query_vectors = heads.ranking_queries(class_queries.prompts["prompt"].tolist(), query_vectors)
        catalog_vectors = heads.ranking_catalog(catalog_image)
    metrics, counts, table = evaluate_class_queries(class_queries, catalog, catalog_vectors, query_vectors)
    return replace(result, metrics=result.metrics | metrics, counts=result.counts | counts,
                   thin=result.thin | thin_keys(counts), class_queries=table)


def image_loader(processed) -> Callable[[str], Image.Image]:
    """item_id -> PIL image, reading the processed dataset lazily."""
    row_of = {item_id: i for i, item_id in enumerate(processed.meta["item_id"])}
    return lambda item_id: load_image(processed.dataset[row_of[item_id]]["image"])


def gallery_figures(evaluation: SplitEvaluation, load: Callable, n_queries: int) -> dict[str, Figure]:
    """artifact path -> figure: each mode's first queries with their top-10, and the t2i weaknesses."""
    result = evaluation.result
    figures = {}
    for mode, ranking in result.rankings.items():
        figures[f"galleries/{mode}_queries.png"] = query_gallery(
            result.query_rows, ranking, evaluation.queries, evaluation.catalog, load, n_queries=n_queries,
            query_as="image" if mode == "i2i" else "text", title=f"{mode}: query and top-10")
    if "t2i" in result.rankings:
        figures["galleries/t2i_weakness.png"] = weakness_gallery(
            result, evaluation.queries, evaluation.catalog, load, mode="t2i", n_queries=n_queries)
    return figures


def side_by_side_figures(baseline_t2i: pd.DataFrame, candidate: SplitEvaluation, load: Callable,
                         focus: Mapping[str, Sequence[str]], n_per_value: int = SIDE_BY_SIDE_QUERIES,
                         ) -> dict[str, tuple[str, Figure]]:
    """file name -> (caption, figure): baseline vs candidate t2i top-10 for each focus value's first queries.

    `baseline_t2i` is the baseline's per-query t2i table on the same queries and catalog
    (the scoreboard's comparability check says so); its top-10 ids are placed in the
    candidate's catalog rows. A value without queries gets no figure.
    """
    if "t2i" not in candidate.result.rankings:
        return {}
    table = candidate.result.queries["t2i"]
    baseline = baseline_t2i.set_index(QUERY_ID)
    catalog_row = pd.Index(candidate.catalog["item_id"].astype(str))
    figures = {}
    for attribute, values in focus.items():
        names = table[attribute_column(attribute)].astype(str).map(metric_value_name).to_numpy()
        for value in values:
            picked = np.flatnonzero(names == metric_value_name(value))[:n_per_value]
            if len(picked) == 0:
                log.warning("side-by-side gallery: no query has %s = %s", attribute, value)
                continue
            baseline_rankings = np.full((len(picked), candidate.result.rankings["t2i"].shape[1]), -1)
            for i, query_id in enumerate(table[QUERY_ID].to_numpy()[picked]):
                rows = catalog_row.get_indexer(list(baseline.at[query_id, TOP_RESULTS]))
                baseline_rankings[i, : len(rows)] = rows
            fig = side_by_side_gallery(baseline_rankings, candidate.result.rankings["t2i"][picked],
                                       candidate.result.query_rows[picked], candidate.queries, candidate.catalog,
                                       load, n_queries=n_per_value,
                                       title=f"t2i, {attribute} = {value}: baseline vs candidate top-10")
            figures[f"side_by_side_{attribute}_{metric_value_name(value)}.png"] = (
                f"{attribute} = {value}: baseline vs candidate", fig)
    return figures


def focus_table(result: EvalResult, focus: Mapping[str, Sequence[str]], stat: str = "p10") -> pd.DataFrame:
    """One row per mode and focus value (weak classes, rare materials): `stat`, n, thin; n = 0 when absent."""
    rows = []
    for attribute, values in focus.items():
        table = by_attribute_table(result, attribute).set_index(["mode", "value"])
        for mode in result.rankings:
            for value in values:
                key = (mode, metric_value_name(value))
                n = int(table.at[key, "n"]) if key in table.index else 0
                rows.append({"mode": mode, "attribute": attribute, "value": value,
                             stat: float(table.at[key, stat]) if n else float("nan"), "n": n,
                             "thin": n < THIN_BELOW})
    return pd.DataFrame(rows, columns=["mode", "attribute", "value", stat, "n", "thin"])
