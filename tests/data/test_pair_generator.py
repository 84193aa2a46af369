"""Pair generation: the mix, the pair rules checked independently of validate_pairs, shortfalls,
stale inputs, the pairs file."""

from __future__ import annotations

import pandas as pd
import pytest

from protocol.data.hard_negatives import mine_hard_negatives
from protocol.data.pair_generator import PairMix, generate_pairs, read_pairs, write_pairs
from protocol.data.pair_rules import PAIR_COLUMNS, PAIR_TYPES, POSITIVE_TYPES
from protocol.io import read_json
from protocol.provenance import FingerprintMismatchError, MissingProvenanceError, provenance
from tests.data.test_hard_negatives import BACKBONE_0, BACKBONE_1, DATASET_0, DATASET_1, random_meta, stored_provenance

CATEGORY_BASED = set(PAIR_TYPES) - {"strong_group"}


def groups_of(meta: pd.DataFrame, confidence: float = 1.0) -> pd.DataFrame:
    return pd.DataFrame({"item_id": meta["item_id"], "group_id": meta["group_id"], "source": "product_id",
                         "confidence": confidence})


@pytest.fixture(scope="module")
def world():
    meta, emb = random_meta(n_products=400, seed=1)
    mined = mine_hard_negatives(meta, emb, per_anchor=5, candidates=30)
    groups = groups_of(meta)
    pairs, stats = generate_pairs(meta, groups, mined, n_pairs=10_000, seed=0)
    return meta, groups, mined, pairs, stats


def test_mix_matches_the_targets(world):
    _, _, _, pairs, stats = world
    assert len(pairs) == 10_000 and stats["shortfalls"] == {}
    actual = pairs["pair_type"].value_counts(normalize=True)
    for pair_type, target in PairMix().as_dict().items():
        assert abs(actual[pair_type] - target) < 1e-3, pair_type
        assert stats["pair_types"][pair_type]["count"] == (pairs["pair_type"] == pair_type).sum()
    assert list(pairs.columns) == list(PAIR_COLUMNS)
    assert stats["labels"]["positive"] == pairs["label"].sum()


def test_pairs_obey_every_rule_checked_from_meta(world):
    meta, _, _, pairs, _ = world
    by_id = meta.set_index("item_id")
    a, b = by_id.loc[pairs["anchor_id"]], by_id.loc[pairs["other_id"]]
    assert (pairs["anchor_id"] != pairs["other_id"]).all()
    assert (a["split"].to_numpy() == b["split"].to_numpy()).all() and set(pairs["split"]) == {"train"}
    assert (pairs["label"] == pairs["pair_type"].isin(POSITIVE_TYPES).astype(int)).all()
    category_based = pairs["pair_type"].isin(CATEGORY_BASED).to_numpy()
    graphic = (a["category2"].to_numpy() == "graphic") | (b["category2"].to_numpy() == "graphic")
    assert not (category_based & graphic).any()
    same_category = a["category2"].to_numpy() == b["category2"].to_numpy()
    easy = (pairs["pair_type"] == "easy").to_numpy()
    assert same_category[category_based & ~easy].all() and not same_category[easy].any()
    same_group = a["group_id"].to_numpy() == b["group_id"].to_numpy()
    assert same_group[(pairs["pair_type"] == "strong_group").to_numpy()].all()
    assert not same_group[(pairs["label"] == 0).to_numpy()].any()
    for (pair_type, named), rows in pairs[pairs["attribute"] != ""].groupby(["pair_type", "attribute"]):
        for attribute in named.split("+"):
            va = by_id.loc[rows["anchor_id"], attribute].to_numpy()
            vb = by_id.loc[rows["other_id"], attribute].to_numpy()
            assert (va != "unknown").all() and (vb != "unknown").all(), (pair_type, attribute)
            assert ((va == vb) if pair_type in POSITIVE_TYPES else (va != vb)).all(), (pair_type, attribute)


def test_every_type_names_what_it_promises(world):
    _, _, mined, pairs, _ = world
    named = pairs.groupby("pair_type")["attribute"].agg(set)
    assert named["strong_group"] == {""}
    assert named["medium"] == {"material"}
    assert named["weak"] == {"pattern", "neckline", "sleeve"}
    assert named["hard_attribute"] == {"material", "neckline", "pattern"}
    assert named["easy"] == {"category2"}
    assert all(len(a.split("+")) >= 2 for a in named["strong_attribute"])
    hard = pairs[pairs["pair_type"] == "hard_mined"]
    mined_pairs = set(zip(mined["anchor_id"], mined["negative_id"]))
    assert set(zip(hard["anchor_id"], hard["other_id"])) <= mined_pairs
    # A small pool is reused evenly rather than duplicated at random.
    uses = hard.groupby(["anchor_id", "other_id"]).size()
    assert uses.max() - uses.min() <= 1


