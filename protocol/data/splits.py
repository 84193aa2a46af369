"""Group-aware, seeded, stratified train/val/test splits.

Whole groups (products) go to one split. Groups are laid out stratum by stratum
(strata in sorted label order, groups shuffled within), and walked once while each
group goes to the split furthest behind its target share. Every run of consecutive
groups therefore gets its share within about one group: each stratum does, and a
composite label "a|b" keeps each value of `a` in one run, so it is balanced as a
whole too (prepare stratifies by "material|category2": rare materials and weak
categories land in every split).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from protocol.data.schema import SPLITS

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}


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
