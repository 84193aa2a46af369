"""The final evaluation report: report.md and report.html from metrics, tables, galleries.

Both files carry the same content: the scoreboard (PASS/FAIL per target, n and the
paired interval, the verdict and how confident it is; or why there is none), headline
metrics per mode, the per-attribute breakdowns (thin rows
marked) and the galleries. The HTML is self-contained apart from the gallery
images, which are referenced by paths relative to the report, so the report
directory can be moved or logged as an MLflow artifact directory as a whole.
"""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from protocol.io import atomic_path
from protocol.retrieval.metrics import THIN_BELOW
from protocol.scoreboard import TABLE_HEADER, Scoreboard, scoreboard_rows, table_caption
from protocol.scoreboard.format import NUMERIC_COLUMNS, REPORTED_CAPTION, REPORTED_HEADER, REPORTED_NUMERIC, reported_rows

log = logging.getLogger(__name__)

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 72em; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.pass { color: #0a6b0a; font-weight: bold; }
td.fail { color: #a40000; font-weight: bold; }
tr.thin { color: #888; font-style: italic; }
p.verdict.pass { color: #0a6b0a; font-weight: bold; }
p.verdict.fail { color: #a40000; font-weight: bold; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
dl.context dt { font-weight: bold; float: left; clear: left; width: 14em; }
dl.context dd { margin-left: 15em; font-family: monospace; }
"""

THIN_MARK = "(thin)"


# ---------------------------------------------------------------- data -> cells


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell_text(value: object) -> str:
    """Display text of one table value: floats to 4 decimals, NaN as '-'."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def headline_table(metrics: dict[str, float], counts: dict[str, int]) -> tuple[list[str], list[list[str]]]:
    """Rows = overall metrics (no per-value breakdown), columns = modes; cells 'value (n=..)'.

    A name like `t2i.neckline.p10` is overall; `t2i.category.p10.cardigans` (4+ parts)
    is a breakdown and belongs to the per-attribute tables instead.
    """
    modes: list[str] = []
    rows: dict[str, dict[str, str]] = {}
    for name in sorted(metrics):
        parts = name.split(".")
        if len(parts) > 3 or len(parts) < 2:
            continue
        mode, metric = parts[0], ".".join(parts[1:])
        if mode not in modes:
            modes.append(mode)
        n = counts.get(name)
        text = _cell_text(float(metrics[name]))
        if n is not None:
            text += f" (n={n}{', thin' if n < THIN_BELOW else ''})"
        rows.setdefault(metric, {})[mode] = text
    header = ["metric", *modes]
    body = [[metric, *(cells.get(m, "-") for m in modes)] for metric, cells in rows.items()]
    return header, body


def _frame_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]], list[bool]]:
    """Header, display cells and a thin flag per row of a breakdown DataFrame."""
    header = [str(c) for c in df.columns]
    thin = [bool(v) for v in df["thin"]] if "thin" in df.columns else [False] * len(df)
    body = [[_cell_text(v) for v in row] for row in df.itertuples(index=False, name=None)]
    if "thin" in df.columns:  # the mark reads better than True/False, and survives plain text
        col = header.index("thin")
        for row, is_thin in zip(body, thin):
            row[col] = THIN_MARK if is_thin else ""
    return header, body, thin


def _numeric_columns(df: pd.DataFrame) -> set[int]:
    return {i for i, c in enumerate(df.columns) if pd.api.types.is_numeric_dtype(df[c]) and df[c].dtype != bool}


def _check_gallery_path(name: str, rel: str, out_dir: Path) -> None:
    if PurePosixPath(rel).is_absolute() or Path(rel).is_absolute():
        raise ValueError(
            f"gallery {name!r}: {rel!r} is an absolute path; pass a path relative to the report "
            f"directory {out_dir} so the report can be moved with its images"
        )
    if not (out_dir / rel).exists():
        log.warning("gallery %r: %s does not exist (yet) beside the report", name, out_dir / rel)


# ---------------------------------------------------------------- markdown


def _md_escape(text: str) -> str:
    """Text safe inside a Markdown table cell or heading: no raw HTML, no stray pipes.

    Only `<` is escaped (no tag can open without it), so `>=` stays readable in the raw file.
    """
    return str(text).replace("<", "&lt;").replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str] | tuple[str, ...], rows: list[list[str]] | list[tuple[str, ...]]) -> str:
    head = "| " + " | ".join(_md_escape(h) or " " for h in header) + " |"
    sep = "|" + "|".join("---" for _ in header) + "|"
    body = ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join([head, sep, *body])


