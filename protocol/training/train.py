"""The training loop: heads on cached features, with checkpoints, exact resume and validation.

One step takes `batch_size` anchors from the balanced sampler and, for each, one positive
partner and a few hard negatives (protocol.training.batches). Anchor texts and images go
through the heads with gradients; partner and negative images are catalog lookups without
gradients (from an embedding bank at most `bank_refresh_steps` old, or embedded afresh in
eval mode) and join the text->image softmax as extra columns. Losses: multi-positive InfoNCE (own image, same
product, the partner), attribute cross-entropy on the anchor images, and a t2f term that
learns the fusion weight. An epoch is ceil(train pairs / batch_size) steps, each step
counting one pair per anchor, so pairs x epochs is the unit of work.

Everything random is seeded: the sampler and the per-step draws from RNGs derived from
(seed, epoch), dropout from torch's RNG, which checkpoints save and resume restores. A run
resumed from an epoch checkpoint therefore ends with the same weights and metrics as an
uninterrupted one. A non-finite loss or gradient stops the run with an error naming the
step and the loss part, before any weight is touched; earlier checkpoints stay as they were.

Library code: no MLflow here. Metrics, tables and artifacts go to the `RunLogger`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from protocol.events import NullLogger, RunLogger
from protocol.io import atomic_path, write_json
from protocol.model.backbone import check_fingerprint
from protocol.model.losses import (
    attribute_accuracy, attribute_loss, combined_loss, contrastive_loss_targets, fusion_loss_targets,
)
from protocol.model.protocol_model import HeadsConfig, ProtocolHeads
from protocol.model.sampler import BalancedBatchSampler
from protocol.training.batches import (
    EmbeddingBank, StepPlan, StepPlanner, TrainingData, build_training_data, draw_epoch,
)
from protocol.training.checkpoint import (
    capture_rng_state, checkpoint_dir, epoch_checkpoint, load_checkpoint, restore_rng_state, save_checkpoint,
)
from protocol.training.config import OPERATIONAL_FIELDS, RESUME_OVERRIDES, TrainConfig
from protocol.training.validation import deltas, validate

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
LOG_FILE = "train_log.jsonl"
STEP_RNG_STREAM = 1  # the per-step draws use RNG (seed, epoch, 1); the sampler uses (seed, epoch)


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient became NaN/inf."""


@dataclass
class TrainResult:
    heads: ProtocolHeads  # weights at the end of the run
    best_metric: float | None  # cfg.primary_metric at best_epoch
    best_epoch: int | None
    final_metrics: dict[str, float]  # validation metrics of the last epoch run
    reference_metrics: dict[str, float]  # the same validation with identity heads (zero-shot)
    best_path: Path | None
    final_path: Path | None  # None when stopped early by stop_after_epochs
    last_checkpoint: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch
    stopped_early: bool = False


