"""The optimiser side of a training step: AdamW groups, the warmup-cosine schedule, gradient norm and clipping.

`grad_norm` and `clip_grads_` split `clip_grad_norm_` in two so that the step can check the
norm for a non-finite value before any weight moves (`diverged_error` says where and what to
do), and skip the multiply when nothing clips.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


def make_optimizer(heads: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    trainable = [(n, p) for n, p in heads.named_parameters() if p.requires_grad]
    # Matrices decay; biases and the two scalars (temperature, fusion) do not, as in CLIP.
    groups = [
        {"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, fused=True)


def make_scheduler(optimizer, total_steps: int, warmup_fraction: float,
                   min_lr_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 over warmup_fraction of the steps, then cosine down to min_lr_ratio * lr."""
    warmup = int(warmup_fraction * total_steps)
    decay_steps = max(1, total_steps - warmup)
    floor = min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / decay_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def override_lr(scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float) -> None:
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


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient became NaN/inf."""


def diverged_error(bad: dict[str, float], where: tuple[int, int, int],
              last_checkpoint: Path | None) -> TrainingDivergedError:
    epoch, step_in_epoch, global_step = where
    bad = {k: v for k, v in bad.items() if not math.isfinite(v)}
    return TrainingDivergedError(
        f"non-finite training value at epoch {epoch}, step {step_in_epoch} of the epoch (global step "
        f"{global_step}): {bad}. The weights were not updated with it; the last good checkpoint is "
        f"{last_checkpoint or 'none (no checkpoint written yet)'}. Lower lr, or check the features for "
        "extreme values."
    )
