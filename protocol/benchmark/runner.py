"""One benchmark dataset end to end: open it, embed it once through the feature cache, run its tasks.

A model is a backbone and heads. The backbone embeds every row (image and text) once per
dataset into the feature cache; the heads then make the embeddings from the cached features,
exactly as `evaluate` does, so a trained candidate and its zero-shot baseline share one cache.
Ranking uses the heads' ranking vectors (`ranking_queries` / `ranking_catalog`): the plain
projected embeddings, extended with the attribute heads' late fusion when the version has a
fitted attribute weight. For documents of several columns (Marqo's image 0.9 + text 0.1) the
embedding part is that weighted document and the attribute part scores its image, which is
what the attribute heads classify.

Queries that are the `text` column (text-to-image) take the cached text features of a row
holding that text; class names (categories, colours, necklines) are a handful of strings per
task, embedded by the backbone as they come, with no prompt template (Marqo's query_prefix is
empty for every published row).

A dataset that cannot be opened, lacks what every task needs or cannot be embedded is a
DatasetOutcome with `error`; a task that cannot run is a TaskOutcome with `error`; the others run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from protocol.benchmark.loading import (
    DatasetSource, DatasetUnavailable, EmbeddingView, check_columns, dataset_source, embedding_view, open_dataset,
)
from protocol.benchmark.scoring import TaskScore, document_vectors, score_task
from protocol.benchmark.specs import TEXT_COLUMN, DatasetSpec, Protocol, TaskSpec
from protocol.benchmark.tasks import (
    TaskQueries, TaskUnavailable, ground_truth_path, queries_from_column, queries_from_ground_truth,
)

log = logging.getLogger(__name__)


@dataclass
class BenchmarkModel:
    """What is benchmarked: a backbone (embeds rows, into the cache) and heads (applied to cached features)."""

    label: str      # how the tables name it: "zero-shot ViT-B-16 (laion2b_s34b_b88k)", "@champion (version 7)"
    backbone: object   # protocol.model.backbone.Backbone
    heads: object      # protocol.model.protocol_model.ProtocolHeads

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Strings -> the heads' text embeddings (the backbone runs on these strings only)."""
        return self.heads.embed_numpy(None, self.backbone.encode_texts(texts))[1]


@dataclass(frozen=True)
class RunSettings:
    cache_dir: str | Path
    batch_size: int = 32
    num_workers: int | None = None
    max_queries: int | None = None        # None: the protocol's (Marqo's 2000)
    seed: int = 0                         # the query sample's, where a column has more values than max_queries
    ground_truth_dir: str | Path | None = None   # Marqo's data/ folder: its own queries and relevance
    show_progress: bool = True


@dataclass
class TaskOutcome:
    task: TaskSpec
    score: TaskScore | None = None
    queries_from: str = ""
    n_values: int = 0
    error: str | None = None


@dataclass
class DatasetOutcome:
    spec: DatasetSpec
    source: DatasetSource
    tasks: list[TaskOutcome] = field(default_factory=list)
    error: str | None = None
    fingerprint: str | None = None
    n_docs: int = 0
    n_computed: int = 0   # rows the backbone embedded in this run (0: the cache answered)

    @property
    def ok(self) -> bool:
        return self.error is None


