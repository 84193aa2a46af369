"""Group-aware splits: no leakage, seeded, stratified so weak classes reach every split, fractions checked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from protocol.data.splits import assign_splits


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
