"""What a training run reports: per-step loss parts, epoch means, and which validation keys go out every epoch.

A step keeps its loss parts as one detached tensor (`StepRecord`) and they become floats
only on logging steps and once per epoch: a host read per part on every step costs more
than the heads' forward pass at batch 64.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from protocol.events import RunLogger
from protocol.io import atomic_path
from protocol.model.losses import attribute_accuracy

LOG_FILE = "train_log.jsonl"


def per_epoch_metric_keys(primary_metric: str) -> frozenset[str]:
    """Validation keys logged every epoch: each mode's overall figures (`t2i.neckline.p10`,
    `t2i.recall10`), the primary metric and the locked targets (`t2i.category.p10.cardigans`).
    The per-value breakdowns (every other `<mode>.<attr>.<k>.<value>`) are logged once, at the end."""
    from protocol.retrieval.metrics import ATTRIBUTES, MODES
    from protocol.scoreboard import load_targets

    overall = {f"{mode}.{attr}.{k}" for mode in MODES for attr in ATTRIBUTES for k in ("p1", "p5", "p10", "map10")}
    overall |= {f"{mode}.{k}" for mode in MODES for k in ("recall1", "recall5", "recall10", "mrr10", "n_queries")}
    return frozenset(overall | {primary_metric} | {t.metric for t in load_targets().targets})


class StepRecord:
    """One step's loss parts as one tensor, and what its "acc.<head>" parts are computed from."""

    __slots__ = ("names", "values", "accuracy")

    def __init__(self, names: tuple[str, ...], values: torch.Tensor, accuracy: tuple):
        self.names = names  # part names, in the order the loss makes them, without the acc.<head> parts
        self.values = values  # [len(names)] detached
        self.accuracy = accuracy  # (head, logits [B, C] detached, labels [B]) of heads with a known label

    def parts(self) -> dict[str, float]:
        """The parts without acc.<head>."""
        return dict(zip(self.names, self.values.tolist()))

    @staticmethod
    def floats_of(records: list["StepRecord"]) -> list[dict[str, float]]:
        """Every record's parts as floats, acc.<head> after attr.<head> (the order attribute_loss gives)."""
        accuracy: dict[str, dict[int, float]] = {}
        by_head: dict[str, list[tuple[int, torch.Tensor, np.ndarray]]] = {}
        for i, record in enumerate(records):
            for name, logits, labels in record.accuracy:
                by_head.setdefault(name, []).append((i, logits, labels))
        for name, entries in by_head.items():
            acc = attribute_accuracy(np.stack([logits.numpy() for _, logits, _ in entries]),
                                     np.stack([labels for _, _, labels in entries]))
            accuracy[name] = dict(zip((i for i, _, _ in entries), acc.tolist()))
        out = []
        for i, record in enumerate(records):
            values = {}
            for name, value in zip(record.names, record.values.tolist()):
                values[name] = value
                if name.startswith("attr."):
                    head = name[len("attr."):]
                    values[f"acc.{head}"] = accuracy[head][i]
            out.append(values)
        return out


def epoch_means(records: list[StepRecord]) -> dict[str, float]:
    """Mean of each part over the epoch's steps (a part missing from a step counts 0 there), summed in step order."""
    sums: dict[str, float] = {}
    for values in StepRecord.floats_of(records):
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
    n_steps = max(1, len(records))
    return {k: v / n_steps for k, v in sums.items()}


class TrainLog:
    """train_log.jsonl and the run's metrics: one record per logged step and per epoch.

    Every epoch logs the training means, throughput and the validation figures worth a point
    each epoch (`per_epoch_metric_keys`); the per-value breakdowns go out once, at the end.
    The file is rewritten whole (atomically) at each epoch, so a killed run leaves the
    records of its finished epochs, and a resumed one keeps those its checkpoint covers.
    """

    def __init__(self, run_logger: RunLogger, path: Path, primary_metric: str):
        self.run_logger, self.path = run_logger, path
        self.epoch_metric_keys = per_epoch_metric_keys(primary_metric)
        self.records: list[dict[str, Any]] = []

    def resume(self, last_epoch: int) -> None:
        """Keep the records of the epochs the resume checkpoint covers (later ones were lost with the run)."""
        if self.path.exists():
            records = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.records = [r for r in records if r.get("epoch", 0) <= last_epoch]

    def write(self) -> None:
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))

    def epoch_metrics(self, val: dict[str, float]) -> dict[str, float]:
        """The validation figures worth a point every epoch: headline metrics and the locked targets."""
        return {k: v for k, v in val.items() if k in self.epoch_metric_keys}

    def step(self, epoch: int, step: int, values: dict[str, float], state: dict[str, float]) -> None:
        metrics = {f"train.{k}": v for k, v in {**values, **state}.items()}
        self.run_logger.log_metrics(metrics, step=step)
        self.records.append({"kind": "step", "epoch": epoch, "step": step, **metrics})

    def epoch(self, epoch: int, step: int, best_epoch: int | None, best_metric: float | None,
              train_means: dict[str, float], val: dict[str, float], val_deltas: dict[str, float],
              pairs_per_s: float, mix: pd.DataFrame) -> None:
        metrics = {f"train.epoch.{k}": v for k, v in train_means.items()}
        metrics["train.pairs_per_s"] = pairs_per_s
        metrics.update({f"val.{k}": v for k, v in self.epoch_metrics(val).items()})
        metrics.update({f"val.{k}": v for k, v in val_deltas.items()
                        if k.removeprefix("delta.") in self.epoch_metric_keys})
        self.run_logger.log_metrics(metrics, step=epoch)
        self.run_logger.log_table(mix.assign(epoch=epoch), f"sampler/mix_epoch_{epoch:03d}.json")
        self.records.append({"kind": "epoch", "epoch": epoch, "step": step, "best_epoch": best_epoch,
                             "best_metric": best_metric, **metrics})
        self.write()

    def breakdowns(self, history: list[dict[str, Any]]) -> None:
        """The per-value breakdowns, once: the last epoch's, at its step."""
        if history:
            last = history[-1]
            self.run_logger.log_metrics({f"val.{k}": v for k, v in last["val"].items()
                                         if k not in self.epoch_metric_keys}, step=last["epoch"])
