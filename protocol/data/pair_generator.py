"""Training pairs from grounded attributes, derived product groups and mined hard negatives.

Pair types (label 1 = positive, 0 = negative) and the attribute each pair names:

  strong_group      two images of one derived product (group confidence >= min)   ""
  strong_attribute  same category2, same value on every grounded attribute of
                    SIGNATURE_ATTRIBUTES (at least two, the same ones on both)   "material+pattern+..."
  medium            same category2 + same material                               "material"
  weak              same category2 + one shared design tag                       "pattern" | "neckline" | "sleeve"
  hard_mined        a mined confuser (protocol.data.hard_negatives)              the differing attribute
  hard_attribute    same category2, differing in a targeted attribute            "material" | "neckline" | "pattern"
  easy              different category2                                          "category2"

Rules, enforced by `validate_pairs` on every generated set: no self pair; no pair crosses
splits; positives share the named attribute(s), negatives differ in it, known on both
sides; negatives never pair two items of one product; graphic items (and items without a
category2) never take part in the category-based types (every type but strong_group).

Two images of one product are paired only as strong_group: the attribute-based types
pair different products, so the mix's strong_group share really is the share of
same-product pairs.

Sampling never builds the quadratic list of candidate pairs: items are sorted by
(block, value), so each item's partners are one or two contiguous position ranges that
can be counted, enumerated or sampled with a few numpy operations. Distinct pairs are
drawn first; when a type's pool is smaller than its quota each distinct pair is reused
evenly, at most `max_repeats` times, and whatever is still missing is reported in
`stats["shortfalls"]`, never hidden.

pairs.parquet records the dataset fingerprint it was made from, and the backbone
fingerprint of the mined negatives it drew from; `read_pairs` refuses a file made from
other ones, or from none.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from protocol.data.hard_negatives import HARD_NEGATIVE_COLUMNS, category_mask, known_mask, product_codes
from protocol.io import write_json
from protocol.provenance import read_parquet, write_parquet

logger = logging.getLogger(__name__)

PAIR_COLUMNS = ("anchor_id", "other_id", "label", "pair_type", "attribute", "split")
PAIR_TYPES = ("strong_group", "strong_attribute", "medium", "weak", "hard_mined", "hard_attribute", "easy")
POSITIVE_TYPES = frozenset({"strong_group", "strong_attribute", "medium", "weak"})
# Every type but strong_group is about categories, so graphic items stay out of them.
CATEGORY_TYPES = frozenset(PAIR_TYPES) - {"strong_group"}
SIGNATURE_ATTRIBUTES = ("material", "pattern", "neckline", "sleeve")
MIN_SIGNATURE_ATTRIBUTES = 2
DESIGN_TAGS = ("pattern", "neckline", "sleeve")
TARGETED_ATTRIBUTES = ("material", "neckline", "pattern")
CATEGORY_ATTRIBUTE = "category2"
SUM_TOLERANCE = 1e-6
# Rejection sampling of distinct pairs gives up after this many rounds (only reachable when
# nearly every candidate pair is of one product) and reports the rest as a shortfall.
MAX_SAMPLING_ROUNDS = 50
PAIRS_FILE = "pairs.parquet"
STATS_FILE = "pairs_stats.json"
MADE_BY = "the pairs stage"


@dataclass(frozen=True)
class PairMix:
    """Target fraction of each pair type; must sum to 1.

    Strong positives 0.30 (group 0.15 + attribute 0.15), medium 0.20, weak 0.10,
    hard negatives 0.35 (mined 0.20 + attribute 0.15), easy negatives 0.05.
    """

    strong_group: float = 0.15
    strong_attribute: float = 0.15
    medium: float = 0.20
    weak: float = 0.10
    hard_mined: float = 0.20
    hard_attribute: float = 0.15
    easy: float = 0.05

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not 0 <= value <= 1:
                raise ValueError(f"PairMix.{f.name} must be a fraction in [0, 1], got {value!r}")
        total = sum(self.as_dict().values())
        if abs(total - 1) > SUM_TOLERANCE:
            listed = ", ".join(f"{k}={v}" for k, v in self.as_dict().items())
            raise ValueError(f"PairMix fractions must sum to 1 (within {SUM_TOLERANCE}) but sum to {total:.6f} "
                             f"({listed}); adjust these fields")

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}

    def target_counts(self, n_pairs: int) -> dict[str, int]:
        """Pairs per type summing to n_pairs exactly (largest remainder)."""
        exact = np.array(list(self.as_dict().values())) * n_pairs
        counts = np.floor(exact).astype(int)
        counts[np.argsort(-(exact - counts), kind="stable")[: n_pairs - counts.sum()]] += 1
        return dict(zip(self.as_dict(), counts.tolist()))


# ----------------------------------------------------------------------------- pair pools


@dataclass
class _RunPool:
    """Ordered pairs (a, b), a != b, in one block whose values are equal (`same`) or differ."""

    rows: np.ndarray         # meta row at each sorted position
    labels: np.ndarray       # attribute named by a pair, per sorted position of its anchor
    block_start: np.ndarray  # per position: first position of its block, and the block's length
    block_len: np.ndarray
    run_start: np.ndarray    # per position: first position of its (block, value) run, and its length
    run_len: np.ndarray
    same: bool

    @classmethod
    def build(cls, rows: np.ndarray, blocks: list[np.ndarray], values: np.ndarray, labels: np.ndarray | str,
              same: bool) -> "_RunPool":
        block_codes = _key_codes(blocks)
        value_codes = _key_codes([values])
        order = np.lexsort((value_codes, block_codes))
        b, v = block_codes[order], value_codes[order]
        new_block = np.r_[True, b[1:] != b[:-1]] if len(b) else np.zeros(0, dtype=bool)
        new_run = new_block | np.r_[True, v[1:] != v[:-1]] if len(b) else new_block
        labels = np.full(len(rows), labels, dtype=object) if isinstance(labels, str) else np.asarray(labels, object)
        return cls(rows[order], labels[order], *_runs(new_block), *_runs(new_run), same)

    @property
    def partners(self) -> np.ndarray:
        return self.run_len - 1 if self.same else self.block_len - self.run_len

    @property
    def size(self) -> int:
        return int(self.partners.sum())

    def _partner(self, pos: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Position of the r-th partner of each position (skipping itself / its own value run)."""
        if self.same:
            other = self.run_start[pos] + r
            return other + (other >= pos)
        other = self.block_start[pos] + r
        return other + (other >= self.run_start[pos]) * self.run_len[pos]

    def _pairs(self, pos: np.ndarray, r: np.ndarray):
        return self.rows[pos], self.rows[self._partner(pos, r)], self.labels[pos]

    def enumerate(self):
        partners = self.partners
        pos = np.repeat(np.arange(len(partners)), partners)
        r = np.arange(len(pos)) - np.repeat(np.cumsum(partners) - partners, partners)
        return self._pairs(pos, r)

    def sample(self, n: int, rng: np.random.Generator):
        """n pairs uniform over all ordered pairs (with replacement)."""
        partners = self.partners
        pos = rng.choice(len(partners), size=n, p=partners / partners.sum())
        r = np.minimum((rng.random(n) * partners[pos]).astype(np.int64), partners[pos] - 1)
        return self._pairs(pos, r)


