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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from protocol.data.hard_negatives import known_mask, product_codes
from protocol.data.schema import require_columns
from protocol.model.losses import IGNORE_INDEX
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
        start, count = self.ptr[rows], self.counts(rows)
        pick = (rng.random((len(rows), k)) * count[:, None]).astype(np.int64)
        out = np.full((len(rows), k), -1, dtype=np.int64)
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
        self.image: torch.Tensor | None = None
        self.text: torch.Tensor | None = None

    def due(self, step_in_epoch: int) -> bool:
        """Whether to refresh before this step (0-based step within the epoch)."""
        return step_in_epoch % self.refresh_every == 0

    def refresh(self, heads) -> None:
        rows = self.data.train_rows
        image, text = heads.embed_numpy(self.data.image[rows].numpy(),
                                        self.data.text[rows].numpy() if self.with_text else None)
        self.image = torch.from_numpy(image)
        self.text = None if text is None else torch.from_numpy(text)

    def lookup(self, image_rows: torch.Tensor, text_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        image = self.image[self.position[image_rows]]
        text = self.text[self.position[text_rows]] if self.with_text else None
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
