"""`pipeline`: every stage in order as child runs of one parent run, skipping unchanged steps.

prepare -> baseline -> audit -> groups -> mine -> pairs -> train [-> ablation] -> evaluate -> scoreboard
(ablation only with `ablation=true`).
Outputs travel as run artifact URIs (`runs:/<run_id>/<path>`), so a step's config names
the exact upstream runs it used; the step cache (protocol/tracking/step_cache.py) reuses
the newest finished run with the same config and code.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import mlflow

from protocol.tracking import registry, step_cache
from protocol.tracking.runs import resolve_input, run_artifact_uri, stage_run, ui_links
from protocol.tracking.stages.ablation import AblationConfig, run_ablation
from protocol.tracking.stages.baseline import BaselineConfig, run_baseline
from protocol.tracking.stages.evaluate import EvaluateConfig, run_evaluate
from protocol.tracking.stages.prepare import SOURCES, PrepareConfig, run_prepare
from protocol.tracking.stages.scoreboard import ScoreboardConfig, run_scoreboard
from protocol.tracking.stages.supervision import (
    AuditConfig, GroupsConfig, MineConfig, PairsConfig, run_audit, run_groups, run_mine, run_pairs,
)
from protocol.tracking.stages.train import TrainStageConfig, run_train
from protocol.training.ablation import parse_seeds, parse_variants

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    """The whole job on one dataset and backbone; the defaults are the embedded demo."""

    source: str = field(default="synthetic", metadata={"choices": SOURCES})
    input: str = ""
    image_dir: str = ""
    mapping: str = ""
    hf_split: str = PrepareConfig.hf_split
    strict: bool = PrepareConfig.strict
    limit: int | None = PrepareConfig.limit
    n_products: int = PrepareConfig.n_products
    image_size: int = 224
    seed: int = 0
    model: str = "ViT-B-32"
    pretrained: str = "none"
    backbone_seed: int = 0
    batch_size: int = 32
    num_workers: int | None = None  # feature extraction workers; None: baseline's default (from the cores)
    epochs: int = 10
    n_pairs: int = 50_000
    attribute_heads: bool = True
    balanced_sampling: bool = True
    hard_negatives: bool = True
    graded_pairs: bool = True
    max_queries: int | None = None
    ablation: bool = field(default=False, metadata={"help": "also run the ablation (every variant x seed) after train"})
    ablation_seeds: str = field(default=AblationConfig.seeds, metadata={"help": "the ablation step's training seeds"})
    ablation_variants: str = field(default=AblationConfig.variants, metadata={"help": "the ablation step's variants"})
    work_dir: str = field(default="outputs", metadata={"help": "scratch dir for stage outputs and the feature cache"})
    force: bool = field(default=False, metadata={"help": "re-run every step even when a cached run matches"})

    def __post_init__(self):
        PrepareConfig(**self._prepare_kwargs())  # validates the shared fields with the stage's own rules
        parse_seeds(self.ablation_seeds)  # refused now, not after the steps before the ablation have run
        parse_variants(self.ablation_variants)
        for name in ("epochs", "n_pairs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"parameter {name!r} must be >= 1, got {getattr(self, name)}")

    def _prepare_kwargs(self) -> dict[str, Any]:
        return dict(source=self.source, input=self.input, image_dir=self.image_dir, mapping=self.mapping,
                    hf_split=self.hf_split, strict=self.strict, limit=self.limit,
                    n_products=self.n_products, image_size=self.image_size, seed=self.seed,
                    output_dir=f"{self.work_dir}/prepared")


@dataclass
class StepOutcome:
    run_id: str
    skipped: bool
    seconds: float


def run_step(name: str, cfg: Any, fn: Callable[[Any], dict], experiment_id: str, code: str,
             force: bool) -> StepOutcome:
    start = time.perf_counter()
    key = step_cache.cache_key(name, cfg, code)
    cached = None if force else step_cache.find_cached_run(experiment_id, key)
    if cached:
        log.info("step %-10s unchanged: reusing run %s", name, cached)
        return StepOutcome(cached, True, time.perf_counter() - start)
    log.info("step %-10s running", name)
    result = fn(cfg)
    step_cache.mark_cached(result["run_id"], key)
    return StepOutcome(result["run_id"], False, time.perf_counter() - start)


def run_pipeline(cfg: PipelineConfig) -> dict:
    with stage_run("pipeline", cfg) as logger:
        experiment_id = mlflow.get_run(logger.run_id).info.experiment_id
        code = step_cache.code_version()
        logger.set_tags({"code.version": code, "code.git_commit": step_cache.git_commit()})
        w = cfg.work_dir
        cache_dir = f"{w}/feature_cache"
        outcomes: dict[str, StepOutcome] = {}

        def step(name, stage_cfg, fn) -> str:
            outcome = run_step(name, stage_cfg, fn, experiment_id, code, cfg.force)
            outcomes[name] = outcome
            logger.set_tags({f"step.{name}.run_id": outcome.run_id, f"step.{name}.skipped": str(outcome.skipped)})
            return outcome.run_id

        prep = step("prepare", PrepareConfig(**cfg._prepare_kwargs()), run_prepare)
        prepared = run_artifact_uri(prep, "processed")
        base = step("baseline", BaselineConfig(
            prepared=prepared, model=cfg.model, pretrained=cfg.pretrained, backbone_seed=cfg.backbone_seed,
            cache_dir=cache_dir, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
            max_queries=cfg.max_queries, output_dir=f"{w}/baseline"), run_baseline)
        catalog = run_artifact_uri(base, "catalog")
        step("audit", AuditConfig(prepared=prepared, simulate_review=cfg.source == "synthetic",
                                  output_dir=f"{w}/audit"), run_audit)
        groups = step("groups", GroupsConfig(prepared=prepared, output_dir=f"{w}/groups"), run_groups)
        mine = step("mine", MineConfig(catalog=catalog, output_dir=f"{w}/mine"), run_mine)
        pairs = step("pairs", PairsConfig(
            prepared=prepared, groups=run_artifact_uri(groups, "groups/groups.json"),
            hard_negatives=run_artifact_uri(mine, "hard_negatives.parquet"), n_pairs=cfg.n_pairs,
            output_dir=f"{w}/pairs"), run_pairs)
        train = step("train", TrainStageConfig(
            prepared=prepared, catalog=catalog, pairs=run_artifact_uri(pairs, "pairs/pairs.parquet"),
            hard_negatives_path=run_artifact_uri(mine, "hard_negatives.parquet"),
            groups=run_artifact_uri(groups, "groups/groups.json"), cache_dir=cache_dir,
            epochs=cfg.epochs, attribute_heads=cfg.attribute_heads, balanced_sampling=cfg.balanced_sampling,
            hard_negatives=cfg.hard_negatives, graded_pairs=cfg.graded_pairs, output_dir=f"{w}/train"), run_train)
        if cfg.ablation:
            step("ablation", AblationConfig(
                prepared=prepared, catalog=catalog, pairs=run_artifact_uri(pairs, "pairs/pairs.parquet"),
                hard_negatives_path=run_artifact_uri(mine, "hard_negatives.parquet"),
                groups=run_artifact_uri(groups, "groups/groups.json"), cache_dir=cache_dir,
                epochs=cfg.epochs, seeds=cfg.ablation_seeds, variants=cfg.ablation_variants, max_queries=cfg.max_queries,
                output_dir=f"{w}/ablation"), run_ablation)
        step("evaluate", EvaluateConfig(
            prepared=prepared, train_run=train, baseline_catalog=catalog, cache_dir=cache_dir,
            max_queries=cfg.max_queries, output_dir=f"{w}/evaluate"), run_evaluate)
        # explicit version numbers, not aliases: the step's cache key then names what it compared
        board = step("scoreboard", ScoreboardConfig(
            baseline=str(registry.version_for_run(base).version), candidate=str(registry.version_for_run(train).version),
            output_dir=f"{w}/scoreboard"), run_scoreboard)

        logger.log_metrics({f"step.{n}.seconds": o.seconds for n, o in outcomes.items()}
                           | {"steps.skipped": sum(o.skipped for o in outcomes.values())})
        table = resolve_input(run_artifact_uri(board, "scoreboard.txt"), "scoreboard").read_text()
        if outcomes["scoreboard"].skipped:  # a fresh scoreboard step has printed its table already
            print("\n" + table, flush=True)
        links = ui_links(logger.run_id)
        print(f"steps run: {[n for n, o in outcomes.items() if not o.skipped]}; "
              f"reused: {[n for n, o in outcomes.items() if o.skipped]}")
        print(f"MLflow UI (make ui): runs {links['runs']}\n  this pipeline run: {links['run']}", flush=True)
        return {"run_id": logger.run_id, "steps": {n: o.run_id for n, o in outcomes.items()},
                "skipped": [n for n, o in outcomes.items() if o.skipped], "scoreboard": table}
