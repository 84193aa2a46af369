"""What each step draws and what its losses consume: partners, negatives and graded soft targets.

Per epoch, `draw_epoch` makes every step's draws at once: for each anchor (from the balanced
sampler) one partner, from the pair type `TypedPool.fit` chose for it, so the partners'
types arrive in the proportions of pairs.parquet; and `n_negatives` negatives the same way
from the negative types (mined, attribute-targeted, easy).

Per step, `StepPlanner` turns the draws into a `StepPlan`, in numpy, so the step itself runs
only the tensor ops that carry gradients. The batch's columns are its anchors, then the
partners, then the negatives: text -> their images, and, with image_to_text_negatives,
image -> their texts too (a confuser's text a negative for the anchor's image; otherwise the
image side ranks the batch's texts). The soft targets are graded relevance (`Relevance`): the
item's own image weighs 1, an image of the same (confident) product group and a partner
weigh their type's relevance, and a partner that contradicts its anchor on an attribute both
know (neckline, material, pattern, sleeve) has its weight multiplied by
`contradiction_factor`, so a same-category-and-material
positive with another neckline never teaches that the necklines match. With
`neutral_compatible`, a column of the anchor's category that contradicts none of its known
attributes and is no positive of it is left out of its softmax (`StepPlan.neutral`): nothing
says it does not fit the anchor's text, so it is not pushed away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from protocol.model.losses import IGNORE_INDEX, SoftTargets
from protocol.training.data import PARTNER_TYPES, TrainingData


@dataclass(frozen=True)
class Relevance:
    """Soft-target weight of each kind of positive, relative to the item's own image (1).

    Why these defaults: docs/ARCHITECTURE.md, "Training defaults".
    """

    strong_group: float = 1.0  # another image of the same product (pairs and in-batch group positives)
    strong_attribute: float = 0.75  # same category and every grounded signature attribute
    medium: float = 0.5  # same category and material
    weak: float = 0.25  # same category and one design tag
    contradiction_factor: float = 0.5  # x when a positive contradicts its anchor on a known attribute

    def __post_init__(self) -> None:
        for name in ("strong_group", "strong_attribute", "medium", "weak", "contradiction_factor"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1):
                field = name if name == "contradiction_factor" else f"relevance_{name}"  # as TrainConfig names it
                raise ValueError(f"{field} must be in [0, 1] (a weight relative to the item's own image), got {value!r}")

    def partner_weights(self) -> np.ndarray:
        """[len(PARTNER_TYPES)] weight of a partner of each type, in PARTNER_TYPES order."""
        return np.array([getattr(self, t) for t in PARTNER_TYPES], dtype=np.float32)


UNIFORM_RELEVANCE = Relevance(1.0, 1.0, 1.0, 1.0, contradiction_factor=1.0)  # plain InfoNCE: every positive alike


@dataclass
class EpochDraws:
    """Every step's draws of an epoch; -1 where an anchor has none."""

    partners: np.ndarray  # [S, B] the partner row of each anchor
    partner_types: np.ndarray  # [S, B] its index in data.partners.types
    negatives: np.ndarray  # [S, B * n_negatives] negative rows, anchor by anchor
    negative_types: np.ndarray  # [S, B * n_negatives] index in data.negatives.types

    @staticmethod
    def shares(types: tuple[str, ...], drawn: np.ndarray) -> dict[str, float]:
        """Share of each type among the drawn entries of `drawn` (partner_types or negative_types)."""
        kinds = drawn[drawn >= 0]
        counts = np.bincount(kinds, minlength=len(types))
        return dict(zip(types, (counts / max(1, len(kinds))).tolist()))


def draw_epoch(anchors: np.ndarray, data: TrainingData, n_partners: int, n_negatives: int,
               rng: np.random.Generator) -> EpochDraws:
    """Partners (0 or 1 per anchor) and negatives (`n_negatives` per anchor) for anchors [S, B]."""
    steps, size = anchors.shape
    flat = anchors.reshape(-1)
    # two streams: the partners of an epoch are the same whatever n_negatives is (the ablation's
    # +hard_negatives and plain then differ in the negatives alone)
    partner_rng, negative_rng = (np.random.default_rng(s) for s in rng.bit_generator.seed_seq.spawn(2))
    if n_partners:
        uniform = partner_rng.random((steps * size, 2))
        partners, partner_types = (x.reshape(steps, size) for x in data.partners.draw(flat, uniform))
    else:
        partners = partner_types = np.full((steps, size), -1, dtype=np.int64)
    if n_negatives:
        rows = np.repeat(flat, n_negatives)
        uniform = negative_rng.random((len(rows), 2))
        negatives, negative_types = (x.reshape(steps, size * n_negatives) for x in data.negatives.draw(rows, uniform))
    else:
        negatives = negative_types = np.zeros((steps, 0), dtype=np.int64)
    return EpochDraws(partners, partner_types, negatives, negative_types)


