"""The training loop: heads on cached features, with checkpoints, exact resume and validation.

One step takes `batch_size` anchors from the balanced sampler and, for each, a partner and
`n_hard_negatives` negatives drawn per pair type in the proportions of pairs.parquet
(protocol.training.batches); the loss terms are protocol.training.step's. An epoch is
ceil(train pairs / batch_size) steps, each step counting one pair per anchor, so
pairs x epochs is the unit of work.

Everything random is seeded: the sampler and the per-step draws from RNGs derived from
(seed, epoch), dropout from torch's RNG, which checkpoints save and resume restores. A run
resumed from an epoch checkpoint therefore ends with the same weights and metrics as an
uninterrupted one. A non-finite loss or gradient stops the run with an error naming the
step and the loss part, before any weight is touched; earlier checkpoints stay as they were.

Library code: no MLflow here. Metrics, tables and artifacts go to the `RunLogger`.
"""

from __future__ import annotations

import contextlib
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
from protocol.io import write_json
from protocol.model.protocol_model import HeadsConfig, ProtocolHeads
from protocol.model.sampler import BalancedBatchSampler
from protocol.training.batches import EmbeddingBank, StepPlan, StepPlanner, draw_epoch
from protocol.training.data import TrainingData, build_training_data
from protocol.training.checkpoint import (
    capture_rng_state, check_resumable, checkpoint_dir, epoch_checkpoint, load_checkpoint, restore_rng_state,
    save_checkpoint,
)
from protocol.training.config import TrainConfig
from protocol.training.optim import (
    TrainingDivergedError, clip_grads_, diverged_error, grad_norm, make_optimizer, make_scheduler, override_lr,
)
from protocol.training.reporting import LOG_FILE, StepRecord, TrainLog, epoch_means
from protocol.training.step import StepLoss
from protocol.training.validation import ATTRIBUTE_WEIGHT, deltas, validate

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
STEP_RNG_STREAM = 1  # the per-step draws use RNG (seed, epoch, 1); the sampler uses (seed, epoch)


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
    groups: pd.DataFrame | None = None,
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
        trainer = _Trainer(cfg, features, meta, pairs, hard_negatives, groups, Path(out_dir), logger, callbacks)
        return trainer.run(resume, stop_after_epochs)


