"""Group keys: product_id first, then item-id suffix / url stem / SKU heuristics, with confidences."""

from __future__ import annotations

import pandas as pd
import pytest

from protocol.data.group_key import (derive_group_ids, derive_groups, key_from_item_id, key_from_sku,
                                     key_from_url)
from protocol.data.synthetic import generate_catalog


@pytest.mark.parametrize("item_id,expected", [
    ("P00123_front", "P00123"), ("P00123_back", "P00123"), ("P00123_view2", "P00123"), ("P00123_A", "P00123"),
    ("P00123-2", "P00123"), ("sku-778_detail", "SKU778"), ("P00123", None), ("tee_a", None), ("0108775015", None),
])
def test_item_id_suffix_removal(item_id, expected):
    assert key_from_item_id(item_id) == expected


@pytest.mark.parametrize("url,expected", [
    ("https://shop.example.com/p/classic-crew-tee-p00123", "P00123"),
    ("https://shop.example.com/p/classic-crew-tee-p00123?colour=navy", "P00123"),
    ("https://shop.example.com/p/classic-crew-tee-p00123/", "P00123"),
    ("https://www2.hm.com/en_gb/productpage.0108775015.html", "0108775015"),
    ("https://shop.example.com/product?pid=ab-77&colour=red", "AB77"),
    ("https://shop.example.com/product", None),
    ("https://shop.example.com/products/1234567.html", "1234567"),
    ("https://shop.example.com/p/striped-linen-shirt", "URLSTRIPEDLINENSHIRT"),
    ("", None),
])
def test_url_stem(url, expected):
    assert key_from_url(url) == expected


@pytest.mark.parametrize("text,expected", [
    ("Soft tee. Art. no. P00123.", "P00123"), ("SKU: ab-1234", "AB1234"), ("Style no. 0108775", "0108775"),
    ("Item # X99-01 in stock", "X9901"), ("A plain tee, no article number.", None),
])
def test_sku_in_text(text, expected):
    assert key_from_sku(text) == expected


def test_product_id_wins_and_heuristics_agree_or_vote():
    meta = pd.DataFrame({
        "item_id": ["P1_front", "x_back", "P00123_front", "P00123_back", "IMG77", "P00555_A", "lonely"],
        "product_id": ["H-9", "h9", "", "", "", "", ""],
        "url": ["", "", "https://s.com/p/tee-p00123", "", "https://s.com/p/jacket-p00999",
                "https://s.com/p/x-p00777", ""],
        "title": ["Tee", "Tee", "Tee", "Tee", "Jacket", "Skirt", "Bag"],
        "description": ["", "", "SKU P00123", "", "Art. no. P00999.", "SKU P00777", ""],
    }, index=[10, 11, 12, 13, 14, 15, 16])
    groups = derive_groups(meta)
    assert list(groups.index) == list(meta.index)
    by_id = groups.set_index("item_id")
    # product_id, normalised, with full confidence
    assert by_id.loc["P1_front", "group_id"] == by_id.loc["x_back", "group_id"] == "H9"
    assert by_id.loc["P1_front", "confidence"] == 1.0 and by_id.loc["P1_front", "source"] == "product_id"
    # three heuristics agree: the highest confidence a heuristic gets
    assert by_id.loc["P00123_front", "group_id"] == "P00123"
    assert by_id.loc["P00123_front", "source"] == "sku+url+item_suffix"
    assert by_id.loc["P00123_front", "confidence"] == pytest.approx(0.95)
    # one heuristic alone: lower confidence, same group
    assert by_id.loc["P00123_back", "group_id"] == "P00123"
    assert by_id.loc["P00123_back", "confidence"] == pytest.approx(0.6)
    # an opaque item id grouped by its url and SKU
    assert by_id.loc["IMG77", "group_id"] == "P00999" and by_id.loc["IMG77", "source"] == "sku+url"
    # disagreement: url + SKU outvote the item id
    assert by_id.loc["P00555_A", "group_id"] == "P00777"
    # nothing to go on: the item is its own group
    assert by_id.loc["lonely", "group_id"] == "LONELY" and by_id.loc["lonely", "source"] == "item_id"
    assert (groups["confidence"] < 1).sum() == 5


def test_group_ids_are_a_series_aligned_with_meta():
    meta = pd.DataFrame({"item_id": ["P2_A", "P2_B"]}, index=[5, 7])
    ids = derive_group_ids(meta)
    assert ids.name == "group_id" and list(ids.index) == [5, 7] and list(ids) == ["P2", "P2"]
    with pytest.raises(KeyError, match="item_id"):
        derive_groups(pd.DataFrame({"url": ["x"]}))


def test_generated_catalog_groups_recover_products():
    raw = generate_catalog(n_products=120, seed=2, image_size=32, show_progress=False)
    groups = derive_groups(raw)
    # the partition into groups is exactly the partition into true products
    pairs = pd.DataFrame({"group": groups["group_id"], "product": raw["gt_product_id"]}).drop_duplicates()
    assert pairs["group"].is_unique and pairs["product"].is_unique
    assert len(pairs) == 120
    without_pid = raw["product_id"] == ""
    assert without_pid.any() and (groups.loc[without_pid, "source"] != "product_id").all()
