"""Training supervision stages: `audit`, `analyze_audit`, `groups`, `mine`, `pairs`.

Each reads the processed dataset (and, for mining, the baseline catalog), writes the
files DESIGN names, and logs parameters, summaries and those files to its run.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from protocol.data.group_audit import MIN_GROUP_CONFIDENCE
from protocol.data.pair_generator import PairMix
from protocol.tracking.runs import resolve_input, stage_run

log = logging.getLogger(__name__)

PREPARED_HELP = {"help": "processed dataset dir or runs:/ URI"}
METRIC_UNSAFE = re.compile(r"[^\w./ :-]")


def _load_meta(prepared: str):
    from protocol.data.processed import load_processed

    return load_processed(resolve_input(prepared, "prepared"))


def _check_positive(cfg, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise ValueError(f"parameter {name!r} must be >= 1, got {getattr(cfg, name)}")


def _check_fraction(cfg, *names: str) -> None:
    for name in names:
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"parameter {name!r} must be in [0, 1], got {getattr(cfg, name)}")


@dataclass
class AuditConfig:
    """Grounding audit: a stratified QA sample for a reviewer, plus coverage per category."""

    prepared: str = field(default="outputs/prepared/latest", metadata=PREPARED_HELP)
    n_items: int = field(default=200, metadata={"help": "items in the QA sample (stratified by category2)"})
    seed: int = 0
    simulate_review: bool = field(default=False, metadata={"help": "fill verdicts from gt_* (synthetic data)"})
    output_dir: str = "outputs/audit"

    def __post_init__(self):
        _check_positive(self, "n_items")


def run_audit(cfg: AuditConfig) -> dict:
    from protocol.data.audit import analyze_audit, coverage_by_category, make_audit_sample, simulate_review, write_audit

    with stage_run("audit", cfg, output_dir=cfg.output_dir) as logger:
        processed = _load_meta(cfg.prepared)
        meta = processed.meta
        logger.set_tags({"dataset.fingerprint": processed.fingerprint})
        logger.log_dataset(processed, context="training")
        sample = make_audit_sample(meta, n=cfg.n_items, seed=cfg.seed)
        if cfg.simulate_review:
            if not any(c.startswith("gt_") for c in meta.columns):
                raise ValueError(f"simulate_review needs gt_* columns, and {processed.path} has none")
            sample = simulate_review(sample, meta)
        out = logger.output_dir
        coverage = coverage_by_category(meta)
        csv_path = write_audit(sample, out, coverage)
        logger.log_table(coverage.reset_index() if coverage.index.name else coverage, "audit/coverage.json")
        logger.log_artifact(out, "audit")
        result = {"run_id": logger.run_id, "audit_csv": str(csv_path), "rows": len(sample)}
        if cfg.simulate_review:
            report = analyze_audit(csv_path)
            _log_audit_report(logger, report, out)
            result["report"] = report.to_dict()
        return result


def _log_audit_report(logger, report, out: Path) -> None:
    from protocol.io import write_json

    summary = report.to_dict()
    path = write_json(out / "audit_report.json", summary)
    logger.log_artifact(path, "audit")
    logger.log_metrics({f"audit.{attr}.precision": stats["precision"]
                        for attr, stats in summary.get("per_attribute", {}).items()
                        if stats.get("precision") is not None})


@dataclass
class AnalyzeAuditConfig:
    """Read a reviewed grounding_audit.csv: correctness per attribute, contamination sources, tuning advice."""

    audit_csv: str = field(default="outputs/audit/latest/grounding_audit.csv", metadata={"help": "the completed CSV"})
    output_dir: str = "outputs/audit"


def run_analyze_audit(cfg: AnalyzeAuditConfig) -> dict:
    from protocol.data.audit import analyze_audit

    with stage_run("analyze_audit", cfg, output_dir=cfg.output_dir) as logger:
        report = analyze_audit(resolve_input(cfg.audit_csv, "audit_csv"))
        _log_audit_report(logger, report, logger.output_dir)
        for line in report.to_dict().get("recommendations", []):
            print("-", line)
        return {"run_id": logger.run_id, "report": report.to_dict()}


@dataclass
class GroupsConfig:
    """Product groups: source product ids, else id-suffix / url-stem / SKU heuristics, with an audit."""

    prepared: str = field(default="outputs/prepared/latest", metadata=PREPARED_HELP)
    min_confidence: float = field(default=MIN_GROUP_CONFIDENCE, metadata={"help": "confidence a group key needs to be used"})
    spot_check: int = field(default=20, metadata={"help": "groups in the spot-check sample"})
    seed: int = 0
    output_dir: str = "outputs/groups"

    def __post_init__(self):
        _check_fraction(self, "min_confidence")
        _check_positive(self, "spot_check")


def run_groups(cfg: GroupsConfig) -> dict:
    from protocol.data.group_audit import GROUPS_FILE, audit_groups, write_groups_json
    from protocol.data.group_key import derive_groups
    from protocol.provenance import provenance

    with stage_run("groups", cfg, output_dir=cfg.output_dir) as logger:
        processed = _load_meta(cfg.prepared)
        logger.set_tags({"dataset.fingerprint": processed.fingerprint})
        logger.log_dataset(processed, context="training")
        groups = derive_groups(processed.meta)
        out = logger.output_dir
        path = write_groups_json(groups, out / GROUPS_FILE, provenance(processed.fingerprint))
        audit = audit_groups(groups, processed.meta, min_confidence=cfg.min_confidence,
                             sample_size=cfg.spot_check, seed=cfg.seed)
        spot = audit.pop("spot_check", None)
        if spot is not None:
            logger.log_table(spot, "groups/spot_check.json")
        logger.log_dict(audit, "groups/group_audit.json")
        logger.log_metrics({f"groups.{k}": v for k, v in _flatten(audit).items()})
        logger.log_metrics({"groups.n_groups": groups["group_id"].nunique()})
        logger.log_artifact(path, "groups")
        return {"run_id": logger.run_id, "groups_json": str(path), "audit": audit}


def _flatten(d: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict as dotted MLflow metric names (bools as 0/1)."""
    flat: dict[str, float] = {}
    for k, v in d.items():
        name = prefix + METRIC_UNSAFE.sub("_", str(k))  # MLflow refuses e.g. "+" in names
        if isinstance(v, dict):
            flat |= _flatten(v, name + ".")
        elif isinstance(v, (int, float)) and v == v:
            flat[name] = float(v)
    return flat


