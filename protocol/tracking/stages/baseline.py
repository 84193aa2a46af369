"""`baseline`: frozen backbone -> cached features -> Step-6 catalog -> evaluation -> registry alias `baseline`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from protocol.model.engines import ENGINES
from protocol.retrieval.evaluation import EvalConfigMixin
from protocol.tracking.evaluation import evaluate_and_log
from protocol.tracking.registry import EVALUATION_RUN_TAG
from protocol.tracking.runs import REGISTERED_MODEL, resolve_input, stage_run

log = logging.getLogger(__name__)


@dataclass
class BaselineConfig(EvalConfigMixin):
    """Zero-shot reference: embed the processed dataset once, build the catalog, evaluate, register."""

    prepared: str = field(default="outputs/prepared/latest", metadata={"help": "processed dataset dir or runs:/ URI"})
    model: str = field(default="ViT-B-32", metadata={"help": "open_clip model name"})
    pretrained: str = field(default="none", metadata={"help": "open_clip tag, local weights file, or none"})
    backbone_seed: int = field(default=0, metadata={"help": "seed of the random init when pretrained=none"})
    cache_dir: str = field(default="outputs/feature_cache", metadata={"help": "feature cache directory"})
    batch_size: int = 32
    num_workers: int | None = field(default=None, metadata={
        "help": "DataLoader workers of the local engine; empty = derived from the cores and the device"})
    engine: str = field(default="local", metadata={
        "choices": ENGINES, "help": "feature extraction: local (DataLoader workers) or ray (Ray Data actors; "
                                    "RAY_ADDRESS names a cluster, else a local Ray instance)"})
    register: bool = field(default=True, metadata={"help": "register the zero-shot model as @baseline"})
    output_dir: str = field(default="outputs/baseline", metadata={"help": "catalog + eval output directory"})

    def __post_init__(self):
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError(f"parameter 'batch_size' must be >= 1, got {self.batch_size}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"parameter 'num_workers' must be >= 0, got {self.num_workers}")


def backbone_spec_dict(backbone) -> dict:
    s = backbone.spec
    return {"model": s.model, "pretrained": s.pretrained, "seed": s.seed, "fingerprint": backbone.fingerprint}


def run_baseline(cfg: BaselineConfig) -> dict:
    from protocol.data.processed import load_processed
    from protocol.model.backbone import BackboneSpec, create_backbone
    from protocol.model.features import extract_features
    from protocol.model.prompt_features import cached_prompt_features
    from protocol.model.protocol_model import ProtocolHeads
    from protocol.retrieval.catalog import build_catalog
    from protocol.retrieval.class_queries import ClassQueries, class_prompts
    from protocol.tracking.artifact_cache import stable_reference
    from protocol.tracking.pyfunc import encoded_image, log_protocol_model
    from protocol.training.checkpoint import save_checkpoint

    with stage_run("baseline", cfg, output_dir=cfg.output_dir) as logger:
        processed = load_processed(resolve_input(cfg.prepared, "prepared"))
        backbone = create_backbone(BackboneSpec(cfg.model, cfg.pretrained, cfg.backbone_seed))
        logger.set_tags({"dataset.fingerprint": processed.fingerprint, "backbone.fingerprint": backbone.fingerprint})
        logger.log_dataset(processed, context="evaluation")
        features = extract_features(processed.dataset, processed.fingerprint, backbone, cfg.cache_dir,
                                    batch_size=cfg.batch_size, num_workers=cfg.num_workers, engine=cfg.engine)
        logger.log_metrics({"features.n_computed": features.n_computed, "features.n_items": len(features.item_ids)})

        out = logger.output_dir
        meta = processed.meta
        catalog_rows = cfg.catalog_rows(meta)
        manifest = {"dataset_fingerprint": processed.fingerprint, "backbone_fingerprint": backbone.fingerprint,
                    "model_spec": backbone_spec_dict(backbone), "heads": "identity",
                    "catalog_splits": cfg.catalog_splits}
        catalog_dir = build_catalog(out / "catalog", features.image[catalog_rows], features.text[catalog_rows],
                                    meta.iloc[catalog_rows].reset_index(drop=True), manifest)
        class_queries = None
        if cfg.wants_class_queries():  # embedded now and cached, so evaluate never needs the backbone
            prompts = class_prompts(meta)
            class_queries = ClassQueries(prompts, cached_prompt_features(prompts, backbone, cfg.cache_dir,
                                                                         processed.fingerprint))
        evaluation = evaluate_and_log(logger, cfg, processed, features.image, features.text, catalog_dir / "eval",
                                      backbone_fingerprint=backbone.fingerprint, class_queries=class_queries)
        logger.log_artifact(catalog_dir, "catalog")
        logger.log_artifact(catalog_dir / "eval", "eval")  # where the scoreboard reads a version's metrics

        version = None
        if cfg.register:
            heads_path = out / "identity_heads.pt"
            save_checkpoint(heads_path, {"heads": ProtocolHeads.identity(backbone.embed_dim).state_for_checkpoint(),
                                         "backbone_fingerprint": backbone.fingerprint})
            version = log_protocol_model(heads_path, backbone_spec_dict(backbone), name="baseline",
                                         catalog_dir=catalog_dir, dataset_ref=stable_reference(cfg.prepared),
                                         example_image=encoded_image(processed.dataset[int(catalog_rows[0])]["image"]),
                                         alias="baseline", registered_model=REGISTERED_MODEL,
                                         description=f"zero-shot {cfg.model} ({cfg.pretrained}), identity heads",
                                         version_tags={EVALUATION_RUN_TAG: logger.run_id})
            logger.set_tags({"registered.version": version, "registered.alias": "baseline"})
        return {"run_id": logger.run_id, "catalog_dir": str(catalog_dir), "metrics": evaluation.result.metrics,
                "version": version, "n_computed": features.n_computed}