@dataclass
class StepPlan:
    """Everything a step needs besides the weights, built in numpy from the step's draws."""

    anchors: torch.Tensor  # [B] rows
    n_partners: int  # P: extra columns [0, P) are partners, [P, P + M) negatives
    extra_rows: torch.Tensor  # [P + M] rows of the extra columns
    targets: SoftTargets  # [B, B + P + M] graded relevance: text -> [anchors | extra items] images
    i2t_targets: SoftTargets  # image -> texts: the same over [anchors | extra items], or [B, B] batch texts only
    i2t_extra: bool  # whether the image -> text side ranks the extra items' texts too
    weights: np.ndarray  # the same, before normalising (for inspection and tests)
    fusion: SoftTargets | None  # text -> fused [batch | partners], own item left out; None without the term
    fusion_exclude: torch.Tensor | None  # [B, B + P] each query's own item among the fused candidates
    labels: dict[str, torch.Tensor]  # attribute -> [B] class index or IGNORE_INDEX
    label_arrays: dict[str, np.ndarray]  # the same, in numpy
    known: dict[str, int]  # attribute -> number of known labels in the batch
    bank_extra: torch.Tensor | None  # embedding-bank positions of extra_rows (None without a bank)
    negative_types: np.ndarray  # [M] type index of each negative column
    # [B, B + P + M] same-category columns that contradict no known attribute of the anchor and are no
    # positive of it: left out of its softmax (None: neutral_compatible off); i2t_neutral for i2t_targets
    neutral: torch.Tensor | None = None
    i2t_neutral: torch.Tensor | None = None


