"""What training consumes, checked and preloaded once: features, labels, groups and typed pair pools.

`build_training_data` turns the processed dataset, its cached features and the supervision
files into what the step loop indexes, so the loop never touches pandas:

- float32 feature tensors and, per attribute head, class labels;
- product-group codes for in-batch positives, from groups.json: only groups whose
  confidence reaches `min_group_confidence` make two items positives of each other (a
  low-confidence group would teach the model that two different products are one);
- `partners`, a `TypedPool` of the positive pairs of pairs.parquet, one adjacency list per
  pair type (strong_group, strong_attribute, medium, weak), both directions, every row kept
  (a pair repeated in the file is drawn as often as it is listed);
- `negatives`, the same for the negative pair types (hard_mined, hard_attribute, easy);
  mined confusers of hard_negatives.parquet join the hard_mined list.

Each pool keeps the share of each type among the file's train pairs: the sampler's anchors
are drawn for balance, and `TypedPool.fit` then chooses, per anchor, which type its partner
(or negative) is drawn from, so that the types arrive in the file's proportions. Changing
the pairs stage's mix therefore changes what training sees.

Only train-split items take part (a pair or negative touching another split would leak
validation items into training).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from protocol.data.hard_negatives import attribute_codes, category_mask, known_mask, product_codes
from protocol.data.pair_rules import PAIR_TYPES, POSITIVE_TYPES, group_columns
from protocol.data.schema import UNKNOWN, require_columns
from protocol.model.losses import IGNORE_INDEX
from protocol.model.protocol_model import ATTRIBUTE_HEADS, CATEGORY, CLASSIFIER_HEADS

logger = logging.getLogger(__name__)

TRAIN_SPLIT = "train"
META_COLUMNS = ("item_id", "split", "category1", "category2", *ATTRIBUTE_HEADS)
REQUIRED_PAIR_COLUMNS = ("anchor_id", "other_id", "label", "pair_type")
NEGATIVE_COLUMNS = ("anchor_id", "negative_id")
PARTNER_TYPES = tuple(t for t in PAIR_TYPES if t in POSITIVE_TYPES)
NEGATIVE_TYPES = tuple(t for t in PAIR_TYPES if t not in POSITIVE_TYPES)
MINED_TYPE = "hard_mined"  # the type the confusers of hard_negatives.parquet belong to
# A type whose expected share of the draws is further than this from its share of the file
# is reported: its pairs sit on too few anchors for the balanced sampler to meet the mix.
MIX_TOLERANCE = 0.02
# Fitting the per-type choice converges geometrically; this many rounds settle it to < 1e-6.
FIT_ITERATIONS = 200
# Garments that have no such part, by category1: their head label is NONE_CLASS (when nothing was
# grounded) instead of being ignored, so the head learns that trousers have no neckline, and late
# fusion reads a low p(v-neck) on trousers rather than whatever a head never trained there says.
NOT_APPLICABLE = {"neckline": ("bottoms",), "sleeve": ("bottoms",)}
NONE_CLASS = "none"


@dataclass
class Csr:
    """Row -> list of rows, as offsets `ptr` [N+1] into `idx`; a list may hold a row twice."""

    ptr: np.ndarray
    idx: np.ndarray

    @classmethod
    def from_edges(cls, src: np.ndarray, dst: np.ndarray, n: int) -> "Csr":
        order = np.argsort(src, kind="stable")
        ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(src, minlength=n), out=ptr[1:])
        return cls(ptr, np.asarray(dst, dtype=np.int64)[order])

    def counts(self, rows: np.ndarray) -> np.ndarray:
        return self.ptr[rows + 1] - self.ptr[rows]

    def pick(self, rows: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        """One member of each row's list per uniform [0, 1) draw [len(rows)]; -1 where the list is empty."""
        start, count = self.ptr[rows], self.counts(rows)
        out = np.full(len(rows), -1, dtype=np.int64)
        has = count > 0
        out[has] = self.idx[start[has] + (uniform[has] * count[has]).astype(np.int64)]
        return out


