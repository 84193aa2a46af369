"""`scoreboard`: baseline vs candidate from the registry, locked targets, verdict tags, champion promotion.

Both sides are read from the eval/ directories of the runs their versions name
(tag `evaluation.run_id`): per-query tables and manifests. Baseline and candidate
evaluated on different things are refused (the run fails, naming each field); the
promotion decision is `protocol.scoreboard.decide_promotion` (README, "Scoreboard and
promotion").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from protocol.tracking import registry
from protocol.tracking.runs import stage_run

log = logging.getLogger(__name__)


@dataclass
class ScoreboardConfig:
    """Compare two registered versions on the locked targets and promote a passing, better candidate."""

    baseline: str = field(default="@baseline", metadata={"help": "baseline version: @alias or a version number"})
    candidate: str = field(default="@candidate", metadata={"help": "candidate version: @alias or a version number"})
    targets: str = field(default="", metadata={"help": "targets YAML (empty = the locked "
                                                       "protocol/configs/scoreboard.yaml; any other file's "
                                                       "verdict is unlocked and never promotes)"})
    promote: bool = field(default=True, metadata={"help": "move @champion to a passing, better candidate"})
    output_dir: str = field(default="outputs/scoreboard", metadata={"help": "where scoreboard.json/.txt go"})

    def __post_init__(self):
        for name in ("baseline", "candidate"):
            value = getattr(self, name)
            if not (value.startswith("@") and len(value) > 1) and not value.isdigit():
                raise ValueError(f"parameter {name!r} must be @alias or a version number, got {value!r}")


def version_evidence(version, role: str, spec):
    """The per-query evidence of a version's evaluation, in the spec's mode."""
    from protocol.scoreboard import read_evidence

    what = f"{role} (version {version.version})"
    return read_evidence(registry.version_eval_dir(version), what, modes=(spec.mode,))


def champion_standing(candidate, spec):
    """(champion version or None, ChampionStanding): no alias is the one case that needs no comparison."""
    from protocol.scoreboard import ChampionStanding, MissingMetricError, compare_with_champion

    try:
        champion = registry.version_by_alias("champion")
    except LookupError:
        return None, ChampionStanding("none", "no @champion yet")
    try:
        evidence = version_evidence(champion, "champion", spec)
    except (LookupError, OSError, ValueError, MissingMetricError) as e:
        return champion, ChampionStanding(
            "blocked", f"the evaluation of the champion (version {champion.version}) cannot be read, so the "
                       f"candidate cannot be shown better than it: {e}. Re-evaluate the champion "
                       f"(mlflow run . -e evaluate -P version={champion.version}) or move @champion by hand")
    return champion, compare_with_champion(candidate, evidence, spec)


def run_scoreboard(cfg: ScoreboardConfig) -> dict:
    from protocol.scoreboard import NotComparableError, compute_scoreboard, decide_promotion, format_table, \
        load_targets, write_scoreboard

    with stage_run("scoreboard", cfg, output_dir=cfg.output_dir) as logger:
        spec = load_targets(cfg.targets or None)
        lock_tags = {"targets_sha256": spec.sha256, "locked": str(spec.locked).lower()}
        logger.set_tags(lock_tags)
        base_v, cand_v = registry.resolve_version(cfg.baseline), registry.resolve_version(cfg.candidate)
        logger.name_after(baseline_version=base_v.version, candidate_version=cand_v.version)
        version_tags = {"scoreboard.run_id": logger.run_id, "scoreboard.baseline_version": base_v.version,
                        **{f"scoreboard.{k}": v for k, v in lock_tags.items()}}
        logger.set_tags({"baseline.version": base_v.version, "candidate.version": cand_v.version})
        baseline = version_evidence(base_v, "baseline", spec)
        candidate = version_evidence(cand_v, "candidate", spec)
        try:
            board = compute_scoreboard(baseline, candidate, spec)
        except NotComparableError:
            registry.tag_version(cand_v, version_tags | {"scoreboard.verdict": "not_comparable",
                                                         "scoreboard.promoted": "false"})
            logger.set_tags({"verdict": "not_comparable", "promoted": "false"})
            raise

        champion, standing = champion_standing(candidate, spec)
        decision = decide_promotion(board, standing)
        reasons = list(decision.reasons) + ([] if cfg.promote else ["promotion disabled (promote=false)"])
        promoted = not reasons
        promotion = {"promoted": promoted, "reasons": reasons,
                     "champion": {"version": champion.version if champion else None, **standing.to_dict()}}
        table = format_table(board)
        json_path, txt_path = write_scoreboard(board, logger.output_dir, {"promotion": promotion})
        logger.log_artifact(json_path)
        logger.log_artifact(txt_path)
        verdict = "pass" if board.passed else ("fail" if board.judged else "not_judged")
        logger.set_tags({"verdict": verdict, "promoted": str(promoted).lower()})
        logger.log_metrics({"scoreboard.passed": float(board.passed)} | _row_metrics(board))
        registry.tag_version(cand_v, version_tags | {"scoreboard.verdict": verdict,
                                                     "scoreboard.promoted": str(promoted).lower()})
        if promoted:
            registry.set_alias("champion", cand_v)
        outcome = (f"champion -> version {cand_v.version}" if promoted else
                   "champion unchanged (" + "; ".join(reasons) + ")")
        print(table + "\n" + outcome, flush=True)
        return {"run_id": logger.run_id, "passed": board.passed, "promoted": promoted, "table": table,
                "verdict": outcome, "reasons": reasons}


def _row_metrics(board) -> dict[str, float]:
    """Per target: n always; delta and its interval where the target could be judged. Per reported row: n, delta."""
    out = {}
    for r in board.results:
        out[f"scoreboard.n.{r.target.metric}"] = float(r.n)
        if r.judged:
            out |= {f"scoreboard.delta.{r.target.metric}": r.delta_points,
                    f"scoreboard.ci_low.{r.target.metric}": r.ci_low_points,
                    f"scoreboard.ci_high.{r.target.metric}": r.ci_high_points}
    for r in board.reported:  # reported beside the targets, never judged
        out |= {f"scoreboard.reported.n.{r.metric}": float(r.n), f"scoreboard.reported.delta.{r.metric}": r.delta_points}
    return out