def _render_markdown(
    title: str, scoreboard: Scoreboard | None, no_scoreboard: str, metrics: dict[str, float],
    counts: dict[str, int], tables: dict[str, pd.DataFrame], galleries: dict[str, str], context: dict[str, str],
) -> str:
    out = [f"# {_md_escape(title)}", ""]
    if context:
        out += [f"- **{_md_escape(k)}**: `{str(v).replace('`', chr(39))}`" for k, v in context.items()] + [""]
    out += ["## Scoreboard", ""]
    if scoreboard is None:
        out += [f"No scoreboard: {_md_escape(no_scoreboard)}.", ""]
    else:
        out += [
            _md_escape(table_caption(scoreboard)) + "; the verdict follows the success rule.",
            "",
            _md_table(TABLE_HEADER, scoreboard_rows(scoreboard)),
            "",
            f"**{_md_escape(scoreboard.verdict)}**",
            "",
            *(f"- {_md_escape(line)}" for line in scoreboard.details),
            "",
        ]
        if scoreboard.reported:
            out += [_md_escape(REPORTED_CAPTION) + ".", "", _md_table(REPORTED_HEADER, reported_rows(scoreboard)), ""]
    out += ["## Headline metrics", ""]
    header, rows = headline_table(metrics, counts)
    out += [_md_table(header, rows) if rows else "No metrics.", ""]
    for name, df in tables.items():
        header, rows, _ = _frame_rows(df)
        out += [f"## {_md_escape(name)}", "", f"Rows marked {THIN_MARK} have fewer than {THIN_BELOW} queries.", ""]
        out += [_md_table(header, rows) if rows else "No rows.", ""]
    if galleries:
        out += ["## Galleries", ""]
        for name, rel in galleries.items():
            target = f"<{rel}>" if " " in rel else rel  # CommonMark needs <...> around a path with spaces
            out += [f"### {_md_escape(name)}", "", f"![{_md_escape(name)}]({target})", ""]
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------- html


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _html_table(
    header: list[str] | tuple[str, ...], rows: list[list[str]] | list[tuple[str, ...]], *,
    numeric: set[int] | frozenset[int] = frozenset(), row_classes: list[str] | None = None, cell_class=None,
) -> str:
    parts = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for r, row in enumerate(rows):
        tr_class = f' class="{row_classes[r]}"' if row_classes and row_classes[r] else ""
        cells = []
        for i, c in enumerate(row):
            classes = ["num"] if i in numeric else []
            if cell_class:
                classes += [cls for cls in [cell_class(i, c)] if cls]
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{_e(c)}</td>")
        parts.append(f"<tr{tr_class}>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def _render_html(
    title: str, scoreboard: Scoreboard | None, no_scoreboard: str, metrics: dict[str, float],
    counts: dict[str, int], tables: dict[str, pd.DataFrame], galleries: dict[str, str], context: dict[str, str],
) -> str:
    out = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{_e(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>", f"<h1>{_e(title)}</h1>",
    ]
    if context:
        out.append('<dl class="context">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in context.items()) + "</dl>")
    out.append("<h2>Scoreboard</h2>")
    if scoreboard is None:
        out.append(f"<p>No scoreboard: {_e(no_scoreboard)}.</p>")
    else:
        out.append(f"<p>{_e(table_caption(scoreboard))}; the verdict follows the success rule.</p>")
        out.append(_html_table(
            TABLE_HEADER, scoreboard_rows(scoreboard), numeric=NUMERIC_COLUMNS,
            cell_class=lambda i, c: ({"PASS": "pass", "FAIL": "fail"}.get(c) if i == 0 else None),
        ))
        verdict_class = "pass" if scoreboard.passed else "fail"
        out.append(f'<p class="verdict {verdict_class}">{_e(scoreboard.verdict)}</p>')
        out.append("<ul>" + "".join(f"<li>{_e(line)}</li>" for line in scoreboard.details) + "</ul>")
        if scoreboard.reported:
            out.append(f"<p>{_e(REPORTED_CAPTION)}.</p>")
            out.append(_html_table(REPORTED_HEADER, reported_rows(scoreboard), numeric=REPORTED_NUMERIC))
    out.append("<h2>Headline metrics</h2>")
    header, rows = headline_table(metrics, counts)
    out.append(_html_table(header, rows) if rows else "<p>No metrics.</p>")
    for name, df in tables.items():
        header, rows, thin = _frame_rows(df)
        out.append(f"<h2>{_e(name)}</h2>")
        out.append(f"<p>Rows in grey italics {_e(THIN_MARK)} have fewer than {THIN_BELOW} queries.</p>")
        out.append(_html_table(
            header, rows, numeric=_numeric_columns(df), row_classes=["thin" if t else "" for t in thin],
        ) if rows else "<p>No rows.</p>")
    if galleries:
        out.append("<h2>Galleries</h2>")
        for name, rel in galleries.items():
            out.append(
                f'<figure><figcaption>{_e(name)}</figcaption>'
                f'<img src="{_e(rel)}" alt="{_e(name)}"></figure>'
            )
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- entry


def write_report(
    out_dir: str | Path,
    *,
    scoreboard: Scoreboard | None,
    no_scoreboard: str = "no baseline was given to compare with",
    metrics: dict[str, float],
    counts: dict[str, int],
    tables: dict[str, pd.DataFrame],
    galleries: dict[str, str],
    title: str,
    context: dict[str, str],
) -> tuple[Path, Path]:
    """Write report.md and report.html (atomic) into out_dir; return their paths.

    `no_scoreboard`: why there is no scoreboard, shown in its place when `scoreboard` is None.
    `tables`: section name -> breakdown DataFrame (e.g. `by_attribute_table` output;
    a boolean `thin` column marks thin rows). `galleries`: caption -> PNG path
    relative to out_dir. `context`: run id, fingerprints, ... shown under the title.
    """
    out_dir = Path(out_dir)
    for name, rel in galleries.items():
        _check_gallery_path(name, rel, out_dir)
    parts = (title, scoreboard, no_scoreboard, metrics, counts, tables, galleries, context)
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    with atomic_path(md_path) as tmp:
        tmp.write_text(_render_markdown(*parts), encoding="utf-8")
    with atomic_path(html_path) as tmp:
        tmp.write_text(_render_html(*parts), encoding="utf-8")
    return md_path, html_path