@dataclass
class _ListPool:
    """An explicit list of distinct pairs (the mined hard negatives)."""

    a: np.ndarray
    b: np.ndarray
    labels: np.ndarray

    @property
    def size(self) -> int:
        return len(self.a)

    def enumerate(self):
        return self.a, self.b, self.labels

    def sample(self, n: int, rng: np.random.Generator):
        idx = rng.integers(0, self.size, n)
        return self.a[idx], self.b[idx], self.labels[idx]


def _key_codes(columns: list[np.ndarray]) -> np.ndarray:
    if not len(columns[0]):
        return np.zeros(0, dtype=np.int64)
    frame = pd.DataFrame({i: np.asarray(c, dtype=object) for i, c in enumerate(columns)})
    return frame.groupby(list(frame.columns), sort=False).ngroup().to_numpy()


def _runs(starts_flag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position, the start and length of the run it belongs to (runs begin where flag is True)."""
    starts = np.flatnonzero(starts_flag)
    lengths = np.diff(np.r_[starts, len(starts_flag)])
    run = np.cumsum(starts_flag) - 1
    return starts[run], lengths[run]


# ----------------------------------------------------------------------------- drawing


@dataclass
class _Draw:
    a: np.ndarray
    b: np.ndarray
    labels: np.ndarray
    pool_size: int  # distinct candidate pairs (an upper bound when sampled: before dropping same-product ones)


def _draw(pool, quota: int, rng: np.random.Generator, max_repeats: int, products: np.ndarray | None) -> _Draw:
    """Up to `quota` pairs: distinct ones first, each reused evenly and at most max_repeats times.

    `products` (negatives only): pairs of one product are dropped.
    """
    empty = np.zeros(0, dtype=np.int64)
    if quota <= 0 or pool.size == 0:
        return _Draw(empty, empty, np.zeros(0, dtype=object), pool.size)
    if pool.size > 2 * quota:
        return _distinct_sample(pool, quota, rng, products)
    a, b, labels = _drop_same_product(*pool.enumerate(), products)
    n = min(quota, len(a) * max_repeats)
    reps, rest = divmod(n, max(len(a), 1))
    take = np.concatenate([np.tile(np.arange(len(a)), reps), rng.choice(len(a), rest, replace=False)])
    return _Draw(a[take], b[take], labels[take], len(a))


def _distinct_sample(pool, quota: int, rng: np.random.Generator, products: np.ndarray | None) -> _Draw:
    """`quota` distinct pairs by rejection: the pool is more than twice the quota, so rounds are few."""
    a = b = np.zeros(0, dtype=np.int64)
    labels = np.zeros(0, dtype=object)
    for _ in range(MAX_SAMPLING_ROUNDS):
        need = quota - len(a)
        if need <= 0:
            break
        na, nb, nl = _drop_same_product(*pool.sample(int(need * 1.25) + 16, rng), products)
        a, b, labels = np.r_[a, na], np.r_[b, nb], np.r_[labels, nl]
        _, first = np.unique(np.stack([a, b]), axis=1, return_index=True)
        first.sort()  # keep draw order: first occurrences are a uniform sample
        a, b, labels = a[first], b[first], labels[first]
    return _Draw(a[:quota], b[:quota], labels[:quota], pool.size)


def _drop_same_product(a, b, labels, products):
    if products is None:
        return a, b, labels
    keep = products[a] != products[b]
    return a[keep], b[keep], labels[keep]


def _split_quota(quota: int, capacities: list[int]) -> list[int]:
    """Equal shares of `quota`; what a small pool cannot take goes to the others (water-filling)."""
    alloc = [0] * len(capacities)
    remaining = quota
    order = sorted(range(len(capacities)), key=lambda i: capacities[i])
    for done, i in enumerate(order):
        alloc[i] = min(capacities[i], -(-remaining // (len(order) - done)))
        remaining -= alloc[i]
    return alloc


# ----------------------------------------------------------------------------- pair types


@dataclass
class _Context:
    meta: pd.DataFrame
    in_split: np.ndarray      # item is in one of the requested splits
    category: np.ndarray      # ... and may take part in category-based types
    group: np.ndarray         # derived group_id ("" when none)
    confident: np.ndarray     # group confidence >= min_group_confidence
    hard_negatives: pd.DataFrame

    def column(self, name: str) -> np.ndarray:
        return self.meta[name].astype(str).to_numpy(dtype=object)


def _strong_group(ctx: _Context) -> list[_RunPool]:
    rows = np.flatnonzero(ctx.in_split & ctx.confident & (ctx.group != ""))
    return [_RunPool.build(rows, [ctx.column("split")[rows]], ctx.group[rows], "", same=True)]


def _strong_attribute(ctx: _Context) -> list[_RunPool]:
    known = np.stack([known_mask(ctx.meta[a]) for a in SIGNATURE_ATTRIBUTES], axis=1)
    rows = np.flatnonzero(ctx.category & (known.sum(axis=1) >= MIN_SIGNATURE_ATTRIBUTES))
    values = np.stack([np.where(known[:, j], ctx.column(a), "") for j, a in enumerate(SIGNATURE_ATTRIBUTES)], 1)
    signature = np.array(["|".join(v) for v in values[rows]], dtype=object)
    labels = np.array(["+".join(a for a, k in zip(SIGNATURE_ATTRIBUTES, row) if k) for row in known[rows]], object)
    return [_RunPool.build(rows, _category_block(ctx, rows), signature, labels, same=True)]


def _medium(ctx: _Context) -> list[_RunPool]:
    return _by_attribute(ctx, ("material",), same=True)


def _weak(ctx: _Context) -> list[_RunPool]:
    return _by_attribute(ctx, DESIGN_TAGS, same=True)


def _hard_attribute(ctx: _Context) -> list[_RunPool]:
    return _by_attribute(ctx, TARGETED_ATTRIBUTES, same=False)


def _easy(ctx: _Context) -> list[_RunPool]:
    rows = np.flatnonzero(ctx.category)
    return [_RunPool.build(rows, [ctx.column("split")[rows]], ctx.column("category2")[rows], CATEGORY_ATTRIBUTE,
                           same=False)]


def _hard_mined(ctx: _Context) -> list[_ListPool]:
    mined = ctx.hard_negatives.drop_duplicates(["anchor_id", "negative_id"])
    ids = pd.Index(ctx.meta["item_id"].astype(str))
    a = ids.get_indexer(mined["anchor_id"].astype(str))
    b = ids.get_indexer(mined["negative_id"].astype(str))
    keep = ctx.in_split[a] & ctx.in_split[b]
    return [_ListPool(a[keep], b[keep], mined["attribute"].astype(str).to_numpy(dtype=object)[keep])]


def _by_attribute(ctx: _Context, attributes: Sequence[str], same: bool) -> list[_RunPool]:
    pools = []
    for attribute in attributes:
        rows = np.flatnonzero(ctx.category & known_mask(ctx.meta[attribute]))
        pools.append(_RunPool.build(rows, _category_block(ctx, rows), ctx.column(attribute)[rows], attribute, same))
    return pools


def _category_block(ctx: _Context, rows: np.ndarray) -> list[np.ndarray]:
    return [ctx.column("split")[rows], ctx.column("category2")[rows]]


_BUILDERS = {
    "strong_group": _strong_group, "strong_attribute": _strong_attribute, "medium": _medium, "weak": _weak,
    "hard_mined": _hard_mined, "hard_attribute": _hard_attribute, "easy": _easy,
}


# ----------------------------------------------------------------------------- public API


def generate_pairs(
    meta: pd.DataFrame,
    groups: pd.DataFrame,
    hard_negatives: pd.DataFrame,
    mix: PairMix = PairMix(),
    n_pairs: int = 50_000,
    seed: int = 0,
    splits: Sequence[str] = ("train",),
    min_group_confidence: float = 0.5,
    max_repeats: int = 10,
) -> tuple[pd.DataFrame, dict]:
    """`n_pairs` pairs of items of `splits` in the proportions of `mix` (PAIR_COLUMNS), and stats.

    groups: DataFrame[item_id, group_id, source, confidence] (protocol.data.group_key.derive_groups);
    only groups with confidence >= min_group_confidence make strong_group positives, while
    any shared group keeps two items out of every other type. hard_negatives: the output of
    mine_hard_negatives (rows outside `splits` are ignored; rows that break the rules
    for this meta raise). A type whose candidates cannot fill its quota, even reusing each
    distinct pair `max_repeats` times, is filled as far as possible and the missing count is
    in stats["shortfalls"] (and logged). Raises if the result breaks a rule of `validate_pairs`.
    """
    if int(n_pairs) != n_pairs or n_pairs < 1:
        raise ValueError(f"n_pairs must be a positive integer, got {n_pairs!r}")
    if int(max_repeats) != max_repeats or max_repeats < 1:
        raise ValueError(f"max_repeats must be a positive integer, got {max_repeats!r}")
    _check_meta(meta, splits)
    group, confidence = _group_columns(meta, groups)
    products = product_codes(meta.assign(group_id=group))
    _check_hard_negatives(hard_negatives, meta, groups)
    in_split = meta["split"].isin(splits).to_numpy()
    ctx = _Context(meta, in_split, in_split & category_mask(meta), group, confidence >= min_group_confidence,
                   hard_negatives)
    rng = np.random.default_rng(seed)
    targets = mix.target_counts(int(n_pairs))

    frames, pools = [], {}
    for pair_type in PAIR_TYPES:
        draws = _fill(_BUILDERS[pair_type](ctx), targets[pair_type], rng, int(max_repeats),
                      None if pair_type == "strong_group" else products)
        pools[pair_type] = sum(d.pool_size for d in draws)
        frames.extend(_to_frame(meta, d, pair_type) for d in draws)
    pairs = pd.concat(frames, ignore_index=True)
    pairs = pairs.iloc[rng.permutation(len(pairs))].reset_index(drop=True)

    problems = validate_pairs(pairs, meta, groups)
    if problems:
        raise RuntimeError("generated pairs break the pair rules (a bug in pair_generator): " + "; ".join(problems))
    stats = pair_stats(pairs, meta, mix, int(n_pairs), pools)
    stats.update(seed=seed, splits=list(splits), min_group_confidence=min_group_confidence, max_repeats=max_repeats)
    for pair_type, missing in stats["shortfalls"].items():
        logger.warning("pair type %s: %d of %d pairs could not be made (%d distinct candidate pairs)",
                       pair_type, missing, targets[pair_type], pools[pair_type])
    return pairs, stats


def _fill(pools: list, quota: int, rng: np.random.Generator, max_repeats: int, products) -> list[_Draw]:
    shares = _split_quota(quota, [p.size * max_repeats for p in pools])
    return [_draw(pool, share, rng, max_repeats, products) for pool, share in zip(pools, shares)]


def _to_frame(meta: pd.DataFrame, draw: _Draw, pair_type: str) -> pd.DataFrame:
    item_ids = meta["item_id"].astype(str).to_numpy(dtype=object)
    return pd.DataFrame({
        "anchor_id": item_ids[draw.a],
        "other_id": item_ids[draw.b],
        "label": np.full(len(draw.a), int(pair_type in POSITIVE_TYPES), dtype=np.int64),
        "pair_type": pair_type,
        "attribute": draw.labels.astype(str),
        "split": meta["split"].astype(str).to_numpy(dtype=object)[draw.a],
    })


def pair_stats(pairs: pd.DataFrame, meta: pd.DataFrame, mix: PairMix, n_pairs: int,
               pool_sizes: dict[str, int] | None = None) -> dict:
    """Actual mix vs target per pair type, shortfalls, and what the anchors are."""
    targets = mix.target_counts(n_pairs)
    per_type = {}
    for pair_type, target in targets.items():
        subset = pairs[pairs["pair_type"] == pair_type]
        uses = subset.groupby(["anchor_id", "other_id"]).size()
        per_type[pair_type] = {
            "target_fraction": mix.as_dict()[pair_type],
            "actual_fraction": len(subset) / len(pairs) if len(pairs) else 0.0,
            "target": target,
            "count": int(len(subset)),
            "shortfall": max(target - len(subset), 0),
            "unique_pairs": int(len(uses)),
            "max_uses": int(uses.max()) if len(uses) else 0,
            "by_attribute": {str(k) or "none": int(v) for k, v in subset["attribute"].value_counts().items()},
        }
        if pool_sizes is not None:
            per_type[pair_type]["candidate_pairs"] = int(pool_sizes[pair_type])
    anchors = meta.set_index(meta["item_id"].astype(str)).loc[pairs["anchor_id"]]
    return {
        "n_pairs_requested": n_pairs,
        "n_pairs": int(len(pairs)),
        "labels": {"positive": int((pairs["label"] == 1).sum()), "negative": int((pairs["label"] == 0).sum())},
        "pair_types": per_type,
        "shortfalls": {t: s["shortfall"] for t, s in per_type.items() if s["shortfall"]},
        "anchors_by_category2": {str(k): int(v) for k, v in anchors["category2"].value_counts().items()},
        "anchors_by_material": {str(k): int(v) for k, v in anchors["material"].value_counts().items()},
    }


def validate_pairs(pairs: pd.DataFrame, meta: pd.DataFrame, groups: pd.DataFrame | None = None) -> list[str]:
    """Every broken pair rule, one line each naming how many pairs and which rows; [] when all hold.

    Products come from `groups` (group_id per item) when given, else meta's group_id.
    """
    missing = [c for c in PAIR_COLUMNS if c not in pairs.columns]
    if missing:
        return [f"pairs lack column(s) {missing}"]
    ids = pd.Index(meta["item_id"].astype(str))
    a = ids.get_indexer(pairs["anchor_id"].astype(str))
    b = ids.get_indexer(pairs["other_id"].astype(str))
    problems: list[str] = []
    _report(problems, (a < 0) | (b < 0), "name an item_id that is not in meta")
    found = (a >= 0) & (b >= 0)
    pairs, a, b = pairs[found], a[found], b[found]

    pair_type = pairs["pair_type"].astype(str).to_numpy()
    positive = np.isin(pair_type, list(POSITIVE_TYPES))
    attribute = pairs["attribute"].fillna("").astype(str).to_numpy()
    split = meta["split"].astype(str).to_numpy()
    category2 = meta["category2"].astype(str).to_numpy()
    category_ok = category_mask(meta)
    in_category_type = np.isin(pair_type, list(CATEGORY_TYPES))
    easy = pair_type == "easy"

    _report(problems, ~np.isin(pair_type, PAIR_TYPES), f"have an unknown pair_type (allowed: {', '.join(PAIR_TYPES)})")
    _report(problems, pairs["label"].to_numpy() != positive.astype(int),
            "have a label that contradicts their pair_type (positives 1, negatives 0)")
    _report(problems, a == b, "pair an item with itself")
    _report(problems, split[a] != split[b], "cross splits")
    _report(problems, pairs["split"].astype(str).to_numpy() != split[a],
            "have a split column unlike their items' split")
    _report(problems, in_category_type & ~(category_ok[a] & category_ok[b]),
            "are category-based but involve a graphic item or one without category2")
    _report(problems, in_category_type & ~easy & (category2[a] != category2[b]),
            "are of a same-category type but differ in category2")
    _report(problems, (pair_type != "strong_group") & (attribute == ""), "name no attribute")
    for name in sorted(set(attribute) - {""}):
        _check_attribute(problems, meta, name, attribute == name, positive, a, b)

    product_meta = meta if groups is None else meta.assign(group_id=_group_columns(meta, groups)[0])
    if "group_id" in product_meta.columns:
        products = product_codes(product_meta)
        same_product = products[a] == products[b]
        _report(problems, ~positive & same_product, "are negatives of one product (same group_id)")
        _report(problems, (pair_type == "strong_group") & ~same_product, "are strong_group pairs of two products")
    return problems


def _check_attribute(problems, meta, name, rows, positive, a, b) -> None:
    for attribute in name.split("+"):
        if attribute not in meta.columns:
            _report(problems, rows, f"name attribute {attribute!r}, which is not a meta column")
            continue
        known = known_mask(meta[attribute])
        values = meta[attribute].astype(str).to_numpy()
        _report(problems, rows & ~(known[a] & known[b]), f"name {attribute} but it is unknown on one side")
        _report(problems, rows & positive & (values[a] != values[b]), f"are positives on {attribute} that differ in it")
        _report(problems, rows & ~positive & (values[a] == values[b]), f"are negatives on {attribute} that share it")


def _report(problems: list[str], mask: np.ndarray, what: str) -> None:
    rows = np.flatnonzero(mask)
    if len(rows):
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        problems.append(f"{len(rows)} pair(s) {what} (rows {shown})")


def _group_columns(meta: pd.DataFrame, groups: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per meta row: derived group_id ("" when the item has none) and its confidence (0 when none)."""
    missing = [c for c in ("item_id", "group_id", "confidence") if c not in groups.columns]
    if missing:
        raise ValueError(f"groups lack column(s) {missing}; pass protocol.data.group_key.derive_groups(meta)")
    if groups["item_id"].duplicated().any():
        dup = groups.loc[groups["item_id"].duplicated(), "item_id"].head(5).tolist()
        raise ValueError(f"groups list item(s) {dup} more than once; each item belongs to one group")
    by_item = groups.set_index(groups["item_id"].astype(str))
    stray = by_item.index.difference(pd.Index(meta["item_id"].astype(str)))
    if len(stray):
        raise ValueError(f"groups name {len(stray)} item(s) not in meta, e.g. {stray[:5].tolist()}; "
                         "derive the groups from the same meta")
    aligned = by_item.reindex(meta["item_id"].astype(str))
    group = aligned["group_id"].fillna("").astype(str).to_numpy(dtype=object)
    return group, aligned["confidence"].fillna(0.0).astype(float).to_numpy()


def _check_meta(meta: pd.DataFrame, splits: Sequence[str]) -> None:
    required = ["item_id", "category2", "split", *SIGNATURE_ATTRIBUTES]
    missing = [c for c in required if c not in meta.columns]
    if missing:
        raise ValueError(f"meta lacks column(s) {missing} needed for pair generation; "
                         "pass the processed dataset's meta (load_processed(dir).meta)")
    if meta["item_id"].duplicated().any():
        dup = meta.loc[meta["item_id"].duplicated(), "item_id"].head(5).tolist()
        raise ValueError(f"meta has duplicate item_id values, e.g. {dup}; item_id must be unique")
    if not meta["split"].isin(splits).any():
        raise ValueError(f"no item of meta is in splits {list(splits)}; meta has splits "
                         f"{sorted(meta['split'].astype(str).unique())}")


def _check_hard_negatives(mined: pd.DataFrame, meta: pd.DataFrame, groups: pd.DataFrame) -> None:
    """Mined rows must name items of this meta and obey the pair rules; stale ones raise."""
    missing = [c for c in HARD_NEGATIVE_COLUMNS if c not in mined.columns]
    if missing:
        raise ValueError(f"hard negatives lack column(s) {missing}; produce them with mine_hard_negatives")
    ids = pd.Index(meta["item_id"].astype(str))
    unknown = sorted(set(mined["anchor_id"].astype(str)).union(mined["negative_id"].astype(str)).difference(ids))
    if unknown:
        raise ValueError(f"hard negatives name {len(unknown)} item(s) not in meta, e.g. {unknown[:5]}; "
                         "re-run mining on this dataset")
    as_pairs = pd.DataFrame({
        "anchor_id": mined["anchor_id"], "other_id": mined["negative_id"], "label": 0, "pair_type": "hard_mined",
        "attribute": mined["attribute"],
        "split": meta.set_index(ids)["split"].reindex(mined["anchor_id"].astype(str)).to_numpy(),
    })
    problems = validate_pairs(as_pairs.reset_index(drop=True), meta, groups)
    if problems:
        raise ValueError("hard negatives do not fit this dataset (rows are hard-negative rows from 0): "
                         + "; ".join(problems) + "; re-run mining on this dataset")


def write_pairs(pairs: pd.DataFrame, stats: dict, out_dir: str | Path, record: dict[str, str]) -> dict[str, Path]:
    """pairs.parquet (provenance `record` in its metadata) + pairs_stats.json (the same record under
    "provenance") in out_dir, each written atomically."""
    out_dir = Path(out_dir)
    path = write_parquet(pairs.loc[:, list(PAIR_COLUMNS)], out_dir / PAIRS_FILE, record)
    return {"pairs": path, "stats": write_json(out_dir / STATS_FILE, {**stats, "provenance": record})}


def read_pairs(path: str | Path, *, dataset: str, backbone: str | None) -> tuple[pd.DataFrame, dict[str, str]]:
    """(pairs.parquet, its provenance record), refusing a file made from another dataset or backbone."""
    return read_parquet(path, PAIRS_FILE, dataset=dataset, backbone=backbone, made_by=MADE_BY)
