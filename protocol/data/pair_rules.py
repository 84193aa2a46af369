"""The rules every pair set obeys, and the checks of the inputs pairs are built from.

Rules, enforced by `validate_pairs` on every generated set: no self pair; no pair crosses
splits; positives share the named attribute(s), negatives differ in it, known on both
sides; negatives never pair two items of one product; graphic items (and items without a
category2) never take part in the category-based types (every type but strong_group).

The checks live apart from the generator so that every pair set, generated or mined, is
judged by the same code, independently of the code that made it.
The pair vocabulary (columns, types, which types are positive) is defined here because
the rules are stated in it; pair_generator imports it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from protocol.data.hard_negatives import HARD_NEGATIVE_COLUMNS, category_mask, known_mask, product_codes

PAIR_COLUMNS = ("anchor_id", "other_id", "label", "pair_type", "attribute", "split")
PAIR_TYPES = ("strong_group", "strong_attribute", "medium", "weak", "hard_mined", "hard_attribute", "easy")
POSITIVE_TYPES = frozenset({"strong_group", "strong_attribute", "medium", "weak"})
# Every type but strong_group is about categories, so graphic items stay out of them.
CATEGORY_TYPES = frozenset(PAIR_TYPES) - {"strong_group"}


def validate_pairs(pairs: pd.DataFrame, meta: pd.DataFrame, groups: pd.DataFrame | None = None) -> list[str]:
    """Every broken pair rule, one line each naming how many pairs and which rows; [] when all hold.

    Products come from `groups` (group_id per item) when given, else meta's group_id.
    """
    missing = [c for c in PAIR_COLUMNS if c not in pairs.columns]
    if missing:
        return [f"pairs lack column(s) {missing}"]
    ids = pd.Index(meta["item_id"].astype(str))
    a = ids.get_indexer(pairs["anchor_id"].astype(str))
    b = ids.get_indexer(pairs["other_id"].astype(str))
    problems: list[str] = []
    _report(problems, (a < 0) | (b < 0), "name an item_id that is not in meta")
    found = (a >= 0) & (b >= 0)
    pairs, a, b = pairs[found], a[found], b[found]

    pair_type = pairs["pair_type"].astype(str).to_numpy()
    positive = np.isin(pair_type, list(POSITIVE_TYPES))
    attribute = pairs["attribute"].fillna("").astype(str).to_numpy()
    split = meta["split"].astype(str).to_numpy()
    category2 = meta["category2"].astype(str).to_numpy()
    category_ok = category_mask(meta)
    in_category_type = np.isin(pair_type, list(CATEGORY_TYPES))
    easy = pair_type == "easy"

    _report(problems, ~np.isin(pair_type, PAIR_TYPES), f"have an unknown pair_type (allowed: {', '.join(PAIR_TYPES)})")
    _report(problems, pairs["label"].to_numpy() != positive.astype(int),
            "have a label that contradicts their pair_type (positives 1, negatives 0)")
    _report(problems, a == b, "pair an item with itself")
    _report(problems, split[a] != split[b], "cross splits")
    _report(problems, pairs["split"].astype(str).to_numpy() != split[a],
            "have a split column unlike their items' split")
    _report(problems, in_category_type & ~(category_ok[a] & category_ok[b]),
            "are category-based but involve a graphic item or one without category2")
    _report(problems, in_category_type & ~easy & (category2[a] != category2[b]),
            "are of a same-category type but differ in category2")
    _report(problems, (pair_type != "strong_group") & (attribute == ""), "name no attribute")
    for name in sorted(set(attribute) - {""}):
        _check_attribute(problems, meta, name, attribute == name, positive, a, b)

    product_meta = meta if groups is None else meta.assign(group_id=group_columns(meta, groups)[0])
    if "group_id" in product_meta.columns:
        products = product_codes(product_meta)
        same_product = products[a] == products[b]
        _report(problems, ~positive & same_product, "are negatives of one product (same group_id)")
        _report(problems, (pair_type == "strong_group") & ~same_product, "are strong_group pairs of two products")
    return problems


def _check_attribute(problems, meta, name, rows, positive, a, b) -> None:
    for attribute in name.split("+"):
        if attribute not in meta.columns:
            _report(problems, rows, f"name attribute {attribute!r}, which is not a meta column")
            continue
        known = known_mask(meta[attribute])
        values = meta[attribute].astype(str).to_numpy()
        _report(problems, rows & ~(known[a] & known[b]), f"name {attribute} but it is unknown on one side")
        _report(problems, rows & positive & (values[a] != values[b]), f"are positives on {attribute} that differ in it")
        _report(problems, rows & ~positive & (values[a] == values[b]), f"are negatives on {attribute} that share it")


def _report(problems: list[str], mask: np.ndarray, what: str) -> None:
    rows = np.flatnonzero(mask)
    if len(rows):
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        problems.append(f"{len(rows)} pair(s) {what} (rows {shown})")


def group_columns(meta: pd.DataFrame, groups: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per meta row: derived group_id ("" when the item has none) and its confidence (0 when none)."""
    missing = [c for c in ("item_id", "group_id", "confidence") if c not in groups.columns]
    if missing:
        raise ValueError(f"groups lack column(s) {missing}; pass protocol.data.group_key.derive_groups(meta)")
    if groups["item_id"].duplicated().any():
        dup = groups.loc[groups["item_id"].duplicated(), "item_id"].head(5).tolist()
        raise ValueError(f"groups list item(s) {dup} more than once; each item belongs to one group")
    by_item = groups.set_index(groups["item_id"].astype(str))
    stray = by_item.index.difference(pd.Index(meta["item_id"].astype(str)))
    if len(stray):
        raise ValueError(f"groups name {len(stray)} item(s) not in meta, e.g. {stray[:5].tolist()}; "
                         "derive the groups from the same meta")
    aligned = by_item.reindex(meta["item_id"].astype(str))
    group = aligned["group_id"].fillna("").astype(str).to_numpy(dtype=object)
    return group, aligned["confidence"].fillna(0.0).astype(float).to_numpy()


