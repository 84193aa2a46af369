"""Running the ablation's trainings: one job per variant and seed, here or in worker processes.

A job trains its variant on the cached features (never the backbone) and evaluates its
best-validation heads as the evaluate stage does (`evaluate_processed` over the same catalog
and query splits, in the locked targets' mode). Jobs share only read-only inputs, so they run
side by side: a training step is about one core's work (on 2 cores, 2 torch threads were no
faster than 1 in benchmarks/bench_train.py), while two single-thread trainings at once kept
~0.93x the speed of one alone (2,885 -> 2,716 and 2,683 pairs/s), so 2 workers on 2 cores
give ~1.9x the trainings per hour. More threads per process than cores is what makes
concurrent trainings crawl, so each worker gets `cores // workers` threads.

In this process a job logs into the logger its run gives it, as it goes; a worker logs into a
`RecordingLogger` that is replayed into the job's run when the job is done (the parent process
owns every MLflow run, so no two processes write to the store). Results come back in job order.

Library code: no MLflow.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pandas as pd

from protocol.events import RecordingLogger, RunLogger
from protocol.retrieval.evaluation import EvalConfigMixin
from protocol.training.ablation import VariantRun
from protocol.training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AblationInputs:
    """What every job reads and none writes: data, supervision and how to evaluate."""

    processed: object  # protocol.data.processed.ProcessedDataset
    features: object  # protocol.model.features.FeatureSet
    pairs: pd.DataFrame
    negatives: pd.DataFrame | None
    groups: pd.DataFrame | None
    eval_config: EvalConfigMixin
    backbone_fingerprint: str
    mode: str  # the locked targets' retrieval mode
    metrics: tuple[str, ...]  # the locked targets' metric names


@dataclass(frozen=True)
class Job:
    variant: str
    seed: int
    config: TrainConfig
    out_dir: Path


def available_cores() -> int:
    """Cores this process may run on (its affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity API (macOS)
        return max(1, os.cpu_count() or 1)


def worker_count(requested: int, n_jobs: int, cores: int) -> int:
    """`requested` workers (0: one per core), never more than there are jobs."""
    if requested < 0:
        raise ValueError(f"parameter 'workers' must be >= 0 (0: one per core), got {requested}")
    return max(1, min(requested or cores, n_jobs))


def run_job(inputs: AblationInputs, job: Job, logger: RunLogger) -> VariantRun:
    """Train one variant and seed, evaluate its best-validation heads in both views; test metrics to `logger` as
    `test.*` and `test_held_out.*` (the query split as the catalog: `held_out_view`)."""
    from protocol.model.protocol_model import ProtocolHeads
    from protocol.retrieval.evaluation import evaluate_processed
    from protocol.retrieval.metrics import metric_per_query
    from protocol.training.checkpoint import load_checkpoint
    from protocol.training.train import train

    result = train(job.config, inputs.features, inputs.processed.meta, inputs.pairs, inputs.negatives,
                   job.out_dir, groups=inputs.groups, logger=logger)
    if result.best_path is None:
        raise RuntimeError(f"ablation {job.variant} seed {job.seed}: training wrote no best checkpoint")
    heads = ProtocolHeads.from_checkpoint(load_checkpoint(result.best_path))
    image, text = heads.embed_numpy(inputs.features.image, inputs.features.text)
    fusion = heads.fusion_weight if heads.config.learn_fusion else None
    views = {"test": inputs.eval_config, "test_held_out": held_out_view(inputs.eval_config)}
    found = {}
    for prefix, eval_config in views.items():
        evaluation = evaluate_processed(eval_config, inputs.processed, image, text,
                                        backbone_fingerprint=inputs.backbone_fingerprint, fusion_weight=fusion,
                                        heads=heads)
        table = evaluation.result.queries[inputs.mode]
        metrics = {m: evaluation.result.metrics.get(m, math.nan) for m in inputs.metrics}
        logger.log_metrics({f"{prefix}.{m}": v for m, v in metrics.items() if math.isfinite(v)})
        found[prefix] = VariantRun(job.variant, job.seed, metrics, {m: metric_per_query(table, m) for m in inputs.metrics})
    return replace(found["test"], held_out=found["test_held_out"])


def held_out_view(eval_config: EvalConfigMixin) -> EvalConfigMixin:
    """The evaluation whose catalog is the query split itself: no item the heads were trained on."""
    return replace(eval_config, catalog_splits=eval_config.query_split)


def run_jobs(inputs: AblationInputs, jobs: Sequence[Job], workers: int,
             open_run: Callable[[Job], AbstractContextManager[RunLogger]]) -> Iterator[VariantRun]:
    """Each job's VariantRun, in job order; `open_run(job)` is the run (a context manager) its logs go to.

    workers 1: one job after another in this process; more: that many worker processes, each
    with `cores // workers` torch threads unless the jobs' configs set num_threads.
    """
    if workers <= 1:
        for job in jobs:
            with open_run(job) as logger:
                yield run_job(inputs, job, logger)
        return
    threads = max(1, available_cores() // workers)
    jobs = [job if job.config.num_threads else replace(job, config=replace(job.config, num_threads=threads))
            for job in jobs]
    log.info("ablation: %d trainings on %d worker processes, %d torch thread(s) each", len(jobs), workers, threads)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(inputs, logging.getLogger().level))
    try:
        for job, (run, recorded) in zip(jobs, pool.map(_worker_job, jobs)):
            with open_run(job) as logger:
                recorded.replay(logger)
            yield run
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # an error stops the jobs not yet started


_WORKER_INPUTS: AblationInputs | None = None  # set once per worker process by _start_worker


def _start_worker(inputs: AblationInputs, log_level: int) -> None:
    global _WORKER_INPUTS
    _WORKER_INPUTS = inputs
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _worker_job(job: Job) -> tuple[VariantRun, RecordingLogger]:
    recorded = RecordingLogger()
    try:
        run = run_job(_WORKER_INPUTS, job, recorded)
    except Exception as error:  # the parent sees this job's name; the worker's traceback is in its log
        log.exception("ablation %s seed %d failed", job.variant, job.seed)
        raise RuntimeError(f"ablation {job.variant} seed {job.seed}: {type(error).__name__}: {error}") from None
    return run, recorded