@dataclass
class MineConfig:
    """Hard negatives from the baseline catalog: nearest same-category items that differ in an attribute."""

    catalog: str = field(default="outputs/baseline/latest/catalog", metadata={"help": "baseline catalog dir or runs:/ URI"})
    max_anchors: int = 2000
    per_anchor: int = field(default=5, metadata={"help": "negatives kept per anchor"})
    candidates: int = field(default=50, metadata={"help": "neighbours searched per anchor"})
    # neckline first: a confuser is filed under the first attribute that differs, and neckline is the headline target
    attributes: str = field(default="neckline,material,pattern", metadata={"help": "attributes a confuser differs in"})
    seed: int = 0
    output_dir: str = "outputs/mine"

    def __post_init__(self):
        _check_positive(self, "max_anchors", "per_anchor", "candidates")
        if self.candidates < self.per_anchor:
            raise ValueError(f"parameter 'candidates' ({self.candidates}) must be >= 'per_anchor' ({self.per_anchor})")


def run_mine(cfg: MineConfig) -> dict:
    from protocol.data.hard_negatives import (
        HARD_NEGATIVES_FILE, mine_hard_negatives, summarize_hard_negatives, write_hard_negatives,
    )
    from protocol.provenance import provenance
    from protocol.retrieval.catalog import load_catalog
    from protocol.retrieval.evaluation import split_list
    from protocol.retrieval.search import search_log_entries

    with stage_run("mine", cfg, output_dir=cfg.output_dir) as logger:
        catalog = load_catalog(resolve_input(cfg.catalog, "catalog"))
        dataset_fp, backbone_fp = catalog.manifest["dataset_fingerprint"], catalog.manifest["backbone_fingerprint"]
        logger.set_tags({"dataset.fingerprint": dataset_fp, "backbone.fingerprint": backbone_fp})
        search = {}
        negatives = mine_hard_negatives(catalog.meta, catalog.image, max_anchors=cfg.max_anchors,
                                        per_anchor=cfg.per_anchor, candidates=cfg.candidates,
                                        attributes=tuple(split_list(cfg.attributes)), seed=cfg.seed,
                                        search_report=search)
        search_metrics, search_tags = search_log_entries(search)  # search.*: backend, recall10_vs_exact
        logger.log_metrics(search_metrics)
        logger.set_tags(search_tags)
        path = write_hard_negatives(negatives, logger.output_dir / HARD_NEGATIVES_FILE,
                                    provenance(dataset_fp, backbone_fp))
        summary = summarize_hard_negatives(negatives)
        logger.log_dict(summary, "mine/summary.json")
        logger.log_metrics({f"mine.{k}": v for k, v in _flatten(summary).items()})
        logger.log_artifact(path)
        return {"run_id": logger.run_id, "hard_negatives": str(path), "n": len(negatives)}


