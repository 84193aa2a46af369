"""Product-group audit on hand-made ids, urls and SKUs whose true products are known."""

from __future__ import annotations

import pandas as pd
import pytest

from protocol.data.group_audit import audit_groups, read_groups_json, write_groups_json
from protocol.data.group_key import derive_groups
from protocol.io import read_json, write_json
from protocol.provenance import FingerprintMismatchError, MissingProvenanceError, provenance
from tests.data.test_hard_negatives import DATASET_0, DATASET_1

SHOP = "https://shop.example.com/p/"


def _item(item_id, product_id="", url="", description="", truth=None):
    return {"item_id": item_id, "product_id": product_id, "url": url, "title": f"Item {item_id}",
            "description": description, "truth": truth or product_id}


@pytest.fixture
def meta() -> pd.DataFrame:
    return pd.DataFrame([
        # view suffixes and a url with the product's id: both heuristics agree, rightly
        _item("P1001_front", "P1001", SHOP + "classic-tee-p1001"),
        _item("P1001_back", "P1001", SHOP + "classic-tee-p1001"),
        _item("P1002_front", "P1002", SHOP + "linen-shirt-p1002"),
        _item("P1002_back", "P1002", SHOP + "linen-shirt-p1002"),
        # two products behind one id-less url slug: the url heuristic merges them, wrongly
        _item("IMG1", "P1003", SHOP + "basic-tee"),
        _item("IMG2", "P1004", SHOP + "basic-tee"),
        # opaque ids, the SKU in the text finds the product
        _item("IMG3", "P1005", description="Soft tee. SKU P1005."),
        _item("IMG4", "P1005", description="Back view. SKU P1005."),
        # product unknown to the source: not evaluated against product_id
        _item("Q2001_front", "", SHOP + "wool-cardigan-q2001", truth="Q2001"),
        _item("Q2001_back", "", SHOP + "wool-cardigan-q2001", truth="Q2001"),
    ])


def test_heuristics_are_scored_with_product_ids_hidden(meta):
    groups = derive_groups(meta)
    audit = audit_groups(groups, meta, min_confidence=0.5, min_pairs=3)
    evaluation = audit["evaluation"]
    assert audit["truth"] == "product_id" and evaluation["n_items"] == 8 and evaluation["n_products"] == 5
    # The groups in use come from product_id and are exact, yet the heuristics are judged on their own:
    # 4 guessed pairs (P1001, P1002, P1005 and the wrong IMG1-IMG2), 3 true pairs.
    assert evaluation["true_pairs"] == 3
    assert evaluation["all"] == {"pairs": 4, "correct_pairs": 3, "precision": 0.75, "recall": 1.0}
    by_source = evaluation["by_source"]
    assert by_source["url"]["pairs"] == 1 and by_source["url"]["precision"] == 0.0
    assert by_source["sku"]["precision"] == 1.0 and by_source["url+item_suffix"]["correct_pairs"] == 2
    assert audit["recommendation"]["use_group_positives"] is False
    assert "0.750 < 0.95" in audit["recommendation"]["reason"]


def test_a_higher_confidence_floor_drops_the_weak_source(meta):
    audit = audit_groups(derive_groups(meta), meta, min_confidence=0.75, min_pairs=3)
    assert audit["evaluation"]["usable"] == {"pairs": 3, "correct_pairs": 3, "precision": 1.0, "recall": 1.0}
    # The production groups are all product_id ones here, so nothing heuristic would be used anyway...
    assert audit["recommendation"]["use_group_positives"] is True
    # ...while heuristic groups in use are judged by the evaluation.
    hidden = meta.assign(product_id="")
    verdict = audit_groups(derive_groups(hidden), meta, min_confidence=0.75, min_pairs=3)["recommendation"]
    assert verdict["use_group_positives"] is True and "1.000 >= 0.95" in verdict["reason"]
    too_few = audit_groups(derive_groups(hidden), meta, min_confidence=0.75, min_pairs=10)["recommendation"]
    assert too_few["use_group_positives"] is False and "only 3 guessed pairs" in too_few["reason"]


def test_a_truth_column_evaluates_every_item(meta):
    audit = audit_groups(derive_groups(meta), meta, true_product_col="truth", min_pairs=3)
    assert audit["truth"] == "truth" and audit["evaluation"]["n_items"] == 10
    assert audit["evaluation"]["all"]["correct_pairs"] == 4  # Q2001's views now count too
    with pytest.raises(ValueError, match="true_product_col 'nope' is not a column"):
        audit_groups(derive_groups(meta), meta, true_product_col="nope")


def test_without_known_products_heuristic_groups_are_not_trusted(meta):
    hidden = meta.assign(product_id="").drop(columns="truth")
    audit = audit_groups(derive_groups(hidden), hidden)
    assert audit["evaluation"] is None
    assert audit["recommendation"]["use_group_positives"] is False
    assert "spot-check" in audit["recommendation"]["reason"]


def test_spot_check_holds_whole_groups_of_every_source(meta):
    groups = derive_groups(meta.assign(product_id=""))
    spot = audit_groups(groups, meta, sample_size=3, seed=0)["spot_check"]
    multi_sources = set(groups[groups.groupby("group_id")["item_id"].transform("size") > 1]["source"])
    assert set(spot["source"]) == multi_sources
    assert spot["group_id"].nunique() == 3
    for group_id, rows in spot.groupby("group_id"):
        assert set(rows["item_id"]) == set(groups.loc[groups["group_id"] == group_id, "item_id"])
    assert {"url", "title"} <= set(spot.columns)


def test_groups_json_round_trip(meta, tmp_path):
    groups = derive_groups(meta.assign(product_id=""))
    path = write_groups_json(groups, tmp_path / "groups.json", provenance(DATASET_0))
    back = read_groups_json(path, dataset=DATASET_0)
    merged = groups.merge(back, on="item_id", suffixes=("", "_back"))
    assert len(merged) == len(groups) and (merged["group_id"] == merged["group_id_back"]).all()
    assert (merged["confidence_back"] <= merged["confidence"]).all()
    with pytest.raises(ValueError, match="groups name 1 item"):
        audit_groups(pd.concat([groups, groups.head(1).assign(item_id="ghost")]), meta)


def test_groups_json_records_its_dataset_and_refuses_another(meta, tmp_path):
    groups = derive_groups(meta)
    path = write_groups_json(groups, tmp_path / "groups.json", provenance(DATASET_0))
    doc = read_json(path)
    assert doc["provenance"] == {"dataset_fingerprint": DATASET_0}
    assert set(doc) - {"provenance"} == set(groups["group_id"])  # the groups stay at the top level
    with pytest.raises(FingerprintMismatchError,
                       match=f"(?s)groups.json {path}.*{DATASET_0}.*{DATASET_1}.*re-run the groups stage"):
        read_groups_json(path, dataset=DATASET_1)
    with pytest.raises(ValueError, match="is groups.json's provenance key"):
        write_groups_json(groups.assign(group_id="provenance"), tmp_path / "clash.json", provenance(DATASET_0))


def test_groups_json_without_provenance_is_refused(meta, tmp_path):
    doc = read_json(write_groups_json(derive_groups(meta), tmp_path / "groups.json", provenance(DATASET_0)))
    del doc["provenance"]
    write_json(tmp_path / "old.json", doc)  # as an older version wrote it
    with pytest.raises(MissingProvenanceError, match=f"groups.json {tmp_path / 'old.json'}.*re-run the groups stage"):
        read_groups_json(tmp_path / "old.json", dataset=DATASET_0)
