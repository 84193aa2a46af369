"""Galleries: grid size, hit/miss colours from the metric rules, pictures in their cells, PNG output."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import to_hex
from PIL import Image

from protocol.retrieval.gallery import query_gallery, side_by_side_gallery, weakness_focus, weakness_gallery
from protocol.retrieval.gallery_render import HIT, MISS, NOT_SCORED, GalleryImage
from protocol.scoreboard import focus_classes
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


def composed(fig) -> GalleryImage:
    """The gallery a figure shows: one image filling its one Axes."""
    assert len(fig.axes) == 1 and len(fig.axes[0].images) == 1
    gallery = fig.gallery
    assert gallery.image.size == gallery.layout.size
    return gallery


def label_colours(gallery: GalleryImage, row: int, result: int) -> list[str]:
    """The colour of each attribute chip under one result: the most common pixel in its box."""
    colours = []
    for line in range(gallery.layout.n_attributes):
        pixels = np.asarray(gallery.image.crop(gallery.layout.chip_box(row, result, line))).reshape(-1, 3)
        values, counts = np.unique(pixels, axis=0, return_counts=True)
        colours.append(to_hex(values[counts.argmax()] / 255))
    return colours


def centre_pixel(gallery: GalleryImage, row: int, column: int) -> tuple[int, ...]:
    x0, y0, x1, y1 = gallery.layout.thumb_box(row, column)
    return gallery.image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2))


def has_ink(gallery: GalleryImage, box) -> bool:
    """Something dark (text) is drawn in box."""
    return bool((np.asarray(gallery.image.crop(box).convert("L")) < 100).any())


def test_query_gallery_marks_hits_and_saves_png(tmp_path):
    rankings = np.array([[0, 2, 1] + list(range(3, 10)), [1, 0, 3] + list(range(4, 11))])
    fig = query_gallery([0, 2], rankings, QUERIES, CATALOG, IMAGES.__getitem__, ("category", "neckline"), n_queries=2)
    gallery = composed(fig)
    assert (gallery.layout.n_rows, gallery.layout.n_results, gallery.layout.n_attributes) == (2, 10, 2)
    assert [r.query_row for r in gallery.rows] == [0, 2]
    # query 0 (cardigans, crew) vs result c0 (cardigans, v-neck): category hit, neckline miss
    assert label_colours(gallery, 0, 0) == [HIT, MISS]
    # vs c2 (graphic, v-neck): graphic never matches a category
    assert label_colours(gallery, 0, 1) == [MISS, MISS]
    # query 2 is graphic: its category is not scored; neckline v-neck vs c1 crew: miss
    assert label_colours(gallery, 1, 0) == [NOT_SCORED, MISS]
    # each result's picture sits in its cell: c0 is cardigans (red), c2 graphic (green), c1 shorts (blue)
    assert centre_pixel(gallery, 0, 1) == COLOURS["cardigans"] and centre_pixel(gallery, 0, 2) == COLOURS["graphic"]
    assert centre_pixel(gallery, 1, 1) == COLOURS["shorts"]
    # rank and id above each thumbnail, the query's text in its cell
    x0, y0, x1, _ = gallery.layout.thumb_box(0, 1)
    assert has_ink(gallery, (x0, y0 - 20, x1, y0)) and has_ink(gallery, gallery.layout.thumb_box(0, 0))
    path = tmp_path / "gallery.png"
    fig.savefig(path)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == gallery.image.size and png.size[0] > 500
        # saved at the default dpi, the PNG holds the composed pixels unchanged
        assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(gallery.image))
    fig.savefig(path, dpi=80)  # another dpi rescales the image
    with Image.open(path) as png:
        assert png.format == "PNG" and abs(png.size[0] - 0.8 * gallery.image.width) <= 1


def test_gallery_size_follows_rows_and_results():
    rankings = np.tile(np.arange(10), (4, 1))
    one, three = (composed(query_gallery(range(4), rankings, QUERIES, CATALOG, IMAGES.__getitem__, n_queries=n))
                  for n in (1, 3))
    assert one.image.width == three.image.width
    assert three.image.height - one.image.height == 2 * one.layout.row_height
    short = composed(query_gallery(range(4), rankings[:, :4], QUERIES, CATALOG, IMAGES.__getitem__, n_queries=1))
    assert short.layout.n_results == 4 and short.image.width < one.image.width
    assert one.layout.n_attributes == 3 and short.image.height == one.image.height
    # a query shown as its image: its picture fills the query cell
    pictured = composed(query_gallery([0], rankings, QUERIES, CATALOG, IMAGES.__getitem__, query_as="image"))
    assert centre_pixel(pictured, 0, 0) == COLOURS["cardigans"]
    empty = query_gallery([], rankings[:0], QUERIES, CATALOG, IMAGES.__getitem__)
    assert composed(empty).rows == []


def test_side_by_side_shows_two_rows_per_query():
    baseline = np.array([[1, 3, 5, 7, 9, 11, 2, 6, 10, 0], [0, 4, 8, 1, 2, 3, 5, 6, 7, 9]])
    candidate = np.array([[0, 4, 8, 1, 2, 3, 5, 6, 7, 9], [1, 5, 9, 0, 2, 3, 4, 6, 7, 8]])
    fig = side_by_side_gallery(baseline, candidate, [0, 1], QUERIES, CATALOG, IMAGES.__getitem__, ("category",))
    gallery = composed(fig)
    assert gallery.layout.n_rows == 4 and gallery.layout.n_results == 10
    assert [(r.query_row, r.label) for r in gallery.rows] == [(0, "baseline"), (0, "candidate"), (1, "baseline"),
                                                              (1, "candidate")]
    assert all(has_ink(gallery, (x0, y0 - 30, x1, y0 - 14))  # the label line above each query cell
               for x0, y0, x1, _ in (gallery.layout.thumb_box(r, 0) for r in range(4)))
    # query 0 is cardigans: baseline's first result c1 (shorts) misses, candidate's c0 (cardigans) hits
    assert label_colours(gallery, 0, 0) == [MISS] and label_colours(gallery, 1, 0) == [HIT]
    assert centre_pixel(gallery, 0, 1) == COLOURS["shorts"] and centre_pixel(gallery, 1, 1) == COLOURS["cardigans"]


def test_weakness_gallery_picks_the_worst_values_and_queries():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((4, 12, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=2, keepdims=True)
    result = evaluate_retrieval(QUERIES, emb[0, :4], emb[1, :4], CATALOG, emb[2], emb[3], modes=("t2i",))
    fig = weakness_gallery(result, QUERIES, CATALOG, IMAGES.__getitem__,
                           focus={"category": ["cardigans"], "neckline": None}, n_worst=1, n_per_value=1)
    gallery = composed(fig)
    # cardigans: 1 row; neckline: the worst of crew / v-neck by p10: 1 row
    assert len(gallery.rows) == gallery.layout.n_rows == 2
    assert gallery.rows[0].label.startswith("category=cardigans (p10 ")
    p10 = {v: result.metrics[f"t2i.neckline.p10.{v}"] for v in ("crew", "v-neck")}
    worst = min(p10, key=p10.get)  # both thin (n < 5): the lower p10 wins
    assert gallery.rows[1].label.startswith(f"neckline={worst} (p10 {p10[worst]:.2f}")
    # the chosen cardigans query has the fewest category hits among the two cardigans queries
    hits = {q: int((CATALOG["category2"].to_numpy()[result.rankings["t2i"][i]] == "cardigans").sum())
            for i, q in enumerate(result.query_rows) if QUERIES["category2"][q] == "cardigans"}
    assert hits[gallery.rows[0].query_row] == min(hits.values())
    # the chips under the first result follow the metric rules for the chosen query
    first = CATALOG["category2"][int(gallery.rows[0].ranking[0])]
    assert label_colours(gallery, 0, 0)[0] == (HIT if first == "cardigans" else MISS)
    # n_queries caps the rows: the worst neckline rows come after the cardigans row and are cut
    capped = weakness_gallery(result, QUERIES, CATALOG, IMAGES.__getitem__,
                              focus={"category": ["cardigans"], "neckline": None}, n_per_value=2, n_queries=1)
    capped_gallery = composed(capped)
    assert len(capped_gallery.rows) == capped_gallery.layout.n_rows == 1
    assert capped_gallery.rows[0].label.startswith("category=cardigans")
    assert capped_gallery.image.height == gallery.image.height - gallery.layout.row_height


def test_weakness_gallery_shows_the_weak_classes_of_the_scoreboard_by_default():
    assert weakness_focus() == {**focus_classes(), "neckline": None}
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((4, 12, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=2, keepdims=True)
    result = evaluate_retrieval(QUERIES, emb[0, :4], emb[1, :4], CATALOG, emb[2], emb[3], modes=("t2i",))
    gallery = composed(weakness_gallery(result, QUERIES, CATALOG, IMAGES.__getitem__, n_per_value=1))
    labels = [r.label for r in gallery.rows]
    # the queries hold cardigans and shorts (one row each; no material is known), then the worst necklines
    assert labels[0].startswith("category=cardigans") and labels[1].startswith("category=shorts")
    assert all(label.startswith("neckline=") for label in labels[2:]) and len(labels) > 2
