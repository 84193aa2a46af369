"""Counting, enumerating and sampling candidate pairs without building the quadratic list.

A catalog of n items has O(n^2) candidate pairs per type, too many to list for a real
catalog. Items are sorted by (block, value) instead, so each item's partners are one or two
contiguous position ranges that can be counted, enumerated or sampled with a few numpy
operations. Distinct pairs are drawn first; when a type's pool is smaller than its quota
each distinct pair is reused evenly, at most `max_repeats` times, and the caller reports
whatever is still missing as a shortfall, never hides it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# Rejection sampling of distinct pairs gives up after this many rounds (only reachable when
# nearly every candidate pair is of one product) and reports the rest as a shortfall.
MAX_SAMPLING_ROUNDS = 50


@dataclass
class RunPool:
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
              same: bool) -> "RunPool":
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
class ListPool:
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
class Draw:
    """Pairs drawn from one pool, as meta rows, with the attribute each names."""

    a: np.ndarray
    b: np.ndarray
    labels: np.ndarray
    pool_size: int  # distinct candidate pairs (an upper bound when sampled: before dropping same-product ones)


def fill_quota(pools: list, quota: int, rng: np.random.Generator, max_repeats: int, products) -> list[Draw]:
    """`quota` pairs over `pools`, one Draw each: equal shares, a small pool's unused share going to
    the others, so one attribute's large pool cannot crowd out the rest of its type. `products` as in _draw."""
    shares = _split_quota(quota, [p.size * max_repeats for p in pools])
    return [_draw(pool, share, rng, max_repeats, products) for pool, share in zip(pools, shares)]


def _draw(pool, quota: int, rng: np.random.Generator, max_repeats: int, products: np.ndarray | None) -> Draw:
    """Up to `quota` pairs: distinct ones first, each reused evenly and at most max_repeats times.

    `products` (negatives only): pairs of one product are dropped.
    """
    empty = np.zeros(0, dtype=np.int64)
    if quota <= 0 or pool.size == 0:
        return Draw(empty, empty, np.zeros(0, dtype=object), pool.size)
    if pool.size > 2 * quota:
        return _distinct_sample(pool, quota, rng, products)
    a, b, labels = _drop_same_product(*pool.enumerate(), products)
    n = min(quota, len(a) * max_repeats)
    reps, rest = divmod(n, max(len(a), 1))
    take = np.concatenate([np.tile(np.arange(len(a)), reps), rng.choice(len(a), rest, replace=False)])
    return Draw(a[take], b[take], labels[take], len(a))


def _distinct_sample(pool, quota: int, rng: np.random.Generator, products: np.ndarray | None) -> Draw:
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
    return Draw(a[:quota], b[:quota], labels[:quota], pool.size)


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
