"""Group-aware, seeded, stratified train/val/test splits.

Whole groups (products) go to one split. Groups are laid out stratum by stratum
(strata in sorted label order, groups shuffled within), and walked once while each
group goes to the split furthest behind its target share. Every run of consecutive
groups therefore gets its share within about one group: each stratum does, and a
composite label "a|b" keeps each value of `a` in one run, so it is balanced as a
whole too (prepare stratifies by "material|category2": rare materials and weak
categories land in every split).

Test quotas (`assign_splits_with_quotas`): a stratified share of a weak class is a
handful of test queries on a small catalog (20% of 70 cardigans is 14), too few to tell
a gain from noise. Before the stratified walk, whole groups are reserved for test, in a
seeded order, until each quota's rows reach `n` in test, never past `max_share` of that
quota's rows (a small catalog keeps training data) and never past the overall test
share. The other groups are then split with the test fraction lowered by what was
reserved, so the test split stays near its share of all items.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from protocol.data.schema import SPLITS

logger = logging.getLogger(__name__)

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}
# Seed stream of the quota reservation, apart from the stratified walk's (which uses the seed alone).
_QUOTA_STREAM = 9


@dataclass(frozen=True)
class TestQuota:
    """At least `n` of the rows marked in `rows` go to test, but never more than `max_share` of them."""

    name: str          # e.g. "category2.cardigans", for logs, metric names and the manifest
    rows: np.ndarray   # bool per row: the items this quota counts
    n: int
    max_share: float
    __test__ = False  # not a pytest test class, whatever its name

    def __post_init__(self):
        if self.n < 0:
            raise ValueError(f"test quota {self.name!r}: n must be >= 0, got {self.n}")
        if not 0 <= self.max_share <= 1:
            raise ValueError(f"test quota {self.name!r}: max_share must be in [0, 1], got {self.max_share}")


def validate_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise ValueError(f"split fractions name unknown splits {sorted(unknown)}; use {list(SPLITS)}")
    out = {s: float(fractions[s]) for s in SPLITS if s in fractions}
    bad = {s: f for s, f in out.items() if not (math.isfinite(f) and 0 <= f <= 1)}
    if bad:
        raise ValueError(f"split fractions must be in [0, 1], got {bad}")
    if not math.isclose(sum(out.values()), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must sum to 1, got {out} (sum {sum(out.values()):.6f})")
    if out.get("train", 0) <= 0:
        raise ValueError(f"split fractions need a train share > 0, got {out}")
    return out


def assign_splits(
    group_ids: Sequence | pd.Series | np.ndarray,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    stratify: Sequence | pd.Series | np.ndarray | None = None,
) -> np.ndarray:
    """Split name per row; rows of one group share a split. `stratify`: a label per row (or None)."""
    fractions = validate_fractions(fractions or DEFAULT_FRACTIONS)
    groups = pd.Series(np.asarray(group_ids, dtype=object))
    empty = groups.isna() | (groups.astype(str).str.strip() == "")
    if empty.any():
        raise ValueError(f"assign_splits: group id is empty in rows {list(groups.index[empty][:5])}")
    if stratify is not None and len(stratify) != len(groups):
        raise ValueError(f"assign_splits: stratify has {len(stratify)} labels for {len(groups)} rows")
    labels = pd.Series(["" if stratify is None else str(v) for v in (stratify if stratify is not None else groups)])

    # One stratum per group: its most common label (ties: the smallest).
    stratum = {g: min(Counter(ls).items(), key=lambda kv: (-kv[1], kv[0]))[0]
               for g, ls in labels.groupby(groups.astype(str), sort=True).agg(list).items()}
    rng = np.random.default_rng(seed)
    unique_groups = sorted(stratum)
    order = rng.permutation(len(unique_groups))
    layout = sorted((stratum[unique_groups[i]], rank) for rank, i in enumerate(order))
    sequence = [unique_groups[order[rank]] for _, rank in layout]

    names = list(fractions)
    shares = np.array([fractions[s] for s in names])
    taken = -rng.uniform(0, 1, len(names)) * shares  # a random phase, so runs do not all start in train
    split_of: dict[str, str] = {}
    for n, group in enumerate(sequence, start=1):
        k = int(np.argmax(shares * n - taken))
        taken[k] += 1
        split_of[group] = names[k]
    return np.array([split_of[g] for g in groups.astype(str)], dtype=object)


def _group_codes(group_ids) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique group ids, code of each row), after the same checks as assign_splits."""
    groups = pd.Series(np.asarray(group_ids, dtype=object))
    empty = groups.isna() | (groups.astype(str).str.strip() == "")
    if empty.any():
        raise ValueError(f"assign_splits: group id is empty in rows {list(groups.index[empty][:5])}")
    codes, uniques = pd.factorize(groups.astype(str), sort=True)
    return np.asarray(uniques, dtype=object), codes