@dataclass
class TypedPool:
    """Pairs of several types: per type, row -> rows; and which type each anchor draws from."""

    types: tuple[str, ...]
    lists: tuple[Csr, ...]
    target: np.ndarray  # [T] share of each type among the file's train pairs of these types
    choice: np.ndarray | None = None  # [N, T] cumulative type probabilities per row (set by `fit`)

    def available(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), T] bool: whether each row has a pair of each type."""
        return np.stack([csr.counts(rows) > 0 for csr in self.lists], axis=1)

    def fit(self, rows: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        """Choose per-type weights w so that anchors drawn with `probs` over `rows`, each taking
        type t with probability w_t / (sum of w over the types it has), meet `target`.

        Iterative proportional fitting: scale each type's weight by target / expected share
        until they agree. A type no anchor has cannot be met; its share stays 0 and the
        others take its place. Returns the expected share of each type.
        """
        n = len(self.lists[0].ptr) - 1
        avail = self.available(rows).astype(np.float64)
        weights = np.where(self.target > 0, self.target, 0.0).astype(np.float64)
        has = avail.any(axis=1) & (probs > 0)
        p = probs[has] / probs[has].sum() if has.any() else probs[has]
        reachable = avail[has].any(axis=0) & (self.target > 0)

        def expected(w: np.ndarray) -> np.ndarray:
            per_row = avail[has] * w
            per_row /= np.maximum(per_row.sum(axis=1, keepdims=True), 1e-300)
            return p @ per_row

        for _ in range(FIT_ITERATIONS if reachable.any() else 0):
            goal = self.target[reachable] / self.target[reachable].sum()
            weights[reachable] *= goal / np.maximum(expected(weights)[reachable], 1e-12)
            weights /= weights.sum()
        shares = expected(weights)
        choice = np.zeros((n, len(self.types)))
        choice[rows] = avail * weights
        sums = choice.sum(axis=1, keepdims=True)
        cumulative = np.cumsum(np.divide(choice, sums, out=np.zeros_like(choice), where=sums > 0), axis=1)
        # Exactly 1 from the last available type on, so every uniform < 1 lands on an available type.
        cumulative[(sums > 0) & (cumulative > 1 - 1e-9)] = 1.0
        self.choice = cumulative
        for t, share, goal, covered in zip(self.types, shares, self.target, p @ avail[has]):
            if abs(share - goal) > MIX_TOLERANCE:
                logger.warning("pair type %s: %.1f%% of the draws instead of its %.1f%% of the file: anchors with "
                               "such a pair carry %.1f%% of the sampling weight", t, 100 * share, 100 * goal,
                               100 * covered)
        return dict(zip(self.types, shares.tolist()))

    def draw(self, rows: np.ndarray, uniform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(other row, type index) per anchor row, from uniforms [len(rows), 2]; -1 where the row has none."""
        if self.choice is None:
            raise RuntimeError("TypedPool.draw before fit: fit the type choice to the anchor distribution first")
        cumulative = self.choice[rows]
        kind = (uniform[:, :1] >= cumulative).sum(axis=1)  # the first type whose cumulative exceeds u
        kind[cumulative[:, -1] == 0] = -1  # no pair of any type
        other = np.full(len(rows), -1, dtype=np.int64)
        for t, csr in enumerate(self.lists):
            mine = kind == t
            if mine.any():
                other[mine] = csr.pick(rows[mine], uniform[mine, 1])
        return other, kind


@dataclass
class TrainingData:
    image: torch.Tensor  # [N, D] float32 backbone features
    text: torch.Tensor
    groups: np.ndarray  # [N] product-group code of confident groups; an item of no confident group is alone
    labels: dict[str, torch.Tensor]  # attribute -> [N] class index or IGNORE_INDEX
    attribute_classes: dict[str, list[str]]
    attribute_codes: np.ndarray  # [N, len(ATTRIBUTE_HEADS)] value codes, -1 unknown: what a positive may contradict
    category_codes: np.ndarray  # [N] category2 code, -1 where the graphic policy leaves it out (graphic, unknown)
    train_rows: np.ndarray  # anchor rows
    partners: TypedPool
    negatives: TypedPool
    n_train_pairs: int  # pairs.parquet rows of the train split: the unit of work


