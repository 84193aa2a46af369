"""The paired bootstrap and the points scale that every scoreboard figure uses.

A figure is a mean of per-query values (fractions); the scoreboard shows it in points
(x100) and a delta as candidate - baseline in points, with a percentile bootstrap
interval over the paired queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Deltas are rounded to this many decimals of a point before any comparison, so
# float noise (0.45 - 0.40 = 4.999999999999999 points) does not flip a verdict.
DELTA_DECIMALS = 6
# Resamples per block of the bootstrap: bounds its memory at ~32 MB of indices whatever n is.
_BOOTSTRAP_BLOCK_CELLS = 4_000_000


def points(fraction: float) -> float:
    """A fraction in [0, 1] as points (x100), rounded like deltas."""
    return round(fraction * 100.0, DELTA_DECIMALS)


def delta_points(baseline: float, candidate: float) -> float:
    """(candidate - baseline) in points (x100), rounded so float noise cannot flip a comparison."""
    return round((candidate - baseline) * 100.0, DELTA_DECIMALS)


@dataclass(frozen=True)
class PairedInterval:
    """Mean per-query difference (candidate - baseline) in points, with its percentile bootstrap interval."""

    mean_points: float
    ci_low_points: float
    ci_high_points: float
    n: int
    confidence: float
    resamples: int

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low_points > 0 or self.ci_high_points < 0


def paired_bootstrap(baseline: np.ndarray, candidate: np.ndarray, *, resamples: int, seed: int,
                     confidence: float = 0.95) -> PairedInterval:
    """Percentile bootstrap of the mean paired difference, in points (x100).

    `baseline[i]` and `candidate[i]` are the same query's per-query values (fractions).
    Each resample draws n queries with replacement and takes the mean of their
    differences; the interval is the central `confidence` share of those means
    (numpy's linear percentile). Seeded: the same inputs give the same interval.
    """
    baseline = np.asarray(baseline, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if baseline.shape != candidate.shape or baseline.ndim != 1:
        raise ValueError(f"paired_bootstrap needs two 1-D arrays of the same length (one value per query), "
                         f"got shapes {baseline.shape} and {candidate.shape}")
    if len(baseline) == 0:
        raise ValueError("paired_bootstrap needs at least one paired query; a target without queries "
                         "cannot be judged")
    if not (np.isfinite(baseline).all() and np.isfinite(candidate).all()):
        raise ValueError("paired_bootstrap got NaN or inf; pass only the queries both sides scored")
    if int(resamples) != resamples or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    diff = (candidate - baseline) * 100.0
    n = len(diff)
    rng = np.random.default_rng(seed)
    block = max(1, _BOOTSTRAP_BLOCK_CELLS // n)
    means = np.concatenate([
        diff[rng.integers(0, n, size=(min(block, resamples - start), n))].mean(axis=1)
        for start in range(0, int(resamples), block)
    ])
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return PairedInterval(mean_points=float(diff.mean()), ci_low_points=float(low), ci_high_points=float(high),
                          n=n, confidence=float(confidence), resamples=int(resamples))
