"""Scoreboard output: the aligned text table, display rows (shared with the report), the files."""

from __future__ import annotations

from pathlib import Path

from protocol.io import atomic_path, write_json
from protocol.scoreboard.compute import Scoreboard, TargetResult, points


TABLE_HEADER = ("", "target", "metric", "baseline", "candidate", "delta", "threshold", "n", "overall rule")


def _n_cell(r: TargetResult) -> str:
    ns = [n for n in (r.n_baseline, r.n_candidate) if n is not None]
    if not ns:
        return "-"
    text = str(ns[0]) if len(set(ns)) == 1 else f"{r.n_baseline if r.n_baseline is not None else '-'}/{r.n_candidate if r.n_candidate is not None else '-'}"
    return text + (" thin" if r.thin else "")


def _rule_cell(r: TargetResult) -> str:
    need = f">= {r.target.min_delta_points:+g}" if r.rule == "meets_threshold" else "> 0"
    return f"{need} {'ok' if r.meets_rule else 'MISSED'}"


def scoreboard_rows(scoreboard: Scoreboard) -> list[tuple[str, ...]]:
    """One tuple of display cells per target (columns: TABLE_HEADER); values in points."""
    return [
        (
            "PASS" if r.meets_threshold else "FAIL",
            r.target.name,
            r.target.metric,
            f"{points(r.baseline):.2f}",
            f"{points(r.candidate):.2f}",
            f"{r.delta_points:+.2f}",
            f">= {r.target.min_delta_points:+g}",
            _n_cell(r),
            _rule_cell(r),
        )
        for r in scoreboard.results
    ]


def format_table(scoreboard: Scoreboard) -> str:
    """An aligned text table (PASS/FAIL = each target against its own threshold) and the verdict line."""
    rows = [TABLE_HEADER, *scoreboard_rows(scoreboard)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]
    right = {3, 4, 5, 6, 7}  # numbers read best right-aligned

    def line(row: tuple[str, ...]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(rows[0]))
    spec = scoreboard.spec
    head = (
        f"Scoreboard v{spec.version}, mode {spec.mode}; values in points (x100), "
        "delta = candidate - baseline; PASS/FAIL = target's own threshold"
    )
    body = [line(rows[0]), rule, *(line(r) for r in rows[1:]), rule]
    return "\n".join([head, *body, scoreboard.verdict]) + "\n"


def write_scoreboard(scoreboard: Scoreboard, out_dir: str | Path) -> tuple[Path, Path]:
    """Write scoreboard.json and scoreboard.txt (atomic) into out_dir."""
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / "scoreboard.json", scoreboard.to_dict())
    txt_path = out_dir / "scoreboard.txt"
    with atomic_path(txt_path) as tmp:
        tmp.write_text(format_table(scoreboard))
    return json_path, txt_path
