"""`benchmark`: Marqo's public fashion leaderboard protocol on a registered version or a zero-shot backbone.

One parent run (tag stage=benchmark) and one child run per dataset (stage=benchmark_dataset,
named `benchmark · KAGL`). A child holds the dataset's figures as `<task>.<key>`
(protocol.benchmark.report.METRIC_KEYS: `neckline-to-image.p10`, `text-to-image.recall10`, ...),
`<task>.n_queries` and `features.n_computed`, plus one per-query table per task. A dataset that
cannot be loaded ends its child run FAILED with tags `benchmark.status=failed` and
`benchmark.error`; a task that cannot run is tag `<task>.error`. The parent holds benchmark.md and
benchmark.json (this model's rows beside the published rows, each published figure with its
source) and the same table for the UI; it fails only when no dataset could be run.

`version`: `baseline` benchmarks the zero-shot backbone named by `model`/`pretrained`/`backbone_seed`
(as the baseline stage builds it; no registry needed); `@alias` or a version number resolves through
the model registry and uses that version's own backbone and heads, as `mlflow models serve` loads them.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from protocol.benchmark.specs import load_protocol
from protocol.io import InputError
from protocol.tracking import registry
from protocol.tracking.runs import stage_run

log = logging.getLogger(__name__)

CHILD_STAGE = "benchmark_dataset"
ZERO_SHOT = "baseline"
ALL_DATASETS = ",".join(load_protocol().datasets)


@dataclass
class BenchmarkConfig:
    """Run Marqo's fashion leaderboard tasks on a model and set its figures beside the published ones."""

    datasets: str = field(default=ALL_DATASETS, metadata={"help": "comma-separated benchmark datasets"})
    version: str = field(default="@champion", metadata={
        "help": "registered version (@alias or number), or 'baseline' for the zero-shot backbone given by "
                "model/pretrained/backbone_seed"})
    data_dir: str = field(default="", metadata={
        "help": "folder holding each dataset saved with save_to_disk as <data_dir>/<dataset>; empty = "
                "datasets.load_dataset('Marqo/<dataset>') from the hub"})
    ground_truth_dir: str = field(default="", metadata={
        "help": "Marqo's data/ folder (<Name>/gt_query_doc/*.json): its exact queries; empty = every distinct "
                "value, at most max_queries sampled with seed"})
    model: str = field(default="ViT-B-32", metadata={"help": "open_clip model name (version=baseline only)"})
    pretrained: str = field(default="none", metadata={
        "help": "open_clip tag, local weights file, or none (version=baseline only)"})
    backbone_seed: int = field(default=0, metadata={"help": "seed of the random init when pretrained=none"})
    cache_dir: str = field(default="outputs/feature_cache", metadata={"help": "feature cache directory"})
    batch_size: int = 32
    num_workers: int | None = field(default=None, metadata={
        "help": "DataLoader workers of feature extraction; empty = derived from the cores and the device"})
    max_queries: int | None = field(default=None, metadata={
        "help": "most queries per task; empty = Marqo's (marqo_tasks.yaml)"})
    seed: int = field(default=0, metadata={"help": "seed of the query sample where a column has more values"})
    output_dir: str = field(default="outputs/benchmark",
                            metadata={"help": "benchmark.md/json go to <output_dir>/<run_id>"})

    def __post_init__(self):
        load_protocol().select(self.datasets)  # names the unknown datasets now, before anything loads
        v = self.version
        if v != ZERO_SHOT and not (v.startswith("@") and len(v) > 1) and not v.isdigit():
            raise ValueError(f"parameter 'version' must be {ZERO_SHOT!r}, @alias or a version number, got {v!r}")
        if self.batch_size < 1:
            raise ValueError(f"parameter 'batch_size' must be >= 1, got {self.batch_size}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"parameter 'num_workers' must be >= 0, got {self.num_workers}")
        if self.max_queries is not None and self.max_queries < 1:
            raise ValueError(f"parameter 'max_queries' must be >= 1, got {self.max_queries}")


def benchmark_model(cfg: BenchmarkConfig):
    """(BenchmarkModel, facts about it): the zero-shot backbone, or a registered version's backbone and heads."""
    from protocol.benchmark.runner import BenchmarkModel
    from protocol.model.backbone import BackboneSpec, create_backbone
    from protocol.model.protocol_model import ProtocolHeads

    if cfg.version == ZERO_SHOT:
        backbone = create_backbone(BackboneSpec(cfg.model, cfg.pretrained, cfg.backbone_seed))
        model = BenchmarkModel(f"zero-shot {cfg.model} ({cfg.pretrained})", backbone,
                               ProtocolHeads.identity(backbone.embed_dim))
        return model, {"version": ZERO_SHOT}
    version = registry.resolve_version(cfg.version)
    served = registry.load_version_model(version).unwrap_python_model().model  # ProtocolModel, as served
    model = BenchmarkModel(f"{cfg.version} (version {version.version})", served.backbone, served.heads)
    return model, {"version": str(version.version), "version_run_id": version.run_id}


def run_benchmark(cfg: BenchmarkConfig) -> dict:
    from protocol.benchmark.published import load_published
    from protocol.benchmark.report import build_report, comparison_frame, format_markdown, write_report
    from protocol.benchmark.runner import RunSettings

    protocol = load_protocol()
    specs = protocol.select(cfg.datasets)
    with stage_run("benchmark", cfg, output_dir=cfg.output_dir) as logger:
        model, facts = benchmark_model(cfg)
        logger.set_run_name(f"benchmark · {model.label}")
        fingerprint = model.backbone.fingerprint
        logger.set_tags({"backbone.fingerprint": fingerprint, "benchmark.model": model.label,
                         **{f"benchmark.{k}": v for k, v in facts.items()}})
        settings = RunSettings(cache_dir=cfg.cache_dir, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                               max_queries=cfg.max_queries, seed=cfg.seed,
                               ground_truth_dir=cfg.ground_truth_dir or None)
        outcomes = []
        for spec in tqdm(specs, desc="benchmark", unit="dataset"):
            outcomes.append(_run_child(spec, protocol, model, settings, cfg, fingerprint))
        ok = [o for o in outcomes if o.ok]
        logger.set_tags({"benchmark.datasets_run": ",".join(o.spec.key for o in ok),
                         "benchmark.datasets_failed": ",".join(o.spec.key for o in outcomes if not o.ok),
                         "dataset.fingerprint": _combined_fingerprint(ok)})
        doc = build_report(outcomes, load_published(protocol), protocol,
                           model={"label": model.label, "backbone_fingerprint": fingerprint, **facts},
                           settings={"data_dir": cfg.data_dir, "ground_truth_dir": cfg.ground_truth_dir,
                                     "seed": cfg.seed, "max_queries": cfg.max_queries or protocol.max_queries})
        markdown = format_markdown(doc)
        for path in write_report(doc, markdown, logger.output_dir):
            logger.log_artifact(path)
        logger.log_table(comparison_frame(doc), "tables/benchmark.json")
        print(markdown, flush=True)
        if not ok:
            raise InputError("no benchmark dataset could be run: " + "; ".join(f"{o.spec.key}: {o.error}"
                                                                               for o in outcomes)
                             + f" (benchmark.md in {logger.output_dir})")
        return {"run_id": logger.run_id, "report": doc, "markdown": markdown,
                "children": {o.spec.key: o for o in outcomes}}


class _DatasetFailed(Exception):
    """Ends a dataset's child run as FAILED; caught by its parent, which goes on with the next dataset."""


def _run_child(spec, protocol, model, settings, cfg: BenchmarkConfig, backbone_fingerprint: str):
    from protocol.benchmark.report import dataset_metrics
    from protocol.benchmark.runner import run_dataset

    outcome = None
    try:
        with stage_run(CHILD_STAGE, None, run_name=f"benchmark · {spec.key}") as child:
            child.log_params({"dataset": spec.key, "hub": spec.hub, "data_dir": cfg.data_dir,
                              "version": cfg.version, "marqo_config": spec.config})
            child.set_tags({"benchmark.dataset": spec.key, "backbone.fingerprint": backbone_fingerprint})
            outcome = run_dataset(spec, protocol, model, settings, data_dir=cfg.data_dir or None)
            child.set_tags({"benchmark.source": outcome.source.describe()})
            if not outcome.ok:
                child.set_tags({"benchmark.status": "failed", "benchmark.error": outcome.error})
                raise _DatasetFailed(outcome.error)
            child.set_tags({"benchmark.status": "ok", "dataset.fingerprint": outcome.fingerprint,
                            **{f"{t.task.name}.error": t.error for t in outcome.tasks if t.error}})
            child.log_metrics(dataset_metrics(outcome) | {"features.n_computed": outcome.n_computed,
                                                          "n_documents": outcome.n_docs})
            for t in outcome.tasks:
                if t.score is not None:
                    child.log_table(t.score.per_query, f"tables/{t.task.name}.json")
    except _DatasetFailed:
        pass  # reported in its run (FAILED, with the reason) and in benchmark.md/json
    return outcome


def _combined_fingerprint(outcomes) -> str:
    """One fingerprint for the datasets a benchmark ran (each child run tags its own)."""
    lines = "".join(f"{o.spec.key}={o.fingerprint}\n" for o in outcomes)
    return hashlib.sha256(lines.encode()).hexdigest()
