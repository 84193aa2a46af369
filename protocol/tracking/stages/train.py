"""`train`: heads on cached backbone features -> checkpoints -> logged models -> registry alias `candidate`.

The MLflow side of training: as each epoch's checkpoint is written (`TrainCallbacks.on_epoch_end`),
its heads become a LoggedModel of the run (step = epoch, that epoch's validation metrics linked
to it by model_id) and the weak-class gallery is logged at that step, so a killed run keeps
every finished epoch. Registration packs the catalog the best epoch's heads make of the cached
features into that epoch's logged model and points @candidate at it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np

from protocol.training.config import TrainConfig
from protocol.tracking.artifact_cache import stable_reference
from protocol.tracking.pyfunc import encoded_image, log_heads_model, register_logged_model
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
    groups: str = field(default="outputs/groups/latest/groups.json",
                        metadata={"help": "groups.json path or runs:/ URI (in-batch product-group positives)"})
    cache_dir: str = field(default="outputs/feature_cache", metadata={"help": "feature cache directory"})
    resume: str = field(default="", metadata={"help": "checkpoint of an interrupted run to continue"})
    register: bool = field(default=True, metadata={"help": "register the trained model as @candidate"})
    output_dir: str = "outputs/train"

    def train_config(self) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


def read_supervision(cfg, dataset_fp: str, backbone_fp: str):
    """(pairs, hard negatives or None, groups or None) that `cfg` (a train or ablation config) names.

    Supervision made from another dataset or backbone than the features is refused, by file.
    Files a switched-off part does not use are not read."""
    from protocol.data.group_audit import read_groups_json
    from protocol.data.hard_negatives import read_hard_negatives
    from protocol.data.pair_generator import read_pairs

    pairs, _ = read_pairs(resolve_input(cfg.pairs, "pairs"), dataset=dataset_fp, backbone=backbone_fp)
    negatives = (read_hard_negatives(resolve_input(cfg.hard_negatives_path, "hard_negatives_path"),
                                     dataset=dataset_fp, backbone=backbone_fp)[0] if cfg.hard_negatives else None)
    groups = (read_groups_json(resolve_input(cfg.groups, "groups"), dataset=dataset_fp)
              if cfg.use_group_positives else None)
    return pairs, negatives, groups


def run_train(cfg: TrainStageConfig) -> dict:
    from protocol.data.processed import load_processed
    from protocol.model.backbone import check_fingerprint
    from protocol.model.features import load_features
    from protocol.retrieval.catalog import load_catalog
    from protocol.training.train import TrainCallbacks, train

    with stage_run("train", cfg, output_dir=cfg.output_dir) as logger:
        processed = load_processed(resolve_input(cfg.prepared, "prepared"))
        baseline_catalog = load_catalog(resolve_input(cfg.catalog, "catalog"))
        manifest = baseline_catalog.manifest
        check_fingerprint(manifest["dataset_fingerprint"], processed.fingerprint, "dataset of the baseline catalog")
        backbone_fp = manifest["backbone_fingerprint"]
        logger.set_tags({"dataset.fingerprint": processed.fingerprint, "backbone.fingerprint": backbone_fp})
        logger.log_dataset(processed, context="training")
        features = load_features(cfg.cache_dir, processed.fingerprint, backbone_fp)  # training never runs the backbone
        pairs, negatives, groups = read_supervision(cfg, processed.fingerprint, backbone_fp)
        epochs = EpochModels(logger, manifest["model_spec"], processed, features)
        result = train(cfg.train_config(), features, processed.meta, pairs, negatives, logger.output_dir,
                       groups=groups, logger=logger, resume=resolve_input(cfg.resume, "resume") if cfg.resume else None,
                       callbacks=TrainCallbacks(on_epoch_end=epochs.on_epoch_end))
        logger.log_metrics({"best.epoch": result.best_epoch or 0, f"best.{cfg.primary_metric}": result.best_metric or 0.0,
                            "trainable_parameters": result.heads.n_trainable_parameters()})
        version = None
        if cfg.register:
            from protocol.model.protocol_model import ProtocolHeads
            from protocol.training.checkpoint import load_checkpoint

            best_heads = ProtocolHeads.from_checkpoint(load_checkpoint(result.best_path))
            # the best epoch is already a logged model unless it fell between checkpoints (checkpoint_every)
            best_model = epochs.model_ids.get(result.best_epoch) or epochs.log(
                result.best_epoch, best_heads,
                {f"val.{k}": v for k, v in next(h["val"] for h in result.history if h["epoch"] == result.best_epoch).items()})
            version = register_candidate(logger, cfg, best_model, epochs.heads_file(result.best_epoch), best_heads,
                                         features, baseline_catalog, processed,
                                         description=f"heads trained by run {logger.run_id} (best epoch "
                                                     f"{result.best_epoch}, val {cfg.primary_metric}="
                                                     f"{result.best_metric:.4f})")
        return {"run_id": logger.run_id, "best_path": str(result.best_path), "version": version,
                "best_metric": result.best_metric, "final_metrics": result.final_metrics}


EPOCH_GALLERY_KEY = "galleries/weak_classes"  # the train run's Images tab: one step per epoch
GALLERY_QUERIES_PER_VALUE = 2
GALLERY_RESULTS = 10


class EpochModels:
    """The MLflow side of each epoch: the heads as a LoggedModel of the train run (step = epoch,
    that epoch's validation metrics linked to it) and the weak-class gallery at that step.

    Kept cheap (it runs every epoch): heads-only weights, no catalog, no input example, no pip
    inference, one gallery of a few fixed validation queries against the train split.
    """

    def __init__(self, logger, backbone_spec: dict, processed=None, features=None):
        self.logger, self.backbone_spec = logger, backbone_spec
        self.model_ids: dict[int, str] = {}
        self.seconds = 0.0  # spent logging, all epochs together
        self.gallery = EpochGallery(processed, features) if processed is not None else None

    def heads_file(self, epoch: int) -> Path:
        return self.logger.output_dir / "models" / f"epoch_{epoch:03d}_heads.pt"

    def log(self, epoch: int, heads, metrics: dict[str, float]) -> str:
        """Log `heads` as the model of `epoch`, with that epoch's validation `metrics` linked to it (step = epoch)."""
        from protocol.training.checkpoint import save_checkpoint

        path = save_checkpoint(self.heads_file(epoch), {"heads": heads.state_for_checkpoint(),
                                                        "backbone_fingerprint": self.backbone_spec["fingerprint"]})
        self.model_ids[epoch] = log_heads_model(path, self.backbone_spec, name=f"epoch-{epoch:03d}", step=epoch,
                                                metrics=metrics, tags={"epoch": str(epoch), "train_run": self.logger.run_id})
        return self.model_ids[epoch]

    def on_epoch_end(self, epoch: int, heads, checkpoint: Path, metrics: dict[str, float]) -> None:
        """`TrainCallbacks.on_epoch_end`: called once the epoch's checkpoint is written."""
        start = time.perf_counter()
        self.log(epoch, heads, metrics)
        if self.gallery is not None:
            mlflow.log_image(self.gallery.draw(heads, epoch), key=EPOCH_GALLERY_KEY, step=epoch, synchronous=True)
        seconds = time.perf_counter() - start
        self.seconds += seconds
        log.info("epoch %d: logged model %s%s in %.2fs (val %s)", epoch, self.model_ids[epoch],
                 " and the weak-class gallery" if self.gallery is not None else "", seconds,
                 ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items())))


