"""Group-aware splits: no leakage, seeded, stratified so weak classes reach every split, fractions checked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from protocol.data.splits import TestQuota, assign_splits, assign_splits_with_quotas


def _groups_and_labels(n_groups: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, n_groups)
    labels_per_group = rng.choice(["tees", "shirts", "cardigans", "shorts"], n_groups, p=[0.6, 0.28, 0.06, 0.06])
    groups = np.repeat([f"G{i:04d}" for i in range(n_groups)], sizes)
    return groups, np.repeat(labels_per_group, sizes)


def test_no_group_in_two_splits_and_every_row_assigned():
    groups, labels = _groups_and_labels()
    splits = assign_splits(groups, seed=0, stratify=labels)
    assert len(splits) == len(groups) and set(splits) == {"train", "val", "test"}
    assert pd.DataFrame({"g": groups, "s": splits}).groupby("g")["s"].nunique().max() == 1


def test_seeded():
    groups, labels = _groups_and_labels()
    a = assign_splits(groups, seed=0, stratify=labels)
    assert (a == assign_splits(groups, seed=0, stratify=labels)).all()
    assert (a != assign_splits(groups, seed=1, stratify=labels)).any()
    # row order does not matter: a group gets the same split when the rows are shuffled
    perm = np.random.default_rng(5).permutation(len(groups))
    shuffled = assign_splits(groups[perm], seed=0, stratify=labels[perm])
    assert (shuffled == a[perm]).all()


def test_fractions_hold_per_stratum_in_groups():
    groups, labels = _groups_and_labels(n_groups=400)
    fractions = {"train": 0.7, "val": 0.1, "test": 0.2}
    splits = assign_splits(groups, fractions, seed=3, stratify=labels)
    per_group = pd.DataFrame({"g": groups, "label": labels, "s": splits}).drop_duplicates("g")
    for label, rows in per_group.groupby("label"):
        counts = rows["s"].value_counts()
        for split, share in fractions.items():
            assert abs(counts.get(split, 0) - share * len(rows)) <= 1.5, (label, split, counts.to_dict())


def test_weak_classes_land_in_every_split():
    # 10 cardigan products among 300: every split still gets one
    groups = np.array([f"G{i}" for i in range(300)])
    labels = np.where(np.arange(300) < 10, "cardigans", "tees")
    for seed in range(5):
        splits = assign_splits(groups, seed=seed, stratify=labels)
        assert set(splits[labels == "cardigans"]) == {"train", "val", "test"}, seed


def test_zero_fraction_and_no_stratify():
    groups = np.array([f"G{i}" for i in range(50)])
    splits = assign_splits(groups, {"train": 0.8, "test": 0.2}, seed=0)
    assert set(splits) == {"train", "test"} and (splits == "test").sum() == 10


@pytest.mark.parametrize("fractions,message", [
    ({"train": 0.7, "val": 0.1, "test": 0.1}, "sum to 1"),
    ({"train": 1.2, "test": -0.2}, r"\[0, 1\]"),
    ({"train": 0.7, "dev": 0.3}, "unknown splits"),
    ({"val": 0.5, "test": 0.5}, "train share"),
])
def test_bad_fractions_are_refused(fractions, message):
    with pytest.raises(ValueError, match=message):
        assign_splits(["a", "b"], fractions)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="empty in rows \\[1\\]"):
        assign_splits(["a", "", "b"])
    with pytest.raises(ValueError, match="stratify has 1 labels for 2 rows"):
        assign_splits(["a", "b"], stratify=["x"])


# ---------------------------------------------------------------- class-aware test quotas

def _quota(name: str, rows, n: int = 30, max_share: float = 0.5) -> TestQuota:
    return TestQuota(name, np.asarray(rows, dtype=bool), n, max_share)


def test_embedded_default_meets_the_test_quotas_and_keeps_the_catalog_imbalanced():
    from protocol.data.prepare import finalize
    from protocol.data.synthetic import generate_catalog
    from protocol.scoreboard import focus_classes
    from protocol.tracking.stages.prepare import PrepareConfig

    cfg = PrepareConfig()  # the embedded default: its n_products, fractions and quotas
    raw = generate_catalog(n_products=cfg.n_products, seed=cfg.seed, image_size=32, show_progress=False)
    table = finalize(raw, fractions=cfg.fractions, seed=cfg.seed, quotas=cfg.quotas, show_progress=False)
    test, catalog = table[table["split"] == "test"], table[table["split"] != "test"]
    report = table.attrs["split_quotas"]

    for attribute, values in focus_classes().items():
        column = "category2" if attribute == "category" else attribute
        for value in values:
            n_test = int((test[column] == value).sum())
            assert n_test >= cfg.test_quota, (value, n_test)
            assert n_test <= cfg.quota_max_share * (table[column] == value).sum()
            assert report[f"{column}.{value}"]["test"] == n_test and report[f"{column}.{value}"]["met"]
    assert (test["neckline"] != "unknown").sum() >= cfg.neckline_test_quota
    assert table.groupby("group_id")["split"].nunique().max() == 1
    assert abs(len(test) / len(table) - cfg.test_fraction) < 0.03
    # the catalog keeps a realistic imbalance: tees and cotton dominate, the focus classes stay rare
    category_share = catalog["category2"].value_counts(normalize=True)
    material_share = catalog["material"].value_counts(normalize=True)
    assert category_share.index[0] == "tees" and material_share.index[0] == "cotton"
    for value in focus_classes()["category"]:
        assert category_share[value] < 0.06
    for value in focus_classes()["material"]:
        assert material_share[value] < 0.06


def test_a_class_with_too_few_items_gets_at_most_the_capped_share():
    groups, labels = _groups_and_labels(n_groups=300, seed=1)
    cardigans = labels == "cardigans"
    few = cardigans & (np.cumsum(cardigans) <= 9)  # 9 items: the cap lets 4 go to test
    labels = np.where(cardigans & ~few, "tees", labels)
    quotas = [_quota("category2.cardigans", labels == "cardigans")]
    for seed in range(5):
        splits, report = assign_splits_with_quotas(groups, seed=seed, stratify=labels, quotas=quotas)
        n_test = int(((labels == "cardigans") & (splits == "test")).sum())
        assert n_test <= 4, (seed, n_test)
        assert report["category2.cardigans"] == {"items": 9, "quota": 30, "cap": 4, "reserved": report[
            "category2.cardigans"]["reserved"], "test": n_test, "catalog": 9 - n_test, "met": False}
        assert pd.DataFrame({"g": groups, "s": splits}).groupby("g")["s"].nunique().max() == 1


def test_quotas_reserve_whole_groups_and_keep_the_test_share():
    groups, labels = _groups_and_labels(n_groups=600, seed=2)  # ~70 items of each weak class
    quotas = [_quota("category2.cardigans", labels == "cardigans"), _quota("category2.shorts", labels == "shorts")]
    before = assign_splits(groups, seed=0, stratify=labels)
    splits, report = assign_splits_with_quotas(groups, seed=0, stratify=labels, quotas=quotas)
    for name, label in (("category2.cardigans", "cardigans"), ("category2.shorts", "shorts")):
        assert ((labels == label) & (before == "test")).sum() < 30  # a plain stratified split falls short
        assert ((labels == label) & (splits == "test")).sum() >= 30 and report[name]["met"]
        assert report[name]["reserved"] >= 30
    assert pd.DataFrame({"g": groups, "s": splits}).groupby("g")["s"].nunique().max() == 1
    assert abs((splits == "test").mean() - 0.2) < 0.02
    assert abs((splits == "val").mean() - 0.1) < 0.02


def test_quotas_never_take_more_than_the_test_share():
    groups, labels = _groups_and_labels(n_groups=100, seed=3)  # ~200 rows: a test share of ~40 items
    quotas = [_quota("tees", labels == "tees", n=200, max_share=1.0)]
    splits, report = assign_splits_with_quotas(groups, seed=0, stratify=labels, quotas=quotas)
    assert (splits == "test").sum() <= 0.2 * len(groups)
    assert not report["tees"]["met"] and report["tees"]["test"] == (splits == "test").sum()


def test_quotas_are_seeded_and_off_means_the_plain_split():
    groups, labels = _groups_and_labels()
    quotas = [_quota("category2.cardigans", labels == "cardigans")]
    a, _ = assign_splits_with_quotas(groups, seed=0, stratify=labels, quotas=quotas)
    b, _ = assign_splits_with_quotas(groups, seed=0, stratify=labels, quotas=quotas)
    c, _ = assign_splits_with_quotas(groups, seed=1, stratify=labels, quotas=quotas)
    assert (a == b).all() and (a != c).any()
    off, report = assign_splits_with_quotas(groups, seed=0, stratify=labels,
                                            quotas=[_quota("category2.cardigans", labels == "cardigans", n=0)])
    assert (off == assign_splits(groups, seed=0, stratify=labels)).all()
    assert report["category2.cardigans"]["reserved"] == 0


def test_bad_quotas_are_refused():
    with pytest.raises(ValueError, match="max_share must be in"):
        _quota("x", [True], max_share=1.5)
    with pytest.raises(ValueError, match="n must be >= 0"):
        _quota("x", [True], n=-1)
    with pytest.raises(ValueError, match="marks 1 rows for 2 rows"):
        assign_splits_with_quotas(["a", "b"], quotas=[_quota("x", [True])])
