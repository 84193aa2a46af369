"""benchmark.json and benchmark.md: this model's rows beside the published rows for the same tasks.

Figures are fractions with Marqo's metric names. In MLflow a metric is `<task>.<key>` with the
key from METRIC_KEYS (MLflow refuses '@' in a metric name), e.g. `neckline-to-image.p10`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from protocol.benchmark.published import PublishedRow
from protocol.benchmark.runner import DatasetOutcome
from protocol.benchmark.specs import Protocol
from protocol.io import atomic_path, write_json
from protocol.retrieval.leaderboard_metrics import METRIC_NAMES

# Marqo's metric name -> the MLflow metric key after `<task>.` (defined once, in leaderboard_metrics)
METRIC_KEYS = METRIC_NAMES
N_QUERIES_KEY = "n_queries"
JSON_NAME, MARKDOWN_NAME = "benchmark.json", "benchmark.md"
THIS_RUN = "this run"


def metric_key(task: str, metric: str) -> str:
    """`<task>.<key>` for an MLflow metric, e.g. ("text-to-image", "Recall@10") -> "text-to-image.recall10"."""
    return f"{task}.{METRIC_KEYS[metric]}"


def dataset_metrics(outcome: DatasetOutcome) -> dict[str, float]:
    """What a dataset's run logs: every figure of every task that ran, and its number of queries."""
    out: dict[str, float] = {}
    for t in outcome.tasks:
        if t.score is not None:
            out |= {metric_key(t.task.name, m): v for m, v in t.score.metrics.items()}
            out[f"{t.task.name}.{N_QUERIES_KEY}"] = float(t.score.n_queries)
    return out


