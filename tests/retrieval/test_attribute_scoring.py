"""Late fusion of the attribute heads into text -> image ranking, on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from protocol.model.protocol_model import HeadsConfig, ProtocolHeads
from protocol.retrieval.attribute_scoring import (
    AttributeScores,
    extend_items,
    extend_queries,
    fit_attribute_weight,
    ground_query_texts,
    indicators,
    objective_standard_error,
)
from protocol.retrieval.metrics import evaluate_retrieval

COLUMNS = (("material", "denim"), ("material", "leather"), ("neckline", "v-neck"))


def test_the_fused_score_is_the_inner_product_of_the_extended_vectors():
    query = np.array([[0.6, 0.8]], dtype=np.float32)
    items = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    log_probs = np.log(np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.25]], dtype=np.float32))
    wants = indicators(pd.DataFrame({"material": ["denim"], "neckline": ["v-neck"]}), COLUMNS)
    assert wants.tolist() == [[1.0, 0.0, 1.0]]
    fused = extend_queries(query, wants, 0.1) @ extend_items(items, log_probs).T
    # by hand: cosine + 0.1 * (log p(denim) + log p(v-neck))
    assert fused[0, 0] == pytest.approx(0.6 + 0.1 * (np.log(0.9) + np.log(0.5)), abs=1e-6)
    assert fused[0, 1] == pytest.approx(0.8 + 0.1 * (np.log(0.2) + np.log(0.25)), abs=1e-6)
    assert fused[0, 0] > fused[0, 1]  # the attribute evidence overturns the embedding's order


def test_a_query_text_is_grounded_on_its_own_words_only():
    grounded = ground_query_texts(["red denim shorts", "a tee. Pairs well with our denim shorts.", "v neck top"],
                                  ["material", "neckline"])
    assert grounded.to_dict("list") == {"material": ["denim", "unknown", "unknown"],
                                        "neckline": ["unknown", "unknown", "v-neck"]}


def test_a_query_grounds_the_garment_it_names_for_the_category_head():
    texts = ["Organic Cotton Bermuda Shorts. Relaxed fit.", "A soft tee. Pairs well with our denim shorts.",
             "Pairs well with jeans", "a product photo of cardigans"]
    grounded = ground_query_texts(texts, ["category", "material"])
    assert grounded["category"].tolist() == ["shorts", "tees", "unknown", "cardigans"]
    assert grounded["material"].tolist() == ["cotton", "unknown", "unknown", "unknown"]


def test_a_category_head_puts_the_named_garment_into_the_fused_score():
    # "cotton shorts": without the category term a confident cotton sweater outranks the shorts
    config = HeadsConfig(in_dim=4, out_dim=4, head="linear", attribute_weight=1.0, attribute_classes={
        "category": ["shorts", "sweaters"], "material": ["cotton", "denim"]})
    heads = ProtocolHeads(config).eval()
    columns = heads.attribute_columns()
    assert columns == (("category", "shorts"), ("category", "sweaters"), ("material", "cotton"),
                       ("material", "denim"))
    assert heads.query_indicators(["Cotton Bermuda Shorts", "denim sweater", "a top"]).tolist() == [
        [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 0, 0]]
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    items = np.array([[0.6, 0.8], [0.5, 0.86]], dtype=np.float32)  # shorts, sweater: the embedding prefers the shorts
    log_probs = np.log(np.array([[0.9, 0.1, 0.5, 0.5], [0.1, 0.9, 0.99, 0.01]], dtype=np.float32))
    wants = heads.query_indicators(["Cotton Bermuda Shorts"])
    material_only = extend_queries(query, wants * [0, 0, 1, 0], 1.0) @ extend_items(items, log_probs).T
    with_category = extend_queries(query, wants, 1.0) @ extend_items(items, log_probs).T
    assert material_only[0, 1] > material_only[0, 0]  # the sweater first: it is more surely cotton
    assert with_category[0, 0] > with_category[0, 1]  # the shorts first: they are shorts


def heads_with_attributes(weight: float) -> ProtocolHeads:
    config = HeadsConfig(in_dim=4, out_dim=4, head="linear", attribute_classes={
        "material": ["denim", "leather"], "neckline": ["crew", "v-neck"]}, attribute_weight=weight)
    heads = ProtocolHeads(config).eval()
    for head in heads.attribute_heads.values():  # a confident head: the ranking must feel it
        head.weight.data.mul_(50)
    return heads


def test_a_query_with_no_grounded_attribute_ranks_by_the_embedding_alone():
    rng = np.random.default_rng(0)
    heads = heads_with_attributes(weight=1.0)
    queries = rng.normal(size=(2, 4)).astype(np.float32)
    catalog, _ = heads.embed_numpy(rng.normal(size=(30, 4)).astype(np.float32), None)
    plain = np.argsort(-(queries @ catalog.T), axis=1, kind="stable")

    query_vecs = heads.ranking_queries(["a relaxed top", "leather jacket"], queries)
    catalog_vecs = heads.ranking_catalog(catalog)
    fused = np.argsort(-(query_vecs @ catalog_vecs.T), axis=1, kind="stable")
    assert query_vecs[0, 4:].tolist() == [0.0] * 4  # nothing grounded: no attribute term at all
    assert (fused[0] == plain[0]).all()
    assert not (fused[1] == plain[1]).all()  # a grounded attribute does move the ranking
    assert catalog_vecs.shape == (30, 8)

    unweighted = heads_with_attributes(weight=0.0)  # no fitted weight: the embedding, unextended
    one = queries[:1]
    assert unweighted.ranking_queries(["leather jacket"], one) is one
    assert unweighted.ranking_catalog(catalog) is catalog


def meta(n: int, materials) -> pd.DataFrame:
    return pd.DataFrame({"item_id": [f"i{i}" for i in range(n)], "group_id": [f"g{i}" for i in range(n)],
                         "product_id": "", "category2": "tees", "material": list(materials), "pattern": "unknown",
                         "neckline": "unknown", "sleeve": "unknown", "color": "unknown"})


def test_evaluation_ranks_text_queries_by_the_fused_score_and_image_queries_by_the_embedding():
    catalog = meta(3, ["cotton", "denim", "denim"])
    queries = meta(1, ["denim"]).assign(item_id="q0", group_id="gq")
    query_emb = np.array([[1.0, 0.0]], dtype=np.float32)
    catalog_emb = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32)
    # columns (denim,): the cotton item is unlikely denim, the other two likely
    scores = AttributeScores(1.0, np.array([[1.0]], np.float32), np.log(np.array([[0.9]], np.float32)),
                             np.log(np.array([[0.01], [0.9], [0.8]], np.float32)))
    result = evaluate_retrieval(queries, query_emb, query_emb, catalog, catalog_emb, catalog_emb,
                                modes=("t2i", "i2i"), ks=(1,), attribute_scores=scores)
    assert result.rankings["t2i"][0, :3].tolist() == [1, 2, 0]  # 0.8-0.11 > 0-0.22 > 1-4.6
    assert result.rankings["i2i"][0, :3].tolist() == [0, 1, 2]  # image queries: the embedding alone
    assert result.metrics["t2i.material.p1"] == 1.0
    without = evaluate_retrieval(queries, query_emb, query_emb, catalog, catalog_emb, catalog_emb,
                                 modes=("t2i",), ks=(1,))
    assert without.rankings["t2i"][0, :3].tolist() == [0, 1, 2] and without.metrics["t2i.material.p1"] == 0.0
    with pytest.raises(ValueError, match="attribute scores cover 1 queries and 2 catalog items"):
        evaluate_retrieval(queries, query_emb, query_emb, catalog, catalog_emb, catalog_emb, modes=("t2i",),
                           attribute_scores=AttributeScores(1.0, scores.query_indicators, scores.query_log_probs,
                                                            scores.catalog_log_probs[:2]))


def test_the_weight_is_the_smallest_within_one_standard_error_of_the_best_objective():
    # neckline per query: 0.1 has mean 0.40; 0.5 has mean 0.45 with SE sqrt(0.03 / 4) = 0.0866
    noisy = {0.0: [0.1] * 4, 0.1: [0.3, 0.5, 0.3, 0.5], 0.5: [0.3, 0.6, 0.3, 0.6]}
    weight, scores = fit_attribute_weight(lambda w: {"t2i.neckline.p10": noisy[w]}, grid=tuple(noisy))
    assert weight == 0.1 and scores == pytest.approx({0.0: 0.1, 0.1: 0.4, 0.5: 0.45})
    # the same means, but 0.5 wins on every query alike (SE 0): the best weight is kept
    clear = noisy | {0.5: [0.45] * 4}
    assert fit_attribute_weight(lambda w: {"t2i.neckline.p10": clear[w]}, grid=tuple(clear))[0] == 0.5
    # two metrics: SE = sqrt(0.03 / 4 + 0) / 2 = 0.0433 around (0.45 + 0.5) / 2; 0.1 scores 0.45, 0.025 short
    two = {w: {"t2i.neckline.p10": v, "t2i.category.p10": [0.5] * 4} for w, v in noisy.items()}
    assert fit_attribute_weight(lambda w: two[w], grid=tuple(two))[0] == 0.1
    flat, _ = fit_attribute_weight(lambda w: {"t2i.neckline.p10": [0.3, 0.2]}, grid=(0.0, 0.1))
    assert flat == 0.0  # no gain over the embedding alone: no fusion


def test_the_weight_fit_refuses_an_objective_without_scored_queries():
    with pytest.raises(ValueError, match="none of the fit objective's metrics"):
        fit_attribute_weight(lambda w: {"t2f.neckline.p10": [0.3]}, grid=(0.0,))
    with pytest.raises(ValueError, match="none of the fit objective's metrics"):
        fit_attribute_weight(lambda w: {"t2i.neckline.p10": [np.nan]}, grid=(0.0,))


def test_the_objective_standard_error_is_that_of_a_mean_of_per_metric_means():
    assert objective_standard_error([np.array([0.3, 0.6, 0.3, 0.6])]) == pytest.approx(np.sqrt(0.03 / 4))
    assert objective_standard_error([np.array([0.3, 0.6, 0.3, 0.6]), np.array([1.0])]) == pytest.approx(
        np.sqrt(0.03 / 4) / 2)


def test_a_negative_or_infinite_weight_is_refused():
    with pytest.raises(ValueError, match="attribute_weight must be finite and >= 0"):
        HeadsConfig(in_dim=4, out_dim=4, attribute_weight=-0.1)
    with pytest.raises(ValueError, match="attribute weight must be finite and >= 0"):
        AttributeScores(float("inf"), np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((2, 1)))
