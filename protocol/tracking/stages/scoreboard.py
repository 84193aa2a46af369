"""`scoreboard`: baseline vs candidate from the registry, locked targets, verdict tags, champion promotion."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from protocol.tracking import registry
from protocol.tracking.runs import stage_run


@dataclass
class ScoreboardConfig:
    """Compare two registered versions on the locked targets and promote a passing, better candidate."""

    baseline: str = field(default="@baseline", metadata={"help": "baseline version: @alias or a version number"})
    candidate: str = field(default="@candidate", metadata={"help": "candidate version: @alias or a version number"})
    targets: str = field(default="", metadata={"help": "targets YAML (empty = protocol/configs/scoreboard.yaml)"})
    promote: bool = field(default=True, metadata={"help": "move @champion to a passing, better candidate"})
    output_dir: str = field(default="outputs/scoreboard", metadata={"help": "where scoreboard.json/.txt go"})

    def __post_init__(self):
        for name in ("baseline", "candidate"):
            value = getattr(self, name)
            if not (value.startswith("@") and len(value) > 1) and not value.isdigit():
                raise ValueError(f"parameter {name!r} must be @alias or a version number, got {value!r}")


def resolve_version(ref: str):
    return registry.version_by_alias(ref[1:]) if ref.startswith("@") else registry.version_by_number(ref)


def champion_metrics() -> dict[str, float] | None:
    from protocol.scoreboard import read_metrics

    try:
        return read_metrics(registry.version_eval_dir(registry.version_by_alias("champion"))).metrics
    except LookupError:
        return None


def run_scoreboard(cfg: ScoreboardConfig) -> dict:
    from protocol.scoreboard import compute_scoreboard, format_table, is_better, load_targets, read_metrics, \
        write_scoreboard

    with stage_run("scoreboard", cfg, output_dir=cfg.output_dir) as logger:
        spec = load_targets(cfg.targets or None)
        base_v, cand_v = resolve_version(cfg.baseline), resolve_version(cfg.candidate)
        logger.name_after(baseline_version=base_v.version, candidate_version=cand_v.version)
        base, cand = (read_metrics(registry.version_eval_dir(v)) for v in (base_v, cand_v))
        board = compute_scoreboard(base.metrics, cand.metrics, spec, base.counts, cand.counts)
        table = format_table(board)
        json_path, txt_path = write_scoreboard(board, logger.output_dir)
        logger.log_artifact(json_path)
        logger.log_artifact(txt_path)
        logger.set_tags({"baseline.version": base_v.version, "candidate.version": cand_v.version,
                         "verdict": "pass" if board.passed else "fail"})
        logger.log_metrics({"scoreboard.passed": float(board.passed)}
                           | {f"scoreboard.delta.{r.target.metric}": r.delta_points for r in board.results})

        current = champion_metrics()
        promoted = bool(cfg.promote and board.passed and is_better(cand.metrics, current,
                                                                    spec.primary_metric))
        registry.tag_version(cand_v, {"scoreboard.verdict": "pass" if board.passed else "fail",
                                      "scoreboard.run_id": logger.run_id,
                                      "scoreboard.baseline_version": base_v.version,
                                      "scoreboard.promoted": str(promoted).lower()})
        if promoted:
            registry.set_alias("champion", cand_v)
        logger.set_tags({"promoted": str(promoted).lower()})
        verdict = (f"champion -> version {cand_v.version}" if promoted else
                   "champion unchanged (" + ("candidate failed the targets" if not board.passed else
                                             "not better than the current champion on " + spec.primary_metric
                                             if cfg.promote else "promotion disabled") + ")")
        print(table + "\n" + verdict, flush=True)
        return {"run_id": logger.run_id, "passed": board.passed, "promoted": promoted, "table": table,
                "verdict": verdict}
