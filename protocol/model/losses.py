"""Training losses: multi-positive InfoNCE, fused-embedding InfoNCE, attribute cross-entropy.

All functions are pure: tensors in, a scalar tensor (and detached parts for logging) out.

Targets are masks, not indices: a text's positives are its own image plus every column
that `positive_mask` marks (images of the same product, a paired positive), and the
target distribution spreads evenly over them. So items of one product are never pushed
apart as negatives, and extra columns (mined hard negatives) join the softmax as negatives
unless they happen to be positives of that row.

The training loop builds its masks in numpy and hands the losses `SoftTargets`
(the targets `info_nce` would derive from a mask, precomputed), which spares it a dozen
small tensor ops and a host sync per loss on every step; `info_nce_targets`,
`contrastive_loss_targets` and `fusion_loss_targets` compute exactly what `info_nce`,
`contrastive_loss` and `fusion_loss` compute from the corresponding masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # attribute label of an item whose attribute is unknown


def positive_mask(
    row_items: torch.Tensor,
    col_items: torch.Tensor,
    row_groups: torch.Tensor | None = None,
    col_groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """[R, C] bool: same item, or (when groups are given) same product group."""
    mask = row_items[:, None] == col_items[None, :]
    if row_groups is not None and col_groups is not None:
        mask |= row_groups[:, None] == col_groups[None, :]
    return mask


def info_nce(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    positives: torch.Tensor,
    scale: torch.Tensor | float,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """One-direction InfoNCE with soft multi-positive targets.

    queries [R, D], candidates [C, D] (L2-normalised), positives [R, C] bool, exclude [R, C]
    bool (columns left out of a row's softmax). Each row's target is uniform over its
    positives; rows without any positive are skipped; 0 when no row has one.
    """
    logits = scale * queries @ candidates.T
    if exclude is not None:
        # A finite floor rather than -inf: 0 * -inf would make the cross-entropy NaN.
        logits = logits.masked_fill(exclude, torch.finfo(logits.dtype).min)
        positives = positives & ~exclude
    counts = positives.sum(dim=1)
    keep = counts > 0
    if not bool(keep.all()):
        if not bool(keep.any()):
            return logits.sum() * 0.0
        logits, positives, counts = logits[keep], positives[keep], counts[keep]
    return F.cross_entropy(logits, positives.to(logits.dtype) / counts[:, None].to(logits.dtype))


@dataclass(frozen=True)
class SoftTargets:
    """What `info_nce` derives from a positives mask: the kept rows and their target distributions."""

    targets: torch.Tensor | None  # [R', C] float32, uniform over each kept row's positives; None: no row kept
    rows: torch.Tensor | None  # [R'] indices of the kept rows (those with a positive); None: every row

    @classmethod
    def from_mask(cls, positives: np.ndarray) -> "SoftTargets":
        """positives [R, C] bool (excluded columns already removed), as `info_nce` uses it."""
        counts = positives.sum(axis=1)
        keep = counts > 0
        if keep.all():
            rows = None
        elif not keep.any():
            return cls(None, None)
        else:
            rows = np.flatnonzero(keep)
            positives, counts = positives[rows], counts[rows]
            rows = torch.from_numpy(rows)
        # float32 / float32, exactly as info_nce divides (IEEE division: the same bits).
        targets = positives.astype(np.float32) / counts[:, None].astype(np.float32)
        return cls(torch.from_numpy(targets), rows)


def info_nce_targets(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    targets: SoftTargets,
    scale: torch.Tensor | float,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """`info_nce` with its targets precomputed: `SoftTargets.from_mask(positives & ~exclude)`."""
    logits = scale * queries @ candidates.T
    if exclude is not None:
        logits = logits.masked_fill(exclude, torch.finfo(logits.dtype).min)
    if targets.targets is None:
        return logits.sum() * 0.0
    if targets.rows is not None:
        logits = logits[targets.rows]
    return F.cross_entropy(logits, targets.targets)


def contrastive_loss(
    text_emb: torch.Tensor,
    image_emb: torch.Tensor,
    scale: torch.Tensor | float,
    positives: torch.Tensor,
    extra_image: torch.Tensor | None = None,
    extra_positives: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Symmetric InfoNCE over a batch of B items; extra image columns join the text->image side.

    positives [B, B] (row text i, column image j); extra_image [M, D] with extra_positives
    [B, M] (all False for pure hard negatives). Returns (mean of both directions, parts).
    """
    columns, column_positives = image_emb, positives
    if extra_image is not None and len(extra_image):
        if extra_positives is None:
            extra_positives = torch.zeros(len(text_emb), len(extra_image), dtype=torch.bool)
        columns = torch.cat([image_emb, extra_image])
        column_positives = torch.cat([positives, extra_positives], dim=1)
    t2i = info_nce(text_emb, columns, column_positives, scale)
    i2t = info_nce(image_emb, text_emb, positives.T, scale)
    loss = (t2i + i2t) / 2
    return loss, {"t2i": t2i.detach(), "i2t": i2t.detach()}


def contrastive_loss_targets(
    text_emb: torch.Tensor,
    image_emb: torch.Tensor,
    scale: torch.Tensor | float,
    t2i_targets: SoftTargets,
    i2t_targets: SoftTargets,
    extra_image: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`contrastive_loss` with precomputed targets: t2i from the [B, B+M] column positives
    (`positives` beside `extra_positives`), i2t from `positives.T`."""
    columns = image_emb
    if extra_image is not None and len(extra_image):
        columns = torch.cat([image_emb, extra_image])
    t2i = info_nce_targets(text_emb, columns, t2i_targets, scale)
    i2t = info_nce_targets(image_emb, text_emb, i2t_targets, scale)
    loss = (t2i + i2t) / 2
    return loss, {"t2i": t2i.detach(), "i2t": i2t.detach()}


def fused(image_emb: torch.Tensor, text_emb: torch.Tensor, weight: torch.Tensor | float) -> torch.Tensor:
    """The t2f catalog embedding normalize(w*img + (1-w)*txt), as retrieval builds it."""
    return F.normalize(weight * image_emb + (1 - weight) * text_emb, dim=-1)


def fusion_loss(
    text_emb: torch.Tensor,
    candidate_image: torch.Tensor,
    candidate_text: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor | float,
    positives: torch.Tensor,
    self_mask: torch.Tensor,
) -> torch.Tensor:
    """text -> fused-catalog InfoNCE; `self_mask` [R, C] marks each query's own item.

    A catalog never holds the query itself, and its own text would match perfectly and
    drive the weight to 0, so own-item columns are excluded: rows learn from their other
    positives (same product, a paired positive) only.
    """
    return info_nce(text_emb, fused(candidate_image, candidate_text, weight), positives, scale, exclude=self_mask)


def fusion_loss_targets(
    text_emb: torch.Tensor,
    candidate_image: torch.Tensor,
    candidate_text: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor | float,
    targets: SoftTargets,
    self_mask: torch.Tensor,
) -> torch.Tensor:
    """`fusion_loss` with precomputed targets: `SoftTargets.from_mask(positives & ~self_mask)`."""
    return info_nce_targets(text_emb, fused(candidate_image, candidate_text, weight), targets, scale,
                            exclude=self_mask)


def attribute_loss(
    logits: Mapping[str, torch.Tensor],
    labels: Mapping[str, torch.Tensor],
    head_weights: Mapping[str, float],
    *,
    known_counts: Mapping[str, int] | None = None,
    accuracy: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted mean over heads of cross-entropy on the known labels (IGNORE_INDEX = unknown).

    Heads without a known label in the batch are left out of the mean; a head missing
    from `head_weights` weighs 1. Parts: "attr.<head>" (cross-entropy) and "acc.<head>".
    `known_counts` (head -> number of known labels, when the caller has counted them)
    spares a host sync per head; `accuracy=False` leaves the "acc.<head>" parts out.
    """
    total, weight_sum, parts = None, 0.0, {}
    for name, head_logits in logits.items():
        target = labels[name]
        if known_counts is not None:
            if not known_counts[name]:
                continue
        elif not bool((target != IGNORE_INDEX).any()):
            continue
        ce = F.cross_entropy(head_logits, target, ignore_index=IGNORE_INDEX)
        weight = float(head_weights.get(name, 1.0))
        total = weight * ce if total is None else total + weight * ce
        weight_sum += weight
        parts[f"attr.{name}"] = ce.detach()
        if accuracy:
            known = target != IGNORE_INDEX
            parts[f"acc.{name}"] = (head_logits.detach().argmax(dim=1)[known] == target[known]).float().mean()
    if total is None or weight_sum == 0:
        zero = sum(l.sum() for l in logits.values()) * 0.0 if logits else torch.zeros(())
        return zero, parts
    return total / weight_sum, parts


def attribute_accuracy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The "acc.<head>" part of `attribute_loss` for many batches at once, in numpy.

    logits [S, B, C], labels [S, B] (IGNORE_INDEX = unknown; every batch has a known label)
    -> [S] float32: share of each batch's known labels that the argmax predicts, the same
    float32 value as the torch mean (count / known, correctly rounded).
    """
    known = labels != IGNORE_INDEX
    correct = ((logits.argmax(axis=-1) == labels) & known).sum(axis=-1)
    return correct.astype(np.float32) / known.sum(axis=-1).astype(np.float32)


def combined_loss(
    contrastive: torch.Tensor,
    attribute: torch.Tensor | None = None,
    fusion: torch.Tensor | None = None,
    *,
    w_contrastive: float,
    w_attribute: float,
    w_fusion: float,
) -> torch.Tensor:
    """w_contrastive * contrastive + w_attribute * attribute + w_fusion * fusion (absent terms count 0)."""
    loss = w_contrastive * contrastive
    if attribute is not None:
        loss = loss + w_attribute * attribute
    if fusion is not None:
        loss = loss + w_fusion * fusion
    return loss
