"""The one evaluation path that `baseline` and `evaluate` share: same metric code, same names."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from protocol.data.images import load_image
from protocol.events import RunLogger

log = logging.getLogger(__name__)

BREAKDOWN_ATTRIBUTES = ("category", "material", "neckline", "pattern", "sleeve", "color")
WEAK_FOCUS = {"category": ["cardigans", "shorts"], "material": ["denim", "leather"]}


def split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@dataclass
class EvalConfigMixin:
    """Evaluation parameters, the same for every stage that evaluates."""

    catalog_splits: str = field(default="train,val", metadata={"help": "splits that form the catalog"})
    query_split: str = field(default="test", metadata={"help": "split whose items are the queries"})
    modes: str = field(default="t2i,t2f,i2i", metadata={"help": "retrieval modes to evaluate"})
    max_queries: int | None = field(default=None, metadata={"help": "stratified sample of queries (empty = all)"})
    fusion_weight: float = field(default=0.5, metadata={"help": "image weight w of the fused t2f catalog"})
    eval_seed: int = 0
    gallery_queries: int = field(default=6, metadata={"help": "queries shown per gallery"})

    def __post_init__(self):
        from protocol.retrieval.metrics import MODES

        bad = [m for m in split_list(self.modes) if m not in MODES]
        if bad or not split_list(self.modes):
            raise ValueError(f"parameter 'modes' must list some of {', '.join(MODES)}, got {self.modes!r}")
        for name in ("catalog_splits", "query_split"):
            bad = [s for s in split_list(getattr(self, name)) if s not in ("train", "val", "test")]
            if bad or not split_list(getattr(self, name)):
                raise ValueError(f"parameter {name!r} must name splits among train, val, test, got {getattr(self, name)!r}")
        if not 0.0 <= self.fusion_weight <= 1.0:
            raise ValueError(f"parameter 'fusion_weight' must be in [0, 1], got {self.fusion_weight}")
        if self.max_queries is not None and self.max_queries < 1:
            raise ValueError(f"parameter 'max_queries' must be >= 1, got {self.max_queries}")

    def catalog_rows(self, meta: pd.DataFrame) -> np.ndarray:
        return np.flatnonzero(meta["split"].isin(split_list(self.catalog_splits)).to_numpy())

    def query_rows(self, meta: pd.DataFrame) -> np.ndarray:
        return np.flatnonzero(meta["split"].isin(split_list(self.query_split)).to_numpy())


def evaluate_and_log(logger: RunLogger, cfg: EvalConfigMixin, processed, image_emb: np.ndarray,
                     text_emb: np.ndarray, eval_dir: Path, *, fusion_weight: float | None = None):
    """Evaluate embeddings of every dataset row (catalog and queries), write eval/*.json, log it all."""
    from protocol.retrieval.metrics import by_attribute_table, evaluate_retrieval, write_eval_json
    from protocol.retrieval.search import search_log_entries

    meta = processed.meta
    cat, qry = cfg.catalog_rows(meta), cfg.query_rows(meta)
    if len(cat) == 0 or len(qry) == 0:
        raise ValueError(f"evaluation needs catalog ({cfg.catalog_splits}) and query ({cfg.query_split}) items; "
                         f"got {len(cat)} and {len(qry)} in {processed.path}")
    queries, catalog = meta.iloc[qry].reset_index(drop=True), meta.iloc[cat].reset_index(drop=True)
    result = evaluate_retrieval(
        queries, text_emb[qry], image_emb[qry], catalog, image_emb[cat], text_emb[cat],
        modes=tuple(split_list(cfg.modes)), fusion_weight=cfg.fusion_weight if fusion_weight is None else fusion_weight,
        max_queries=cfg.max_queries, seed=cfg.eval_seed,
    )
    write_eval_json(result, eval_dir)
    logger.log_metrics(result.metrics)
    search_metrics, search_tags = search_log_entries(result.search)  # search.<mode>.*: backend, recall10_vs_exact
    logger.log_metrics(search_metrics)
    logger.set_tags(search_tags)
    for attribute in BREAKDOWN_ATTRIBUTES:
        logger.log_table(by_attribute_table(result, attribute), f"tables/metrics_by_{attribute}.json")
    log_galleries(logger, cfg, processed, queries, catalog, result)
    return result


def image_loader(processed):
    """item_id -> PIL image, reading the processed dataset lazily."""
    row_of = {item_id: i for i, item_id in enumerate(processed.meta["item_id"])}
    return lambda item_id: load_image(processed.dataset[row_of[item_id]]["image"])


def log_galleries(logger: RunLogger, cfg: EvalConfigMixin, processed, queries, catalog, result) -> None:
    from protocol.retrieval.gallery import query_gallery, weakness_gallery

    loader = image_loader(processed)
    for mode, ranking in result.rankings.items():
        fig = query_gallery(result.query_rows, ranking, queries, catalog, loader, n_queries=cfg.gallery_queries,
                            query_as="image" if mode == "i2i" else "text", title=f"{mode}: query and top-10")
        logger.log_figure(fig, f"galleries/{mode}_queries.png")
        plt.close(fig)
    if "t2i" in result.rankings:
        fig = weakness_gallery(result, queries, catalog, loader, mode="t2i", n_queries=cfg.gallery_queries)
        logger.log_figure(fig, "galleries/t2i_weakness.png")
        plt.close(fig)
