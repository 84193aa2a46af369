"""`train`: heads on cached backbone features -> checkpoints -> pyfunc model -> registry alias `candidate`."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from protocol.training.config import TrainConfig
from protocol.tracking.runs import REGISTERED_MODEL, resolve_input, stage_run

log = logging.getLogger(__name__)


@dataclass
class TrainStageConfig(TrainConfig):
    """Training settings (TrainConfig, defaults there) plus where the inputs and outputs are."""

    prepared: str = field(default="outputs/prepared/latest", metadata={"help": "processed dataset dir or runs:/ URI"})
    catalog: str = field(default="outputs/baseline/latest/catalog",
                         metadata={"help": "baseline catalog: its manifest names the backbone whose cache to use"})
    pairs: str = field(default="outputs/pairs/latest/pairs.parquet", metadata={"help": "pairs.parquet path or runs:/ URI"})
    hard_negatives_path: str = field(default="outputs/mine/latest/hard_negatives.parquet",
                                     metadata={"help": "hard_negatives.parquet path or runs:/ URI"})
    cache_dir: str = field(default="outputs/feature_cache", metadata={"help": "feature cache directory"})
    resume: str = field(default="", metadata={"help": "checkpoint of an interrupted run to continue"})
    register: bool = field(default=True, metadata={"help": "register the trained model as @candidate"})
    output_dir: str = "outputs/train"

    def train_config(self) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


def run_train(cfg: TrainStageConfig) -> dict:
    import pandas as pd

    from protocol.data.processed import load_processed
    from protocol.io import read_json
    from protocol.model.backbone import check_fingerprint
    from protocol.model.features import load_features
    from protocol.tracking.pyfunc import log_protocol_model
    from protocol.training.train import train

    with stage_run("train", cfg, output_dir=cfg.output_dir) as logger:
        processed = load_processed(resolve_input(cfg.prepared, "prepared"))
        manifest = read_json(resolve_input(cfg.catalog, "catalog") / "manifest.json")
        check_fingerprint(manifest["dataset_fingerprint"], processed.fingerprint, "dataset of the baseline catalog")
        backbone_fp = manifest["backbone_fingerprint"]
        logger.set_tags({"dataset.fingerprint": processed.fingerprint, "backbone.fingerprint": backbone_fp,
                         "ablation": "plain-infonce" if not (cfg.attribute_heads or cfg.balanced_sampling
                                                             or cfg.hard_negatives) else "attribute-aware"})
        features = load_features(cfg.cache_dir, processed.fingerprint, backbone_fp)  # training never runs the backbone
        pairs = pd.read_parquet(resolve_input(cfg.pairs, "pairs"))
        negatives = (pd.read_parquet(resolve_input(cfg.hard_negatives_path, "hard_negatives_path"))
                     if cfg.hard_negatives else None)
        result = train(cfg.train_config(), features, processed.meta, pairs, negatives, logger.output_dir,
                       logger=logger, resume=resolve_input(cfg.resume, "resume") if cfg.resume else None)
        logger.log_metrics({"best.epoch": result.best_epoch or 0, f"best.{cfg.primary_metric}": result.best_metric or 0.0,
                            "trainable_parameters": result.heads.n_trainable_parameters()})
        version = None
        if cfg.register:
            version = log_protocol_model(
                result.best_path, manifest["model_spec"], alias="candidate", registered_model=REGISTERED_MODEL,
                description=f"heads trained by run {logger.run_id} (best epoch {result.best_epoch}, "
                            f"val {cfg.primary_metric}={result.best_metric:.4f})")
            logger.set_tags({"registered.version": version, "registered.alias": "candidate"})
        return {"run_id": logger.run_id, "best_path": str(result.best_path), "version": version,
                "best_metric": result.best_metric, "final_metrics": result.final_metrics}
