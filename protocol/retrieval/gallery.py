"""Galleries: which queries a gallery shows, and their top-10 rankings.

`query_gallery` shows the first queries, `weakness_gallery` the worst-scoring values of the
weak classes and rare materials (read from the metrics' per-query table, so the gallery
shows what the metrics counted), `side_by_side_gallery` a baseline's ranking above a
candidate's. Each returns the figure `protocol.retrieval.gallery_render.draw_gallery` draws.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from protocol.retrieval.gallery_render import N_RESULTS, GalleryRow, ImageLoader, draw_gallery
from protocol.retrieval.metrics import EvalResult, attribute_column, by_attribute_table, metric_value_name
from protocol.scoreboard import focus_classes

logger = logging.getLogger(__name__)

DEFAULT_ATTRIBUTES = ("category", "material", "neckline")


def weakness_focus() -> dict[str, tuple[str, ...] | None]:
    """The weak classes and rare materials of the locked scoreboard, and the worst necklines."""
    return {**focus_classes(), "neckline": None}


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
    focus: Mapping[str, Sequence[str] | None] | None = None,
    stat: str = "p10",
    n_worst: int = 2,
    n_per_value: int = 2,
    n_queries: int | None = None,
    query_as: str = "text",
) -> Figure:
    """Queries of the worst-scoring values: for each focus attribute, the listed values
    (None: the `n_worst` lowest by `stat`, non-thin values first), and for each value
    the `n_per_value` queries with the fewest hits on that attribute; at most
    `n_queries` rows in all (None: no cap). `focus` None: `weakness_focus()`."""
    focus = weakness_focus() if focus is None else focus
    ranking = result.rankings[mode]
    rows: list[GalleryRow] = []
    for attribute, values in focus.items():
        table = by_attribute_table(result, attribute)
        table = table[table["mode"] == mode].set_index("value")
        for value in _focus_values(table, values, stat, n_worst):
            picked = _worst_queries(result, mode, attribute, value, n_per_value)
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


def _focus_values(table: pd.DataFrame, values: Sequence[str] | None, stat: str, n_worst: int) -> list[str]:
    """Metric-key names of the values to show: the given ones, or the worst n_worst."""
    if values is not None:
        return [metric_value_name(v) for v in values]
    if table.empty:
        return []
    ranked = table.sort_values(["thin", stat], kind="stable")  # non-thin values first
    return list(ranked.index[:n_worst])


def _worst_queries(result, mode, attribute, value, n) -> list[int]:
    """Positions (in result.query_rows) of the n queries with value and the fewest hits in the top 10.

    Read from the mode's per-query table, so the gallery shows what the metrics counted."""
    table = result.queries[mode]
    names = table[attribute_column(attribute)].astype(str).map(metric_value_name).to_numpy()
    positions = np.flatnonzero(names == value)
    if len(positions) == 0:
        logger.warning("weakness gallery: no query has %s=%s", attribute, value)
        return []
    precision = table[f"{attribute}.p{N_RESULTS}"].to_numpy()[positions]
    return list(positions[np.argsort(precision, kind="stable")[:n]])
