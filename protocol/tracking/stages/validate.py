"""`validate`: quick check of any checkpoint against the zero-shot baseline on a mini catalog."""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.tracking.runs import resolve_input, stage_run
from protocol.training.validation import CATALOG_SPLITS


@dataclass
class ValidateConfig:
    """Validate a checkpoint: val-split queries against a mini catalog (the val split itself, or train items),
    with deltas vs identity heads."""

    checkpoint: str = field(default="outputs/train/latest/checkpoints/best.pt", metadata={"help": "checkpoint path or runs:/ URI"})
    prepared: str = field(default="outputs/prepared/latest", metadata={"help": "processed dataset dir or runs:/ URI"})
    cache_dir: str = field(default="outputs/feature_cache", metadata={"help": "feature cache directory"})
    catalog_split: str = field(default=CATALOG_SPLITS[0], metadata={
        "help": "val: the val items, none trained on; train: a sample of the training items", "choices": CATALOG_SPLITS})
    max_catalog: int = 5000
    max_queries: int = 500
    seed: int = 0

    def __post_init__(self):
        for name in ("max_catalog", "max_queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"parameter {name!r} must be >= 1, got {getattr(self, name)}")


def run_validate(cfg: ValidateConfig) -> dict:
    from protocol.data.processed import load_processed
    from protocol.model.features import load_features
    from protocol.model.protocol_model import ProtocolHeads
    from protocol.training.checkpoint import load_checkpoint
    from protocol.training.validation import deltas, validate

    with stage_run("validate", cfg) as logger:
        state = load_checkpoint(resolve_input(cfg.checkpoint, "checkpoint"))
        processed = load_processed(resolve_input(cfg.prepared, "prepared"))
        backbone_fp = state["backbone_fingerprint"]
        logger.set_tags({"dataset.fingerprint": processed.fingerprint, "backbone.fingerprint": backbone_fp})
        logger.log_dataset(processed, context="evaluation")
        features = load_features(cfg.cache_dir, processed.fingerprint, backbone_fp)
        heads = ProtocolHeads.from_checkpoint(state)
        kwargs = dict(max_catalog=cfg.max_catalog, max_queries=cfg.max_queries, seed=cfg.seed,
                      catalog_split=cfg.catalog_split)
        metrics = validate(heads, features, processed.meta, fusion_weight=heads.fusion_weight, **kwargs)
        reference = validate(ProtocolHeads.identity(heads.config.in_dim), features, processed.meta, **kwargs)
        delta = deltas(metrics, reference)
        logger.log_metrics({f"val.{k}": v for k, v in metrics.items()} | {f"val.{k}": v for k, v in delta.items()})
        for name in ("t2i.neckline.p10", "t2i.category.p10", "t2i.material.p10", "t2i.recall10"):
            if name in metrics:
                print(f"{name:24s} {100 * metrics[name]:6.1f}  ({delta['delta.' + name]:+.1f} points vs zero-shot)")
        return {"run_id": logger.run_id, "metrics": metrics, "deltas": delta}
