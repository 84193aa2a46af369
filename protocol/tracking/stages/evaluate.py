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

from protocol.retrieval.evaluation import EvalConfigMixin, SplitEvaluation
from protocol.tracking import registry
from protocol.tracking.evaluation import evaluate_and_log
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
    version = registry.resolve_version(cfg.version)
    return resolve_input(run_artifact_uri(version.run_id, "checkpoints/best.pt"), "version"), version


def run_evaluate(cfg: EvaluateConfig) -> dict:
    from protocol.data.processed import load_processed
    from protocol.model.features import load_features
    from protocol.model.prompt_features import load_prompt_features
    from protocol.model.protocol_model import ProtocolHeads
    from protocol.retrieval.catalog import build_catalog, load_catalog
    from protocol.retrieval.class_queries import ClassQueries, class_prompts
    from protocol.training.checkpoint import load_checkpoint

    with stage_run("evaluate", cfg, output_dir=cfg.output_dir) as logger:
        ckpt_path, version = locate_checkpoint(cfg)
        if version is not None:
            logger.name_after(version=version.version)
        state = load_checkpoint(ckpt_path)
        backbone_fp = state["backbone_fingerprint"]
        processed = load_processed(resolve_input(cfg.prepared, "prepared"))
        logger.log_dataset(processed, "evaluation")
        baseline_dir = resolve_input(cfg.baseline_catalog, "baseline_catalog")
        baseline_catalog = load_catalog(baseline_dir, expected_backbone_fingerprint=backbone_fp)
        logger.set_tags({"dataset.fingerprint": processed.fingerprint, "backbone.fingerprint": backbone_fp,
                         "candidate.version": version.version if version else ""})
        logger.log_dataset(processed, context="evaluation")
        features = load_features(cfg.cache_dir, processed.fingerprint, backbone_fp)  # never the backbone
        heads = ProtocolHeads.from_checkpoint(state)
        image_emb, text_emb = heads.embed_numpy(features.image, features.text)
        fusion = heads.fusion_weight if heads.config.learn_fusion else cfg.fusion_weight
        class_queries = None
        if cfg.wants_class_queries():
            prompts = class_prompts(processed.meta)
            _, prompt_emb = heads.embed_numpy(None, load_prompt_features(prompts, cfg.cache_dir, processed.fingerprint,
                                                                         backbone_fp))
            class_queries = ClassQueries(prompts, prompt_emb)

        out = logger.output_dir
        meta = processed.meta
        rows = cfg.catalog_rows(meta)
        catalog_dir = build_catalog(out / "catalog", image_emb[rows], text_emb[rows],
                                    meta.iloc[rows].reset_index(drop=True),
                                    {**baseline_catalog.manifest, "heads": str(ckpt_path.name),
                                     "candidate_version": version.version if version else None})
        evaluation = evaluate_and_log(logger, cfg, processed, image_emb, text_emb, catalog_dir / "eval",
                                      backbone_fingerprint=backbone_fp, fusion_weight=fusion, heads=heads,
                                      class_queries=class_queries)
        logger.log_metrics({"fusion_weight": fusion, "attribute_weight": heads.config.attribute_weight})
        logger.log_artifact(catalog_dir / "eval", "eval")
        logger.log_artifact(catalog_dir, "catalog")

        html = _report(logger, processed, evaluation, baseline_dir / "eval", out / "report",
                       context={"checkpoint": str(ckpt_path.name), "version": version.version if version else "-",
                                "dataset": processed.fingerprint[:16], "backbone": backbone_fp[:16]})
        logger.log_artifact(out / "report", "report")
        if version is not None:
            registry.tag_version(version, {registry.EVALUATION_RUN_TAG: logger.run_id,
                                           "evaluation.t2i.neckline.p10": evaluation.result.metrics.get(
                                               "t2i.neckline.p10")})
        return {"run_id": logger.run_id, "metrics": evaluation.result.metrics, "report": str(html)}


def _report(logger, processed, evaluation: SplitEvaluation, baseline_eval_dir: Path, report_dir: Path,
            context: dict[str, str]) -> Path:
    """The report: the scoreboard against the baseline's own evaluation, tables, side-by-side galleries.

    A baseline evaluation that cannot be read or compared leaves the scoreboard out, saying
    why; the report is written either way.
    """
    from protocol.report import write_report
    from protocol.retrieval.evaluation import focus_table, image_loader, side_by_side_figures
    from protocol.retrieval.metrics import by_attribute_table
    from protocol.scoreboard import MissingMetricError, compute_scoreboard, evidence_of, focus_classes, \
        load_targets, read_evidence

    result, focus = evaluation.result, focus_classes()
    candidate = evidence_of(result, evaluation.manifest, "candidate (this evaluation)")
    board, no_board = None, ""
    try:
        baseline = read_evidence(baseline_eval_dir, f"baseline ({baseline_eval_dir})")
        board = compute_scoreboard(baseline, candidate, load_targets())
    except (OSError, ValueError, MissingMetricError) as e:
        no_board = f"the baseline evaluation cannot be compared with this one: {e}"
        log.warning("report without a scoreboard: %s", no_board)
    report_dir.mkdir(parents=True, exist_ok=True)
    galleries = {}
    if board is not None and "t2i" in baseline.tables:
        figures = side_by_side_figures(baseline.table("t2i"), evaluation, image_loader(processed), focus)
        for name, (caption, fig) in figures.items():
            fig.savefig(report_dir / name, dpi=80)
            logger.log_figure(fig, f"galleries/{name}")
            galleries[caption] = name
    tables = {attribute: by_attribute_table(result, attribute) for attribute in ("category", "material", "neckline")}
    tables["Weak classes and rare materials (scoreboard.yaml)"] = focus_table(result, focus)
    _, html = write_report(report_dir, scoreboard=board, no_scoreboard=no_board, metrics=result.metrics,
                           counts=result.counts, tables=tables, galleries=galleries,
                           title="protocol: candidate evaluation", context=context)
    return html
