"""Rows reported beside the locked targets, never judged: the class-name queries (c2i).

One row per attribute: each side's mean P@1, P@10, MRR and AvgP over the classes both
sides could answer (`protocol.retrieval.class_queries`), and the AvgP delta in points with
a paired bootstrap interval over those classes, seeded as the targets are; n = classes.
They never enter `passed`, the verdict or promotion: the locked targets alone say what
better means. A side evaluated before c2i existed has no class table, so there are no rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from protocol.retrieval.class_queries import CLASS_QUERY_MODE, N_RELEVANT
from protocol.retrieval.leaderboard_metrics import PRECISION_KIND, leaderboard_column_names, metric_name
from protocol.scoreboard.bootstrap import delta_points, paired_bootstrap, points
from protocol.scoreboard.spec import EvidenceRule

REPORTED_STATS = leaderboard_column_names(PRECISION_KIND)  # P@1, P@10, MRR, AvgP
HEADLINE_STAT = REPORTED_STATS[-1]  # AvgP: the leaderboard's summary figure for class-name tasks
PAIR_ON = ["attribute", "value"]


@dataclass(frozen=True)
class ReportedRow:
    """One attribute's class-name queries on both sides; figures are fractions, deltas in points."""

    attribute: str
    n: int  # classes both sides answered
    baseline: dict[str, float]  # leaderboard column (P@1, P@10, MRR, AvgP) -> mean over the classes
    candidate: dict[str, float]
    delta_points: float  # of HEADLINE_STAT
    ci_low_points: float
    ci_high_points: float

    @property
    def metric(self) -> str:
        return f"{CLASS_QUERY_MODE}.{self.attribute}.{metric_name(HEADLINE_STAT)}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": f"{CLASS_QUERY_MODE} {self.attribute}", "metric": self.metric, "n": self.n,
                "baseline_points": {metric_name(k): points(v) for k, v in self.baseline.items()},
                "candidate_points": {metric_name(k): points(v) for k, v in self.candidate.items()},
                "delta_points": self.delta_points, "ci_low_points": self.ci_low_points,
                "ci_high_points": self.ci_high_points, "locked": False}


def class_query_rows(baseline: pd.DataFrame | None, candidate: pd.DataFrame | None,
                     rule: EvidenceRule) -> tuple[ReportedRow, ...]:
    """Per attribute, both sides' class-query figures paired on (attribute, value); () when a side has none."""
    if baseline is None or candidate is None:
        return ()
    stats = list(REPORTED_STATS)
    answered = [table.loc[table[N_RELEVANT] > 0, PAIR_ON + stats] for table in (baseline, candidate)]
    paired = answered[0].merge(answered[1], on=PAIR_ON, suffixes=("_b", "_c"))
    rows = []
    for attribute, group in paired.groupby("attribute", sort=True):
        base = {s: float(group[f"{s}_b"].mean()) for s in stats}
        cand = {s: float(group[f"{s}_c"].mean()) for s in stats}
        interval = paired_bootstrap(group[f"{HEADLINE_STAT}_b"].to_numpy(), group[f"{HEADLINE_STAT}_c"].to_numpy(),
                                    resamples=rule.resamples, seed=rule.seed, confidence=rule.confidence)
        rows.append(ReportedRow(str(attribute), len(group), base, cand,
                                delta_points(base[HEADLINE_STAT], cand[HEADLINE_STAT]),
                                interval.ci_low_points, interval.ci_high_points))
    return tuple(rows)
