"""The promotion decision: when `@champion` moves to the candidate (README, "Scoreboard and promotion").

Pure: the tracking side reads the champion's evaluation from the registry and passes
what it found (`ChampionStanding`); `decide_promotion` names every reason not to move.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.scoreboard.bootstrap import points
from protocol.scoreboard.compute import Scoreboard
from protocol.scoreboard.evidence import Evidence, NotComparableError, check_comparable
from protocol.scoreboard.spec import LOCKED_TARGETS_SHA256, ScoreboardSpec


@dataclass(frozen=True)
class ChampionStanding:
    """The candidate against the current champion, on the primary metric and the same queries.

    `status`: "none" (no @champion yet: promote without comparison), "blocked" (the champion's
    evaluation cannot be read, or is not comparable: `message` says why), or "compared".
    """

    status: str
    message: str = ""
    candidate_points: float | None = None
    champion_points: float | None = None
    comparable: dict[str, Any] = field(default_factory=dict)

    @property
    def candidate_is_better(self) -> bool:
        """Strictly better on points rounded like deltas, so float noise alone never wins; no champion: True."""
        return self.status == "none" or (self.status == "compared" and self.candidate_points > self.champion_points)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "message": self.message, "candidate_points": self.candidate_points,
                "champion_points": self.champion_points, "comparable": self.comparable}


def compare_with_champion(candidate: Evidence, champion: Evidence, spec: ScoreboardSpec) -> ChampionStanding:
    """Point estimates of the primary metric on both, after checking they were evaluated on the same things."""
    try:
        comparable = check_comparable([candidate, champion])
    except NotComparableError as e:
        return ChampionStanding("blocked", f"the champion cannot be compared with the candidate: {e}")
    cand = candidate.values(spec.mode, spec.primary_metric)
    champ = champion.values(spec.mode, spec.primary_metric)
    if cand.empty or champ.empty:
        return ChampionStanding("blocked", f"no queries behind {spec.primary_metric} to compare the champion on")
    return ChampionStanding("compared", f"{spec.primary_metric}: candidate {points(cand.mean()):.2f} vs champion "
                                        f"{points(champ.mean()):.2f} points",
                            points(cand.mean()), points(champ.mean()), comparable)


@dataclass(frozen=True)
class Promotion:
    """Whether @champion moves to the candidate, and every reason it does not."""

    promote: bool
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reasons": list(self.reasons)}


def decide_promotion(board: Scoreboard, champion: ChampionStanding) -> Promotion:
    """@champion moves only when every condition holds (README, "Scoreboard and promotion"):

    the spec is the locked one; the rule holds on the point estimates (so the headline
    can be judged); no judged target is confidently worse (interval below 0); every
    headline target's interval lies above 0 (shown better, not just luckier); and the
    candidate beats the current champion on the primary metric, on the same queries
    (no champion yet: nothing to beat; a champion that cannot be read or compared blocks).
    Baseline and candidate were already checked comparable by `compute_scoreboard`.
    """
    reasons = []
    if not board.spec.locked:
        reasons.append(f"the targets file {board.spec.path} is not the locked scoreboard.yaml "
                       f"(sha256 {board.spec.sha256[:12]}... != {LOCKED_TARGETS_SHA256[:12]}...)")
    if not board.judged:
        reasons.append(board.verdict.removeprefix("VERDICT: ").lower())
    elif not board.passed:
        reasons.append("the candidate failed the targets (" + "; ".join(board.reasons) + ")")
    for r in board.results:
        if r.confidently_worse:
            reasons.append(f"{r.target.name} is confidently worse: interval [{r.ci_low_points:+.2f}, "
                           f"{r.ci_high_points:+.2f}] points")
    for r in board.headline:
        if r.judged and not r.ci_low_points > 0:
            reasons.append(f"the headline {r.target.name} is not shown better: its interval "
                           f"[{r.ci_low_points:+.2f}, {r.ci_high_points:+.2f}] points does not lie above 0")
    if champion.status == "blocked":
        reasons.append(champion.message)
    elif not champion.candidate_is_better:
        reasons.append(f"not better than the current champion on {champion.message}")
    return Promotion(promote=not reasons, reasons=tuple(reasons))