def build_training_data(features, meta: pd.DataFrame, pairs: pd.DataFrame, hard_negatives: pd.DataFrame | None,
                        groups: pd.DataFrame | None, *, attribute_heads: bool,
                        min_group_confidence: float, category_head: bool) -> TrainingData:
    """Check the inputs and preload everything the step loop needs (see the module docstring).

    groups: groups.json as a DataFrame[item_id, group_id, confidence]; None: no in-batch
    group positives (every item is its own product; pairs still pair items).
    """
    check_features(features, meta)
    require_columns(meta, META_COLUMNS, "meta", "pass the processed dataset's meta table")
    require_columns(pairs, REQUIRED_PAIR_COLUMNS, "pairs.parquet", "re-run the pairs stage")
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
    pair_type = pairs["pair_type"].astype(str).to_numpy()
    unknown = sorted(set(pair_type) - set(PARTNER_TYPES) - set(NEGATIVE_TYPES))
    if unknown:
        raise ValueError(f"pairs.parquet column 'pair_type' has unknown type(s) {unknown[:5]}: the types are "
                         f"{PARTNER_TYPES + NEGATIVE_TYPES}; regenerate it with the pairs stage")
    wrong_label = np.isin(pair_type, PARTNER_TYPES) != (labels == 1)
    if wrong_label.any():
        row = int(np.flatnonzero(wrong_label)[0])
        raise ValueError(f"pairs.parquet row {row}: pair_type {pair_type[row]!r} with label {labels[row]}; positive "
                         f"types {PARTNER_TYPES} have label 1, negative types label 0. Regenerate it")
    in_train = is_train[anchor] & is_train[other]
    if (~in_train).any():
        logger.info("using %d of %d pairs: the others touch items outside the train split", in_train.sum(), len(pairs))
    n = len(meta)
    edges = {t: (anchor[in_train & (pair_type == t)], other[in_train & (pair_type == t)])
             for t in PARTNER_TYPES + NEGATIVE_TYPES}
    counts = {t: len(a) for t, (a, _) in edges.items()}
    if hard_negatives is not None:
        require_columns(hard_negatives, NEGATIVE_COLUMNS, "hard_negatives.parquet", "re-run the mine stage")
        a = _rows_of(row_of, hard_negatives["anchor_id"], "hard_negatives.parquet", "anchor_id")
        b = _rows_of(row_of, hard_negatives["negative_id"], "hard_negatives.parquet", "negative_id")
        keep = is_train[a] & is_train[b]
        # the pairs stage samples its hard_mined pairs from these; the rest widen the type's list
        src, dst = edges[MINED_TYPE]
        edges[MINED_TYPE] = (np.concatenate([src, a[keep]]), np.concatenate([dst, b[keep]]))
        logger.info("hard_mined negatives: %d pairs of pairs.parquet + %d mined confusers of hard_negatives.parquet "
                    "(%d more touch items outside the train split and are not used)",
                    counts[MINED_TYPE], int(keep.sum()), int((~keep).sum()))
        if counts[MINED_TYPE] == 0 and keep.any() and any(counts[t] for t in NEGATIVE_TYPES):
            logger.warning("pairs.parquet has no hard_mined pairs, so its mix gives the %d mined confusers no share "
                           "of the negatives: give hard_mined a share in the pairs stage to use them", int(keep.sum()))
    partners = _typed_pool(PARTNER_TYPES, edges, counts, n)
    negatives = _typed_pool(NEGATIVE_TYPES, edges, counts, n)
    head_labels = attribute_head_labels(meta)
    heads = CLASSIFIER_HEADS if category_head else ATTRIBUTE_HEADS
    classes = attribute_classes(head_labels.iloc[train_rows], heads) if attribute_heads else {}
    logger.info("training data: %d train anchors, %d train pairs (%s), %d with a partner, %d with a negative",
                len(train_rows), int(in_train.sum()), ", ".join(f"{t} {c}" for t, c in counts.items()),
                int(partners.available(train_rows).any(axis=1).sum()),
                int(negatives.available(train_rows).any(axis=1).sum()))
    return TrainingData(
        image=torch.from_numpy(np.ascontiguousarray(features.image, dtype=np.float32)),
        text=torch.from_numpy(np.ascontiguousarray(features.text, dtype=np.float32)),
        groups=confident_group_codes(meta, groups, min_group_confidence),
        labels={a: torch.from_numpy(encode_labels(head_labels[a], c)) for a, c in classes.items()},
        attribute_classes=classes,
        attribute_codes=attribute_codes(meta, ATTRIBUTE_HEADS),
        category_codes=category_codes(meta),
        train_rows=train_rows,
        partners=partners,
        negatives=negatives,
        n_train_pairs=int(in_train.sum()),
    )


