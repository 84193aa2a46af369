"""The paired bootstrap against intervals worked out by hand and by exhaustive enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from protocol.scoreboard import paired_bootstrap


def test_two_queries_by_hand():
    # differences -10 and +30 points: a resample of 2 has mean -10 (1/4), +10 (1/2) or +30 (1/4),
    # so the central 95% of resample means runs from -10 to +30; the point estimate is +10.
    r = paired_bootstrap(np.array([0.5, 0.2]), np.array([0.4, 0.5]), resamples=2000, seed=0)
    assert (r.mean_points, r.ci_low_points, r.ci_high_points, r.n) == pytest.approx((10.0, -10.0, 30.0, 2))
    assert not r.excludes_zero


def exact_percentile_interval(diff: np.ndarray, confidence: float) -> tuple[float, float, float, float]:
    """The bootstrap distribution of the mean, enumerated: every n-tuple of draws is equally likely.

    Returns (low, high, margin_low, margin_high): the quantiles, and how far the CDF steps
    next to them are from the tail levels (a sampled bootstrap lands on the exact
    quantile when that margin is many standard errors wide).
    """
    n = len(diff)
    means = np.array([diff[list(draw)].mean() for draw in itertools.product(range(n), repeat=n)])
    values, counts = np.unique(means, return_counts=True)
    cdf = np.cumsum(counts) / counts.sum()
    tail = (1 - confidence) / 2
    i, j = np.searchsorted(cdf, tail), np.searchsorted(cdf, 1 - tail)
    margin_low = min(cdf[i] - tail, tail - (cdf[i - 1] if i else 0.0))
    margin_high = min(cdf[j] - (1 - tail), (1 - tail) - cdf[j - 1])
    return values[i], values[j], margin_low, margin_high


@pytest.mark.parametrize("diff_points", [[0, 10, 10, 40], [-20, 10, 10, 10, 40]])
def test_matches_the_enumerated_bootstrap_distribution(diff_points):
    diff = np.array(diff_points, dtype=float)
    low, high, margin_low, margin_high = exact_percentile_interval(diff, 0.95)
    resamples = 20_000
    # the sampled CDF has standard error <= sqrt(0.04 * 0.96 / 20000) ~ 0.0014 near the tails
    assert min(margin_low, margin_high) > 5 * np.sqrt(0.04 * 0.96 / resamples)
    baseline = np.full(len(diff), 0.3)
    r = paired_bootstrap(baseline, baseline + diff / 100, resamples=resamples, seed=7)
    assert r.mean_points == pytest.approx(diff.mean())
    assert (r.ci_low_points, r.ci_high_points) == pytest.approx((low, high))
    assert r.excludes_zero == (low > 0 or high < 0)


def test_constant_difference_has_a_point_interval_and_excludes_zero():
    r = paired_bootstrap(np.zeros(40), np.full(40, 0.05), resamples=1000, seed=0)
    assert (r.mean_points, r.ci_low_points, r.ci_high_points) == pytest.approx((5.0, 5.0, 5.0))
    assert r.excludes_zero and r.n == 40 and r.resamples == 1000 and r.confidence == 0.95


def test_seeded_and_narrower_at_lower_confidence():
    rng = np.random.default_rng(0)
    base, cand = rng.random(200), rng.random(200)
    a = paired_bootstrap(base, cand, resamples=2000, seed=3)
    assert a == paired_bootstrap(base, cand, resamples=2000, seed=3)
    narrow = paired_bootstrap(base, cand, resamples=2000, seed=3, confidence=0.5)
    assert a.ci_low_points < narrow.ci_low_points <= narrow.ci_high_points < a.ci_high_points
    # blocks of resamples (bounded memory) draw the same stream as one block would
    big = paired_bootstrap(np.zeros(30_000), np.full(30_000, 0.01), resamples=300, seed=0)
    assert big.ci_low_points == pytest.approx(1.0)


@pytest.mark.parametrize("base, cand, kwargs, message", [
    ([], [], {}, "at least one paired query"),
    ([0.1, 0.2], [0.1], {}, "same length"),
    ([0.1, np.nan], [0.1, 0.2], {}, "NaN"),
    ([0.1], [0.2], {"resamples": 0}, "resamples must be a positive integer"),
    ([0.1], [0.2], {"confidence": 1.0}, r"confidence must be in \(0, 1\)"),
])
def test_bad_input_is_refused(base, cand, kwargs, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(np.array(base, float), np.array(cand, float), **({"resamples": 100, "seed": 0} | kwargs))