@dataclass(frozen=True)
class AttributeIndicators:
    """Which attributes each item knows and its values, as 0/1 float32 matrices.

    Two items contradict when they both know more attributes than they agree on: both counts
    are products of these matrices ([B, A] @ [A, C] and [B, V] @ [V, C]), exact in float32,
    instead of a [B, C, A] comparison per step.
    """

    known: np.ndarray  # [N, A] 1 where the attribute is known
    values: np.ndarray  # [N, V] one-hot of each known value, V = the attributes' value counts summed

    @classmethod
    def from_codes(cls, codes: np.ndarray) -> "AttributeIndicators":
        """From [N, A] value codes (0..n-1 per attribute, -1 unknown)."""
        width = codes.max(axis=0, initial=-1) + 1
        offsets = np.concatenate([[0], np.cumsum(width)[:-1]]).astype(np.int64)
        values = np.zeros((len(codes), int(width.sum())), dtype=np.float32)
        rows, attributes = np.nonzero(codes >= 0)
        values[rows, offsets[attributes] + codes[rows, attributes]] = 1.0
        return cls((codes >= 0).astype(np.float32), values)

    def contradicts(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """[len(rows), len(columns)] bool: the two items disagree on an attribute both know."""
        both_known = self.known[rows] @ self.known[columns].T
        agree = self.values[rows] @ self.values[columns].T
        return both_known > agree


class StepPlanner:
    """Draws of one step -> `StepPlan`."""

    def __init__(self, data: TrainingData, *, relevance: Relevance, group_positives: bool, fusion: bool,
                 text_negatives: bool, bank: "EmbeddingBank | None" = None, neutral_compatible: bool = False):
        self.groups = data.groups if group_positives else None
        self.categories = data.category_codes if neutral_compatible else None
        self.attributes = AttributeIndicators.from_codes(data.attribute_codes)
        self.labels = {k: v.numpy() for k, v in data.labels.items()}
        self.relevance = relevance
        self.partner_weights = relevance.partner_weights()
        self.fusion = fusion
        self.text_negatives = text_negatives
        self.bank_position = None if bank is None else bank.position.numpy()

    def plan(self, anchors: np.ndarray, partner_draw: np.ndarray, partner_type: np.ndarray,
             negative_draw: np.ndarray, negative_type: np.ndarray) -> StepPlan:
        has_partner = np.flatnonzero(partner_draw >= 0)
        partners = partner_draw[has_partner]
        drawn = negative_draw >= 0
        negatives = negative_draw[drawn]
        size, n_partners = len(anchors), len(partners)
        columns = np.concatenate([anchors, partners, negatives])
        relevance = np.zeros((size, len(columns)), dtype=np.float32)
        if self.groups is not None:  # images of the same (confident) product group
            same = self.groups[anchors][:, None] == self.groups[columns][None, :]
            relevance[same] = self.relevance.strong_group
        if n_partners:  # the partner, at its type's relevance, on every column that shows it
            shows = partners[:, None] == columns[None, :]
            relevance[has_partner] = np.maximum(relevance[has_partner],
                                                shows * self.partner_weights[partner_type[has_partner]][:, None])
        contradicts = self.attributes.contradicts(anchors, columns)
        relevance[contradicts] *= np.float32(self.relevance.contradiction_factor)
        own = anchors[:, None] == columns[None, :]
        weights = np.where(own, np.float32(1.0), relevance)  # the item's own image weighs most
        neutral = i2t_neutral = None
        if self.categories is not None:
            same_category = (self.categories[anchors][:, None] == self.categories[columns][None, :]) & \
                (self.categories[anchors][:, None] >= 0)
            compatible = same_category & ~contradicts & (weights == 0)
            neutral = torch.from_numpy(compatible)
            i2t_neutral = neutral if self.text_negatives else torch.from_numpy(np.ascontiguousarray(compatible[:, :size]))
        fusion = fusion_exclude = None
        if self.fusion and n_partners:
            n = size + n_partners
            fusion = SoftTargets.from_weights(np.where(own[:, :n], 0.0, weights[:, :n]))
            fusion_exclude = torch.from_numpy(np.ascontiguousarray(own[:, :n]))
        labels = {k: v[anchors] for k, v in self.labels.items()}
        targets = SoftTargets.from_weights(weights)
        return StepPlan(
            anchors=torch.from_numpy(np.ascontiguousarray(anchors)),
            n_partners=n_partners,
            extra_rows=torch.from_numpy(columns[size:]),
            targets=targets,
            i2t_targets=targets if self.text_negatives else SoftTargets.from_weights(weights[:, :size]),
            i2t_extra=self.text_negatives,
            weights=weights,
            fusion=fusion,
            fusion_exclude=fusion_exclude,
            labels={k: torch.from_numpy(v) for k, v in labels.items()},
            label_arrays=labels,
            known={k: int(np.count_nonzero(v != IGNORE_INDEX)) for k, v in labels.items()},
            bank_extra=None if self.bank_position is None else torch.from_numpy(self.bank_position[columns[size:]]),
            negative_types=negative_type[drawn],
            neutral=neutral,
            i2t_neutral=i2t_neutral,
        )


class EmbeddingBank:
    """Head embeddings (image and text) of the train rows, refreshed every `refresh_every` steps.

    Partners and negatives enter a step without gradients, so their embeddings may be a few
    steps old (a memory bank, as in Wu et al. 2018 and MoCo): looking them up costs nothing,
    while embedding them afresh costs ~40% of a step's FLOPs. A refresh embeds every train
    row once, so the bank pays off while n_train_rows < refresh_every * extra rows per step;
    beyond that, use refresh_every=0 (fresh embeddings every step). Refreshes happen at fixed
    steps of each epoch, so a run resumed at an epoch boundary sees the same bank as an
    uninterrupted one.
    """

    def __init__(self, data: TrainingData, refresh_every: int):
        self.refresh_every = refresh_every
        self.position = torch.full((len(data.image),), -1, dtype=torch.long)
        self.position[torch.from_numpy(data.train_rows)] = torch.arange(len(data.train_rows))
        rows = data.train_rows
        self._image_feats = data.image[rows].numpy()  # gathered once, not at every refresh
        self._text_feats = data.text[rows].numpy()
        self.image: torch.Tensor | None = None
        self.text: torch.Tensor | None = None

    def due(self, step_in_epoch: int) -> bool:
        """Whether to refresh before this step (0-based step within the epoch)."""
        return step_in_epoch % self.refresh_every == 0

    def refresh(self, heads) -> None:
        image, text = heads.embed_numpy(self._image_feats, self._text_feats)
        self.image, self.text = torch.from_numpy(image), torch.from_numpy(text)

    def take(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and text embeddings at bank positions (`position[rows]`, precomputed)."""
        return self.image.index_select(0, positions), self.text.index_select(0, positions)
