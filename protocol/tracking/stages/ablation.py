"""`ablation`: every variant of protocol.training.ablation with each seed, on the same cached
features, pairs, hard negatives and test queries; one parent run, a child run per variant and seed.

The parent run (tag stage=ablation) holds ablation.json and ablation.md, and writes both,
atomically, to `<output_dir>/` as well (the pipeline's: `<work_dir>/ablation/`). Each child
(tag stage=ablation_variant, tags `variant` and `seed`, named `ablation · full · seed 1`)
holds its training's metrics, checkpoints and test metrics `test.*`. Training never calls the
backbone; each variant's best-validation checkpoint is evaluated as the evaluate stage does
(`protocol.retrieval.evaluation.evaluate_processed` over the same catalog and query splits), in
the locked targets' mode. With `workers` > 1 the trainings run side by side in worker processes
(`protocol.training.ablation_jobs`); each child run is written when its training is done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field

from protocol.retrieval.evaluation import EvalConfigMixin
from protocol.training.ablation import DEFAULT_VARIANTS, VARIANT_FIELDS, VARIANTS, parse_seeds, parse_variants
from protocol.training.ablation_jobs import AblationInputs, Job, available_cores, run_jobs, worker_count
from protocol.training.config import TrainConfig
from protocol.tracking.runs import config_params, describe_run, resolve_input, stage_run
from protocol.tracking.stages.train import TrainStageConfig, read_supervision

log = logging.getLogger(__name__)

CHILD_STAGE = "ablation_variant"  # the parent alone is tagged stage=ablation (what readers look up)


@dataclass
class AblationConfig(TrainConfig):
    """Ablation: plain, +attribute_heads, +balanced_sampling, +hard_negatives and full, each with every seed.

    The training settings are the base every variant starts from; each variant sets `seed`
    and the four switches itself, so those five are refused here (use `seeds`, `variants`).
    """

    prepared: str = field(default=TrainStageConfig.prepared, metadata={"help": "processed dataset dir or runs:/ URI"})
    catalog: str = field(default=TrainStageConfig.catalog,
                         metadata={"help": "baseline catalog: its manifest names the backbone whose cache to use"})
    pairs: str = field(default=TrainStageConfig.pairs, metadata={"help": "pairs.parquet path or runs:/ URI"})
    hard_negatives_path: str = field(default=TrainStageConfig.hard_negatives_path,
                                     metadata={"help": "hard_negatives.parquet path or runs:/ URI"})
    groups: str = field(default=TrainStageConfig.groups, metadata={"help": "groups.json path or runs:/ URI"})
    cache_dir: str = field(default=TrainStageConfig.cache_dir, metadata={"help": "feature cache directory"})
    seeds: str = field(default="0,1,2", metadata={"help": "training seeds, comma-separated"})
    variants: str = field(default=",".join(DEFAULT_VARIANTS), metadata={"help": "variants to train, comma-separated"})
    catalog_splits: str = field(default=EvalConfigMixin.catalog_splits,
                                metadata={"help": "splits that form the catalog"})
    query_split: str = field(default=EvalConfigMixin.query_split,
                             metadata={"help": "split whose items are the queries"})
    max_queries: int | None = field(default=EvalConfigMixin.max_queries,
                                    metadata={"help": "stratified sample of queries (empty = all)"})
    eval_seed: int = EvalConfigMixin.eval_seed
    workers: int = field(default=0, metadata={"help": "trainings at once, each in its own process (0: one per core)"})
    output_dir: str = field(default="outputs/ablation",
                            metadata={"help": "run outputs go to <output_dir>/<run_id>; ablation.json|md also here"})

    def __post_init__(self):
        super().__post_init__()
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        changed = [name for name in VARIANT_FIELDS if getattr(self, name) != defaults[name]]
        if changed:
            raise ValueError(f"parameter(s) {changed}: each ablation variant sets seed and the switches "
                             f"{', '.join(VARIANT_FIELDS[1:])} itself; choose them with 'seeds' and 'variants' "
                             f"({', '.join(VARIANTS)})")
        parse_seeds(self.seeds)
        parse_variants(self.variants)
        worker_count(self.workers, 1, 1)  # refuses a negative count now, before any data is read
        self.eval_config()  # the evaluation parameters, checked by the evaluate stage's own rules

    def train_config(self) -> TrainConfig:
        """The base every variant starts from."""
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})

    def eval_config(self) -> EvalConfigMixin:
        from protocol.scoreboard import load_targets

        return EvalConfigMixin(catalog_splits=self.catalog_splits, query_split=self.query_split,
                               modes=load_targets().mode, max_queries=self.max_queries, eval_seed=self.eval_seed)


def run_ablation(cfg: AblationConfig) -> dict:
    from protocol.data.processed import load_processed
    from protocol.model.backbone import check_fingerprint
    from protocol.model.features import load_features
    from protocol.provenance import provenance
    from protocol.retrieval.catalog import load_catalog
    from protocol.scoreboard import load_targets
    from protocol.training import ablation

    spec = load_targets()
    metrics = [t.metric for t in spec.targets]
    eval_cfg = cfg.eval_config()
    seeds, variants = parse_seeds(cfg.seeds), parse_variants(cfg.variants)
    base = cfg.train_config()
    # The parent is no one variant: its name and tags say what it holds, and its parameters
    # leave out the fields each variant sets.
    run_name = f"ablation · {len(variants)} variants · seeds {','.join(map(str, seeds))}"
    with stage_run("ablation", None, run_name=run_name, output_dir=cfg.output_dir) as logger:
        logger.log_params({k: v for k, v in config_params(cfg).items() if k not in ablation.VARIANT_FIELDS})
        processed = load_processed(resolve_input(cfg.prepared, "prepared"))
        manifest = load_catalog(resolve_input(cfg.catalog, "catalog")).manifest
        check_fingerprint(manifest["dataset_fingerprint"], processed.fingerprint, "dataset of the baseline catalog")
        backbone_fp = manifest["backbone_fingerprint"]
        fingerprints = {"dataset.fingerprint": processed.fingerprint, "backbone.fingerprint": backbone_fp}
        logger.set_tags({**fingerprints, "variants": ",".join(variants), "seeds": ",".join(map(str, seeds))})
        logger.log_dataset(processed, context="training")
        features = load_features(cfg.cache_dir, processed.fingerprint, backbone_fp)  # never the backbone
        # hard_negatives is a variant's switch, so the base reads the file whichever variants run
        pairs, negatives, groups = read_supervision(dataclasses.replace(cfg, hard_negatives=True),
                                                    processed.fingerprint, backbone_fp)
        out = logger.output_dir

        inputs = AblationInputs(processed, features, pairs, negatives, groups, eval_cfg, backbone_fp,
                                spec.mode, tuple(metrics))
        jobs = [Job(variant, seed, ablation.variant_config(base, variant, seed),
                    out / ablation.variant_slug(variant) / f"seed_{seed}")
                for variant in ablation.longest_first(variants) for seed in seeds]
        workers = worker_count(cfg.workers, len(jobs), available_cores())
        logger.set_tags({"workers": str(workers)})

        @contextlib.contextmanager
        def child_run(job):
            name, tags = describe_run("ablation", job.config)  # `ablation · full · seed 1`, variant and seed
            with stage_run(CHILD_STAGE, job.config, run_name=name) as child:
                child.set_tags({**tags, **fingerprints})
                yield child

        runs = []
        for run in run_jobs(inputs, jobs, workers, child_run):
            runs.append(run)
            log.info("ablation %s seed %d: %s", run.variant, run.seed,
                     ", ".join(f"{m} {100 * v:.2f}" for m, v in run.metrics.items()))

        runs.sort(key=lambda r: (variants.index(r.variant), r.seed))  # the tables in the order asked for
        evidence = spec.evidence
        doc = ablation.summarize_views(runs, metrics, resamples=evidence.resamples, seed=evidence.seed,
                                       confidence=evidence.confidence)
        doc["provenance"] = provenance(processed.fingerprint, backbone_fp)
        markdown = ablation.format_markdown(doc, [(t.name, t.metric) for t in spec.targets])
        for path in ablation.write_ablation(doc, markdown, out):
            logger.log_artifact(path)
        logger.log_metrics({f"{ablation.variant_slug(v)}.{m}.mean": s["mean"]
                            for v, by_metric in doc["variants"].items() for m, s in by_metric.items()})
        for prefix, view in (("", doc), (f"{ablation.HELD_OUT}.", doc.get(ablation.HELD_OUT))):
            if view is not None:
                logger.log_metrics({f"{prefix}full_minus_plain.{m}.{k}": d[k]
                                    for m, d in view["full_minus_plain"].items() for k in ("mean", "ci_low", "ci_high")
                                    if d[k] is not None})
        print(markdown, flush=True)
        ablation.write_ablation(doc, markdown, cfg.output_dir)  # the contract's path, beside <run_id>/
        return {"run_id": logger.run_id, "ablation": doc, "markdown": markdown}
