"""Scoreboard computation: deltas in points, per-target and overall pass/fail, paired intervals.

Works on plain metric dicts (fractions in [0, 1], DESIGN.md names) and per-query arrays;
where they come from is `protocol.scoreboard.evidence`'s business. No MLflow here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocol.retrieval.metrics import THIN_BELOW
from protocol.scoreboard.spec import GROUPS, ScoreboardSpec, Target, load_targets

# Deltas are rounded to this many decimals of a point before any comparison, so
# float noise (0.45 - 0.40 = 4.999999999999999 points) does not flip a verdict.
DELTA_DECIMALS = 6
# Resamples per block of the bootstrap: bounds its memory at ~32 MB of indices whatever n is.
_BOOTSTRAP_BLOCK_CELLS = 4_000_000


class MissingMetricError(KeyError):
    """A target metric is absent on the baseline or candidate side."""

    def __str__(self) -> str:  # KeyError would repr() the message with quotes
        return str(self.args[0])


@dataclass(frozen=True)
class TargetResult:
    """One scoreboard row."""

    target: Target
    baseline: float  # fraction in [0, 1]
    candidate: float
    delta_points: float  # (candidate - baseline) x 100, rounded to DELTA_DECIMALS
    meets_threshold: bool  # the target's own PASS/FAIL
    rule: str  # what the overall verdict asks of this target
    meets_rule: bool
    n_baseline: int | None = None
    n_candidate: int | None = None

    @property
    def thin(self) -> bool:
        """True when either side has fewer than THIN_BELOW queries behind the figure."""
        return any(n is not None and n < THIN_BELOW for n in (self.n_baseline, self.n_candidate))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.target.name,
            "metric": self.target.metric,
            "group": self.target.group,
            "description": self.target.description,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "baseline_points": points(self.baseline),
            "candidate_points": points(self.candidate),
            "delta_points": self.delta_points,
            "min_delta_points": self.target.min_delta_points,
            "meets_threshold": self.meets_threshold,
            "rule": self.rule,
            "meets_rule": self.meets_rule,
            "n_baseline": self.n_baseline,
            "n_candidate": self.n_candidate,
            "thin": self.thin,
        }


@dataclass(frozen=True)
class Scoreboard:
    """All rows plus the overall verdict (`passed` = the success rule of the spec)."""

    spec: ScoreboardSpec
    results: tuple[TargetResult, ...]
    passed: bool
    reasons: tuple[str, ...] = field(default=())  # why it failed; empty when passed

    @property
    def verdict(self) -> str:
        """One line: PASSED/FAILED and why."""
        if self.passed:
            return "VERDICT: PASSED (" + _rule_summary(self.spec) + ")"
        return "VERDICT: FAILED (" + "; ".join(self.reasons) + ")"

    def result(self, name: str) -> TargetResult:
        for r in self.results:
            if r.target.name == name:
                return r
        raise KeyError(f"no scoreboard target named {name!r}; targets: {[r.target.name for r in self.results]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what scoreboard.json holds."""
        return {
            "passed": self.passed,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "version": self.spec.version,
            "mode": self.spec.mode,
            "primary_metric": self.spec.primary_metric,
            "success_rule": dict(self.spec.success_rule),
            "spec_path": self.spec.path,
            "targets": [r.to_dict() for r in self.results],
        }


def points(fraction: float) -> float:
    """A fraction in [0, 1] as points (x100), rounded like deltas."""
    return round(fraction * 100.0, DELTA_DECIMALS)


def delta_points(baseline: float, candidate: float) -> float:
    """(candidate - baseline) in points (x100), rounded so float noise cannot flip a comparison."""
    return round((candidate - baseline) * 100.0, DELTA_DECIMALS)


def _metric_value(metrics: dict[str, float], metric: str, side: str) -> float:
    if metric not in metrics:
        raise MissingMetricError(
            f"metric {metric!r} is missing on the {side} side; it is produced by the "
            f"{'baseline' if side == 'baseline' else 'evaluate'} stage (Step-6 eval/metrics*.json). "
            f"Re-run that stage, or check the metric name against scoreboard.yaml. "
            f"The {side} has {len(metrics)} metrics"
            + (f", e.g. {sorted(metrics)[:5]}" if metrics else "")
        )
    value = metrics[metric]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"metric {metric!r} on the {side} side must be a finite number, got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"metric {metric!r} on the {side} side is {value!r}; metrics are fractions in [0, 1] "
            "(the scoreboard converts to points itself)"
        )
    return float(value)


def _meets(rule: str, delta: float, threshold: float) -> bool:
    return delta >= threshold if rule == "meets_threshold" else delta > 0


def _rule_summary(spec: ScoreboardSpec) -> str:
    parts = []
    for group in GROUPS:
        members = [t for t in spec.targets if t.group == group]
        if not members:
            continue
        rule = spec.success_rule[group]
        if rule == "meets_threshold":
            parts += [f"{t.name} >= {t.min_delta_points:+g}" for t in members]
        else:
            parts.append(f"every {group.replace('_', ' ')} > 0")
    return " and ".join(parts)


def _reason(r: TargetResult) -> str:
    need = f">= {r.target.min_delta_points:+g}" if r.rule == "meets_threshold" else "> 0"
    return f"{r.target.name} {r.delta_points:+.2f} pts, needs {need}"


def compute_scoreboard(
    baseline_metrics: dict[str, float],
    candidate_metrics: dict[str, float],
    spec: ScoreboardSpec | None = None,
    baseline_counts: dict[str, int] | None = None,
    candidate_counts: dict[str, int] | None = None,
) -> Scoreboard:
    """Compare candidate with baseline on every locked target; `passed` follows spec.success_rule."""
    spec = spec or load_targets()
    results = []
    for t in spec.targets:
        base = _metric_value(baseline_metrics, t.metric, "baseline")
        cand = _metric_value(candidate_metrics, t.metric, "candidate")
        delta = delta_points(base, cand)
        rule = spec.rule_for(t)
        results.append(TargetResult(
            target=t, baseline=base, candidate=cand, delta_points=delta,
            meets_threshold=delta >= t.min_delta_points,
            rule=rule, meets_rule=_meets(rule, delta, t.min_delta_points),
            n_baseline=(baseline_counts or {}).get(t.metric),
            n_candidate=(candidate_counts or {}).get(t.metric),
        ))
    reasons = tuple(_reason(r) for r in results if not r.meets_rule)
    return Scoreboard(spec=spec, results=tuple(results), passed=not reasons, reasons=reasons)


def is_better(
    candidate_metrics: dict[str, float],
    champion_metrics: dict[str, float] | None,
    primary_metric: str | None = None,
) -> bool:
    """True when the candidate beats the champion strictly on the primary metric.

    No champion yet (None) -> True. Compared in points rounded like deltas, so
    two runs that differ by float noise only are equal, hence not better.
    """
    if champion_metrics is None:
        return True
    primary_metric = primary_metric or load_targets().primary_metric
    cand = _metric_value(candidate_metrics, primary_metric, "candidate")
    champ = _metric_value(champion_metrics, primary_metric, "champion")
    return delta_points(champ, cand) > 0


# ---------------------------------------------------------------- paired bootstrap


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
