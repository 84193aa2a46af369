"""What a training step consumes: preloaded tensors and per-anchor partner/negative lists.

`build_training_data` checks the inputs and turns them, once, into what the step loop
indexes: float32 feature tensors, product-group codes, attribute labels, and two
compressed adjacency lists (CSR) over dataset rows:

- partners: positive pairs of pairs.parquet (label 1, both directions): a step gives
  each anchor one partner, an extra positive image column for that anchor's text;
- negatives: mined hard negatives (hard_negatives.parquet) and hard negative pairs
  (`hard_mined`, `hard_attribute`; both directions): a step gives each anchor up to
  `n_hard_negatives` of them as extra negative image columns shared by the batch.

Only train-split items take part (a pair or negative touching another split would leak
validation items into training). The loop never touches pandas.

Per epoch, `draw_epoch` makes every step's partner and negative draws at once (the same
draws, from the same RNG stream, as `draw_batch` step by step); per step, `StepPlanner`
turns them into what the losses consume (rows, precomputed InfoNCE targets, labels), in
numpy, so the step itself runs only the tensor ops that carry gradients.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from protocol.data.hard_negatives import known_mask, product_codes
from protocol.data.schema import require_columns
from protocol.model.losses import IGNORE_INDEX, SoftTargets
from protocol.model.protocol_model import ATTRIBUTE_HEADS

logger = logging.getLogger(__name__)

TRAIN_SPLIT = "train"
META_COLUMNS = ("item_id", "group_id", "split", "category2", *ATTRIBUTE_HEADS)
PAIR_COLUMNS = ("anchor_id", "other_id", "label", "pair_type")
NEGATIVE_COLUMNS = ("anchor_id", "negative_id")
HARD_PAIR_TYPES = ("hard_mined", "hard_attribute")


@dataclass
class Csr:
    """Row -> list of rows, as offsets `ptr` [N+1] into `idx`."""

    ptr: np.ndarray
    idx: np.ndarray

    @classmethod
    def from_edges(cls, src: np.ndarray, dst: np.ndarray, n: int) -> "Csr":
        edges = np.unique(np.stack([src, dst], axis=1), axis=0) if len(src) else np.zeros((0, 2), np.int64)
        ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(edges[:, 0], minlength=n), out=ptr[1:])
        return cls(ptr, edges[:, 1].astype(np.int64))  # np.unique sorts by src, then dst

    @classmethod
    def empty(cls, n: int) -> "Csr":
        return cls(np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))

    def counts(self, rows: np.ndarray) -> np.ndarray:
        return self.ptr[rows + 1] - self.ptr[rows]

    def sample(self, rows: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """[len(rows), k] random members (with replacement) of each row's list; -1 where it is empty."""
        return self.pick(rows, rng.random((len(rows), k)))

    def pick(self, rows: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        """`sample` with its uniform [0, 1) draws [len(rows), k] given."""
        start, count = self.ptr[rows], self.counts(rows)
        pick = (uniform * count[:, None]).astype(np.int64)
        out = np.full(uniform.shape, -1, dtype=np.int64)
        has = np.broadcast_to(count[:, None] > 0, out.shape)
        out[has] = self.idx[(start[:, None] + pick)[has]]
        return out


@dataclass
class TrainingData:
    image: torch.Tensor  # [N, D] float32 backbone features
    text: torch.Tensor
    groups: torch.Tensor  # [N] product-group code
    labels: dict[str, torch.Tensor]  # attribute -> [N] class index or IGNORE_INDEX
    attribute_classes: dict[str, list[str]]
    train_rows: np.ndarray  # anchor rows
    partners: Csr
    negatives: Csr
    n_train_pairs: int  # pairs.parquet rows of the train split: the unit of work


@dataclass
class Batch:
    anchors: torch.Tensor  # [B] rows
    partners: torch.Tensor  # [P] rows, one per anchor that has one
    partner_of: torch.Tensor  # [P] index of its anchor in the batch
    negatives: torch.Tensor  # [M] rows


def build_training_data(features, meta: pd.DataFrame, pairs: pd.DataFrame, hard_negatives: pd.DataFrame | None,
                        *, attribute_heads: bool) -> TrainingData:
    """Check the inputs and preload everything the step loop needs."""
    check_features(features, meta)
    require_columns(meta, META_COLUMNS, "meta", "pass the processed dataset's meta table")
    require_columns(pairs, PAIR_COLUMNS, "pairs.parquet", "re-run the pairs stage")
    row_of = pd.Index(meta["item_id"].astype(str))
    if not row_of.is_unique:
        raise ValueError(f"meta column 'item_id' has duplicates, e.g. {row_of[row_of.duplicated()][:3].tolist()}")
    is_train = (meta["split"] == TRAIN_SPLIT).to_numpy()
    train_rows = np.flatnonzero(is_train)
    if len(train_rows) == 0:
        raise ValueError("meta has no rows with split == 'train': nothing to train on")

    anchor = _rows_of(row_of, pairs["anchor_id"], "pairs.parquet", "anchor_id")
    other = _rows_of(row_of, pairs["other_id"], "pairs.parquet", "other_id")
    labels = pairs["label"].to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"pairs.parquet column 'label' must be 0 or 1, got values {sorted(set(labels.tolist()))[:10]}")
    in_train = is_train[anchor] & is_train[other]
    if (~in_train).any():
        logger.info("using %d of %d pairs: the others touch items outside the train split", in_train.sum(), len(pairs))
    positive = in_train & (labels == 1)
    hard_pair = in_train & (labels == 0) & pairs["pair_type"].isin(HARD_PAIR_TYPES).to_numpy()
    neg_src, neg_dst = [anchor[hard_pair]], [other[hard_pair]]
    if hard_negatives is not None:
        require_columns(hard_negatives, NEGATIVE_COLUMNS, "hard_negatives.parquet", "re-run the mine stage")
        a = _rows_of(row_of, hard_negatives["anchor_id"], "hard_negatives.parquet", "anchor_id")
        b = _rows_of(row_of, hard_negatives["negative_id"], "hard_negatives.parquet", "negative_id")
        keep = is_train[a] & is_train[b]
        neg_src.append(a[keep])
        neg_dst.append(b[keep])
    n = len(meta)
    partners = _symmetric_csr(anchor[positive], other[positive], n)
    negatives = _symmetric_csr(np.concatenate(neg_src), np.concatenate(neg_dst), n)
    classes = attribute_classes(meta.iloc[train_rows]) if attribute_heads else {}
    logger.info("training data: %d train anchors, %d train pairs, %d with a partner, %d with hard negatives",
                len(train_rows), int(in_train.sum()), int((partners.counts(train_rows) > 0).sum()),
                int((negatives.counts(train_rows) > 0).sum()))
    return TrainingData(
        image=torch.from_numpy(np.ascontiguousarray(features.image, dtype=np.float32)),
        text=torch.from_numpy(np.ascontiguousarray(features.text, dtype=np.float32)),
        groups=torch.from_numpy(product_codes(meta).astype(np.int64)),
        labels={a: torch.from_numpy(encode_labels(meta[a], c)) for a, c in classes.items()},
        attribute_classes=classes,
        train_rows=train_rows,
        partners=partners,
        negatives=negatives,
        n_train_pairs=int(in_train.sum()),
    )


