"""Logging an evaluation to MLflow: what `protocol.retrieval.evaluation` computed, as metrics, tables, figures.

`baseline` and `evaluate` both evaluate through `evaluate_and_log`, so every metric name,
table and file matches between the two sides the scoreboard compares.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protocol.events import RunLogger
from protocol.retrieval.eval_files import write_eval_dir
from protocol.retrieval.evaluation import (
    EvalConfigMixin,
    SplitEvaluation,
    evaluate_processed,
    gallery_figures,
    image_loader,
)
from protocol.retrieval.metrics import ATTRIBUTES, by_attribute_table
from protocol.retrieval.search import search_log_entries


def evaluate_and_log(logger: RunLogger, cfg: EvalConfigMixin, processed, image_emb: np.ndarray,
                     text_emb: np.ndarray, eval_dir: Path, *, backbone_fingerprint: str,
                     fusion_weight: float | None = None, heads=None, class_queries=None) -> SplitEvaluation:
    """Evaluate embeddings of every dataset row, write the eval/ directory, log it all."""
    evaluation = evaluate_processed(cfg, processed, image_emb, text_emb, backbone_fingerprint=backbone_fingerprint,
                                    fusion_weight=fusion_weight, heads=heads, class_queries=class_queries)
    write_eval_dir(evaluation.result, evaluation.manifest, eval_dir)
    result = evaluation.result
    logger.log_metrics(result.metrics)
    search_metrics, search_tags = search_log_entries(result.search)  # search.<mode>.*: backend, recall10_vs_exact
    logger.log_metrics(search_metrics)
    logger.set_tags(search_tags)
    for attribute in ATTRIBUTES:
        logger.log_table(by_attribute_table(result, attribute), f"tables/metrics_by_{attribute}.json")
    for mode, table in result.queries.items():
        logger.log_table(table, f"tables/queries_{mode}.json")
    if result.class_queries is not None:
        logger.log_table(result.class_queries, "tables/queries_c2i.json")
    for path, fig in gallery_figures(evaluation, image_loader(processed), cfg.gallery_queries).items():
        logger.log_figure(fig, path)
    return evaluation