def category_codes(meta: pd.DataFrame) -> np.ndarray:
    """[N] one code per category2; -1 for items the graphic policy keeps out of category supervision."""
    codes, _ = pd.factorize(meta["category2"].astype(str))
    return np.where(category_mask(meta), codes, -1).astype(np.int64)


def confident_group_codes(meta: pd.DataFrame, groups: pd.DataFrame | None, min_confidence: float) -> np.ndarray:
    """One code per meta row: its groups.json group where that group's confidence >= min_confidence,
    else a code of its own."""
    if groups is None:
        return product_codes(meta.assign(group_id=""))
    group, confidence = group_columns(meta, groups)
    confident = (group != "") & (confidence >= min_confidence)
    logger.info("group positives: %d of %d items in groups of confidence >= %.2f",
                int(confident.sum()), len(meta), min_confidence)
    return product_codes(meta.assign(group_id=np.where(confident, group, "")))


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


def attribute_head_labels(meta: pd.DataFrame) -> pd.DataFrame:
    """Per classifier head, what each item trains on. Attributes: the grounded value; NONE_CLASS where
    its category1 has no such part (NOT_APPLICABLE) and nothing was grounded; else unknown (ignored).
    `category`: category2, unknown where the graphic policy keeps it out of category supervision."""
    labels = meta[list(ATTRIBUTE_HEADS)].astype(str).copy()
    category1 = meta["category1"].astype(str).str.strip().str.lower()
    for attribute, groups in NOT_APPLICABLE.items():
        absent = category1.isin(groups).to_numpy() & ~known_mask(meta[attribute])
        labels.loc[absent, attribute] = NONE_CLASS
    labels.insert(0, CATEGORY, np.where(category_mask(meta), meta["category2"].astype(str), UNKNOWN))
    return labels


def attribute_classes(train_meta: pd.DataFrame, heads: tuple[str, ...] = CLASSIFIER_HEADS) -> dict[str, list[str]]:
    """Known values of each of these heads on the train split; a head with < 2 values is left out."""
    classes = {}
    for attribute in heads:
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


def _typed_pool(types: tuple[str, ...], edges: dict, counts: dict[str, int], n: int) -> TypedPool:
    lists = []
    for t in types:
        src, dst = edges[t]
        lists.append(Csr.from_edges(np.concatenate([src, dst]), np.concatenate([dst, src]), n))
    total = sum(counts[t] for t in types)
    if total:
        target = np.array([counts[t] / total for t in types])
    else:  # no pair of these types in the file (mined confusers only): every list that has members, evenly
        present = np.array([len(csr.idx) > 0 for csr in lists], dtype=float)
        target = present / max(present.sum(), 1.0)
    return TypedPool(types, tuple(lists), target)


def _rows_of(row_of: pd.Index, ids: pd.Series, file: str, column: str) -> np.ndarray:
    rows = row_of.get_indexer(ids.astype(str))
    if (rows < 0).any():
        missing = ids[rows < 0].astype(str).unique()
        raise ValueError(f"{file} column {column!r} has {len(missing)} item id(s) that are not in the dataset, "
                         f"e.g. {missing[:3].tolist()}: regenerate it from this dataset")
    return rows.astype(np.int64)
