"""`evaluate`: full evaluation of a trained checkpoint or a registered version, on cached features.

The catalog embeddings are rebuilt by applying the candidate heads to the cached backbone
features (no backbone call), then the same evaluation code as `baseline` runs, so every
metric name and file matches. Adds a side-by-side gallery (baseline vs candidate top-10)
for the weak classes and rare materials, and a Markdown/HTML report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from protocol.tracking import registry
from protocol.tracking.evaluation import EvalConfigMixin, WEAK_FOCUS, evaluate_and_log, image_loader, split_list
from protocol.tracking.runs import resolve_input, run_artifact_uri, stage_run

log = logging.getLogger(__name__)


@dataclass
class EvaluateConfig(EvalConfigMixin):
    """Evaluate a candidate: a train run, a checkpoint file, or a registered version (@alias / number)."""

    prepared: str = field(default="outputs/prepared/latest", metadata={"help": "processed dataset dir or runs:/ URI"})
    train_run: str = field(default="", metadata={"help": "run id of a train run (uses its best checkpoint)"})
    checkpoint: str = field(default="", metadata={"help": "checkpoint path or runs:/ URI (instead of train_run)"})
    version: str = field(default="@candidate", metadata={"help": "registered version, used when neither is given"})
    baseline_catalog: str = field(default="outputs/baseline/latest/catalog",
                                  metadata={"help": "baseline catalog (side-by-side galleries, report deltas)"})
    cache_dir: str = field(default="outputs/feature_cache", metadata={"help": "feature cache directory"})
    output_dir: str = "outputs/evaluate"

    def __post_init__(self):
        super().__post_init__()
        if self.train_run and self.checkpoint:
            raise ValueError("give either 'train_run' or 'checkpoint', not both")


def locate_checkpoint(cfg: EvaluateConfig):
    """(local checkpoint path, the registered version it belongs to or None)."""
    if cfg.checkpoint:
        return resolve_input(cfg.checkpoint, "checkpoint"), None
    if cfg.train_run:
        version = registry.version_for_run(cfg.train_run)
        return resolve_input(run_artifact_uri(cfg.train_run, "checkpoints/best.pt"), "train_run"), version
    from protocol.tracking.stages.scoreboard import resolve_version

    version = resolve_version(cfg.version)
    return resolve_input(run_artifact_uri(version.run_id, "checkpoints/best.pt"), "version"), version


def run_evaluate(cfg: EvaluateConfig) -> dict:
    from protocol.data.processed import load_processed
    from protocol.model.features import load_features
    from protocol.model.protocol_model import ProtocolHeads
    from protocol.report import write_report
    from protocol.retrieval.catalog import build_catalog, load_catalog
    from protocol.retrieval.metrics import by_attribute_table
    from protocol.scoreboard import compute_scoreboard
    from protocol.training.checkpoint import load_checkpoint

    with stage_run("evaluate", cfg, output_dir=cfg.output_dir) as logger:
        ckpt_path, version = locate_checkpoint(cfg)
        if version is not None:
            logger.name_after(version=version.version)
        state = load_checkpoint(ckpt_path)
        backbone_fp = state["backbone_fingerprint"]
        processed = load_processed(resolve_input(cfg.prepared, "prepared"))
        baseline_catalog = load_catalog(resolve_input(cfg.baseline_catalog, "baseline_catalog"),
                                        expected_backbone_fingerprint=backbone_fp)
        logger.set_tags({"dataset.fingerprint": processed.fingerprint, "backbone.fingerprint": backbone_fp,
                         "candidate.version": version.version if version else ""})
        features = load_features(cfg.cache_dir, processed.fingerprint, backbone_fp)  # never the backbone
        heads = ProtocolHeads.from_checkpoint(state)
        image_emb, text_emb = heads.embed_numpy(features.image, features.text)
        fusion = heads.fusion_weight if heads.config.learn_fusion else cfg.fusion_weight

        out = logger.output_dir
        meta = processed.meta
        rows = cfg.catalog_rows(meta)
        catalog_dir = build_catalog(out / "catalog", image_emb[rows], text_emb[rows],
                                    meta.iloc[rows].reset_index(drop=True),
                                    {**baseline_catalog.manifest, "heads": str(ckpt_path.name),
                                     "candidate_version": version.version if version else None})
        result = evaluate_and_log(logger, cfg, processed, image_emb, text_emb, catalog_dir / "eval",
                                  fusion_weight=fusion)
        logger.log_metrics({"fusion_weight": fusion})
        logger.log_artifact(catalog_dir / "eval", "eval")
        logger.log_artifact(catalog_dir, "catalog")

        baseline = _baseline_result(cfg, processed, features)
        galleries = _side_by_side(logger, cfg, processed, baseline, result, out / "report")
        board = compute_scoreboard(baseline.metrics, result.metrics, baseline_counts=baseline.counts,
                                   candidate_counts=result.counts)
        md, html = write_report(
            out / "report", scoreboard=board, metrics=result.metrics, counts=result.counts,
            tables={a: by_attribute_table(result, a) for a in ("category", "material", "neckline")},
            galleries=galleries, title="protocol: candidate evaluation",
            context={"checkpoint": str(ckpt_path.name), "version": version.version if version else "-",
                     "dataset": processed.fingerprint[:16], "backbone": backbone_fp[:16]},
        )
        logger.log_artifact(out / "report", "report")
        if version is not None:
            registry.tag_version(version, {registry.EVALUATION_RUN_TAG: logger.run_id,
                                           "evaluation.t2i.neckline.p10": result.metrics.get("t2i.neckline.p10")})
        return {"run_id": logger.run_id, "metrics": result.metrics, "report": str(html)}


def _baseline_result(cfg: EvaluateConfig, processed, features):
    """The zero-shot evaluation on the same queries: the baseline side of the side-by-side galleries."""
    from protocol.retrieval.metrics import evaluate_retrieval

    meta = processed.meta
    cat, qry = cfg.catalog_rows(meta), cfg.query_rows(meta)
    return evaluate_retrieval(
        meta.iloc[qry].reset_index(drop=True), features.text[qry], features.image[qry],
        meta.iloc[cat].reset_index(drop=True), features.image[cat], features.text[cat],
        modes=tuple(split_list(cfg.modes)), fusion_weight=cfg.fusion_weight, max_queries=cfg.max_queries,
        seed=cfg.eval_seed,
    )


def _side_by_side(logger, cfg, processed, baseline, candidate, report_dir: Path) -> dict[str, str]:
    """Baseline vs candidate t2i top-10 for the weak classes and rare materials; saved beside the report too."""
    from protocol.retrieval.gallery import side_by_side_gallery
    from protocol.retrieval.metrics import attribute_column

    meta = processed.meta
    queries = meta.iloc[cfg.query_rows(meta)].reset_index(drop=True)
    catalog = meta.iloc[cfg.catalog_rows(meta)].reset_index(drop=True)
    if "t2i" not in candidate.rankings or not np.array_equal(baseline.query_rows, candidate.query_rows):
        return {}
    loader = image_loader(processed)
    report_dir.mkdir(parents=True, exist_ok=True)
    galleries = {}
    for attribute, values in WEAK_FOCUS.items():
        column = queries[attribute_column(attribute)].to_numpy()[candidate.query_rows]
        for value in values:
            picked = np.flatnonzero(column == value)[: min(cfg.gallery_queries, 4)]
            if len(picked) == 0:
                continue
            fig = side_by_side_gallery(baseline.rankings["t2i"][picked], candidate.rankings["t2i"][picked],
                                       candidate.query_rows[picked], queries, catalog, loader,
                                       title=f"t2i, {attribute} = {value}: baseline vs candidate top-10")
            name = f"side_by_side_{attribute}_{value}.png"
            fig.savefig(report_dir / name, dpi=80)
            logger.log_figure(fig, f"galleries/{name}")
            plt.close(fig)
            galleries[f"{attribute} = {value}: baseline vs candidate"] = name
    return galleries
