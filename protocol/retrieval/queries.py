"""Which test items are evaluated as queries, and which product each item belongs to."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

GROUP_COLUMNS = ("group_id", "product_id", "item_id")  # the product key, first non-empty column wins


def stratified_sample(labels: Sequence, n: int | None, seed: int = 0) -> np.ndarray:
    """Sorted row indices of a seeded sample of n rows, stratified by label.

    Every label first gets one row (when n allows, so rare categories keep queries),
    the rest is shared in proportion to label size by largest remainder. None or
    n >= len(labels) returns every row.
    """
    labels = pd.Series(labels, dtype=object).fillna("").astype(str).to_numpy()
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    if n < 1:
        raise ValueError(f"max_queries must be positive or None, got {n}")
    names, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    base = np.minimum(sizes, 1) if n >= len(names) else np.zeros_like(sizes)
    room = sizes - base
    share = (n - base.sum()) * room / room.sum()
    quota = base + np.floor(share).astype(int)
    by_remainder = np.argsort(-(share - np.floor(share)), kind="stable")
    quota[by_remainder[: n - quota.sum()]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(inverse == g))[: quota[g]] for g in range(len(names))]
    return np.sort(np.concatenate(picked))


def group_keys(meta: pd.DataFrame) -> np.ndarray:
    """Product key per row: group_id, else product_id, else item_id (first non-empty)."""
    keys = pd.Series("", index=meta.index, dtype=object)
    for column in reversed(GROUP_COLUMNS):
        if column in meta.columns:
            values = meta[column].astype(object)
            present = values.notna() & (values.astype(str) != "")
            keys = keys.where(~present, values.astype(str))
    return keys.to_numpy()