def build_report(outcomes: list[DatasetOutcome], published: dict[tuple[str, str], list[PublishedRow]],
                 protocol: Protocol, model: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The whole comparison as one JSON-ready dict (what benchmark.md is printed from)."""
    datasets = {}
    for o in outcomes:
        entry: dict[str, Any] = {"name": o.spec.name, "source": o.source.describe(),
                                 "status": "ok" if o.ok else "failed"}
        if not o.ok:
            entry["error"] = o.error
        else:
            entry |= {"fingerprint": o.fingerprint, "n_documents": o.n_docs, "n_computed": o.n_computed}
        tasks = {}
        for task in o.spec.tasks:
            ran = next((t for t in o.tasks if t.task.name == task.name), None)
            row: dict[str, Any] = {"kind": task.kind, "query": task.query, "documents": list(task.docs),
                                   "weights": list(task.weights)}
            if ran is None:
                row |= {"status": "not run", "error": f"dataset not loaded: {o.error}"}
            elif ran.error is not None:
                row |= {"status": "failed", "error": ran.error}
            else:
                row |= {"status": "ok", "n_queries": ran.score.n_queries, "n_values": ran.n_values,
                        "queries_from": ran.queries_from, "metrics": ran.score.metrics}
            row["published"] = [{"model": p.model, "label": p.label, "weights": p.weights, "metrics": p.metrics,
                                 "source": p.source} for p in published.get((o.spec.key, task.name), [])]
            tasks[task.name] = row
        entry["tasks"] = tasks
        datasets[o.spec.key] = entry
    return {"model": model, "settings": settings, "protocol": protocol.source | {"ks": list(protocol.ks),
                                                                                 "max_queries": protocol.max_queries},
            "metric_keys": METRIC_KEYS, "datasets": datasets}


def comparison_frame(doc: dict[str, Any]) -> pd.DataFrame:
    """One row per (dataset, task, model) with every figure: the table the parent run shows in the UI."""
    rows = []
    for key, d in doc["datasets"].items():
        for task, t in d["tasks"].items():
            rows.append({"dataset": key, "task": task, "model": doc["model"]["label"], "source": THIS_RUN,
                         "status": t["status"], "n_queries": t.get("n_queries"), **t.get("metrics", {})})
            for p in t["published"]:
                rows.append({"dataset": key, "task": task, "model": p["label"], "status": "published",
                             "source": _cite(p["source"]), "n_queries": None, **p["metrics"]})
    return pd.DataFrame(rows)


def _cite(source: dict[str, str]) -> str:
    return f"{source['repo']} {source['file']} @ {source['commit'][:7]} ({source['section']})"


def format_markdown(doc: dict[str, Any]) -> str:
    model, settings = doc["model"], doc["settings"]
    lines = [f"# Fashion leaderboard benchmark: {model['label']}", "",
             f"Marqo's protocol ({doc['protocol']['repo']}, configs @ {doc['protocol']['configs_commit'][:7]}): "
             f"each dataset's own tasks, top {max(doc['protocol']['ks'])} by cosine. Published rows are copied from "
             "LEADERBOARD.md with the commit named beside each. Figures are fractions.", ""]
    if settings.get("ground_truth_dir"):
        lines += [f"Queries and relevance: Marqo's own files under {settings['ground_truth_dir']}.", ""]
    else:
        lines += [f"Queries: every distinct value of the query column, at most {doc['protocol']['max_queries']} "
                  f"sampled with seed {settings.get('seed')}. Marqo's own sample of text queries is fixed in its "
                  "gt_query_doc files, so text-to-image figures are comparable in expectation, not query for query "
                  "(pass ground_truth_dir for its exact queries).", ""]
    lines += [f"Model: {model['label']}; backbone fingerprint {str(model.get('backbone_fingerprint', ''))[:16]}.", ""]
    for key, d in doc["datasets"].items():
        lines.append(f"## {d['name']} ({d['source']})")
        lines.append("")
        if d["status"] != "ok":
            lines += [f"**Not run**: {d['error']}", ""]
        else:
            lines += [f"{d['n_documents']} documents; dataset fingerprint {d['fingerprint'][:16]}; "
                      f"rows embedded in this run: {d['n_computed']}.", ""]
        for task, t in d["tasks"].items():
            lines += _task_table(task, t, model["label"])
    return "\n".join(lines).rstrip() + "\n"


def _task_table(task: str, t: dict[str, Any], label: str) -> list[str]:
    docs = " + ".join(f"{w:g} {c}" for c, w in zip(t["documents"], t["weights"])) if len(t["documents"]) > 1 \
        else t["documents"][0]
    lines = [f"### {task} (query: {t['query']}; documents: {docs})", ""]
    names = list(t["metrics"]) if "metrics" in t else (list(t["published"][0]["metrics"]) if t["published"] else [])
    names = sorted(names, key=lambda m: not m.startswith("Avg"))  # Marqo's column order: the average first
    if t["status"] != "ok":
        lines += [f"**Not run**: {t['error']}", ""]
    if not names:
        return lines
    lines += ["| Model | " + " | ".join(names) + " | queries | source |",
              "|---|" + "---|" * len(names) + "---|---|"]
    if t["status"] == "ok":
        lines.append(f"| **{label}** | " + " | ".join(f"{t['metrics'][m]:.3f}" for m in names)
                     + f" | {t['n_queries']} | {THIS_RUN} |")
    for p in t["published"]:
        shown = p["label"] + (f" (published as {p['source']['published_as']})" if "published_as" in p["source"] else "")
        lines.append(f"| {shown} | " + " | ".join(f"{p['metrics'][m]:.3f}" for m in names)
                     + f" | | {_cite(p['source'])} |")
    return lines + [""]


def write_report(doc: dict[str, Any], markdown: str, out_dir: str | Path) -> tuple[Path, Path]:
    """benchmark.json and benchmark.md in `out_dir`, each written atomically."""
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / JSON_NAME, doc)
    with atomic_path(out_dir / MARKDOWN_NAME) as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    return json_path, out_dir / MARKDOWN_NAME
