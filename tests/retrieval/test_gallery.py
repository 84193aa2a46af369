"""Galleries: grid size, hit/miss colours from the metric rules, PNG output."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import to_hex
from PIL import Image

from protocol.retrieval.gallery import HIT, MISS, NOT_SCORED, query_gallery, side_by_side_gallery, weakness_gallery
from protocol.retrieval.metrics import evaluate_retrieval

COLOURS = {"cardigans": (200, 60, 60), "shorts": (60, 60, 200), "graphic": (60, 200, 60), "tees": (220, 220, 60)}


def meta(prefix: str, categories: list[str], necklines: list[str]) -> pd.DataFrame:
    n = len(categories)
    return pd.DataFrame({
        "item_id": [f"{prefix}{i}" for i in range(n)], "group_id": [f"{prefix}{i}" for i in range(n)],
        "text": [f"a {c} with a {k} neckline, knitted from soft yarn for everyday wear" for c, k in zip(categories, necklines)],
        "category2": categories, "neckline": necklines,
        **{a: ["unknown"] * n for a in ("material", "pattern", "sleeve", "color")},
    })


CATALOG = meta("c", ["cardigans", "shorts", "graphic", "tees"] * 3, ["v-neck", "crew", "v-neck", "unknown"] * 3)
QUERIES = meta("q", ["cardigans", "shorts", "graphic", "cardigans"], ["crew", "unknown", "v-neck", "v-neck"])
IMAGES = {row.item_id: Image.new("RGB", (40, 60), COLOURS[row.category2]) for row in pd.concat([CATALOG, QUERIES]).itertuples()}


def label_colours(ax) -> list[str]:
    return [to_hex(t.get_bbox_patch().get_facecolor()) for t in ax.texts]


def test_query_gallery_marks_hits_and_saves_png(tmp_path):
    rankings = np.array([[0, 2, 1] + list(range(3, 10)), [1, 0, 3] + list(range(4, 11))])
    fig = query_gallery([0, 2], rankings, QUERIES, CATALOG, IMAGES.__getitem__, ("category", "neckline"), n_queries=2)
    assert len(fig.axes) == 2 * (1 + 10)
    # query 0 (cardigans, crew) vs result c0 (cardigans, v-neck): category hit, neckline miss
    assert label_colours(fig.axes[1]) == [HIT, MISS]
    # vs c2 (graphic, v-neck): graphic never matches a category
    assert label_colours(fig.axes[2]) == [MISS, MISS]
    # query 2 is graphic: its category is not scored; neckline v-neck vs c1 crew: miss
    assert label_colours(fig.axes[12]) == [NOT_SCORED, MISS]
    path = tmp_path / "gallery.png"
    fig.savefig(path)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[0] > 500


def test_side_by_side_shows_two_rows_per_query():
    baseline = np.array([[1, 3, 5, 7, 9, 11, 2, 6, 10, 0], [0, 4, 8, 1, 2, 3, 5, 6, 7, 9]])
    candidate = np.array([[0, 4, 8, 1, 2, 3, 5, 6, 7, 9], [1, 5, 9, 0, 2, 3, 4, 6, 7, 8]])
    fig = side_by_side_gallery(baseline, candidate, [0, 1], QUERIES, CATALOG, IMAGES.__getitem__, ("category",))
    assert len(fig.axes) == 4 * 11
    assert fig.axes[0].get_title(loc="left").startswith("baseline") and fig.axes[11].get_title(loc="left").startswith("candidate")
    # query 0 is cardigans: baseline's first result c1 (shorts) misses, candidate's c0 (cardigans) hits
    assert label_colours(fig.axes[1]) == [MISS] and label_colours(fig.axes[12]) == [HIT]


def test_weakness_gallery_picks_the_worst_values_and_queries():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((4, 12, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=2, keepdims=True)
    result = evaluate_retrieval(QUERIES, emb[0, :4], emb[1, :4], CATALOG, emb[2], emb[3], modes=("t2i",))
    fig = weakness_gallery(result, QUERIES, CATALOG, IMAGES.__getitem__,
                           focus={"category": ["cardigans"], "neckline": None}, n_worst=1, n_per_value=1)
    # cardigans: 1 row; neckline: the worst of crew / v-neck by p10: 1 row
    assert len(fig.axes) == 2 * 11
    assert fig.axes[0].get_title(loc="left").startswith("category=cardigans (p10 ")
    p10 = {v: result.metrics[f"t2i.neckline.p10.{v}"] for v in ("crew", "v-neck")}
    worst = min(p10, key=p10.get)  # both thin (n < 5): the lower p10 wins
    assert fig.axes[11].get_title(loc="left").startswith(f"neckline={worst} (p10 {p10[worst]:.2f}")
    # the chosen cardigans query has the fewest category hits among the two cardigans queries
    hits = {q: int((CATALOG["category2"].to_numpy()[result.rankings["t2i"][i]] == "cardigans").sum())
            for i, q in enumerate(result.query_rows) if QUERIES["category2"][q] == "cardigans"}
    chosen = fig.axes[0].get_title(loc="left").split("\n")[1]
    assert hits[int(chosen[1:])] == min(hits.values())
    # n_queries caps the rows: the worst neckline rows come after the cardigans row and are cut
    capped = weakness_gallery(result, QUERIES, CATALOG, IMAGES.__getitem__,
                              focus={"category": ["cardigans"], "neckline": None}, n_per_value=2, n_queries=1)
    assert len(capped.axes) == 11
