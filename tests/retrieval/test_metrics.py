"""Retrieval metrics on hand-made rankings whose answers are worked out below; the per-query tables behind them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from protocol.retrieval.eval_files import write_eval_json
from protocol.retrieval.metrics import (
    ATTRIBUTES,
    MODES,
    aggregate_metrics,
    average_precision,
    by_attribute_table,
    evaluate_retrieval,
    metric_per_query,
    reciprocal_rank,
)
from protocol.retrieval.queries import group_keys, stratified_sample

OTHER_ATTRS = ("material", "pattern", "sleeve", "color")


def frame(rows: list[dict]) -> pd.DataFrame:
    """Metadata with every attribute column; unspecified attributes are unknown."""
    base = {"group_id": "", "product_id": "", "category2": "unknown", "neckline": "unknown"}
    base.update({a: "unknown" for a in OTHER_ATTRS})
    return pd.DataFrame([{**base, **r} for r in rows])


def ranked(order: list[int], dim: int) -> np.ndarray:
    """A unit vector whose inner products with one-hot rows rank `order` first, in that order."""
    v = np.zeros(dim, np.float32)
    v[order] = np.arange(len(order), 0, -1)
    return v / np.linalg.norm(v)


def one_hot_setup(n_catalog: int, query_orders: list[list[int]]):
    """Catalog image j = e_j, query image i = e_{n_catalog+i}; query text ranks its order list."""
    dim = n_catalog + len(query_orders)
    eye = np.eye(dim, dtype=np.float32)
    catalog_image = eye[:n_catalog]
    query_image = eye[n_catalog:]
    query_text = np.stack([ranked(o, dim) for o in query_orders])
    return query_text, query_image, catalog_image


def test_attribute_precision_unknown_graphic_per_value_and_map():
    catalog = frame([
        {"item_id": "c0", "category2": "cardigans", "neckline": "v-neck"},
        {"item_id": "c1", "category2": "shorts", "neckline": "crew"},
        {"item_id": "c2", "category2": "cardigans", "neckline": "unknown"},
        {"item_id": "c3", "category2": "graphic", "neckline": "v-neck"},
        {"item_id": "c4", "category2": "shorts", "neckline": "v-neck"},
        {"item_id": "c5", "category2": "tees", "neckline": "crew"},
    ])
    queries = frame([
        {"item_id": "q0", "category2": "cardigans", "neckline": "v-neck"},
        {"item_id": "q1", "category2": "graphic", "neckline": "crew"},
        {"item_id": "q2", "category2": "shorts", "neckline": "unknown"},
        {"item_id": "q3", "category2": "dresses", "neckline": "unknown"},
    ])
    orders = [[3, 0, 2, 1, 4, 5], [1, 5, 0, 2, 3, 4], [4, 1, 0, 2, 3, 5], [0, 1, 2, 3, 4, 5]]
    q_text, q_image, c_image = one_hot_setup(6, orders)
    r = evaluate_retrieval(queries, q_text, q_image, catalog, c_image, c_image, modes=("t2i",), ks=(1, 3))
    m = r.metrics
    np.testing.assert_array_equal(r.rankings["t2i"][:, :6], orders)
    assert (r.rankings["t2i"][:, 6:] == -1).all()  # only 6 catalog items

    # category: q1 (graphic) is left out. q0 top3 = c3 graphic (miss), c0, c2 cardigans -> p1 0, p3 2/3;
    # q2 top3 = c4, c1 shorts, c0 -> p1 1, p3 2/3; q3 dresses has none -> 0, 0.
    assert r.counts["t2i.category.p1"] == 3
    assert m["t2i.category.p1"] == pytest.approx((0 + 1 + 0) / 3)
    assert m["t2i.category.p3"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    # AP@10: q0 R=2 (c0,c2), hits at ranks 2,3: (1/2 + 2/3)/2 = 7/12; q2 R=2, ranks 1,2: (1+1)/2 = 1;
    # q3 R=0 -> 0 but counted.
    assert m["t2i.category.map10"] == pytest.approx((7 / 12 + 1 + 0) / 3)
    assert m["t2i.category.p3.cardigans"] == pytest.approx(2 / 3)
    assert m["t2i.category.p1.shorts"] == 1.0
    assert m["t2i.category.map10.dresses"] == 0.0 and r.counts["t2i.category.p1.dresses"] == 1
    assert not any(k.endswith(".graphic") for k in m)

    # neckline: q2, q3 unknown are left out. q0 v-neck: c3 hit, c0 hit, c2 unknown miss -> p1 1, p3 2/3;
    # q1 crew: c1 hit, c5 hit, c0 miss -> p1 1, p3 2/3.
    assert r.counts["t2i.neckline.p3"] == 2
    assert m["t2i.neckline.p1"] == 1.0
    assert m["t2i.neckline.p3"] == pytest.approx(2 / 3)
    # q0 AP: R=3 (c0,c3,c4), hits at ranks 1,2,5: (1 + 1 + 3/5)/3 = 13/15;
    # q1 AP: R=2 (c1,c5), hits at 1,2: 1.
    assert m["t2i.neckline.map10.v-neck"] == pytest.approx(13 / 15)
    assert m["t2i.neckline.map10"] == pytest.approx((13 / 15 + 1) / 2)
    # attributes nobody knows produce no keys; every key has a count; n < 5 is thin
    assert not any(k.startswith("t2i.material") for k in m)
    assert set(r.counts) == set(m)
    assert "t2i.neckline.p1" in r.thin and m["t2i.n_queries"] == 4 and r.counts["t2i.n_queries"] == 4

    # the per-query table holds the evidence behind every figure above
    table = r.queries["t2i"]
    assert list(table["query_id"]) == ["q0", "q1", "q2", "q3"]
    assert list(table["category2"]) == ["cardigans", "graphic", "shorts", "dresses"]
    assert [list(t) for t in table["top10"]] == [[f"c{j}" for j in o] for o in orders]
    np.testing.assert_allclose(table["category.p3"], [2 / 3, np.nan, 2 / 3, 0.0])  # graphic q1: NaN, not scored
    np.testing.assert_allclose(table["neckline.map10"], [13 / 15, 1.0, np.nan, np.nan])
    assert table["material.p1"].isna().all()
    # one code path: the aggregates are recomputed from the table alone, and each figure's queries picked by key
    assert aggregate_metrics("t2i", table) == (m, r.counts)
    cardigans = metric_per_query(table, "t2i.category.p3.cardigans")
    assert list(cardigans.index) == ["q0"] and cardigans.iloc[0] == pytest.approx(2 / 3)
    assert list(metric_per_query(table, "t2i.neckline.map10").index) == ["q0", "q1"]
    assert metric_per_query(table, "t2i.category.p3.capes").empty  # no query of that value: n = 0, no error
    with pytest.raises(ValueError, match=r"'t2i.neckline.p20' is not computed.*'neckline.p20'"):
        metric_per_query(table, "t2i.neckline.p20")


def test_recall_and_mrr_use_product_groups_and_query_items():
    catalog = frame([
        {"item_id": "c0", "group_id": "A"},
        {"item_id": "c1", "group_id": "B"},
        {"item_id": "c2", "group_id": "", "product_id": "B"},  # falls back to product_id
        {"item_id": "c3"},  # falls back to its item_id
    ])
    queries = frame([
        {"item_id": "q0", "group_id": "B"},
        {"item_id": "q1", "group_id": "Z"},  # its product lives only in the query split
        {"item_id": "q2"},  # group = item_id "q2": only its own image can hit
    ])
    assert list(group_keys(catalog)) == ["A", "B", "B", "c3"]
    # combined gallery rows: c0..c3 = 0..3, q0..q2 = 4..6
    orders = [[0, 3, 2, 1], [0, 1, 2, 3, 4, 5], [6]]
    q_text, q_image, c_image = one_hot_setup(4, orders)
    r = evaluate_retrieval(queries, q_text, q_image, catalog, c_image, c_image, modes=("t2i",), ks=(1, 3))
    m = r.metrics
    # q0: first group-B item c2 at rank 3; q1: own image at rank 6; q2: own image at rank 1.
    assert m["t2i.recall1"] == pytest.approx((0 + 0 + 1) / 3)
    assert m["t2i.recall3"] == pytest.approx((1 + 0 + 1) / 3)
    assert m["t2i.mrr10"] == pytest.approx((1 / 3 + 1 / 6 + 1) / 3)
    assert r.counts["t2i.mrr10"] == 3
    np.testing.assert_allclose(r.queries["t2i"]["rr10"], [1 / 3, 1 / 6, 1])
    assert metric_per_query(r.queries["t2i"], "t2i.mrr10").mean() == pytest.approx(m["t2i.mrr10"])
    # the attribute ranking itself ranks the catalog only
    assert set(np.unique(r.rankings["t2i"])) <= {-1, 0, 1, 2, 3}


def test_i2i_excludes_the_query_item_from_both_galleries():
    # dim 3: c0 = x, c1 = y, c2 = z; q0 = normalize(1, .5, 0) is closest to c0 then c1
    catalog = frame([
        {"item_id": "c0", "group_id": "A", "neckline": "v-neck"},
        {"item_id": "c1", "group_id": "B", "neckline": "v-neck"},
        {"item_id": "c2", "group_id": "C", "neckline": "crew"},
    ])
    queries = frame([
        {"item_id": "q0", "group_id": "B", "neckline": "crew"},
        {"item_id": "q1", "group_id": "Z", "neckline": "crew"},  # alone in its product
    ])
    c_image = np.eye(3, dtype=np.float32)
    q_image = np.array([[1, 0.5, 0], [0, 0, 1]], np.float32)
    q_image /= np.linalg.norm(q_image, axis=1, keepdims=True)
    r = evaluate_retrieval(queries, q_image, q_image, catalog, c_image, c_image, modes=("i2i",), ks=(1, 3))
    # q0 would find itself at rank 1 (score 1) if not excluded; without it c0 then c1 (group B): rr 1/2.
    # q1 has no other item of product Z: left out of recall.
    assert r.counts["i2i.recall1"] == 1
    assert r.metrics["i2i.recall1"] == 0.0
    assert r.metrics["i2i.mrr10"] == 0.5
    # q1's product cannot be found: NaN in its product columns, so it is in no recall figure
    np.testing.assert_allclose(r.queries["i2i"]["recall3"], [1.0, np.nan])


def test_i2i_drops_the_query_item_when_the_catalog_holds_it():
    catalog = frame([
        {"item_id": "c0", "group_id": "A", "neckline": "v-neck"},
        {"item_id": "c1", "group_id": "A", "neckline": "v-neck"},
        {"item_id": "c2", "group_id": "C", "neckline": "crew"},
    ])
    c_image = np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 0, 1]], np.float32)
    queries = catalog.iloc[[0]].reset_index(drop=True)
    r = evaluate_retrieval(queries, c_image[:1], c_image[:1], catalog, c_image, c_image, modes=("i2i",), ks=(1,))
    assert list(r.rankings["i2i"][0, :3]) == [1, 2, -1]  # c0 itself is gone
    # neckline v-neck: R = 2 v-necks minus the query itself = 1; hit at rank 1 -> AP = 1 (not 1/2)
    assert r.metrics["i2i.neckline.map10"] == 1.0
    assert r.metrics["i2i.recall1"] == 1.0  # c1 shares product A


def test_t2f_ranks_the_fused_catalog_embedding():
    # query text x. c0: image x, text y -> t2i 1.0, fused (.707,.707) -> .707
    # c1: image (.8,.6), text x -> t2i .8, fused normalize(.9,.3) -> .949
    catalog = frame([
        {"item_id": "c0", "material": "denim"},
        {"item_id": "c1", "material": "leather"},
    ])
    queries = frame([{"item_id": "q0", "material": "leather"}])
    c_image = np.array([[1, 0], [0.8, 0.6]], np.float32)
    c_text = np.array([[0, 1], [1, 0]], np.float32)
    q = np.array([[1, 0]], np.float32)
    far = np.array([[0, -1]], np.float32)  # the query's own image, never near the top
    r = evaluate_retrieval(queries, q, far, catalog, c_image, c_text, modes=("t2i", "t2f"), ks=(1,))
    assert r.metrics["t2i.material.p1"] == 0.0 and r.metrics["t2f.material.p1"] == 1.0
    assert list(r.rankings["t2f"][0, :2]) == [1, 0]
    # weight 1 fuses nothing but the image: t2f == t2i
    r1 = evaluate_retrieval(queries, q, far, catalog, c_image, c_text, modes=("t2f",), ks=(1,), fusion_weight=1.0)
    assert r1.metrics["t2f.material.p1"] == 0.0


def test_average_precision_and_reciprocal_rank_by_hand():
    rel = np.array([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    # row 0: R=5 -> (1/2 + 2/3)/min(5,10)=7/30; row 1: R=1 -> 1/1; row 2: R=0 -> 0
    np.testing.assert_allclose(average_precision(rel, np.array([5, 1, 0])), [7 / 30, 1.0, 0.0])
    np.testing.assert_allclose(reciprocal_rank(rel), [1 / 2, 1.0, 0.0])


def test_stratified_sample_keeps_rare_classes_and_is_seeded():
    labels = ["tees"] * 8 + ["cardigans"] * 2
    # n=5: one each first, then 3 shared by size 7:1 -> 2.625, 0.375 -> floors 2, 0, remainder to tees
    rows = stratified_sample(labels, 5, seed=0)
    assert len(rows) == 5 and list(rows) == sorted(rows)
    assert sum(labels[i] == "cardigans" for i in rows) == 1
    np.testing.assert_array_equal(rows, stratified_sample(labels, 5, seed=0))
    assert list(stratified_sample(labels, None)) == list(range(10))


def test_max_queries_thin_marks_and_eval_json(tmp_path):
    n = 12
    necklines = ["v-neck"] * 9 + ["crew"] * 3
    catalog = frame([{"item_id": f"c{i}", "category2": "tees", "neckline": necklines[i]} for i in range(n)])
    queries = frame([{"item_id": f"q{i}", "category2": "tees", "neckline": necklines[i]} for i in range(n)])
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((4, n, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=2, keepdims=True)
    r = evaluate_retrieval(queries, emb[0], emb[1], catalog, emb[2], emb[3], max_queries=10, seed=3)
    assert {mode: report["backend"] for mode, report in r.search.items()} == {m: "exact" for m in MODES}  # small catalog
    assert len(r.query_rows) == 10 and r.metrics["i2i.n_queries"] == 10
    assert all(len(r.queries[mode]) == 10 for mode in ("t2i", "t2f", "i2i"))
    assert all(r.rankings[mode].shape == (10, 10) for mode in ("t2i", "t2f", "i2i"))
    # every catalog item is tees: category precision is 1 at every K
    assert r.metrics["t2i.category.p10"] == 1.0 and "t2i.category.p10" not in r.thin
    crew = r.counts["t2i.neckline.p10.crew"]
    assert ("t2i.neckline.p10.crew" in r.thin) == (crew < 5)

    write_eval_json(r, tmp_path)
    overall = json.loads((tmp_path / "metrics.json").read_text())
    assert overall["t2i.neckline.p10"] == {
        "value": r.metrics["t2i.neckline.p10"], "n": r.counts["t2i.neckline.p10"], "thin": False}
    assert "t2i.recall10" in overall and "t2i.neckline.p10.crew" not in overall
    for attribute in ATTRIBUTES:
        assert (tmp_path / f"metrics_by_{attribute}.json").exists()
    by_neck = json.loads((tmp_path / "metrics_by_neckline.json").read_text())
    assert set(by_neck) == {"t2i", "t2f", "i2i"}
    assert set(by_neck["t2i"]["crew"]) == {"p1", "p5", "p10", "map10", "n", "thin"}
    assert by_neck["t2i"]["crew"]["n"] == crew and by_neck["t2i"]["crew"]["thin"] is (crew < 5)
    table = by_attribute_table(r, "neckline")
    assert list(table.columns) == ["mode", "value", "p1", "p5", "p10", "map10", "n", "thin"]
    assert list(table["mode"]) == ["t2i", "t2i", "t2f", "t2f", "i2i", "i2i"]


def test_bad_input_names_the_problem():
    catalog = frame([{"item_id": "c0"}]).drop(columns=["neckline"])
    queries = frame([{"item_id": "q0"}])
    e = np.ones((1, 2), np.float32)
    with pytest.raises(ValueError, match="catalog metadata lacks columns \\['neckline'\\]"):
        evaluate_retrieval(queries, e, e, catalog, e, e)
    with pytest.raises(ValueError, match="queries: 1 metadata rows but embeddings have 2"):
        evaluate_retrieval(queries, np.ones((2, 2), np.float32), e, frame([{"item_id": "c0"}]), e, e)