def test_same_seed_same_pairs_other_seed_other_pairs(world):
    meta, groups, mined, pairs, _ = world
    again, _ = generate_pairs(meta, groups, mined, n_pairs=10_000, seed=0)
    other, _ = generate_pairs(meta, groups, mined, n_pairs=10_000, seed=1)
    pd.testing.assert_frame_equal(pairs, again)
    assert not pairs.equals(other)


def test_shortfall_is_reported_not_hidden(world):
    meta, _, mined, _, _ = world
    singletons = pd.DataFrame({"item_id": meta["item_id"], "group_id": meta["item_id"], "source": "item",
                               "confidence": 1.0})
    pairs, stats = generate_pairs(meta, singletons, mined.iloc[:0], n_pairs=2_000, seed=0)
    targets = PairMix().target_counts(2_000)
    assert stats["shortfalls"] == {"strong_group": targets["strong_group"], "hard_mined": targets["hard_mined"]}
    assert len(pairs) == 2_000 - targets["strong_group"] - targets["hard_mined"]
    assert stats["pair_types"]["strong_group"]["count"] == 0


def test_low_confidence_groups_give_no_group_positives(world):
    meta, _, mined, _, _ = world
    pairs, stats = generate_pairs(meta, groups_of(meta, confidence=0.3), mined, n_pairs=1_000,
                                  min_group_confidence=0.5)
    assert "strong_group" in stats["shortfalls"] and not (pairs["pair_type"] == "strong_group").any()


def test_max_repeats_caps_reuse_of_a_small_pool(world):
    meta, groups, mined, _, _ = world
    few = mined.head(10)
    pairs, stats = generate_pairs(meta, groups, few, n_pairs=10_000, max_repeats=3)
    hard = pairs[pairs["pair_type"] == "hard_mined"]
    assert len(hard) == 30 and hard.groupby(["anchor_id", "other_id"]).size().max() == 3
    assert stats["shortfalls"]["hard_mined"] == PairMix().target_counts(10_000)["hard_mined"] - 30


def test_mix_validation_names_the_field():
    with pytest.raises(ValueError, match="PairMix.medium must be a fraction"):
        PairMix(medium=-0.1)
    with pytest.raises(ValueError, match=r"sum to 1.*easy=0.1"):
        PairMix(easy=0.1)
    assert sum(PairMix().target_counts(999).values()) == 999


def test_stale_hard_negatives_are_refused(world):
    meta, groups, mined, _, _ = world
    ghost = mined.head(3).assign(negative_id="nobody")
    with pytest.raises(ValueError, match="hard negatives name 1 item"):
        generate_pairs(meta, groups, ghost, n_pairs=100)
    flipped = mined.head(3).assign(negative_value=mined["anchor_value"].head(3), negative_id=mined["anchor_id"].head(3))
    with pytest.raises(ValueError, match="pair an item with itself"):
        generate_pairs(meta, groups, flipped, n_pairs=100)


def test_pairs_file_records_its_dataset_and_backbone_and_refuses_others(world, tmp_path):
    _, _, _, pairs, stats = world
    record = provenance(DATASET_0, BACKBONE_0)
    paths = write_pairs(pairs, stats, tmp_path, record)
    assert stored_provenance(paths["pairs"]) == record
    back, got = read_pairs(paths["pairs"], dataset=DATASET_0, backbone=BACKBONE_0)
    pd.testing.assert_frame_equal(back, pairs)
    assert got == record
    written = read_json(paths["stats"])
    assert written["pair_types"]["medium"]["count"] == stats["pair_types"]["medium"]["count"]
    assert written["provenance"] == record
    with pytest.raises(FingerprintMismatchError,
                       match=f"(?s)pairs.parquet {paths['pairs']}.*{DATASET_0}.*{DATASET_1}.*re-run the pairs stage"):
        read_pairs(paths["pairs"], dataset=DATASET_1, backbone=BACKBONE_0)
    with pytest.raises(FingerprintMismatchError, match=f"(?s)backbone.*{BACKBONE_0}.*{BACKBONE_1}"):
        read_pairs(paths["pairs"], dataset=DATASET_0, backbone=BACKBONE_1)


def test_pairs_without_provenance_are_refused(world, tmp_path):
    _, _, _, pairs, _ = world
    pairs.to_parquet(tmp_path / "pairs.parquet")  # as an older version wrote it
    with pytest.raises(MissingProvenanceError, match="pairs.parquet .*re-run the pairs stage"):
        read_pairs(tmp_path / "pairs.parquet", dataset=DATASET_0, backbone=BACKBONE_0)
    # dataset only (e.g. written by hand): the backbone check cannot pass silently either
    write_pairs(pairs, {}, tmp_path, provenance(DATASET_0))
    with pytest.raises(MissingProvenanceError, match="records no backbone_fingerprint: re-run the pairs stage"):
        read_pairs(tmp_path / "pairs.parquet", dataset=DATASET_0, backbone=BACKBONE_0)
