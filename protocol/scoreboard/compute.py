"""Scoreboard computation: paired deltas in points, intervals, per-target results, the verdict.

Both sides are paired on their query ids (`protocol.scoreboard.evidence`), after their
manifests were checked to agree. For each target: the point estimate (mean per-query
value on each side, delta in points), n (paired queries behind it) and a paired
percentile bootstrap interval of the delta, by the spec's evidence rule. No MLflow here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.retrieval.metrics import THIN_BELOW
from protocol.scoreboard.bootstrap import delta_points, paired_bootstrap, points
from protocol.scoreboard.evidence import Evidence, check_comparable, paired_values
from protocol.scoreboard.reported import ReportedRow, class_query_rows
from protocol.scoreboard.spec import GROUPS, LOCKED_TARGETS_SHA256, ScoreboardSpec, Target, load_targets

def _need(rule: str, threshold: float) -> str:
    return f">= {threshold:+g}" if rule == "meets_threshold" else "> 0"


@dataclass(frozen=True)
class TargetResult:
    """One scoreboard row. With n = 0 (no query behind the target) every figure is None: not judged."""

    target: Target
    rule: str  # what the overall verdict asks of this target
    n: int  # paired queries behind the figure
    baseline: float | None  # mean per-query value over the paired queries, a fraction
    candidate: float | None
    delta_points: float | None  # (candidate - baseline) x 100, rounded to DELTA_DECIMALS
    ci_low_points: float | None  # the paired bootstrap interval of delta_points
    ci_high_points: float | None
    min_queries: int  # the spec's evidence rule
    n_baseline: int = 0  # queries behind the figure on each side, before pairing
    n_candidate: int = 0

    @property
    def judged(self) -> bool:
        return self.n > 0

    @property
    def meets_threshold(self) -> bool | None:
        """The target's own PASS/FAIL against its threshold (None: not judged)."""
        return None if not self.judged else self.delta_points >= self.target.min_delta_points

    @property
    def meets_rule(self) -> bool | None:
        """What the overall verdict asks of this target, on the point estimate (None: not judged)."""
        if not self.judged:
            return None
        return self.meets_threshold if self.rule == "meets_threshold" else self.delta_points > 0

    @property
    def few_queries(self) -> bool:
        return self.judged and self.n < self.min_queries

    @property
    def interval_includes_zero(self) -> bool:
        return self.judged and self.ci_low_points <= 0 <= self.ci_high_points

    @property
    def confident(self) -> bool:
        """Enough paired queries, and an interval that excludes 0."""
        return self.judged and not self.few_queries and not self.interval_includes_zero

    @property
    def meets_rule_with_confidence(self) -> bool:
        """The rule holds for the whole interval: ci_low >= threshold (meets_threshold) or > 0 (improves)."""
        if not self.judged or self.few_queries:
            return False
        if self.rule == "meets_threshold":
            return self.ci_low_points >= self.target.min_delta_points
        return self.ci_low_points > 0

    @property
    def confidently_worse(self) -> bool:
        return self.confident and self.ci_high_points < 0

    @property
    def thin(self) -> bool:
        """Fewer than THIN_BELOW queries behind the figure (DESIGN's mark for any breakdown)."""
        return self.n < THIN_BELOW

    @property
    def marks(self) -> tuple[str, ...]:
        """What the table flags about the evidence of this row."""
        if not self.judged:
            return ("cannot be judged: no queries",)
        return tuple(m for m, on in ((f"n < {self.min_queries}", self.few_queries),
                                     ("interval includes 0", self.interval_includes_zero)) if on)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.target.name,
            "metric": self.target.metric,
            "group": self.target.group,
            "description": self.target.description,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "baseline_points": None if self.baseline is None else points(self.baseline),
            "candidate_points": None if self.candidate is None else points(self.candidate),
            "delta_points": self.delta_points,
            "min_delta_points": self.target.min_delta_points,
            "meets_threshold": self.meets_threshold,
            "rule": self.rule,
            "meets_rule": self.meets_rule,
            "n": self.n,
            "n_baseline": self.n_baseline,
            "n_candidate": self.n_candidate,
            "thin": self.thin,
            "ci_low_points": self.ci_low_points,
            "ci_high_points": self.ci_high_points,
            "confident": self.confident,
            "meets_rule_with_confidence": self.meets_rule_with_confidence,
            "judged": self.judged,
            "marks": list(self.marks),
        }


@dataclass(frozen=True)
class RulePart:
    """One part of the success rule ("neckline >= +5", "every weak class > 0") over its judged targets."""

    text: str
    targets: tuple[str, ...]  # the judged targets it covers
    holds: bool  # on the point estimates
    holds_with_confidence: bool  # for every target's whole interval, with enough queries

    def to_dict(self) -> dict[str, Any]:
        return {"part": self.text, "targets": list(self.targets), "holds": self.holds,
                "holds_with_confidence": self.holds_with_confidence}


