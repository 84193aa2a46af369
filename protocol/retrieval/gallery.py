"""Galleries: queries and their top-10 thumbnails, with a hit/miss mark per attribute.

Every figure is a grid: one row per ranking, the first cell shows the query (its text,
or its image, plus its attributes), the next cells the ranked catalog items. Under each
thumbnail one small label per attribute shows the result's value: green when it matches
the query, red when it does not, grey when the query's value is not scored (unknown,
or graphic for category), using the same rules as the metrics.

Figures are `matplotlib.figure.Figure` objects drawn with the Agg renderer and never
registered with pyplot, so no global backend is touched; the caller saves or logs them.
`load_image(item_id) -> PIL.Image` supplies the pictures.
"""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from protocol.retrieval.metrics import (
    EvalResult,
    attribute_column,
    attribute_relevance,
    by_attribute_table,
    known_values,
    metric_value_name,
)

logger = logging.getLogger(__name__)

ImageLoader = Callable[[str], Image.Image]
N_RESULTS = 10
THUMB_PX = 128
HIT, MISS, NOT_SCORED = "#2e7d32", "#c62828", "#9e9e9e"
DEFAULT_ATTRIBUTES = ("category", "material", "neckline")
DEFAULT_FOCUS = {"category": None, "material": None, "neckline": None}


@dataclass
class GalleryRow:
    query_row: int  # row of queries_meta
    ranking: np.ndarray  # catalog rows, best first (-1 = none)
    label: str = ""  # shown above the query cell


def query_gallery(
    query_rows: Sequence[int],
    rankings: np.ndarray,
    queries_meta: pd.DataFrame,
    catalog_meta: pd.DataFrame,
    load_image: ImageLoader,
    attributes: Sequence[str] = DEFAULT_ATTRIBUTES,
    n_queries: int = 6,
    *,
    query_as: str = "text",
    title: str | None = None,
) -> Figure:
    """The first `n_queries` queries and their rankings (rankings[i] belongs to query_rows[i])."""
    rows = [GalleryRow(int(q), rankings[i]) for i, q in enumerate(list(query_rows)[:n_queries])]
    return draw_gallery(rows, queries_meta, catalog_meta, load_image, attributes, query_as=query_as, title=title)


def weakness_gallery(
    result: EvalResult,
    queries_meta: pd.DataFrame,
    catalog_meta: pd.DataFrame,
    load_image: ImageLoader,
    *,
    mode: str = "t2i",
    focus: Mapping[str, Sequence[str] | None] = DEFAULT_FOCUS,
    stat: str = "p10",
    n_worst: int = 2,
    n_per_value: int = 2,
    n_queries: int | None = None,
    query_as: str = "text",
) -> Figure:
    """Queries of the worst-scoring values: for each focus attribute, the listed values
    (None: the `n_worst` lowest by `stat`, non-thin values first), and for each value
    the `n_per_value` queries with the fewest hits on that attribute; at most
    `n_queries` rows in all (None: no cap)."""
    ranking = result.rankings[mode]
    rows: list[GalleryRow] = []
    for attribute, values in focus.items():
        table = by_attribute_table(result, attribute)
        table = table[table["mode"] == mode].set_index("value")
        for value in _focus_values(table, values, stat, n_worst):
            picked = _worst_queries(result, ranking, queries_meta, catalog_meta, attribute, value, n_per_value)
            score = f"{stat} {table.at[value, stat]:.2f}, n={table.at[value, 'n']}" if value in table.index else "no queries"
            rows += [GalleryRow(int(result.query_rows[i]), ranking[i], f"{attribute}={value} ({score})") for i in picked]
    title = f"{mode}: worst values of {', '.join(focus)}"
    return draw_gallery(rows[:n_queries], queries_meta, catalog_meta, load_image, tuple(focus), query_as=query_as, title=title)


def side_by_side_gallery(
    baseline_rankings: np.ndarray,
    candidate_rankings: np.ndarray,
    query_rows: Sequence[int],
    queries_meta: pd.DataFrame,
    catalog_meta: pd.DataFrame,
    load_image: ImageLoader,
    attributes: Sequence[str] = DEFAULT_ATTRIBUTES,
    n_queries: int = 4,
    *,
    labels: tuple[str, str] = ("baseline", "candidate"),
    query_as: str = "text",
    title: str | None = None,
) -> Figure:
    """Two rows per query: the baseline's top-10 above the candidate's (row i of each
    ranking array belongs to query_rows[i]; both rank the same catalog_meta)."""
    if len(baseline_rankings) != len(candidate_rankings):
        raise ValueError(
            f"baseline ranks {len(baseline_rankings)} queries but candidate ranks {len(candidate_rankings)}; "
            "evaluate both on the same query rows"
        )
    rows = []
    for i, q in enumerate(list(query_rows)[:n_queries]):
        rows += [GalleryRow(int(q), baseline_rankings[i], labels[0]), GalleryRow(int(q), candidate_rankings[i], labels[1])]
    return draw_gallery(rows, queries_meta, catalog_meta, load_image, attributes, query_as=query_as, title=title)


