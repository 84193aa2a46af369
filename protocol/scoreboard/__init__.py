"""The scoreboard: locked targets, paired deltas in points with intervals, pass/fail, promotion.

The targets live in `protocol/configs/scoreboard.yaml` (locked: they define what
"better" means). The package is cut by concern:
- `spec`: load and validate scoreboard.yaml, its sha256 and lock, the weak classes and
  rare materials it names;
- `evidence`: the per-query tables and manifests of evaluations, the comparability
  check, pairing on query ids;
- `bootstrap`: the points scale and the paired bootstrap interval;
- `compute`: per-target results, the verdict;
- `reported`: rows shown beside the targets but never judged (the c2i class-name queries);
- `promotion`: when `@champion` moves;
- `format`: the text table, the display rows the report shares, scoreboard.json/.txt.

No MLflow here: the tracking side reads versions from the registry, tags the verdict
and moves aliases.
"""

from protocol.scoreboard.bootstrap import DELTA_DECIMALS, PairedInterval, delta_points, paired_bootstrap, points
from protocol.scoreboard.compute import RulePart, Scoreboard, TargetResult, compute_scoreboard
from protocol.scoreboard.reported import ReportedRow, class_query_rows
from protocol.scoreboard.evidence import (
    COMPARED,
    Evidence,
    MissingMetricError,
    NotComparableError,
    Paired,
    check_comparable,
    evidence_of,
    paired_values,
    read_evidence,
)
from protocol.scoreboard.promotion import ChampionStanding, Promotion, compare_with_champion, decide_promotion
from protocol.scoreboard.format import TABLE_HEADER, format_table, scoreboard_rows, table_caption, write_scoreboard
from protocol.scoreboard.spec import (
    DEFAULT_SPEC_PATH,
    GROUPS,
    LOCKED_TARGETS_SHA256,
    RULES,
    EvidenceRule,
    ScoreboardSpec,
    ScoreboardSpecError,
    Target,
    focus_classes,
    load_targets,
    targets_sha256,
)

__all__ = [
    "COMPARED", "DEFAULT_SPEC_PATH", "DELTA_DECIMALS", "GROUPS", "LOCKED_TARGETS_SHA256", "RULES", "TABLE_HEADER",
    "ChampionStanding", "Evidence", "EvidenceRule", "MissingMetricError", "NotComparableError", "Paired",
    "PairedInterval", "Promotion", "ReportedRow", "RulePart", "Scoreboard", "ScoreboardSpec", "ScoreboardSpecError", "Target",
    "TargetResult", "check_comparable", "class_query_rows", "compare_with_champion", "compute_scoreboard", "decide_promotion",
    "delta_points", "evidence_of", "focus_classes", "format_table", "load_targets", "paired_bootstrap",
    "paired_values", "points", "read_evidence", "scoreboard_rows", "table_caption", "targets_sha256",
    "write_scoreboard",
]
