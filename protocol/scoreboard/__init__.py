"""The scoreboard: locked targets, deltas in points, paired intervals, pass/fail, promotion.

The targets live in `protocol/configs/scoreboard.yaml` (locked: they define what
"better" means). The package is cut by concern:
- `spec`: load and validate scoreboard.yaml; the weak classes and rare materials it names;
- `evidence`: read what an evaluation left on disk;
- `compute`: deltas, the paired bootstrap, per-target results and the verdict;
- `format`: the text table, the display rows the report shares, scoreboard.json/.txt.

No MLflow here: the tracking side reads versions from the registry, tags the verdict
and moves aliases.
"""

from protocol.scoreboard.compute import (
    DELTA_DECIMALS,
    MissingMetricError,
    PairedInterval,
    Scoreboard,
    TargetResult,
    compute_scoreboard,
    delta_points,
    is_better,
    paired_bootstrap,
    points,
)
from protocol.scoreboard.evidence import MetricsFile, compute_scoreboard_files, read_metrics
from protocol.scoreboard.format import TABLE_HEADER, format_table, scoreboard_rows, write_scoreboard
from protocol.scoreboard.spec import (
    DEFAULT_SPEC_PATH,
    GROUPS,
    RULES,
    ScoreboardSpec,
    ScoreboardSpecError,
    Target,
    focus_classes,
    load_targets,
)

__all__ = [
    "DEFAULT_SPEC_PATH", "DELTA_DECIMALS", "GROUPS", "RULES", "TABLE_HEADER", "MetricsFile", "MissingMetricError",
    "PairedInterval", "Scoreboard", "ScoreboardSpec", "ScoreboardSpecError", "Target", "TargetResult",
    "compute_scoreboard", "compute_scoreboard_files", "delta_points", "focus_classes", "format_table", "is_better",
    "load_targets", "paired_bootstrap", "points", "read_metrics", "scoreboard_rows", "write_scoreboard",
]