class EpochGallery:
    """The same few validation queries of the weak classes and rare materials (scoreboard spec),
    ranked against the train split by each epoch's heads, as one gallery image."""

    def __init__(self, processed, features):
        from protocol.retrieval.metrics import attribute_column
        from protocol.scoreboard import focus_classes
        from protocol.retrieval.evaluation import image_loader

        meta = processed.meta
        val = meta[meta["split"] == "val"].sort_values("item_id")
        rows, labels = [], []
        for attribute, values in focus_classes().items():
            for value in values:
                picked = [r for r in val.index[val[attribute_column(attribute)] == value] if r not in rows]
                rows += picked[:GALLERY_QUERIES_PER_VALUE]
                labels += [f"{attribute} = {value}"] * len(picked[:GALLERY_QUERIES_PER_VALUE])
        catalog_rows = meta.index[meta["split"] == "train"]
        self.queries, self.labels = meta.loc[rows].reset_index(drop=True), labels
        self.catalog = meta.loc[catalog_rows].reset_index(drop=True)
        self.query_text = features.take(self.queries["item_id"])[1]
        self.catalog_image = features.take(self.catalog["item_id"])[0]
        # the same thumbnails come back epoch after epoch: decode each once
        self.load_image = functools.lru_cache(maxsize=1024)(image_loader(processed))

    def draw(self, heads, epoch: int):
        from protocol.retrieval.gallery import DEFAULT_ATTRIBUTES
        from protocol.retrieval.gallery_render import GalleryRow, compose_gallery
        from protocol.retrieval.search import topk

        if len(self.queries) == 0 or len(self.catalog) == 0:
            rankings = np.empty((0, GALLERY_RESULTS), dtype=np.int64)
        else:
            _, query_emb = heads.embed_numpy(None, self.query_text)
            catalog_emb, _ = heads.embed_numpy(self.catalog_image, None)
            query_vecs = heads.ranking_queries(self.queries["text"].astype(str).tolist(), query_emb)
            _, rankings = topk(query_vecs, heads.ranking_catalog(catalog_emb), min(GALLERY_RESULTS, len(self.catalog)), backend="auto",
                               report={})
        rows = [GalleryRow(i, rankings[i], label) for i, label in enumerate(self.labels[:len(rankings)])]
        return compose_gallery(rows, self.queries, self.catalog, self.load_image, DEFAULT_ATTRIBUTES,
                               title=f"epoch {epoch}: weak classes and rare materials, validation text queries "
                                     f"vs train images, top-{GALLERY_RESULTS}").image


def register_candidate(logger, cfg: TrainStageConfig, model_id: str, heads_file: Path, heads, features,
                       baseline_catalog, processed, *, description: str) -> str:
    """Register logged model `model_id` as @candidate, with the catalog its heads make of the cached features."""
    from protocol.retrieval.catalog import build_catalog

    items = baseline_catalog.meta
    image_emb, text_emb = heads.embed_numpy(*features.take(items["item_id"]))
    catalog_dir = build_catalog(logger.output_dir / "catalog", image_emb, text_emb, items,
                                {**baseline_catalog.manifest, "heads": heads_file.name})
    first = int(processed.meta.index[processed.meta["item_id"] == items["item_id"].iloc[0]][0])
    version = register_logged_model(
        model_id, heads_file, baseline_catalog.manifest["model_spec"], catalog_dir=catalog_dir,
        dataset_ref=stable_reference(cfg.prepared), example_image=encoded_image(processed.dataset[first]["image"]),
        alias="candidate", registered_model=REGISTERED_MODEL, description=description)
    logger.set_tags({"registered.version": version, "registered.alias": "candidate",
                     "registered.model_id": model_id})
    return version