def reserve_test_groups(group_ids, quotas: Sequence[TestQuota], budget: int, seed: int = 0) -> np.ndarray:
    """Bool per row: rows of the groups reserved for test so that each quota is met (see module doc).

    Quotas are served scarcest first; a group is skipped when it would push any quota past
    its cap or the reserved rows past `budget`.
    """
    uniques, codes = _group_codes(group_ids)
    n_rows = len(codes)
    for q in quotas:
        if len(q.rows) != n_rows:
            raise ValueError(f"test quota {q.name!r} marks {len(q.rows)} rows for {n_rows} rows")
    sizes = np.bincount(codes, minlength=len(uniques))
    counts = np.zeros((len(uniques), len(quotas)), dtype=np.int64)  # group x quota: rows it counts
    for j, q in enumerate(quotas):
        np.add.at(counts[:, j], codes[np.asarray(q.rows, dtype=bool)], 1)
    totals = counts.sum(axis=0)
    caps = np.array([math.floor(q.max_share * t) for q, t in zip(quotas, totals)], dtype=np.int64)
    needs = np.minimum([q.n for q in quotas], caps)
    order = np.random.default_rng([seed, _QUOTA_STREAM]).permutation(len(uniques))
    reserved = np.zeros(len(uniques), dtype=bool)
    taken = np.zeros(len(quotas), dtype=np.int64)
    used = 0
    for j in sorted(range(len(quotas)), key=lambda j: (totals[j], j)):
        for g in order:
            if taken[j] >= needs[j]:
                break
            if reserved[g] or counts[g, j] == 0 or used + sizes[g] > budget or np.any(taken + counts[g] > caps):
                continue
            reserved[g] = True
            taken += counts[g]
            used += int(sizes[g])
    return reserved[codes]


def _enforce_caps(splits: np.ndarray, reserved: np.ndarray, group_ids, quotas: Sequence[TestQuota]) -> None:
    """Move stratified (not reserved) test groups of a quota past its cap to train, in place.

    The stratified walk may add a group of a class the reservation already filled to its
    cap; the cap is a promise (the class keeps that much for training), so it wins.
    Reserved groups stay: they alone meet each quota, so no quota drops below it.
    """
    groups = np.asarray(group_ids, dtype=object).astype(str)
    for q in quotas:
        rows = np.asarray(q.rows, dtype=bool)
        cap = math.floor(q.max_share * rows.sum())
        excess = int((rows & (splits == "test")).sum()) - cap
        movable = sorted(set(groups[rows & (splits == "test") & ~reserved]))
        for group in movable:
            if excess <= 0:
                break
            in_group = groups == group
            excess -= int((in_group & rows).sum())
            splits[in_group] = "train"


def assign_splits_with_quotas(
    group_ids: Sequence | pd.Series | np.ndarray,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    stratify: Sequence | pd.Series | np.ndarray | None = None,
    quotas: Sequence[TestQuota] = (),
) -> tuple[np.ndarray, dict[str, dict]]:
    """(split per row, per-quota report): quota groups reserved for test, the rest by `assign_splits`.

    The report maps each quota's name to {items, quota, cap, reserved, test, catalog, met}:
    `test` and `catalog` (train + val) count the quota's rows after the whole split.
    """
    fractions = validate_fractions(fractions or DEFAULT_FRACTIONS)
    n_rows = len(group_ids)
    test_share = fractions.get("test", 0.0)
    active = [q for q in quotas if q.n > 0]
    reserved = np.zeros(n_rows, dtype=bool)
    if active and test_share > 0:
        reserved = reserve_test_groups(group_ids, active, budget=math.floor(test_share * n_rows), seed=seed)
    splits = np.full(n_rows, "test", dtype=object)
    rest = ~reserved
    if rest.any():
        n_rest, n_reserved = int(rest.sum()), int(reserved.sum())
        rest_test = max(0.0, test_share * n_rows - n_reserved) / n_rest
        scale = (1 - rest_test) / (1 - test_share)
        adjusted = {s: (rest_test if s == "test" else f * scale) for s, f in fractions.items()}
        labels = None if stratify is None else np.asarray(stratify, dtype=object)[rest]
        splits[rest] = assign_splits(np.asarray(group_ids, dtype=object)[rest], adjusted, seed, labels)
    _enforce_caps(splits, reserved, group_ids, active)
    report = {}
    for q in quotas:
        rows = np.asarray(q.rows, dtype=bool)
        items, test = int(rows.sum()), int((rows & (splits == "test")).sum())
        report[q.name] = {"items": items, "quota": q.n, "cap": math.floor(q.max_share * items),
                          "reserved": int((rows & reserved).sum()), "test": test, "catalog": items - test,
                          "met": test >= q.n}
        level = logging.INFO if test >= q.n else logging.WARNING
        logger.log(level, "test quota %s: %d of %d items in test (quota %d, cap %d)%s", q.name, test, items, q.n,
                   report[q.name]["cap"], "" if test >= q.n else ": the cap or the test share stops it")
    return splits, report