def out_of_patience(epoch: int, best_epoch: int | None, patience: int, epochs: int) -> bool:
    """Whether training stops after `epoch`: `patience` epochs (0: never) since the best one, before the last."""
    return patience > 0 and best_epoch is not None and epoch - best_epoch >= patience and epoch < epochs


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
    def __init__(self, cfg, features, meta, pairs, hard_negatives, groups, out_dir: Path, run_logger: RunLogger,
                 callbacks: TrainCallbacks):
        self.cfg, self.features, self.meta, self.out_dir, self.run_logger = cfg, features, meta, out_dir, run_logger
        self.callbacks = callbacks
        self.log = TrainLog(run_logger, out_dir / LOG_FILE, cfg.primary_metric)
        self.data: TrainingData = build_training_data(
            features, meta, pairs, hard_negatives if cfg.hard_negatives else None,
            groups if cfg.use_group_positives else None,
            attribute_heads=cfg.attribute_heads, min_group_confidence=cfg.min_group_confidence,
            category_head=cfg.category_head,
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
        # which pair type each anchor's partner and negatives come from, so the types arrive in the file's mix
        self.expected_shares = {
            kind: pool.fit(self.sampler.rows, self.sampler.probs)
            for kind, pool, drawn in (("partner", self.data.partners, self.n_partners),
                                      ("negative", self.data.negatives, self.n_negatives)) if drawn
        }
        self.bank = (EmbeddingBank(self.data, cfg.bank_refresh_steps)
                     if cfg.bank_refresh_steps > 0 and (self.n_partners or self.n_negatives) else None)
        self.planner = StepPlanner(self.data, relevance=cfg.relevance(), group_positives=cfg.use_group_positives,
                                   fusion=self.use_fusion_term, text_negatives=cfg.image_to_text_negatives,
                                   bank=self.bank, neutral_compatible=cfg.neutral_compatible)
        self.step_loss = StepLoss(self.data, self.bank, head_weights=cfg.head_weights(),
                                  weights=(cfg.w_contrastive, cfg.w_attribute, cfg.w_fusion),
                                  image_gradients=cfg.image_side_pairs)
        if cfg.use_group_positives and groups is None:
            log.warning("use_group_positives is on but no groups.json was given: no in-batch group positives "
                        "(pass the groups stage's groups.json)")
        self.params: list[torch.nn.Parameter] = []  # the heads' parameters, in order (set by run)
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
        optimizer = make_optimizer(heads, cfg.lr, cfg.weight_decay)
        scheduler = make_scheduler(optimizer, self.total_steps, cfg.warmup_fraction, cfg.min_lr_ratio)
        if resume is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if state["config"]["lr"] != cfg.lr:
                override_lr(scheduler, cfg.lr)
            self.sampler.load_state_dict(state["sampler"])
            progress = _Progress(state["epoch"], state["step"], state["best_metric"], state["best_epoch"],
                                 dict(state["reference_metrics"]), list(state["history"]))
            self.log.resume(progress.epoch)
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
                self.log.write()  # keep the record of the steps that led there
                raise
            stopped_early = stop_after_epochs is not None and epoch >= stop_after_epochs and epoch < cfg.epochs
            patience_spent = out_of_patience(epoch, progress.best_epoch, cfg.patience, cfg.epochs)
            if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs or stopped_early or patience_spent:
                self.last_checkpoint = save_checkpoint(
                    epoch_checkpoint(self.out_dir, epoch), self._state(heads, optimizer, scheduler, progress)
                )
                if self.callbacks.on_epoch_end is not None:
                    self.callbacks.on_epoch_end(epoch, heads, self.last_checkpoint,
                                                {f"val.{k}": v for k, v in self.log.epoch_metrics(final_metrics).items()})
            if stopped_early:
                log.info("stopping after epoch %d of %d as asked (stop_after_epochs)", epoch, cfg.epochs)
                break
            if patience_spent:
                log.info("early stop after epoch %d of %d: %s has not improved on epoch %d's %.4f for %d epochs "
                         "(patience)", epoch, cfg.epochs, cfg.primary_metric, progress.best_epoch,
                         progress.best_metric, cfg.patience)
                break

        final_path = None
        if not stopped_early:
            final_path = save_checkpoint(checkpoint_dir(self.out_dir) / "final.pt",
                                         self._state(heads, optimizer, scheduler, progress))
            self.last_checkpoint = final_path
        self.log.write()
        self.log.breakdowns(progress.history)
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
        self.log.epoch(epoch, progress.step, progress.best_epoch, progress.best_metric,
                       train_means, val, val_deltas, pairs_per_s, self.sampler.mix_table(anchors))
        log.info("epoch %d/%d: loss %.4f, %s %.4f (%+.2f pts vs zero-shot), %.0f pairs/s",
                 epoch, cfg.epochs, train_means.get("loss", float("nan")), cfg.primary_metric, primary,
                 progress.history[-1]["delta_primary"], pairs_per_s)
        return val

    def _train_steps(self, epoch, heads, optimizer, scheduler, progress: _Progress):
        """The epoch's optimizer steps -> (mean of each loss part, anchors [steps, B], seconds).

        The epoch's batches and draws are made up front, whole, from RNGs of (seed, epoch), so a
        resumed epoch takes the draws an uninterrupted one would; each step keeps its loss parts
        as tensors, turned into floats only on logging steps and once at the end of the epoch.
        """
        cfg, sampler = self.cfg, self.sampler
        rng = np.random.default_rng([cfg.seed, epoch, STEP_RNG_STREAM])
        first = sampler.position  # steps of this epoch done before (a resumed epoch starts at 0)
        batches = sampler.epoch_batches(sampler.epoch)
        draws = draw_epoch(batches, self.data, self.n_partners, self.n_negatives, rng)
        records: list[StepRecord] = []
        started = time.perf_counter()
        with tqdm(total=self.steps_per_epoch * cfg.batch_size, initial=first * cfg.batch_size,
                  unit="pair", desc=f"epoch {epoch}/{cfg.epochs}", leave=False) as bar:
            for i, anchors in enumerate(sampler, start=first):
                step_in_epoch = i + 1
                if self.bank is not None and self.bank.due(i):
                    self.bank.refresh(heads)
                plan = self.planner.plan(anchors, draws.partners[i], draws.partner_types[i], draws.negatives[i],
                                         draws.negative_types[i])
                record = self._step(heads, optimizer, scheduler, plan, (epoch, step_in_epoch, progress.step + 1))
                progress.step += 1
                records.append(record)
                if progress.step % cfg.log_every == 0:
                    self.log.step(epoch, progress.step, StepRecord.floats_of([record])[0], {
                        "lr": scheduler.get_last_lr()[0], "logit_scale": float(heads.scale().detach()),
                        "fusion_weight": heads.fusion_weight})
                bar.update(len(anchors))
        means = epoch_means(records)
        done = slice(first, first + len(records))
        means.update({f"partner_share.{t}": v for t, v in
                      draws.shares(self.data.partners.types, draws.partner_types[done]).items()})
        means.update({f"negative_share.{t}": v for t, v in
                      draws.shares(self.data.negatives.types, draws.negative_types[done]).items()})
        return means, batches[done], time.perf_counter() - started

    # ----------------------------------------------------------------------------- one step

    def _step(self, heads, optimizer, scheduler, plan: StepPlan, where: tuple[int, int, int]) -> "StepRecord":
        """One optimizer step; raises TrainingDivergedError before touching a weight if anything is non-finite."""
        loss, record = self.step_loss(heads, plan)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # The global grad norm is computed with clipping off too, to catch non-finite gradients.
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = grad_norm(grads)
        # A non-finite loss part makes the loss non-finite: one host read checks them all.
        if not math.isfinite(loss.item()):
            raise diverged_error(record.parts(), where, self.last_checkpoint)
        if not math.isfinite(norm.item()):
            raise diverged_error({"grad_norm": norm.item()}, where, self.last_checkpoint)
        if self.cfg.grad_clip > 0:
            clip_grads_(grads, norm, self.cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        return record

    # ----------------------------------------------------------------------------- validation

    def _validate(self, heads: ProtocolHeads) -> dict[str, float]:
        """Validation metrics; with attribute_scoring, at the late-fusion weight fitted on them, which the
        heads (and so their checkpoint) then carry."""
        cfg = self.cfg
        metrics = validate(heads, self.features, self.meta, max_catalog=cfg.val_max_catalog,
                           max_queries=cfg.val_max_queries, seed=cfg.seed,
                           fit_attribute_weight=cfg.attribute_scoring, catalog_split=cfg.val_catalog)
        heads.config.attribute_weight = metrics.get(ATTRIBUTE_WEIGHT, heads.config.attribute_weight)
        return metrics

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
        check_resumable(state, path, self.cfg.to_dict(), dataset_fingerprint=self.features.dataset_fingerprint,
                        attribute_classes=self.data.attribute_classes, config_file=self.out_dir / CONFIG_FILE)
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
            "pair_mix": {kind: {"file": dict(zip(pool.types, pool.target.tolist())),
                                "expected": self.expected_shares[kind]}
                         for kind, pool in (("partner", self.data.partners), ("negative", self.data.negatives))
                         if kind in self.expected_shares},
            "n_trainable_parameters": heads.n_trainable_parameters(),
        })
