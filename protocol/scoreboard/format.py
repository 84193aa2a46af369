"""Scoreboard output: the aligned text table, display rows (shared with the report), the files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protocol.io import atomic_path, write_json
from protocol.scoreboard.bootstrap import points
from protocol.scoreboard.compute import Scoreboard, TargetResult
from protocol.scoreboard.reported import HEADLINE_STAT, REPORTED_STATS

TABLE_HEADER = ("", "target", "metric", "baseline", "candidate", "delta", "95% interval", "threshold", "n",
                "overall rule", "evidence")
NUMERIC_COLUMNS = frozenset({3, 4, 5, 6, 7, 8})  # read best right-aligned
REPORTED_HEADER = ("reported, not locked", *REPORTED_STATS, f"{HEADLINE_STAT} delta", "95% interval", "classes")
REPORTED_NUMERIC = frozenset(range(1, len(REPORTED_HEADER)))
REPORTED_CAPTION = ("Class-name queries (c2i, the public leaderboard's category-to-product task), baseline -> "
                    "candidate in points over the classes both answered; reported only: they never change the "
                    "verdict or promotion")


def _mark_cell(r: TargetResult) -> str:
    if not r.judged:
        return "N/A"
    return "PASS" if r.meets_threshold else "FAIL"


def _rule_cell(r: TargetResult) -> str:
    if not r.judged:
        return "not judged"
    need = f">= {r.target.min_delta_points:+g}" if r.rule == "meets_threshold" else "> 0"
    return f"{need} {'ok' if r.meets_rule else 'MISSED'}"


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _interval_cell(r: TargetResult) -> str:
    return "-" if not r.judged else f"[{r.ci_low_points:+.2f}, {r.ci_high_points:+.2f}]"


def _evidence_cell(r: TargetResult) -> str:
    return "; ".join(r.marks) if r.marks else ("confident" if r.confident else "-")


def scoreboard_rows(scoreboard: Scoreboard) -> list[tuple[str, ...]]:
    """One tuple of display cells per target (columns: TABLE_HEADER); values in points."""
    return [
        (
            _mark_cell(r),
            r.target.name,
            r.target.metric,
            _number(None if r.baseline is None else points(r.baseline), ".2f"),
            _number(None if r.candidate is None else points(r.candidate), ".2f"),
            _number(r.delta_points, "+.2f"),
            _interval_cell(r),
            f">= {r.target.min_delta_points:+g}",
            str(r.n) + (" thin" if r.judged and r.thin else ""),
            _rule_cell(r),
            _evidence_cell(r),
        )
        for r in scoreboard.results
    ]


def table_caption(scoreboard: Scoreboard) -> str:
    spec = scoreboard.spec
    return (
        f"Scoreboard v{spec.version}, mode {spec.mode}; values in points (x100), delta = candidate - baseline "
        f"over n paired queries, {spec.evidence.confidence:.0%} paired bootstrap interval "
        f"({spec.evidence.resamples} resamples, seed {spec.evidence.seed}); PASS/FAIL = target's own threshold; "
        f"evidence marks n < {spec.evidence.min_queries} and intervals that include 0"
    )


def reported_rows(scoreboard: Scoreboard) -> list[tuple[str, ...]]:
    """Display cells of the rows reported but not locked (columns: REPORTED_HEADER)."""
    def pair(r, stat):
        return f"{points(r.baseline[stat]):.2f} -> {points(r.candidate[stat]):.2f}"
    return [(f"c2i {r.attribute}", *(pair(r, stat) for stat in REPORTED_STATS),
             f"{r.delta_points:+.2f}", f"[{r.ci_low_points:+.2f}, {r.ci_high_points:+.2f}]", str(r.n))
            for r in scoreboard.reported]


def _aligned(rows: list[tuple[str, ...]], numeric: frozenset[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: tuple[str, ...]) -> str:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(rows[0]))
    return [line(rows[0]), rule, *(line(r) for r in rows[1:]), rule]


def format_table(scoreboard: Scoreboard) -> str:
    """An aligned text table, then the verdict line and the lines that qualify it, then the reported rows."""
    lines = [table_caption(scoreboard), *_aligned([TABLE_HEADER, *scoreboard_rows(scoreboard)], NUMERIC_COLUMNS),
             scoreboard.verdict, *scoreboard.details]
    if scoreboard.reported:
        lines += ["", REPORTED_CAPTION,
                  *_aligned([REPORTED_HEADER, *reported_rows(scoreboard)], REPORTED_NUMERIC)]
    return "\n".join(lines) + "\n"


def write_scoreboard(scoreboard: Scoreboard, out_dir: str | Path, extra: dict[str, Any] | None = None,
                     ) -> tuple[Path, Path]:
    """Write scoreboard.json (with `extra` keys, e.g. the promotion decision) and scoreboard.txt, atomically."""
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / "scoreboard.json", scoreboard.to_dict() | (extra or {}))
    txt_path = out_dir / "scoreboard.txt"
    with atomic_path(txt_path) as tmp:
        tmp.write_text(format_table(scoreboard))
    return json_path, txt_path
