"""The published leaderboard rows (protocol/configs/benchmark/leaderboard.yaml), each with its source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from protocol.benchmark.specs import CONFIG_DIR, Protocol
from protocol.retrieval.leaderboard_metrics import PRECISION_KIND, RECALL_KIND

LEADERBOARD_PATH = CONFIG_DIR / "leaderboard.yaml"


@dataclass(frozen=True)
class PublishedRow:
    model: str                 # Marqo's run name, e.g. "ViT-B-16-laion2b_s34b_b88k"
    label: str                 # e.g. "ViT-B-16 laion2b"
    weights: str               # what the model is
    metrics: dict[str, float]  # Marqo's metric names -> figure as published (3 decimals)
    source: dict[str, str]     # repo, file, commit, updated, section (the LEADERBOARD.md heading), published_as


def load_published(protocol: Protocol,
                   path: str | Path = LEADERBOARD_PATH) -> dict[tuple[str, str], list[PublishedRow]]:
    """{(dataset key, task name): rows}; ValueError names any row that names no task of marqo_tasks.yaml."""
    path = Path(path)
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    names = {RECALL_KIND: list(doc["recall_metrics"]), PRECISION_KIND: list(doc["precision_metrics"])}
    out: dict[tuple[str, str], list[PublishedRow]] = {}
    for key, tasks in doc["rows"].items():
        if key not in protocol.datasets:
            raise ValueError(f"{path}: dataset {key!r} is not in the benchmark's tasks "
                             f"({', '.join(protocol.datasets)})")
        spec = protocol.datasets[key]
        kinds = {t.name: t.kind for t in spec.tasks}
        for task, rows in tasks.items():
            if task not in kinds:
                raise ValueError(f"{path}: {key} has no task {task!r} in marqo_tasks.yaml ({', '.join(kinds)})")
            metric_names = names[kinds[task]]
            for model, row in rows.items():
                entry = row if isinstance(row, dict) else {"figures": row}
                figures = [float(x) for x in entry["figures"]]
                if len(figures) != len(metric_names):
                    raise ValueError(f"{path}: {key} / {task} / {model}: {len(figures)} figures for {metric_names}")
                info = doc["models"][model]
                source = {**{k: str(v) for k, v in doc["source"].items()},
                          "section": f"{spec.name} / {task.title()}",
                          **({"published_as": str(entry["published_as"])} if "published_as" in entry else {})}
                out.setdefault((key, task), []).append(PublishedRow(
                    model=model, label=str(info["label"]), weights=str(info["weights"]),
                    metrics=dict(zip(metric_names, figures)), source=source))
    return out