@dataclass(frozen=True)
class Scoreboard:
    """All rows plus the overall verdict (`passed` = the success rule of the spec, on point estimates)."""

    spec: ScoreboardSpec
    results: tuple[TargetResult, ...]
    comparable: dict[str, Any] = field(default_factory=dict)  # what was checked, each side's value
    reported: tuple[ReportedRow, ...] = ()  # shown beside the targets, never judged (c2i)

    def result(self, name: str) -> TargetResult:
        for r in self.results:
            if r.target.name == name:
                return r
        raise KeyError(f"no scoreboard target named {name!r}; targets: {[r.target.name for r in self.results]}")

    @property
    def headline(self) -> tuple[TargetResult, ...]:
        return tuple(r for r in self.results if r.target.group == "headline")

    @property
    def judged(self) -> bool:
        """False when a headline target has no queries: then nothing can be concluded."""
        return all(r.judged for r in self.headline)

    @property
    def not_judged(self) -> tuple[str, ...]:
        return tuple(r.target.name for r in self.results if not r.judged)

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why the rule fails, one per judged target that misses it; empty when it holds."""
        return tuple(f"{r.target.name} {r.delta_points:+.2f} pts, needs {_need(r.rule, r.target.min_delta_points)}"
                     for r in self.results if r.judged and not r.meets_rule)

    @property
    def passed(self) -> bool:
        return self.judged and not self.reasons

    @property
    def rule_parts(self) -> tuple[RulePart, ...]:
        parts = []
        for group in GROUPS:
            members = [r for r in self.results if r.target.group == group and r.judged]
            if not members:
                continue
            if self.spec.success_rule[group] == "meets_threshold":
                groups = [(f"{r.target.name} >= {r.target.min_delta_points:+g}", [r]) for r in members]
            else:
                groups = [(f"every {group.replace('_', ' ')} > 0", members)]
            parts += [RulePart(text, tuple(r.target.name for r in rs), all(r.meets_rule for r in rs),
                               all(r.meets_rule_with_confidence for r in rs)) for text, rs in groups]
        return tuple(parts)

    @property
    def verdict(self) -> str:
        """One line: PASSED / FAILED / CANNOT BE JUDGED and why."""
        if not self.judged:
            missing = ", ".join(r.target.name for r in self.headline if not r.judged)
            return f"VERDICT: CANNOT BE JUDGED (no queries behind the headline {missing})"
        if self.passed:
            return "VERDICT: PASSED (" + " and ".join(p.text for p in self.rule_parts) + ")"
        return "VERDICT: FAILED (" + "; ".join(self.reasons) + ")"

    @property
    def details(self) -> tuple[str, ...]:
        """The lines under the verdict: confidence per part of the rule, targets not judged, the spec."""
        lines = []
        if self.rule_parts:
            lines.append(f"with {self.spec.evidence.confidence:.0%} confidence: " + "; ".join(
                f"{p.text}: {'yes' if p.holds_with_confidence else 'no'}" for p in self.rule_parts))
        if self.not_judged:
            lines.append("not judged (no queries): " + ", ".join(self.not_judged))
        lock = "locked" if self.spec.locked else (
            f"UNLOCKED (not the repository's scoreboard.yaml, sha256 {LOCKED_TARGETS_SHA256[:12]}...): "
            "this verdict never moves @champion")
        lines.append(f"targets: {self.spec.path} v{self.spec.version}, sha256 {self.spec.sha256[:12]}..., {lock}")
        return tuple(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what scoreboard.json holds."""
        return {
            "passed": self.passed,
            "judged": self.judged,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "not_judged": list(self.not_judged),
            "rule_parts": [p.to_dict() for p in self.rule_parts],
            "version": self.spec.version,
            "mode": self.spec.mode,
            "primary_metric": self.spec.primary_metric,
            "success_rule": dict(self.spec.success_rule),
            "evidence": self.spec.evidence.to_dict(),
            "spec_path": self.spec.path,
            "targets_sha256": self.spec.sha256,
            "locked": self.spec.locked,
            "comparable": self.comparable,
            "targets": [r.to_dict() for r in self.results],
            "reported": [r.to_dict() for r in self.reported],
        }


def compute_scoreboard(baseline: Evidence, candidate: Evidence, spec: ScoreboardSpec | None = None) -> Scoreboard:
    """Compare candidate with baseline on every target, paired on query ids.

    Raises NotComparableError (naming each field that differs) unless both were evaluated
    on the same dataset, queries, catalog splits, backbone and metric version.
    """
    spec = spec or load_targets()
    comparable = check_comparable([baseline, candidate])
    rule = spec.evidence
    results = []
    for t in spec.targets:
        pair = paired_values(baseline, candidate, spec.mode, t.metric)
        figures: dict[str, float | None] = dict.fromkeys(
            ("baseline", "candidate", "delta_points", "ci_low_points", "ci_high_points"))
        if pair.n:
            interval = paired_bootstrap(pair.baseline, pair.candidate, resamples=rule.resamples, seed=rule.seed,
                                        confidence=rule.confidence)
            base, cand = float(pair.baseline.mean()), float(pair.candidate.mean())
            figures = {"baseline": base, "candidate": cand, "delta_points": delta_points(base, cand),
                       "ci_low_points": interval.ci_low_points, "ci_high_points": interval.ci_high_points}
        results.append(TargetResult(target=t, rule=spec.rule_for(t), n=pair.n, min_queries=rule.min_queries,
                                    n_baseline=pair.n_baseline, n_candidate=pair.n_candidate, **figures))
    reported = class_query_rows(baseline.class_queries, candidate.class_queries, rule)
    return Scoreboard(spec=spec, results=tuple(results), comparable=comparable, reported=reported)