def check_meta(meta: pd.DataFrame, splits: Sequence[str], attributes: Sequence[str]) -> None:
    """meta has the columns pair generation reads (`attributes` besides the ids, category and split),
    unique item_ids, and items in `splits`."""
    required = ["item_id", "category2", "split", *attributes]
    missing = [c for c in required if c not in meta.columns]
    if missing:
        raise ValueError(f"meta lacks column(s) {missing} needed for pair generation; "
                         "pass the processed dataset's meta (load_processed(dir).meta)")
    if meta["item_id"].duplicated().any():
        dup = meta.loc[meta["item_id"].duplicated(), "item_id"].head(5).tolist()
        raise ValueError(f"meta has duplicate item_id values, e.g. {dup}; item_id must be unique")
    if not meta["split"].isin(splits).any():
        raise ValueError(f"no item of meta is in splits {list(splits)}; meta has splits "
                         f"{sorted(meta['split'].astype(str).unique())}")


def check_hard_negatives(mined: pd.DataFrame, meta: pd.DataFrame, groups: pd.DataFrame) -> None:
    """Mined rows must name items of this meta and obey the pair rules; stale ones raise."""
    missing = [c for c in HARD_NEGATIVE_COLUMNS if c not in mined.columns]
    if missing:
        raise ValueError(f"hard negatives lack column(s) {missing}; produce them with mine_hard_negatives")
    ids = pd.Index(meta["item_id"].astype(str))
    unknown = sorted(set(mined["anchor_id"].astype(str)).union(mined["negative_id"].astype(str)).difference(ids))
    if unknown:
        raise ValueError(f"hard negatives name {len(unknown)} item(s) not in meta, e.g. {unknown[:5]}; "
                         "re-run mining on this dataset")
    as_pairs = pd.DataFrame({
        "anchor_id": mined["anchor_id"], "other_id": mined["negative_id"], "label": 0, "pair_type": "hard_mined",
        "attribute": mined["attribute"],
        "split": meta.set_index(ids)["split"].reindex(mined["anchor_id"].astype(str)).to_numpy(),
    })
    problems = validate_pairs(as_pairs.reset_index(drop=True), meta, groups)
    if problems:
        raise ValueError("hard negatives do not fit this dataset (rows are hard-negative rows from 0): "
                         + "; ".join(problems) + "; re-run mining on this dataset")