def check_features(features, meta: pd.DataFrame) -> None:
    """Features and meta must describe the same items in the same order, with finite values."""
    if len(features.image) != len(meta) or len(features.text) != len(meta):
        raise ValueError(f"features have {len(features.image)} image / {len(features.text)} text rows but meta has "
                         f"{len(meta)}: pass the feature cache of this dataset")
    ids = meta["item_id"].astype(str).to_numpy()
    mismatch = np.flatnonzero(np.asarray(features.item_ids, dtype=object) != ids)
    if len(mismatch):
        i = int(mismatch[0])
        raise ValueError(f"feature row {i} is item {features.item_ids[i]!r} but meta row {i} is {ids[i]!r}: "
                         "features and meta must be in the same dataset row order")
    for kind in ("image", "text"):
        bad = ~np.isfinite(getattr(features, kind)).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise ValueError(f"{kind} features of {len(rows)} item(s) are not finite, e.g. {ids[rows[:3]].tolist()}: "
                             "the feature cache is corrupt; delete it and re-run the baseline stage")


def attribute_classes(train_meta: pd.DataFrame) -> dict[str, list[str]]:
    """Known values of each attribute head on the train split; attributes with < 2 values get no head."""
    classes = {}
    for attribute in ATTRIBUTE_HEADS:
        values = sorted(set(train_meta[attribute][known_mask(train_meta[attribute])].astype(str)))
        if len(values) >= 2:
            classes[attribute] = values
        else:
            logger.warning("no %s head: the train split has %d known value(s)", attribute, len(values))
    return classes


