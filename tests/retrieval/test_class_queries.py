"""Class-name queries (c2i): prompts from the catalog's vocabulary, hand-worked leaderboard figures, the
scoreboard's reported rows, and the prompt-feature cache."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from protocol.retrieval.class_queries import (
    ClassQueries,
    class_prompts,
    evaluate_class_queries,
    prompt_of,
)
from protocol.retrieval.evaluation import EvalConfigMixin
from protocol.retrieval.leaderboard_metrics import metric_name
from protocol.scoreboard.reported import class_query_rows
from protocol.scoreboard.spec import EvidenceRule


def meta(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {"item_id": [f"i{i}" for i in range(n)], "category2": ["tees"] * n, "material": ["unknown"] * n,
            "pattern": ["unknown"] * n, "neckline": ["unknown"] * n, "sleeve": ["unknown"] * n,
            "color": ["unknown"] * n}
    return pd.DataFrame(base | columns)


def test_prompts_are_the_known_values_of_each_attribute_and_never_unknown_or_graphic():
    frame = meta(category2=["tees", "graphic", "shorts", "tees"], material=["denim", "unknown", "", "cotton"],
                 neckline=["v-neck", "unknown", "unknown", "unknown"])
    prompts = class_prompts(frame)
    assert list(zip(prompts["attribute"], prompts["value"])) == [
        ("category", "shorts"), ("category", "tees"), ("material", "cotton"), ("material", "denim"),
        ("neckline", "v-neck")]
    assert prompts.set_index("value").at["v-neck", "prompt"] == prompt_of("neckline", "v-neck") == \
        "a product photo of a garment with a v-neck neckline"


def test_leaderboard_figures_of_a_class_query_are_worked_by_hand():
    # catalog: materials denim, cotton, denim, unknown; scores of the denim query 0.8, 0.9, 0.1, 0.5
    catalog = meta(material=["denim", "cotton", "denim", "unknown"])
    catalog_vectors = np.array([[0.8, 0.2], [0.9, 0.8], [0.1, 0.0], [0.5, 0.0]], np.float32)
    prompts = pd.DataFrame({"attribute": ["material", "material", "material"],
                            "value": ["denim", "cotton", "wool"],
                            "prompt": ["denim", "cotton", "wool"]})
    queries = ClassQueries(prompts, np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32))
    metrics, counts, table = evaluate_class_queries(queries, catalog, catalog_vectors)

    denim = table.set_index("value").loc["denim"]
    # ranking 1 (cotton), 0 (denim), 3, 2 (denim), then padding: relevant at ranks 2 and 4
    assert denim["n_relevant"] == 2 and list(denim["top10"]) == ["i1", "i0", "i3", "i2"]
    assert denim["P@1"] == 0.0 and denim["P@10"] == pytest.approx(0.2)
    assert denim["MRR"] == pytest.approx(0.5) and denim["AvgP"] == pytest.approx(0.1)
    cotton = table.set_index("value").loc["cotton"]  # cotton's item ranks first
    assert (cotton["P@1"], cotton["P@10"], cotton["MRR"], cotton["AvgP"]) == pytest.approx((1.0, 0.1, 1.0, 0.55))
    # no catalog item is wool: the class stays in the table, unscored, and out of every figure
    wool = table.set_index("value").loc["wool"]
    assert wool["n_relevant"] == 0 and math.isnan(wool["AvgP"])
    assert metrics["c2i.material.avgp"] == pytest.approx((0.1 + 0.55) / 2) and counts["c2i.material.avgp"] == 2
    assert metrics["c2i.material.p1.cotton"] == 1.0 and counts["c2i.material.p1.cotton"] == 1
    assert "c2i.material.avgp.wool" not in metrics
    assert {k.split(".")[2] for k in metrics} == {metric_name(c) for c in ("P@1", "P@10", "MRR", "AvgP")}


def test_ties_rank_the_lower_catalog_row_first():
    catalog = meta(material=["cotton", "denim"])
    prompts = pd.DataFrame({"attribute": ["material"], "value": ["denim"], "prompt": ["denim"]})
    _, _, table = evaluate_class_queries(ClassQueries(prompts, np.ones((1, 2), np.float32)), catalog,
                                         np.ones((2, 2), np.float32))
    assert list(table["top10"][0]) == ["i0", "i1"] and table["MRR"][0] == 0.5


def test_c2i_needs_an_item_mode_and_the_class_query_embeddings():
    assert EvalConfigMixin().wants_class_queries()
    with pytest.raises(ValueError, match="at least one of t2i, t2f, i2i"):
        EvalConfigMixin(modes="c2i")
    assert EvalConfigMixin(modes="t2i").item_modes() == ("t2i",)

    from protocol.retrieval.evaluation import evaluate_processed

    with pytest.raises(ValueError, match="mode c2i needs the class-name queries' embeddings"):
        evaluate_processed(EvalConfigMixin(modes="t2i,c2i"), None, np.zeros((1, 2)), np.zeros((1, 2)),
                           backbone_fingerprint="b")


def class_table(values: list[str], avgp: list[float], n_relevant: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"attribute": ["material"] * len(values), "value": values, "prompt": values,
                         "n_relevant": n_relevant, "P@1": avgp, "P@10": avgp, "MRR": avgp, "AvgP": avgp})


def test_reported_rows_pair_the_classes_both_sides_answered():
    rule = EvidenceRule(min_queries=10, confidence=0.95, resamples=200, seed=0)
    baseline = class_table(["denim", "cotton", "wool"], [0.2, 0.4, 0.9], [3, 5, 0])
    candidate = class_table(["cotton", "denim", "silk"], [0.6, 0.4, 1.0], [5, 3, 2])
    (row,) = class_query_rows(baseline, candidate, rule)
    assert row.attribute == "material" and row.n == 2  # wool unanswerable, silk only on one side
    assert row.baseline["AvgP"] == pytest.approx(0.3) and row.candidate["AvgP"] == pytest.approx(0.5)
    assert row.delta_points == pytest.approx(20.0) and row.ci_low_points <= 20.0 <= row.ci_high_points
    assert row.to_dict()["metric"] == "c2i.material.avgp" and row.to_dict()["locked"] is False
    assert class_query_rows(None, candidate, rule) == ()  # a side evaluated before c2i existed


def test_prompt_features_are_embedded_once_and_read_back_without_the_backbone(tmp_path):
    from protocol.model.backbone import BackboneSpec, create_backbone
    from protocol.model.prompt_features import cached_prompt_features, load_prompt_features, \
        prompt_features_path
    from tests.conftest import TINY_MODEL

    backbone = create_backbone(BackboneSpec(TINY_MODEL, "none", 0), device="cpu")
    prompts = class_prompts(meta(material=["denim", "cotton"], sleeve=["long", "unknown"]))
    with pytest.raises(FileNotFoundError, match="run the baseline stage"):
        load_prompt_features(prompts, tmp_path, "d" * 64, backbone.fingerprint)

    first = cached_prompt_features(prompts, backbone, tmp_path, "d" * 64)
    path = prompt_features_path(tmp_path, "d" * 64, backbone.fingerprint)
    written = path.stat().st_mtime_ns
    np.testing.assert_allclose(first, backbone.encode_texts(prompts["prompt"].tolist()), atol=1e-6)
    again = cached_prompt_features(prompts, backbone, tmp_path, "d" * 64)
    assert path.stat().st_mtime_ns == written and np.array_equal(again, first)
    np.testing.assert_array_equal(load_prompt_features(prompts.iloc[::-1], tmp_path, "d" * 64,
                                                       backbone.fingerprint), first[::-1])

    other = prompts.assign(prompt=prompts["prompt"] + " (new template)")
    with pytest.raises(ValueError, match="templates or the label vocabulary changed"):
        load_prompt_features(other, tmp_path, "d" * 64, backbone.fingerprint)
    with pytest.raises(FileNotFoundError, match="run the baseline stage"):  # another dataset's cache
        load_prompt_features(prompts, tmp_path, "e" * 64, backbone.fingerprint)