@dataclass
class _Progress:
    """What changes as training runs and must survive a resume."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    best_metric: float | None = None
    best_epoch: int | None = None
    reference: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


EpochEndCallback = Callable[[int, ProtocolHeads, Path, dict[str, float]], None]


@dataclass(frozen=True)
class TrainCallbacks:
    """Hooks the loop calls; the MLflow side (logged model and gallery per epoch) plugs in here.

    `on_epoch_end(epoch, heads, checkpoint, metrics)`: after each epoch whose checkpoint was
    written, with that checkpoint and the epoch's validation headline and target metrics, named
    as the run logs them (`val.t2i.neckline.p10`).
    """

    on_epoch_end: EpochEndCallback | None = None


def train(
    cfg: TrainConfig,
    features,
    meta: pd.DataFrame,
    pairs: pd.DataFrame,
    hard_negatives: pd.DataFrame | None,
    out_dir: str | Path,
    *,
    logger: RunLogger = NullLogger(),
    resume: str | Path | None = None,
    stop_after_epochs: int | None = None,
    callbacks: TrainCallbacks = TrainCallbacks(),
) -> TrainResult:
    """Train heads on cached features; see the module docstring. Never calls a backbone.

    `resume`: a checkpoint of an interrupted run with the same config (operational fields
    excepted) continues it. `stop_after_epochs`: stop (with a checkpoint) once that many
    epochs are complete, as an interruption would.
    """
    with _torch_threads(cfg.num_threads):
        trainer = _Trainer(cfg, features, meta, pairs, hard_negatives, Path(out_dir), logger, callbacks)
        return trainer.run(resume, stop_after_epochs)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Trainer:
    def __init__(self, cfg, features, meta, pairs, hard_negatives, out_dir: Path, run_logger: RunLogger,
                 callbacks: TrainCallbacks):
        self.cfg, self.features, self.meta, self.out_dir, self.run_logger = cfg, features, meta, out_dir, run_logger
        self.callbacks = callbacks
        self.epoch_metric_keys = per_epoch_metric_keys(cfg.primary_metric)
        self.data: TrainingData = build_training_data(
            features, meta, pairs, hard_negatives, attribute_heads=cfg.attribute_heads
        )
        self.steps_per_epoch = cfg.steps_per_epoch or max(
            1, math.ceil((self.data.n_train_pairs or len(self.data.train_rows)) / cfg.batch_size)
        )
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.sampler = BalancedBatchSampler(
            meta, self.data.train_rows, cfg.batch_size, self.steps_per_epoch, cfg.sampler_config(), cfg.seed
        )
        self.n_partners = 1 if cfg.pair_positives else 0
        self.n_negatives = cfg.n_hard_negatives if cfg.hard_negatives else 0
        self.use_fusion_term = cfg.learn_fusion and cfg.w_fusion > 0 and self.n_partners > 0
        self.bank = (EmbeddingBank(self.data, cfg.bank_refresh_steps, with_text=self.use_fusion_term)
                     if cfg.bank_refresh_steps > 0 and (self.n_partners or self.n_negatives) else None)
        self.planner = StepPlanner(self.data, group_positives=cfg.use_group_positives, fusion=self.use_fusion_term,
                                   bank=self.bank)
        self.head_weights = cfg.head_weights()
        self.params: list[torch.nn.Parameter] = []  # the heads' parameters, in order (set by run)
        self.log_records: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None

    # ----------------------------------------------------------------------------- setup

    def _new_heads(self) -> ProtocolHeads:
        cfg = self.cfg
        dim = self.data.image.shape[1]
        return ProtocolHeads(HeadsConfig(
            in_dim=dim, out_dim=dim, head=cfg.head, hidden_dim=cfg.hidden_dim, dropout=cfg.dropout,
            attribute_heads=cfg.attribute_heads, attribute_classes=self.data.attribute_classes,
            learn_fusion=cfg.learn_fusion, init_fusion=cfg.fusion_weight,
        ))

    def _optimizer(self, heads: ProtocolHeads) -> torch.optim.Optimizer:
        trainable = [(n, p) for n, p in heads.named_parameters() if p.requires_grad]
        # Matrices decay; biases and the two scalars (temperature, fusion) do not, as in CLIP.
        groups = [
            {"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": self.cfg.weight_decay},
            {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.cfg.lr, fused=True)

    def _scheduler(self, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        warmup = int(self.cfg.warmup_fraction * self.total_steps)
        decay_steps = max(1, self.total_steps - warmup)
        floor = self.cfg.min_lr_ratio

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / decay_steps)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    # ----------------------------------------------------------------------------- run

    def run(self, resume: str | Path | None, stop_after_epochs: int | None) -> TrainResult:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        heads = self._new_heads()
        progress = _Progress()
        if resume is not None:
            state = self._load_resume_state(resume)
            heads = ProtocolHeads.from_checkpoint(state)
        self.params = list(heads.parameters())
        optimizer = self._optimizer(heads)
        scheduler = self._scheduler(optimizer)
        if resume is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if state["config"]["lr"] != cfg.lr:
                _override_lr(scheduler, cfg.lr)
            self.sampler.load_state_dict(state["sampler"])
            progress = _Progress(state["epoch"], state["step"], state["best_metric"], state["best_epoch"],
                                 dict(state["reference_metrics"]), list(state["history"]))
            self.log_records = self._previous_log(progress.epoch)
            self.last_checkpoint = Path(resume)
            restore_rng_state(state["rng"])
            log.info("resumed from %s after epoch %d (step %d)", resume, progress.epoch, progress.step)
        else:
            stale = sorted(p.name for p in checkpoint_dir(self.out_dir).glob("*.pt"))
            if stale:
                log.warning("%s already holds checkpoints %s: a new run overwrites them (pass resume= to continue)",
                            checkpoint_dir(self.out_dir), stale)
            progress.reference = self._validate(ProtocolHeads.identity(heads.config.in_dim, cfg.fusion_weight))
            self._check_primary_metric(progress.reference)
            self.run_logger.log_metrics({f"val.reference.{k}": v for k, v in progress.reference.items()}, step=0)
        self._write_config(heads)
        heads.train()

        final_metrics = progress.history[-1]["val"] if progress.history else {}
        stopped_early = False
        for epoch in range(progress.epoch + 1, cfg.epochs + 1):
            try:
                final_metrics = self._run_epoch(epoch, heads, optimizer, scheduler, progress)
            except TrainingDivergedError:
                self._write_log()  # keep the record of the steps that led there
                raise
            stopped_early = stop_after_epochs is not None and epoch >= stop_after_epochs and epoch < cfg.epochs
            if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs or stopped_early:
                self.last_checkpoint = save_checkpoint(
                    epoch_checkpoint(self.out_dir, epoch), self._state(heads, optimizer, scheduler, progress)
                )
                if self.callbacks.on_epoch_end is not None:
                    self.callbacks.on_epoch_end(epoch, heads, self.last_checkpoint,
                                                {f"val.{k}": v for k, v in self._epoch_metrics(final_metrics).items()})
            if stopped_early:
                log.info("stopping after epoch %d of %d as asked (stop_after_epochs)", epoch, cfg.epochs)
                break

        final_path = None
        if not stopped_early:
            final_path = save_checkpoint(checkpoint_dir(self.out_dir) / "final.pt",
                                         self._state(heads, optimizer, scheduler, progress))
            self.last_checkpoint = final_path
        self._write_log()
        if progress.history:  # the per-value breakdowns, once: the last epoch's, at its step
            last = progress.history[-1]
            self.run_logger.log_metrics({f"val.{k}": v for k, v in last["val"].items()
                                         if k not in self.epoch_metric_keys}, step=last["epoch"])
        best_path = checkpoint_dir(self.out_dir) / "best.pt"
        best_path = best_path if best_path.exists() else None
        for path in (final_path, best_path, self.out_dir / CONFIG_FILE, self.out_dir / LOG_FILE):
            if path is not None:
                self.run_logger.log_artifact(path, "checkpoints" if path.suffix == ".pt" else None)
        return TrainResult(
            heads=heads.eval(), best_metric=progress.best_metric, best_epoch=progress.best_epoch,
            final_metrics=final_metrics, reference_metrics=progress.reference, best_path=best_path,
            final_path=final_path, last_checkpoint=self.last_checkpoint, history=progress.history,
            stopped_early=stopped_early,
        )

    def _run_epoch(self, epoch, heads, optimizer, scheduler, progress: _Progress) -> dict[str, float]:
        cfg = self.cfg
        train_means, anchors, seconds = self._train_steps(epoch, heads, optimizer, scheduler, progress)
        val = self._validate(heads)
        val_deltas = deltas(val, progress.reference)
        primary = val[cfg.primary_metric]
        improved = progress.best_metric is None or primary > progress.best_metric
        if improved:
            progress.best_metric, progress.best_epoch = primary, epoch
        pairs_per_s = anchors.size / seconds if seconds > 0 else float("nan")
        progress.history.append({
            "epoch": epoch, "step": progress.step, "seconds": seconds, "pairs_per_s": pairs_per_s,
            "train": train_means, "val": val, "primary": primary,
            "delta_primary": val_deltas.get(f"delta.{cfg.primary_metric}", float("nan")),
        })
        progress.epoch = epoch
        if improved:
            save_checkpoint(checkpoint_dir(self.out_dir) / "best.pt", self._state(heads, optimizer, scheduler, progress))
        self._log_epoch(epoch, progress, train_means, val, val_deltas, pairs_per_s, anchors)
        log.info("epoch %d/%d: loss %.4f, %s %.4f (%+.2f pts vs zero-shot), %.0f pairs/s",
                 epoch, cfg.epochs, train_means.get("loss", float("nan")), cfg.primary_metric, primary,
                 progress.history[-1]["delta_primary"], pairs_per_s)
        return val

    def _train_steps(self, epoch, heads, optimizer, scheduler, progress: _Progress):
        """The epoch's optimizer steps -> (mean of each loss part, anchors [steps, B], seconds).

        The epoch's batches and draws are made up front (the same ones, from the same RNG
        streams, as one step at a time); each step keeps its loss parts as tensors, turned
        into floats only on logging steps and once at the end of the epoch.
        """
        cfg, sampler = self.cfg, self.sampler
        rng = np.random.default_rng([cfg.seed, epoch, STEP_RNG_STREAM])
        first = sampler.position  # steps of this epoch done before (a resumed epoch starts at 0)
        batches = sampler.epoch_batches(sampler.epoch)[first:]
        draws = draw_epoch(batches, self.data, self.n_partners, self.n_negatives, rng)
        records: list[_StepRecord] = []
        started = time.perf_counter()
        with tqdm(total=self.steps_per_epoch * cfg.batch_size, initial=first * cfg.batch_size,
                  unit="pair", desc=f"epoch {epoch}/{cfg.epochs}", leave=False) as bar:
            for i, anchors in enumerate(sampler):
                step_in_epoch = first + i + 1
                if self.bank is not None and self.bank.due(step_in_epoch - 1):
                    self.bank.refresh(heads)
                plan = self.planner.plan(anchors, draws.partners[i], draws.negatives[i])
                record = self._step(heads, optimizer, scheduler, plan, (epoch, step_in_epoch, progress.step + 1))
                progress.step += 1
                records.append(record)
                if progress.step % cfg.log_every == 0:
                    self._log_step(epoch, progress.step, _StepRecord.floats_of([record])[0], heads, scheduler)
                bar.update(len(anchors))
        means = _epoch_means(records)
        return means, batches[: len(records)], time.perf_counter() - started

    # ----------------------------------------------------------------------------- one step

    def _step(self, heads, optimizer, scheduler, plan: StepPlan, where: tuple[int, int, int]) -> "_StepRecord":
        """One optimizer step; raises TrainingDivergedError before touching a weight if anything is non-finite."""
        loss, record = self._loss(heads, plan)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # The global grad norm is computed with clipping off too, to catch non-finite gradients.
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = grad_norm(grads)
        # A non-finite loss part makes the loss non-finite: one host read checks them all.
        if not math.isfinite(loss.item()):
            raise _diverged(record.parts(), where, self.last_checkpoint)
        if not math.isfinite(norm.item()):
            raise _diverged({"grad_norm": norm.item()}, where, self.last_checkpoint)
        if self.cfg.grad_clip > 0:
            clip_grads_(grads, norm, self.cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        return record

    def _loss(self, heads: ProtocolHeads, plan: StepPlan) -> tuple[torch.Tensor, "_StepRecord"]:
        cfg, data, a = self.cfg, self.data, plan.anchors
        image_emb, attr_logits = heads.forward_image(data.image.index_select(0, a))
        text_emb = heads.forward_text(data.text.index_select(0, a))
        extra_image, partner_text = self._lookup(heads, plan)  # partners first

        contrastive, parts = contrastive_loss_targets(text_emb, image_emb, heads.scale(), plan.t2i, plan.i2t,
                                                      extra_image)
        parts["contrastive"] = contrastive.detach()
        attribute, accuracy = None, ()
        if attr_logits:
            attribute, attr_parts = attribute_loss(attr_logits, plan.labels, self.head_weights,
                                                   known_counts=plan.known, accuracy=False)
            parts.update(attr_parts, attribute=attribute.detach())
            # acc.<head> parts: from these logits, in numpy, once per epoch (or when logged).
            accuracy = tuple((name, logits.detach(), plan.label_arrays[name])
                             for name, logits in attr_logits.items() if plan.known[name])
        fusion = None
        if self.use_fusion_term and plan.n_partners:
            # Candidates: the batch items and the partners, fused; each query's own item is left out.
            n = plan.n_partners
            fusion = fusion_loss_targets(
                text_emb, torch.cat([image_emb, extra_image[:n]]), torch.cat([text_emb, partner_text]),
                heads.fusion(), heads.scale(), plan.fusion, plan.fusion_exclude,
            )
            parts["fusion"] = fusion.detach()
        loss = combined_loss(contrastive, attribute, fusion, w_contrastive=cfg.w_contrastive,
                             w_attribute=cfg.w_attribute, w_fusion=cfg.w_fusion)
        parts["loss"] = loss.detach()
        return loss, _StepRecord(tuple(parts), torch.stack(list(parts.values())), accuracy)

    def _lookup(self, heads: ProtocolHeads, plan: StepPlan):
        """Image (and partner text) embeddings of extra columns: no gradient, no dropout, like a catalog."""
        if self.bank is not None:
            return self.bank.take(plan.bank_extra, plan.bank_partners)
        heads.eval()
        with torch.no_grad():
            image = heads.forward_image(self.data.image[plan.extra_rows])[0]
            text = heads.forward_text(self.data.text[plan.partners]) if self.use_fusion_term else None
        heads.train()
        return image, text

    # ----------------------------------------------------------------------------- validation

    def _validate(self, heads: ProtocolHeads) -> dict[str, float]:
        cfg = self.cfg
        return validate(heads, self.features, self.meta, max_catalog=cfg.val_max_catalog,
                        max_queries=cfg.val_max_queries, seed=cfg.seed)

    def _check_primary_metric(self, metrics: dict[str, float]) -> None:
        if self.cfg.primary_metric not in metrics:
            close = sorted(k for k in metrics if k.count(".") == 2)[:12]
            raise ValueError(
                f"primary_metric {self.cfg.primary_metric!r} is not among the validation metrics (e.g. {close}); "
                "choose one of them, or check that the val split has items with that attribute known"
            )

    # ----------------------------------------------------------------------------- state

    def _state(self, heads, optimizer, scheduler, progress: _Progress) -> dict[str, Any]:
        return {
            "heads": heads.state_for_checkpoint(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": progress.epoch,
            "step": progress.step,
            "rng": capture_rng_state(),
            "sampler": self.sampler.state_dict(),
            "config": self.cfg.to_dict(),
            "backbone_fingerprint": self.features.backbone_fingerprint,
            "dataset_fingerprint": self.features.dataset_fingerprint,
            "best_metric": progress.best_metric,
            "best_epoch": progress.best_epoch,
            "reference_metrics": dict(progress.reference),
            "history": list(progress.history),
        }

    def _load_resume_state(self, path: str | Path) -> dict[str, Any]:
        state = load_checkpoint(path, expected_backbone_fingerprint=self.features.backbone_fingerprint)
        check_fingerprint(self.features.dataset_fingerprint, state["dataset_fingerprint"], f"the dataset of checkpoint {path}")
        saved = state["config"]
        changed = {k: (saved.get(k), v) for k, v in self.cfg.to_dict().items()
                   if k not in OPERATIONAL_FIELDS and saved.get(k) != v}
        for name in RESUME_OVERRIDES & changed.keys():
            old, new = changed.pop(name)
            log.warning("resuming with %s=%r instead of %r: the run will not match an uninterrupted one", name, new, old)
        if changed:
            listed = ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in changed.items())
            raise ValueError(
                f"cannot resume from {path}: the config differs in {listed}. Resume with the checkpoint's config "
                f"({self.out_dir / CONFIG_FILE}) or start a new run"
            )
        if state["heads"]["config"]["attribute_classes"] != self.data.attribute_classes:
            raise ValueError(f"cannot resume from {path}: its attribute classes differ from this data's")
        return state

    # ----------------------------------------------------------------------------- files and logging

    def _write_config(self, heads: ProtocolHeads) -> None:
        write_json(self.out_dir / CONFIG_FILE, {
            "train": self.cfg.to_dict(),
            "heads": asdict(heads.config),
            "backbone_fingerprint": self.features.backbone_fingerprint,
            "dataset_fingerprint": self.features.dataset_fingerprint,
            "n_train_pairs": self.data.n_train_pairs,
            "n_train_anchors": len(self.data.train_rows),
            "steps_per_epoch": self.steps_per_epoch,
            "n_trainable_parameters": heads.n_trainable_parameters(),
        })

    def _epoch_metrics(self, val: dict[str, float]) -> dict[str, float]:
        """The validation figures worth a point every epoch: headline metrics and the locked targets."""
        return {k: v for k, v in val.items() if k in self.epoch_metric_keys}

    def _previous_log(self, last_epoch: int) -> list[dict[str, Any]]:
        """Log records of the epochs the resume checkpoint covers (later ones were lost with the run)."""
        path = self.out_dir / LOG_FILE
        if not path.exists():
            return []
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in records if r.get("epoch", 0) <= last_epoch]

    def _write_log(self) -> None:
        with atomic_path(self.out_dir / LOG_FILE) as tmp:
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.log_records))

    def _log_step(self, epoch, step, values, heads, scheduler) -> None:
        metrics = {f"train.{k}": v for k, v in values.items()}
        metrics.update({"train.lr": scheduler.get_last_lr()[0], "train.logit_scale": float(heads.scale().detach()),
                        "train.fusion_weight": heads.fusion_weight})
        self.run_logger.log_metrics(metrics, step=step)
        self.log_records.append({"kind": "step", "epoch": epoch, "step": step, **metrics})

    def _log_epoch(self, epoch, progress, train_means, val, val_deltas, pairs_per_s, anchors) -> None:
        metrics = {f"train.epoch.{k}": v for k, v in train_means.items()}
        metrics["train.pairs_per_s"] = pairs_per_s
        metrics.update({f"val.{k}": v for k, v in self._epoch_metrics(val).items()})
        metrics.update({f"val.{k}": v for k, v in val_deltas.items()
                        if k.removeprefix("delta.") in self.epoch_metric_keys})
        self.run_logger.log_metrics(metrics, step=epoch)
        mix = self.sampler.mix_table(anchors)
        self.run_logger.log_table(mix.assign(epoch=epoch), f"sampler/mix_epoch_{epoch:03d}.json")
        self.log_records.append({
            "kind": "epoch", "epoch": epoch, "step": progress.step, "best_epoch": progress.best_epoch,
            "best_metric": progress.best_metric, **metrics,
        })
        self._write_log()


def per_epoch_metric_keys(primary_metric: str) -> frozenset[str]:
    """Validation keys logged every epoch: each mode's overall figures (`t2i.neckline.p10`,
    `t2i.recall10`), the primary metric and the locked targets (`t2i.category.p10.cardigans`).
    The per-value breakdowns (every other `<mode>.<attr>.<k>.<value>`) are logged once, at the end."""
    from protocol.retrieval.metrics import ATTRIBUTES, MODES
    from protocol.scoreboard import load_targets

    overall = {f"{mode}.{attr}.{k}" for mode in MODES for attr in ATTRIBUTES for k in ("p1", "p5", "p10", "map10")}
    overall |= {f"{mode}.{k}" for mode in MODES for k in ("recall1", "recall5", "recall10", "mrr10", "n_queries")}
    return frozenset(overall | {primary_metric} | {t.metric for t in load_targets().targets})


def _override_lr(scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float) -> None:
    """Make a restored scheduler continue its schedule from a new base lr."""
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
    for group, factor in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(scheduler.last_epoch)


def grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The global 2-norm of `clip_grad_norm_(..., foreach=True)`, bit for bit (norms of each, then of those)."""
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)