def encode_labels(values: pd.Series, classes: list[str]) -> np.ndarray:
    """Class index per row; IGNORE_INDEX for unknown values and values without a class."""
    codes = pd.Index(classes).get_indexer(values.astype(str))
    return np.where(codes >= 0, codes, IGNORE_INDEX).astype(np.int64)


def draw_batch(anchors: np.ndarray, data: TrainingData, n_partners: int, n_negatives: int,
               rng: np.random.Generator) -> Batch:
    """The anchors' partners (0 or 1 each) and hard negatives (up to n_negatives each)."""
    partners = data.partners.sample(anchors, n_partners, rng)[:, 0] if n_partners else np.full(len(anchors), -1)
    has_partner = np.flatnonzero(partners >= 0)
    negatives = data.negatives.sample(anchors, n_negatives, rng).ravel() if n_negatives else np.zeros(0, np.int64)
    return Batch(
        anchors=torch.from_numpy(anchors),
        partners=torch.from_numpy(partners[has_partner]),
        partner_of=torch.from_numpy(has_partner),
        negatives=torch.from_numpy(negatives[negatives >= 0]),
    )


@dataclass
class EpochDraws:
    """Every step's draws of an epoch: row i is what `draw_batch` draws at step i."""

    partners: np.ndarray  # [S, B] the partner of each anchor, -1 where it has none
    negatives: np.ndarray  # [S, B * n_negatives] hard negatives, anchor by anchor, -1 where there are none


def draw_epoch(anchors: np.ndarray, data: TrainingData, n_partners: int, n_negatives: int,
               rng: np.random.Generator) -> EpochDraws:
    """The draws of `draw_batch` for each row of anchors [S, B], in one go, from the same RNG stream.

    Step by step, `draw_batch` takes B * n_partners then B * n_negatives uniforms; one
    [S, B * (n_partners + n_negatives)] block holds the same numbers in the same order.
    """
    steps, size = anchors.shape
    uniform = rng.random((steps, size * (n_partners + n_negatives)))
    flat = anchors.reshape(-1)
    if n_partners:
        draws = uniform[:, : size * n_partners].reshape(steps * size, n_partners)
        partners = data.partners.pick(flat, draws)[:, 0].reshape(steps, size)
    else:
        partners = np.full((steps, size), -1, dtype=np.int64)
    if n_negatives:
        draws = uniform[:, size * n_partners:].reshape(steps * size, n_negatives)
        negatives = data.negatives.pick(flat, draws).reshape(steps, size * n_negatives)
    else:
        negatives = np.zeros((steps, 0), dtype=np.int64)
    return EpochDraws(partners, negatives)


@dataclass
class StepPlan:
    """Everything a step needs besides the weights, built in numpy from the step's draws."""

    anchors: torch.Tensor  # [B] rows
    partners: torch.Tensor  # [P] rows, one per anchor that has one
    extra_rows: torch.Tensor  # [P + M] rows of the extra image columns: partners, then negatives
    t2i: SoftTargets  # text -> [batch images | extra columns]: same product, own image, own partner
    i2t: SoftTargets  # image -> batch texts
    fusion: SoftTargets | None  # text -> fused [batch | partners], own item left out; None without the term
    fusion_exclude: torch.Tensor | None  # [B, B + P] each query's own item among the fused candidates
    labels: dict[str, torch.Tensor]  # attribute -> [B] class index or IGNORE_INDEX
    label_arrays: dict[str, np.ndarray]  # the same, in numpy
    known: dict[str, int]  # attribute -> number of known labels in the batch
    bank_extra: torch.Tensor | None  # embedding-bank positions of extra_rows (None without a bank)
    bank_partners: torch.Tensor | None  # embedding-bank positions of partners

    @property
    def n_partners(self) -> int:
        return len(self.partners)


