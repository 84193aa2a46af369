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

Two images of one product are paired only as strong_group: the attribute-based types
pair different products, so the mix's strong_group share really is the share of
same-product pairs.

This module says which items make each type and in what proportions; how candidate
pairs are counted and sampled without listing them is protocol.data.pair_pools, and the
rules every set obeys (checked on each generated one) are protocol.data.pair_rules. A
type short of candidates is reported in `stats["shortfalls"]`, never hidden.

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

from protocol.data.group_audit import MIN_GROUP_CONFIDENCE
from protocol.data.hard_negatives import category_mask, known_mask, product_codes
from protocol.data.pair_pools import Draw, ListPool, RunPool, fill_quota
from protocol.data.pair_rules import (
    PAIR_COLUMNS, PAIR_TYPES, POSITIVE_TYPES, check_hard_negatives, check_meta, group_columns, validate_pairs,
)
from protocol.io import write_json
from protocol.provenance import read_parquet, write_parquet

logger = logging.getLogger(__name__)

SIGNATURE_ATTRIBUTES = ("material", "pattern", "neckline", "sleeve")
MIN_SIGNATURE_ATTRIBUTES = 2
DESIGN_TAGS = ("pattern", "neckline", "sleeve")
TARGETED_ATTRIBUTES = ("material", "neckline", "pattern")
CATEGORY_ATTRIBUTE = "category2"
SUM_TOLERANCE = 1e-6
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


def _strong_group(ctx: _Context) -> list[RunPool]:
    rows = np.flatnonzero(ctx.in_split & ctx.confident & (ctx.group != ""))
    return [RunPool.build(rows, [ctx.column("split")[rows]], ctx.group[rows], "", same=True)]


def _strong_attribute(ctx: _Context) -> list[RunPool]:
    known = np.stack([known_mask(ctx.meta[a]) for a in SIGNATURE_ATTRIBUTES], axis=1)
    rows = np.flatnonzero(ctx.category & (known.sum(axis=1) >= MIN_SIGNATURE_ATTRIBUTES))
    values = np.stack([np.where(known[:, j], ctx.column(a), "") for j, a in enumerate(SIGNATURE_ATTRIBUTES)], 1)
    signature = np.array(["|".join(v) for v in values[rows]], dtype=object)
    labels = np.array(["+".join(a for a, k in zip(SIGNATURE_ATTRIBUTES, row) if k) for row in known[rows]], object)
    return [RunPool.build(rows, _category_block(ctx, rows), signature, labels, same=True)]


def _medium(ctx: _Context) -> list[RunPool]:
    return _by_attribute(ctx, ("material",), same=True)


def _weak(ctx: _Context) -> list[RunPool]:
    return _by_attribute(ctx, DESIGN_TAGS, same=True)


def _hard_attribute(ctx: _Context) -> list[RunPool]:
    return _by_attribute(ctx, TARGETED_ATTRIBUTES, same=False)


def _easy(ctx: _Context) -> list[RunPool]:
    rows = np.flatnonzero(ctx.category)
    return [RunPool.build(rows, [ctx.column("split")[rows]], ctx.column("category2")[rows], CATEGORY_ATTRIBUTE,
                          same=False)]


def _hard_mined(ctx: _Context) -> list[ListPool]:
    mined = ctx.hard_negatives.drop_duplicates(["anchor_id", "negative_id"])
    ids = pd.Index(ctx.meta["item_id"].astype(str))
    a = ids.get_indexer(mined["anchor_id"].astype(str))
    b = ids.get_indexer(mined["negative_id"].astype(str))
    keep = ctx.in_split[a] & ctx.in_split[b]
    return [ListPool(a[keep], b[keep], mined["attribute"].astype(str).to_numpy(dtype=object)[keep])]


def _by_attribute(ctx: _Context, attributes: Sequence[str], same: bool) -> list[RunPool]:
    pools = []
    for attribute in attributes:
        rows = np.flatnonzero(ctx.category & known_mask(ctx.meta[attribute]))
        pools.append(RunPool.build(rows, _category_block(ctx, rows), ctx.column(attribute)[rows], attribute, same))
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
    min_group_confidence: float = MIN_GROUP_CONFIDENCE,
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
    check_meta(meta, splits, SIGNATURE_ATTRIBUTES)
    group, confidence = group_columns(meta, groups)
    products = product_codes(meta.assign(group_id=group))
    check_hard_negatives(hard_negatives, meta, groups)
    in_split = meta["split"].isin(splits).to_numpy()
    ctx = _Context(meta, in_split, in_split & category_mask(meta), group, confidence >= min_group_confidence,
                   hard_negatives)
    rng = np.random.default_rng(seed)
    targets = mix.target_counts(int(n_pairs))

    frames, pools = [], {}
    for pair_type in PAIR_TYPES:
        draws = fill_quota(_BUILDERS[pair_type](ctx), targets[pair_type], rng, int(max_repeats),
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


def _to_frame(meta: pd.DataFrame, draw: Draw, pair_type: str) -> pd.DataFrame:
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


def write_pairs(pairs: pd.DataFrame, stats: dict, out_dir: str | Path, record: dict[str, str]) -> dict[str, Path]:
    """pairs.parquet (provenance `record` in its metadata) + pairs_stats.json (the same record under
    "provenance") in out_dir, each written atomically."""
    out_dir = Path(out_dir)
    path = write_parquet(pairs.loc[:, list(PAIR_COLUMNS)], out_dir / PAIRS_FILE, record)
    return {"pairs": path, "stats": write_json(out_dir / STATS_FILE, {**stats, "provenance": record})}


def read_pairs(path: str | Path, *, dataset: str, backbone: str | None) -> tuple[pd.DataFrame, dict[str, str]]:
    """(pairs.parquet, its provenance record), refusing a file made from another dataset or backbone."""
    return read_parquet(path, PAIRS_FILE, dataset=dataset, backbone=backbone, made_by=MADE_BY)
