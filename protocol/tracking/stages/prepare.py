"""`prepare`: make the processed dataset (synthetic by default, or ingested) and log it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from protocol.data.figures import distribution_tables, sample_grid
from protocol.tracking.runs import stage_run

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "table", "hf")


@dataclass
class PrepareConfig:
    """Make the processed dataset: the embedded synthetic catalog, a table + image folder, or an HF dataset."""

    source: str = field(default="synthetic", metadata={"choices": SOURCES, "help": "where the products come from"})
    input: str = field(default="", metadata={"help": "table file (csv/jsonl/parquet) or HF dataset name/dir"})
    image_dir: str = field(default="", metadata={"help": "image folder for source=table"})
    mapping: str = field(default="", metadata={"help": "column mapping: preset (hm, kaggle_fashion) or YAML path"})
    hf_split: str = field(default="", metadata={"help": "split to load for source=hf (hub datasets)"})
    n_products: int = field(default=600, metadata={"help": "synthetic catalog size in products (1-3 images each)"})
    image_size: int = field(default=224, metadata={"help": "synthetic image size in pixels"})
    seed: int = field(default=0, metadata={"help": "seed for generation and splits"})
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    # 30: the fewest queries behind a scoreboard row the scoreboard calls confident. Real
    # catalogs need it too: a stratified 20% of a rare class is too few queries to judge.
    test_quota: int = field(default=30, metadata={
        "help": "at least this many test items per weak class / rare material of the scoreboard spec (0: off)"})
    neckline_test_quota: int = field(default=100, metadata={
        "help": "at least this many neckline-known test items (0: off)"})
    # Half: whatever the quotas ask, a class keeps at least half its items for train + val.
    quota_max_share: float = field(default=0.5, metadata={
        "help": "the most of a class's items that the test quotas may put in test"})
    strict: bool = field(default=False, metadata={"help": "fail on the first bad row instead of rejecting it"})
    limit: int | None = field(default=None, metadata={"help": "read at most this many source rows"})
    output_dir: str = field(default="outputs/prepared", metadata={"help": "where the processed dataset is written"})

    def __post_init__(self):
        if self.source != "synthetic" and not self.input:
            raise ValueError(f"parameter 'input' is required for source={self.source}")
        if self.source == "table" and not (self.mapping and self.image_dir):
            raise ValueError("source=table needs 'mapping' (hm, kaggle_fashion or a YAML file) and 'image_dir'")
        if self.n_products < 1:
            raise ValueError(f"parameter 'n_products' must be >= 1, got {self.n_products}")
        if self.image_size < 32:
            raise ValueError(f"parameter 'image_size' must be >= 32, got {self.image_size}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"parameter {name!r} must be in (0, 1), got {value}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave room for a train split")
        for name in ("test_quota", "neckline_test_quota"):
            if getattr(self, name) < 0:
                raise ValueError(f"parameter {name!r} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.quota_max_share <= 1:
            raise ValueError(f"parameter 'quota_max_share' must be in [0, 1], got {self.quota_max_share}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"parameter 'limit' must be >= 1, got {self.limit}")

    @property
    def fractions(self) -> dict[str, float]:
        return {"train": 1 - self.val_fraction - self.test_fraction, "val": self.val_fraction, "test": self.test_fraction}

    @property
    def quotas(self):
        from protocol.data.prepare import SplitQuotas

        return SplitQuotas(per_class=self.test_quota, known_neckline=self.neckline_test_quota,
                           max_share=self.quota_max_share)


def load_raw(cfg: PrepareConfig):
    """(raw catalog, rejects or None, source description)."""
    if cfg.source == "synthetic":
        from protocol.data.synthetic import generate_catalog

        raw = generate_catalog(n_products=cfg.n_products, seed=cfg.seed, image_size=cfg.image_size)
        return raw, None, f"synthetic(n_products={cfg.n_products}, seed={cfg.seed}, image_size={cfg.image_size})"
    from protocol.data import ingest

    mapping = ingest.load_mapping(cfg.mapping) if cfg.mapping else None
    if cfg.source == "table":
        result = ingest.ingest_table(cfg.input, cfg.image_dir, mapping, strict=cfg.strict, limit=cfg.limit)
    else:
        result = ingest.ingest_hf(cfg.input, mapping, split=cfg.hf_split or None, strict=cfg.strict, limit=cfg.limit)
    return result.raw, result.rejects, f"{cfg.source}:{cfg.input}"


def run_prepare(cfg: PrepareConfig) -> dict:
    from protocol.data.prepare import finalize, save_processed
    from protocol.data.processed import load_processed

    with stage_run("prepare", cfg, output_dir=cfg.output_dir) as logger:
        raw, rejects, source = load_raw(cfg)
        df = finalize(raw, fractions=cfg.fractions, seed=cfg.seed, quotas=cfg.quotas)
        out = logger.output_dir
        manifest = save_processed(df, out, source=source, rejects=rejects)
        processed = load_processed(out)
        meta = processed.meta
        logger.set_tags({"dataset.fingerprint": processed.fingerprint, "dataset.source": source})
        n_rejects = 0 if rejects is None else len(rejects)
        logger.log_metrics({"items": len(meta), "products": meta["group_id"].nunique(), "rejects": n_rejects}
                           | {f"items.{k}": v for k, v in meta["split"].value_counts().items()}
                           | {f"quota.{name}.{k}": v for name, report in manifest["split_quotas"].items()
                              for k, v in report.items() if k in ("test", "catalog", "reserved")})
        logger.log_dataset(processed, context="prepare")
        for name, table in distribution_tables(meta).items():
            logger.log_table(table, f"distributions/{name}.json")
        fig = sample_grid(processed.dataset, meta)
        logger.log_figure(fig, "samples/sample_grid.png")
        grounding_path = out / "grounding.json"
        if grounding_path.exists():
            from protocol.io import read_json

            report = read_json(grounding_path)
            logger.log_metrics({f"grounding.{attr}.{k}": v for attr, stats in report.items()
                                for k, v in stats.items() if isinstance(v, (int, float))})
        logger.log_artifact(out, "processed")
        log.info("prepared %d items (%d rejected) -> %s [fingerprint %s]", len(meta), n_rejects, out,
                 processed.fingerprint[:12])
        return {"run_id": logger.run_id, "output_dir": str(out), "fingerprint": processed.fingerprint,
                "manifest": manifest}