def clip_grads_(grads: list[torch.Tensor], norm: torch.Tensor, max_norm: float) -> None:
    """What `clip_grad_norm_` does to the gradients given their `grad_norm`: scale them by
    min(1, max_norm / (norm + 1e-6)); skipped where that is 1, since multiplying by 1 changes nothing."""
    coef = max_norm / (norm + 1e-6)
    if coef.item() < 1.0:
        torch._foreach_mul_(grads, coef)


class _StepRecord:
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
    def floats_of(records: list["_StepRecord"]) -> list[dict[str, float]]:
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


def _epoch_means(records: list[_StepRecord]) -> dict[str, float]:
    """Mean of each part over the epoch's steps (a part missing from a step counts 0 there), summed in step order."""
    sums: dict[str, float] = {}
    for values in _StepRecord.floats_of(records):
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
    n_steps = max(1, len(records))
    return {k: v / n_steps for k, v in sums.items()}


def _diverged(bad: dict[str, float], where: tuple[int, int, int],
              last_checkpoint: Path | None) -> TrainingDivergedError:
    epoch, step_in_epoch, global_step = where
    bad = {k: v for k, v in bad.items() if not math.isfinite(v)}
    return TrainingDivergedError(
        f"non-finite training value at epoch {epoch}, step {step_in_epoch} of the epoch (global step "
        f"{global_step}): {bad}. The weights were not updated with it; the last good checkpoint is "
        f"{last_checkpoint or 'none (no checkpoint written yet)'}. Lower lr, or check the features for "
        "extreme values."
    )
