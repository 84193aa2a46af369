"""validate_pairs: each broken pair rule is named, with its rows, and a good set passes."""

from __future__ import annotations

import pandas as pd

from protocol.data.pair_rules import POSITIVE_TYPES, validate_pairs


def _pair(anchor, other, pair_type, attribute, label=None, split="train"):
    label = int(pair_type in POSITIVE_TYPES) if label is None else label
    return {"anchor_id": anchor, "other_id": other, "label": label, "pair_type": pair_type,
            "attribute": attribute, "split": split}


def test_validate_pairs_names_each_broken_rule():
    meta = pd.DataFrame([
        {"item_id": "a", "group_id": "g1", "category2": "tees", "split": "train", "material": "cotton",
         "pattern": "solid", "neckline": "crew", "sleeve": "short"},
        {"item_id": "b", "group_id": "g1", "category2": "tees", "split": "train", "material": "denim",
         "pattern": "solid", "neckline": "crew", "sleeve": "short"},
        {"item_id": "c", "group_id": "g2", "category2": "tees", "split": "val", "material": "cotton",
         "pattern": "unknown", "neckline": "crew", "sleeve": "short"},
        {"item_id": "d", "group_id": "g3", "category2": "graphic", "split": "train", "material": "cotton",
         "pattern": "solid", "neckline": "crew", "sleeve": "short"},
        {"item_id": "e", "group_id": "g4", "category2": "tees", "split": "train", "material": "cotton",
         "pattern": "striped", "neckline": "v-neck", "sleeve": "short"},
    ])
    good = [_pair("a", "b", "strong_group", ""), _pair("a", "e", "medium", "material"),
            _pair("e", "a", "hard_attribute", "neckline")]
    assert validate_pairs(pd.DataFrame(good), meta) == []
    cases = {
        "pair an item with itself": _pair("a", "a", "strong_group", ""),
        "cross splits": _pair("a", "c", "medium", "material"),
        "graphic item": _pair("a", "d", "medium", "material"),
        "positives on material that differ": _pair("a", "b", "medium", "material"),
        "negatives on neckline that share it": _pair("a", "b", "hard_attribute", "neckline"),
        "pattern but it is unknown": _pair("e", "c", "hard_attribute", "pattern", split="train"),
        "negatives of one product": _pair("a", "b", "hard_attribute", "material"),
        "strong_group pairs of two products": _pair("a", "e", "strong_group", ""),
        "contradicts their pair_type": _pair("a", "e", "medium", "material", label=0),
        "not in meta": _pair("a", "zz", "easy", "category2"),
    }
    for expected, bad in cases.items():
        problems = validate_pairs(pd.DataFrame(good + [bad]), meta)
        assert any(expected in p for p in problems), (expected, problems)
        assert all("rows 3" in p or "not in meta" in p for p in problems if expected in p)
