"""Training losses: multi-positive InfoNCE, fused-embedding InfoNCE, attribute cross-entropy.

All functions are pure: tensors in, a scalar tensor (and detached parts for logging) out.

Targets are graded relevance weights, not indices: a text's targets spread over its own
image and every column the training step marks relevant (images of the same product, a
paired positive), in proportion to each column's weight (own image and same product
highest, weaker pair types lower, a positive that contradicts the anchor on a known
attribute lower still). So items of one product are never pushed apart as negatives, and
extra columns (mined, attribute-targeted and easy negatives) join the softmax as negatives.
The training loop builds the weights in numpy and hands the losses `SoftTargets`, which
spares it a dozen small tensor ops and a host sync per loss on every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # attribute label of an item whose attribute is unknown


@dataclass(frozen=True)
class SoftTargets:
    """The soft InfoNCE targets of a batch: per kept row, a distribution over the columns.

    Built in numpy by the training loop, once per step, from graded relevance weights; the
    losses then run only the tensor ops that carry gradients.
    """

    targets: torch.Tensor | None  # [R', C] float32, each kept row's weights normalised to sum 1; None: no row kept
    rows: torch.Tensor | None  # [R'] indices of the kept rows (those with a positive weight); None: every row

    @classmethod
    def from_weights(cls, weights: np.ndarray) -> "SoftTargets":
        """weights [R, C] >= 0 (bool: every positive weighs 1), excluded columns already at 0.

        A row's target is its weights over their sum, so a column of weight 0.5 beside the
        row's own image (1.0) gets a third of the target mass; rows without any positive
        weight are left out of the loss.
        """
        weights = np.asarray(weights, dtype=np.float32)
        if (weights < 0).any() or not np.isfinite(weights).all():
            raise ValueError("soft target weights must be finite and >= 0")
        sums = weights.sum(axis=1)
        keep = sums > 0
        if keep.all():
            rows = None
        elif not keep.any():
            return cls(None, None)
        else:
            rows = np.flatnonzero(keep)
            weights, sums = weights[rows], sums[rows]
            rows = torch.from_numpy(rows)
        return cls(torch.from_numpy(weights / sums[:, None]), rows)


def info_nce(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    targets: SoftTargets,
    scale: torch.Tensor | float,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """One-direction InfoNCE with soft targets.

    queries [R, D], candidates [C, D] (L2-normalised), targets over the C columns, exclude
    [R, C] bool (columns left out of a row's softmax; their target weight must be 0).
    Rows `targets` left out are skipped; 0 when no row is kept.
    """
    logits = scale * queries @ candidates.T
    if exclude is not None:
        # A finite floor rather than -inf: 0 * -inf would make the cross-entropy NaN.
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
    t2i_targets: SoftTargets,
    i2t_targets: SoftTargets,
    extra_image: torch.Tensor | None = None,
    extra_text: torch.Tensor | None = None,
    *,
    t2i_exclude: torch.Tensor | None = None,
    i2t_exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Symmetric InfoNCE over a batch of B items and M extra items (partners, negatives).

    text -> [batch images | extra images] with t2i_targets [B, B + M]; image -> [batch texts
    | extra texts] with i2t_targets [B, B + M'] (extra_text None: the batch texts alone,
    targets [B, B]). Relevance is symmetric (own item, same product, a paired positive), so
    both directions can share one weight matrix. `t2i_exclude` / `i2t_exclude` (bool, shaped as
    the targets) leave columns out of a row's softmax: neither positive nor negative.
    Returns (mean of both directions, parts).
    """
    image_columns, text_columns = image_emb, text_emb
    if extra_image is not None and len(extra_image):
        image_columns = torch.cat([image_emb, extra_image])
    if extra_text is not None and len(extra_text):
        text_columns = torch.cat([text_emb, extra_text])
    t2i = info_nce(text_emb, image_columns, t2i_targets, scale, exclude=t2i_exclude)
    i2t = info_nce(image_emb, text_columns, i2t_targets, scale, exclude=i2t_exclude)
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
    targets: SoftTargets,
    self_mask: torch.Tensor,
) -> torch.Tensor:
    """text -> fused-catalog InfoNCE; `self_mask` [R, C] marks each query's own item.

    A catalog never holds the query itself, and its own text would match perfectly and
    drive the weight to 0, so own-item columns are excluded (and must weigh 0 in
    `targets`): rows learn from their other positives (same product, a paired positive) only.
    """
    return info_nce(text_emb, fused(candidate_image, candidate_text, weight), targets, scale, exclude=self_mask)


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