@dataclass
class PairsConfig:
    """The pair dataset: positives and negatives of every type, in a target mix, validated."""

    prepared: str = field(default="outputs/prepared/latest", metadata=PREPARED_HELP)
    groups: str = field(default="outputs/groups/latest/groups.json", metadata={"help": "groups.json path or runs:/ URI"})
    hard_negatives: str = field(default="outputs/mine/latest/hard_negatives.parquet",
                                metadata={"help": "hard_negatives.parquet path or runs:/ URI"})
    n_pairs: int = 50_000
    # the mix: one flat parameter per pair type, defaults from PairMix (which checks they sum to 1)
    strong_group: float = PairMix.strong_group
    strong_attribute: float = PairMix.strong_attribute
    medium: float = PairMix.medium
    weak: float = PairMix.weak
    hard_mined: float = PairMix.hard_mined
    hard_attribute: float = PairMix.hard_attribute
    easy: float = PairMix.easy
    min_group_confidence: float = MIN_GROUP_CONFIDENCE
    seed: int = 0
    output_dir: str = "outputs/pairs"

    def __post_init__(self):
        _check_positive(self, "n_pairs")
        _check_fraction(self, "min_group_confidence")
        self.mix()

    def mix(self) -> PairMix:
        return PairMix(**{f.name: getattr(self, f.name) for f in dataclasses.fields(PairMix)})


def run_pairs(cfg: PairsConfig) -> dict:
    from protocol.data.group_audit import read_groups_json
    from protocol.data.hard_negatives import read_hard_negatives
    from protocol.data.pair_generator import generate_pairs, write_pairs
    from protocol.provenance import provenance

    with stage_run("pairs", cfg, output_dir=cfg.output_dir) as logger:
        processed = _load_meta(cfg.prepared)
        logger.set_tags({"dataset.fingerprint": processed.fingerprint})
        logger.log_dataset(processed, context="training")
        groups = read_groups_json(resolve_input(cfg.groups, "groups"), dataset=processed.fingerprint)
        # pairs has no backbone of its own: it takes the one the negatives were mined with and passes
        # it on in pairs.parquet, so training refuses pairs mined with another backbone than its features'
        negatives, mined = read_hard_negatives(resolve_input(cfg.hard_negatives, "hard_negatives"),
                                               dataset=processed.fingerprint, backbone=None)
        backbone_fp = mined["backbone_fingerprint"]
        logger.set_tags({"backbone.fingerprint": backbone_fp})
        pairs, stats = generate_pairs(processed.meta, groups, negatives, mix=cfg.mix(), n_pairs=cfg.n_pairs,
                                      seed=cfg.seed, min_group_confidence=cfg.min_group_confidence)
        out = logger.output_dir
        paths = write_pairs(pairs, stats, out, provenance(processed.fingerprint, backbone_fp))
        logger.log_metrics({f"pairs.{k}": v for k, v in _flatten(stats).items()})
        logger.log_artifact(out, "pairs")
        return {"run_id": logger.run_id, "pairs": str(paths["pairs"]), "n": len(pairs), "paths": paths}