class StepPlanner:
    """Draws of one step -> `StepPlan`: the masks of `positive_mask`, as InfoNCE targets, in numpy."""

    def __init__(self, data: TrainingData, *, group_positives: bool, fusion: bool,
                 bank: "EmbeddingBank | None" = None):
        self.groups = data.groups.numpy() if group_positives else None
        self.labels = {k: v.numpy() for k, v in data.labels.items()}
        self.fusion = fusion
        self.bank_position = None if bank is None else bank.position.numpy()

    def plan(self, anchors: np.ndarray, partner_draw: np.ndarray, negative_draw: np.ndarray) -> StepPlan:
        has_partner = np.flatnonzero(partner_draw >= 0)
        partners = partner_draw[has_partner]
        negatives = negative_draw[negative_draw >= 0]
        size, n_partners = len(anchors), len(partners)
        columns = np.concatenate([anchors, partners, negatives])
        # positive_mask(anchors, columns[, groups]): same item, or same product group.
        positives = anchors[:, None] == columns[None, :]
        if self.groups is not None:
            groups = self.groups
            positives |= groups[anchors][:, None] == groups[columns][None, :]
        # A partner is a positive of its own anchor (pairs.parquet), whatever its product.
        positives[has_partner, size + np.arange(n_partners)] = True
        fusion = fusion_exclude = None
        if self.fusion and n_partners:
            n = size + n_partners
            own = anchors[:, None] == columns[None, :n]
            fusion = SoftTargets.from_mask(positives[:, :n] & ~own)
            fusion_exclude = torch.from_numpy(own)
        labels = {k: v[anchors] for k, v in self.labels.items()}
        bank_extra = bank_partners = None
        if self.bank_position is not None:
            bank_extra = torch.from_numpy(self.bank_position[columns[size:]])
            bank_partners = torch.from_numpy(self.bank_position[partners])
        return StepPlan(
            anchors=torch.from_numpy(np.ascontiguousarray(anchors)),
            partners=torch.from_numpy(partners),
            extra_rows=torch.from_numpy(columns[size:]),
            t2i=SoftTargets.from_mask(positives),
            i2t=SoftTargets.from_mask(positives[:, :size].T),
            fusion=fusion,
            fusion_exclude=fusion_exclude,
            labels={k: torch.from_numpy(v) for k, v in labels.items()},
            label_arrays=labels,
            known={k: int(np.count_nonzero(v != IGNORE_INDEX)) for k, v in labels.items()},
            bank_extra=bank_extra,
            bank_partners=bank_partners,
        )


class EmbeddingBank:
    """Head embeddings of the train rows, refreshed every `refresh_every` steps, for extra columns.

    Partners and hard negatives enter a step without gradients, so their embeddings may
    be a few steps old (a memory bank, as in Wu et al. 2018 and MoCo): looking them up
    costs nothing, while embedding them afresh costs ~40% of a step's FLOPs. A refresh
    embeds every train row once, so the bank pays off while
    n_train_rows < refresh_every * extra rows per step; beyond that, use refresh_every=0
    (fresh embeddings every step). Refreshes happen at fixed steps of each epoch, so a run
    resumed at an epoch boundary sees the same bank as an uninterrupted one.
    """

    def __init__(self, data: TrainingData, refresh_every: int, with_text: bool):
        self.data, self.refresh_every, self.with_text = data, refresh_every, with_text
        self.position = torch.full((len(data.image),), -1, dtype=torch.long)
        self.position[torch.from_numpy(data.train_rows)] = torch.arange(len(data.train_rows))
        rows = data.train_rows
        self._image_feats = data.image[rows].numpy()  # gathered once, not at every refresh
        self._text_feats = data.text[rows].numpy() if with_text else None
        self.image: torch.Tensor | None = None
        self.text: torch.Tensor | None = None

    def due(self, step_in_epoch: int) -> bool:
        """Whether to refresh before this step (0-based step within the epoch)."""
        return step_in_epoch % self.refresh_every == 0

    def refresh(self, heads) -> None:
        image, text = heads.embed_numpy(self._image_feats, self._text_feats)
        self.image = torch.from_numpy(image)
        self.text = None if text is None else torch.from_numpy(text)

    def lookup(self, image_rows: torch.Tensor, text_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        image = self.image[self.position[image_rows]]
        text = self.text[self.position[text_rows]] if self.with_text else None
        return image, text

    def take(self, image_positions: torch.Tensor,
             text_positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`lookup` by bank positions (`position[rows]`, precomputed)."""
        image = self.image.index_select(0, image_positions)
        text = self.text.index_select(0, text_positions) if self.with_text else None
        return image, text


def _rows_of(row_of: pd.Index, ids: pd.Series, file: str, column: str) -> np.ndarray:
    rows = row_of.get_indexer(ids.astype(str))
    if (rows < 0).any():
        missing = ids[rows < 0].astype(str).unique()
        raise ValueError(f"{file} column {column!r} has {len(missing)} item id(s) that are not in the dataset, "
                         f"e.g. {missing[:3].tolist()}: regenerate it from this dataset")
    return rows.astype(np.int64)


def _symmetric_csr(src: np.ndarray, dst: np.ndarray, n: int) -> Csr:
    if len(src) == 0:
        return Csr.empty(n)
    return Csr.from_edges(np.concatenate([src, dst]), np.concatenate([dst, src]), n)
