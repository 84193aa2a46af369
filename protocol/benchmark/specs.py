"""Marqo's leaderboard tasks, read from protocol/configs/benchmark/marqo_tasks.yaml.

The YAML is the record of what Marqo's configs and evaluation code define (query and document
columns, document weights, k, the query cap); this module turns it into checked dataclasses and
picks the datasets a run asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from protocol.retrieval.leaderboard_metrics import KINDS, LEADERBOARD_KS

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "benchmark"
TASKS_PATH = CONFIG_DIR / "marqo_tasks.yaml"
# The one text column a row is embedded with (the feature cache holds one text per row); every
# Marqo config's text documents and text-to-image queries are this column.
TEXT_COLUMN = "text"


@dataclass(frozen=True)
class TaskSpec:
    name: str                     # Marqo's task name: "text-to-image", "neckline-to-image", ...
    query: str                    # the column whose distinct values are the queries
    docs: tuple[str, ...]         # "image" and/or text columns that make a document
    weights: tuple[float, ...]    # one per doc column (Marqo's doc_weights); (1.0,) for one column
    kind: str                     # leaderboard_metrics.RECALL_KIND | PRECISION_KIND

    @property
    def text_columns(self) -> tuple[str, ...]:
        """The dataset's text columns this task embeds as documents."""
        return tuple(c for c in self.docs if c != "image")


@dataclass(frozen=True)
class DatasetSpec:
    key: str                      # Hugging Face name (Marqo/<key>) and folder name under a data_dir
    name: str                     # Marqo's name (LEADERBOARD.md heading, gt_query_doc folder)
    hub: str                      # "Marqo/<key>"
    config: str                   # Marqo's config file, e.g. configs/KAGL.json
    tasks: tuple[TaskSpec, ...]


@dataclass(frozen=True)
class Protocol:
    datasets: dict[str, DatasetSpec]
    ks: tuple[int, ...]
    max_queries: int
    item_id_column: str
    image_column: str
    split: str
    source: dict[str, str]

    def select(self, names: str | list[str]) -> list[DatasetSpec]:
        """The datasets named (comma-separated, any case), in the order given; ValueError names the unknown ones."""
        wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        wanted = [n for n in wanted if n]
        if not wanted:
            raise ValueError(f"no dataset named; choose from {', '.join(self.datasets)}")
        by_lower = {k.lower(): spec for k, spec in self.datasets.items()}
        unknown = [n for n in wanted if n.lower() not in by_lower]
        if unknown:
            raise ValueError(f"unknown benchmark dataset(s) {unknown}; the datasets are {', '.join(self.datasets)}")
        picked = []
        for n in wanted:
            if by_lower[n.lower()] not in picked:
                picked.append(by_lower[n.lower()])
        return picked


def load_protocol(path: str | Path = TASKS_PATH) -> Protocol:
    """The tasks YAML as a Protocol; ValueError names the dataset and task of any malformed entry."""
    path = Path(path)
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    ks = tuple(int(k) for k in doc["ks"])
    if ks != LEADERBOARD_KS:
        # the metrics module computes exactly these; a YAML that says otherwise would be a silent lie
        raise ValueError(f"{path}: ks {list(ks)} differ from the leaderboard metrics' {list(LEADERBOARD_KS)}")
    datasets = {key: _dataset(path, key, entry) for key, entry in doc["datasets"].items()}
    return Protocol(datasets=datasets, ks=ks, max_queries=int(doc["max_queries"]),
                    item_id_column=str(doc["item_id_column"]), image_column=str(doc["image_column"]),
                    split=str(doc["split"]), source=dict(doc["source"]))


def _dataset(path: Path, key: str, entry: dict) -> DatasetSpec:
    tasks = tuple(_task(path, key, t) for t in entry["tasks"])
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: dataset {key!r} repeats a task name: {names}")
    return DatasetSpec(key=key, name=str(entry["name"]), hub=str(entry["hub"]), config=str(entry["config"]),
                       tasks=tasks)


def _task(path: Path, key: str, t: dict) -> TaskSpec:
    where = f"{path}: dataset {key!r}, task {t.get('name')!r}"
    docs = tuple(str(c) for c in t["docs"])
    weights = tuple(float(w) for w in t.get("weights", [1.0] * len(docs)))
    if len(weights) != len(docs) or not docs:
        raise ValueError(f"{where}: needs one weight per document column, got docs {docs} and weights {weights}")
    if any(c != TEXT_COLUMN for c in docs if c != "image"):
        raise ValueError(f"{where}: documents {docs}: only 'image' and {TEXT_COLUMN!r} can be embedded")
    if t["kind"] not in KINDS:
        raise ValueError(f"{where}: kind {t['kind']!r} is not one of {KINDS}")
    return TaskSpec(name=str(t["name"]), query=str(t["query"]), docs=docs, weights=weights, kind=str(t["kind"]))