def run_dataset(spec: DatasetSpec, protocol: Protocol, model: BenchmarkModel, settings: RunSettings,
                data_dir: str | Path | None = None) -> DatasetOutcome:
    """Every task of one dataset; what cannot be loaded is reported in the outcome, never raised."""
    from protocol.model.features import extract_features

    source = dataset_source(spec, data_dir)
    outcome = DatasetOutcome(spec=spec, source=source)
    try:
        dataset = open_dataset(spec, source, protocol.split)
        missing = check_columns(dataset, spec, protocol)
        log.info("benchmark %s: %d documents from %s", spec.key, len(dataset), source.describe())
        view = embedding_view(dataset, protocol, show_progress=settings.show_progress)
        features = extract_features(view.dataset, view.fingerprint, model.backbone, settings.cache_dir,
                                    batch_size=settings.batch_size, num_workers=settings.num_workers)
    except DatasetUnavailable as e:
        outcome.error = str(e)
        log.warning("benchmark %s: not run: %s", spec.key, e)
        return outcome
    except ValueError as e:  # a row the feature cache cannot embed (a non-string text, an unreadable image)
        outcome.error = f"could not be embedded: {e}"
        log.warning("benchmark %s: not run: %s", spec.key, outcome.error)
        return outcome
    outcome.fingerprint, outcome.n_docs, outcome.n_computed = view.fingerprint, len(view.doc_ids), features.n_computed
    image, text = model.heads.embed_numpy(features.image, features.text)
    catalog = model.heads.ranking_catalog(image)  # [N, D (+ attribute log-probabilities)]
    for task in tqdm(spec.tasks, desc=f"{spec.key} tasks", unit="task", disable=not settings.show_progress):
        if task.name in missing:
            outcome.tasks.append(TaskOutcome(task, error=missing[task.name]))
            log.warning("benchmark %s / %s: not run: %s", spec.key, task.name, missing[task.name])
            continue
        try:
            outcome.tasks.append(_run_task(spec, task, dataset, view, model, image, text, catalog,
                                           text_features=features.text, protocol=protocol, settings=settings))
        except TaskUnavailable as e:
            outcome.tasks.append(TaskOutcome(task, error=str(e)))
            log.warning("benchmark %s / %s: not run: %s", spec.key, task.name, e)
    return outcome


def _run_task(spec: DatasetSpec, task: TaskSpec, dataset, view: EmbeddingView, model: BenchmarkModel,
              image: np.ndarray, text: np.ndarray, catalog: np.ndarray, *, text_features: np.ndarray,
              protocol: Protocol, settings: RunSettings) -> TaskOutcome:
    queries = _queries(spec, task, dataset, view, protocol, settings)
    query_emb = _query_embeddings(task, queries, view, model, text_features)
    query_vectors = model.heads.ranking_queries(queries.values, query_emb)
    docs = document_vectors(task, image, text)
    if docs is not image:
        catalog = np.array(catalog, dtype=np.float32, copy=True)  # ranking_catalog may return `image` itself
        catalog[:, : docs.shape[1]] = docs
    score = score_task(task, queries, query_vectors, catalog, view.doc_ids, protocol.ks)
    log.info("benchmark %s / %s: %d queries: %s", spec.key, task.name, score.n_queries,
             ", ".join(f"{m} {v:.3f}" for m, v in score.metrics.items()))
    return TaskOutcome(task, score=score, queries_from=queries.origin, n_values=queries.n_values)


def _queries(spec: DatasetSpec, task: TaskSpec, dataset, view: EmbeddingView, protocol: Protocol,
             settings: RunSettings) -> TaskQueries:
    if settings.ground_truth_dir:
        return queries_from_ground_truth(ground_truth_path(settings.ground_truth_dir, spec, task))
    cells = view.texts if task.query == TEXT_COLUMN else dataset[task.query]
    max_queries = protocol.max_queries if settings.max_queries is None else settings.max_queries
    return queries_from_column(cells, view.doc_ids, max_queries, settings.seed, column=task.query)


def _query_embeddings(task: TaskSpec, queries: TaskQueries, view: EmbeddingView, model: BenchmarkModel,
                      text_features: np.ndarray) -> np.ndarray:
    """Heads' text embeddings of the queries: from the cache where a row holds that very text, else embedded now."""
    row_of: dict[str, int] = {}
    if task.query == TEXT_COLUMN:
        for row, t in enumerate(view.texts):
            row_of.setdefault(t, row)
    rows = np.array([row_of.get(v, -1) for v in queries.values], dtype=np.int64)
    out = np.zeros((len(rows), model.heads.config.out_dim), dtype=np.float32)
    cached = rows >= 0
    if cached.any():
        out[cached] = model.heads.embed_numpy(None, text_features[rows[cached]])[1]
    if (~cached).any():
        out[~cached] = model.encode_texts([v for v, c in zip(queries.values, cached) if not c])
    return out