def draw_gallery(
    rows: Sequence[GalleryRow],
    queries_meta: pd.DataFrame,
    catalog_meta: pd.DataFrame,
    load_image: ImageLoader,
    attributes: Sequence[str],
    *,
    query_as: str = "text",
    title: str | None = None,
) -> Figure:
    """One grid row per GalleryRow: the query cell, then up to N_RESULTS thumbnails."""
    if query_as not in ("text", "image"):
        raise ValueError(f"query_as must be 'text' or 'image', got {query_as!r}")
    n_results = min(N_RESULTS, max((len(r.ranking) for r in rows), default=N_RESULTS))
    label_lines = len(attributes)
    fig = Figure(figsize=(1.3 * (n_results + 1.6), max(1, len(rows)) * (1.45 + 0.17 * label_lines)), dpi=100)
    FigureCanvasAgg(fig)
    if not rows:
        fig.text(0.5, 0.5, "no queries to show", ha="center", va="center")
        return fig
    grid = fig.add_gridspec(len(rows), n_results + 1, width_ratios=[1.6] + [1] * n_results,
                            hspace=0.35 + 0.12 * label_lines, wspace=0.08)
    for r, row in enumerate(rows):
        query = queries_meta.iloc[row.query_row]
        marks = _marks(query, row.ranking[:n_results], catalog_meta, attributes)
        facts = "\n".join(_fact(query, a, m) for a, m in zip(attributes, marks))
        _draw_query(fig.add_subplot(grid[r, 0]), query, row.label, facts, load_image, query_as)
        for j in range(n_results):
            ax = fig.add_subplot(grid[r, j + 1])
            _draw_result(ax, int(row.ranking[j]) if j < len(row.ranking) else -1, j, catalog_meta,
                         [m[j] for m in marks], load_image)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def _marks(query: pd.Series, ranking: np.ndarray, catalog_meta: pd.DataFrame, attributes: Sequence[str]):
    """Per attribute, per result: (label text, colour)."""
    ranking = np.asarray(ranking)[None, :]
    out = []
    for attribute in attributes:
        column = attribute_column(attribute)
        hits = attribute_relevance([query[column]], catalog_meta[column], ranking, attribute)[0]
        scored = known_values([query[column]], attribute)[0]
        values = [str(catalog_meta[column].iloc[i]) if i >= 0 else "" for i in ranking[0]]
        out.append([(v, HIT if h else MISS) if scored else (v, NOT_SCORED) for v, h in zip(values, hits)])
    return out


def _fact(query: pd.Series, attribute: str, marks) -> str:
    """'neckline: v-neck (3/10)': the query's value and how many shown results share it."""
    value = query[attribute_column(attribute)]
    if not known_values([value], attribute)[0]:
        return f"{attribute}: {value}"
    return f"{attribute}: {value}  ({sum(colour == HIT for _, colour in marks)}/{len(marks)})"


def _draw_query(ax, query: pd.Series, label: str, facts: str, load_image: ImageLoader, query_as: str) -> None:
    """The query cell: its text (or image) and its attribute values with hits in the row."""
    ax.set_xticks([])
    ax.set_yticks([])
    if query_as == "image":
        ax.imshow(_thumbnail(load_image(str(query["item_id"]))))
        ax.set_xlabel(facts, fontsize=5.5, loc="left")
    else:
        text = str(query.get("text", "") or query.get("title", ""))
        wrapped = "\n".join(textwrap.wrap(text, 30, max_lines=5, placeholder=" ..."))
        ax.text(0.03, 0.97, wrapped, fontsize=6, va="top", ha="left", transform=ax.transAxes)
        ax.text(0.03, 0.03, facts, fontsize=5.5, va="bottom", ha="left", transform=ax.transAxes, color="#333333")
    ax.set_title(f"{label}\n{query['item_id']}" if label else str(query["item_id"]), fontsize=6.5, loc="left")


def _draw_result(ax, index: int, rank: int, catalog_meta: pd.DataFrame, marks, load_image: ImageLoader) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if index < 0:
        ax.set_axis_off()
        return
    item_id = str(catalog_meta["item_id"].iloc[index])
    ax.imshow(_thumbnail(load_image(item_id)))
    ax.set_title(f"{rank + 1}. {item_id}", fontsize=5.5)
    for line, (value, colour) in enumerate(marks):
        ax.text(0.5, -0.04 - 0.17 * line, value[:14], transform=ax.transAxes, ha="center", va="top",
                fontsize=5.5, color="white", bbox={"facecolor": colour, "edgecolor": "none", "pad": 1.2})


def _thumbnail(image: Image.Image) -> np.ndarray:
    image = image.convert("RGB")
    image.thumbnail((THUMB_PX, THUMB_PX))
    return np.asarray(image)


def _focus_values(table: pd.DataFrame, values: Sequence[str] | None, stat: str, n_worst: int) -> list[str]:
    """Metric-key names of the values to show: the given ones, or the worst n_worst."""
    if values is not None:
        return [metric_value_name(v) for v in values]
    if table.empty:
        return []
    ranked = table.sort_values(["thin", stat], kind="stable")  # non-thin values first
    return list(ranked.index[:n_worst])


def _worst_queries(result, ranking, queries_meta, catalog_meta, attribute, value, n) -> list[int]:
    """Positions (in result.query_rows) of the n queries with value and the fewest hits in the top 10."""
    column = attribute_column(attribute)
    q_values = queries_meta[column].iloc[result.query_rows].astype(str).map(metric_value_name).to_numpy()
    positions = np.flatnonzero(q_values == value)
    if len(positions) == 0:
        logger.warning("weakness gallery: no query has %s=%s", attribute, value)
        return []
    hits = attribute_relevance(queries_meta[column].iloc[result.query_rows[positions]], catalog_meta[column],
                               ranking[positions, :N_RESULTS], attribute).sum(axis=1)
    return list(positions[np.argsort(hits, kind="stable")[:n]])
