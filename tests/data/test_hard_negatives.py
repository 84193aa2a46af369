"""Hard-negative mining: exact confusers on hand-placed embeddings, and the rules on random data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from protocol.data.hard_negatives import (
    HARD_NEGATIVE_COLUMNS, mine_hard_negatives, read_hard_negatives, write_hard_negatives,
)
from protocol.provenance import FingerprintMismatchError, MissingProvenanceError, provenance

# fingerprints of the seed-0 and seed-1 catalogs and of two backbones (64 hex digits, as made)
DATASET_0, DATASET_1 = "0d" * 32, "1d" * 32
BACKBONE_0, BACKBONE_1 = "0b" * 32, "1b" * 32


def stored_provenance(path) -> dict:
    """The record in a parquet file's schema metadata, read with pyarrow alone (not the reader under test)."""
    return json.loads(pq.read_schema(path).metadata[b"protocol.provenance"])

CATEGORIES = ("tees", "shirts", "cardigans", "shorts", "graphic")
VALUES = {
    "material": ("cotton", "denim", "leather", "wool", "unknown"),
    "pattern": ("solid", "striped", "unknown"),
    "neckline": ("crew", "v-neck", "collar", "unknown"),
    "sleeve": ("short", "long", "unknown"),
}


def random_meta(n_products: int = 150, seed: int = 0, dim: int = 16) -> tuple[pd.DataFrame, np.ndarray]:
    """Products of 1-3 images sharing category, split and attributes; random unit embeddings."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_products):
        product = {
            "product_id": f"P{p:04d}" if p % 2 else "",
            "group_id": f"P{p:04d}",
            "category2": CATEGORIES[rng.integers(len(CATEGORIES))],
            "split": rng.choice(["train", "val", "test"], p=[0.7, 0.1, 0.2]),
            **{a: rng.choice(v) for a, v in VALUES.items()},
            "color": "black",
        }
        for view in range(rng.integers(1, 4)):
            rows.append({"item_id": f"P{p:04d}_{view}", "url": "", "title": "t", "description": "d",
                         "text": "t. d", "category1": "tops", **product})
    meta = pd.DataFrame(rows)
    emb = rng.standard_normal((len(meta), dim)).astype(np.float32)
    return meta, emb / np.linalg.norm(emb, axis=1, keepdims=True)


def _item(item_id, category2="tees", material="cotton", neckline="crew", pattern="solid", split="train",
          group_id=None):
    return {"item_id": item_id, "group_id": group_id or item_id, "category2": category2, "split": split,
            "material": material, "neckline": neckline, "pattern": pattern, "sleeve": "short"}


def _at_degrees(degrees) -> np.ndarray:
    angles = np.radians(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


@pytest.fixture
def placed():
    """Anchor A and neighbours at growing angles; only D and E are legitimate confusers."""
    items = [
        (_item("A", group_id="g1"), 0),
        (_item("A2", material="denim", group_id="g1"), 1),   # same product: never a negative
        (_item("F", category2="graphic", material="denim"), 2),  # graphic: out
        (_item("G", category2="shirts", material="denim"), 3),   # other category: out
        (_item("H", material="denim", split="val"), 4),          # other split: out
        (_item("B"), 5),                                          # identical attributes: not a confuser
        (_item("C", material="unknown"), 10),                     # unknown is not different
        (_item("D", material="denim"), 20),
        (_item("E", neckline="v-neck"), 30),
        (_item("X", material="wool", neckline="v-neck"), 170),   # far, but still a confuser
    ]
    meta = pd.DataFrame([i for i, _ in items])
    return meta, _at_degrees([d for _, d in items])


def test_confusers_of_a_placed_anchor_are_exactly_the_rule_abiding_neighbours(placed):
    meta, emb = placed
    mined = mine_hard_negatives(meta, emb, per_anchor=2, candidates=50)
    of_a = mined[mined["anchor_id"] == "A"]
    assert of_a["negative_id"].tolist() == ["D", "E"]
    assert of_a["attribute"].tolist() == ["material", "neckline"]
    assert of_a[["anchor_value", "negative_value"]].values.tolist() == [["cotton", "denim"], ["crew", "v-neck"]]
    assert of_a["rank"].tolist() == [1, 2]
    np.testing.assert_allclose(of_a["similarity"], np.cos(np.radians([20, 30])), atol=1e-6)
    assert list(mined.columns) == list(HARD_NEGATIVE_COLUMNS)


def test_per_anchor_and_candidates_limit_the_scan(placed):
    meta, emb = placed
    everything = mine_hard_negatives(meta, emb, per_anchor=5, candidates=50)
    assert everything[everything["anchor_id"] == "A"]["negative_id"].tolist() == ["D", "E", "X"]
    # The 4 nearest same-split tees of A are A2, B, C, D: only D qualifies.
    near = mine_hard_negatives(meta, emb, per_anchor=5, candidates=4)
    assert near[near["anchor_id"] == "A"]["negative_id"].tolist() == ["D"]
    assert mine_hard_negatives(meta, emb, splits=("val",)).empty  # H is alone in val


def test_graphic_and_other_split_items_are_never_anchors(placed):
    meta, emb = placed
    mined = mine_hard_negatives(meta, emb, per_anchor=5)
    assert not {"F", "H", "G"} & (set(mined["anchor_id"]) | set(mined["negative_id"]))


def test_every_mined_negative_obeys_the_rules_on_random_data():
    meta, emb = random_meta()
    mined = mine_hard_negatives(meta, emb, per_anchor=3, candidates=20, splits=("train", "val"))
    assert len(mined) > 50
    by_id = meta.set_index("item_id")
    anchor, negative = by_id.loc[mined["anchor_id"]], by_id.loc[mined["negative_id"]]
    assert (anchor["category2"].to_numpy() == negative["category2"].to_numpy()).all()
    assert (anchor["category2"] != "graphic").all()
    assert (anchor["split"].to_numpy() == negative["split"].to_numpy()).all()
    assert (anchor["group_id"].to_numpy() != negative["group_id"].to_numpy()).all()
    assert set(anchor["split"]) == {"train", "val"}
    for attribute, rows in mined.groupby("attribute"):
        a = by_id.loc[rows["anchor_id"], attribute].to_numpy()
        b = by_id.loc[rows["negative_id"], attribute].to_numpy()
        assert (a != b).all() and (a != "unknown").all() and (b != "unknown").all()
        assert (rows["anchor_value"].to_numpy() == a).all() and (rows["negative_value"].to_numpy() == b).all()
    assert mined.groupby("anchor_id").size().max() <= 3
    # Similarity really is the embedding inner product, and ranks follow it.
    rows = meta.reset_index().set_index("item_id")["index"]
    dots = (emb[rows[mined["anchor_id"]]] * emb[rows[mined["negative_id"]]]).sum(axis=1)
    np.testing.assert_allclose(mined["similarity"], dots, atol=1e-5)
    assert (mined.groupby("anchor_id")["similarity"].diff().dropna() <= 1e-6).all()


def test_anchor_sample_is_capped_seeded_and_covers_categories():
    meta, emb = random_meta(n_products=300)
    first = mine_hard_negatives(meta, emb, max_anchors=40, seed=3)
    again = mine_hard_negatives(meta, emb, max_anchors=40, seed=3)
    other = mine_hard_negatives(meta, emb, max_anchors=40, seed=4)
    pd.testing.assert_frame_equal(first, again)
    assert 30 <= first["anchor_id"].nunique() <= 40
    assert set(first["anchor_id"]) != set(other["anchor_id"])
    assert set(first["category2"]) == set(CATEGORIES) - {"graphic"}


def test_bad_inputs_are_named(placed, tmp_path):
    meta, emb = placed
    with pytest.raises(ValueError, match="shape .* but meta has 10 rows"):
        mine_hard_negatives(meta, emb[:5])
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['group_id'\]"):
        mine_hard_negatives(meta.drop(columns="group_id"), emb)
    with pytest.raises(ValueError, match="no item of meta is in splits"):
        mine_hard_negatives(meta, emb, splits=("holdout",))


def test_hard_negatives_file_records_its_dataset_and_backbone_and_refuses_others(placed, tmp_path):
    meta, emb = placed
    mined = mine_hard_negatives(meta, emb)
    path = write_hard_negatives(mined, tmp_path / "hard_negatives.parquet", provenance(DATASET_0, BACKBONE_0))
    assert stored_provenance(path) == {"dataset_fingerprint": DATASET_0, "backbone_fingerprint": BACKBONE_0}
    back, record = read_hard_negatives(path, dataset=DATASET_0, backbone=BACKBONE_0)
    pd.testing.assert_frame_equal(back, mined)
    assert record == stored_provenance(path)
    # mined from the seed-0 catalog: a seed-1 catalog (or another backbone's features) must not train on them
    with pytest.raises(FingerprintMismatchError,
                       match=f"(?s)hard_negatives.parquet {path}.*{DATASET_0}.*{DATASET_1}.*re-run the mine stage"):
        read_hard_negatives(path, dataset=DATASET_1, backbone=BACKBONE_0)
    with pytest.raises(FingerprintMismatchError, match=f"(?s)backbone.*{BACKBONE_0}.*{BACKBONE_1}.*the mine stage"):
        read_hard_negatives(path, dataset=DATASET_0, backbone=BACKBONE_1)
    with pytest.raises(ValueError, match="must name its backbone_fingerprint"):
        write_hard_negatives(mined, tmp_path / "no_backbone.parquet", provenance(DATASET_0))
    assert not (tmp_path / "no_backbone.parquet").exists()


def test_hard_negatives_without_provenance_are_refused(placed, tmp_path):
    meta, emb = placed
    mine_hard_negatives(meta, emb).to_parquet(tmp_path / "old.parquet")  # as an older version wrote it
    with pytest.raises(MissingProvenanceError, match=f"hard_negatives.parquet {tmp_path}.*re-run the mine stage"):
        read_hard_negatives(tmp_path / "old.parquet", dataset=DATASET_0, backbone=None)
