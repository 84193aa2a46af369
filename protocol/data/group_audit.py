"""Product-group audit: are the derived groups good enough to make positive pairs from?

`group_key.derive_groups` uses the source's product_id when there is one and otherwise
guesses the product from item-id suffixes, url stems and SKUs. A product_id group is
right by definition, so the question is how good the guesses are. The honest test:
take the items whose true product IS known, hide every product_id, run the same
heuristics, and compare the guessed groups with the true products pair by pair
(two items in one guessed group vs two items of one true product).

Truth: `true_product_col` when given; by default `gt_product_id` where the data has it
(the synthetic catalog keeps every product's code there), else `product_id` (real data:
only the items that have one are evaluated).

groups.json records the dataset fingerprint it was derived from under its top-level
"provenance" key; `read_groups_json` refuses a file of another dataset, or of none.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics.cluster import pair_confusion_matrix

from protocol.data.audit import stratified_sample
from protocol.data.group_key import derive_groups
from protocol.data.hard_negatives import known_mask
from protocol.io import read_json, write_json
from protocol.provenance import check_provenance

logger = logging.getLogger(__name__)

GROUP_COLUMNS = ("item_id", "group_id", "source", "confidence")
GROUPS_FILE = "groups.json"
MADE_BY = "the groups stage"
# groups.json's top-level key for the fingerprints it was made from; derived group ids are
# upper-case letters and digits (protocol.data.group_key), so no group can take this key.
PROVENANCE_KEY = "provenance"
PRODUCT_ID_SOURCE = "product_id"
PRECISION_THRESHOLD = 0.95
# A derived group below this confidence never makes two items one product (groups audit,
# strong_group pairs, in-batch group positives in training).
MIN_GROUP_CONFIDENCE = 0.5
# Below this many guessed same-product pairs the precision says too little to rely on.
MIN_EVALUATED_PAIRS = 10
SPOT_CHECK_COLUMNS = ("group_id", "source", "confidence", "item_id", "product_id", "url", "title")


def audit_groups(
    groups: pd.DataFrame,
    meta: pd.DataFrame,
    min_confidence: float = MIN_GROUP_CONFIDENCE,
    sample_size: int = 20,
    seed: int = 0,
    *,
    true_product_col: str | None = None,
    precision_threshold: float = PRECISION_THRESHOLD,
    min_pairs: int = MIN_EVALUATED_PAIRS,
) -> dict:
    """Pairwise precision/recall of the grouping heuristics, a spot-check sample and a recommendation.

    Returns {"truth", "groups", "evaluation", "recommendation", "spot_check"}: `groups`
    summarises the groups in use; `evaluation` (None when no product is known) holds
    `all` and `usable` (confidence >= min_confidence) pair scores and `by_source`;
    `recommendation` = {"use_group_positives": bool, "reason": str}; `spot_check` is a
    DataFrame (SPOT_CHECK_COLUMNS) of `sample_size` multi-item groups for a human.
    Group positives are recommended when the usable heuristic pairs number at least
    `min_pairs` and reach `precision_threshold` (or when every usable group is a product_id one).
    """
    _check_groups(groups, meta)
    truth_col = _truth_column(meta, true_product_col)
    evaluation = evaluate_heuristics(meta, truth_col, min_confidence) if truth_col else None
    summary = summarize_groups(groups, min_confidence)
    return {
        "truth": truth_col,
        "min_confidence": min_confidence,
        "precision_threshold": precision_threshold,
        "groups": summary,
        "evaluation": evaluation,
        "recommendation": recommend(summary, evaluation, min_confidence, precision_threshold, min_pairs),
        "spot_check": spot_check_sample(groups, meta, sample_size, seed),
    }


def evaluate_heuristics(meta: pd.DataFrame, truth_col: str, min_confidence: float) -> dict:
    """Run derive_groups with every product_id hidden; score it on the items whose truth is known."""
    known = known_mask(meta[truth_col])
    # Hide the truth, product_id and the groups derived from it: the heuristics see only ids, urls and text.
    hidden = meta.drop(columns=["group_id"], errors="ignore").assign(**{"product_id": "", truth_col: ""})
    guessed = derive_groups(hidden).set_index("item_id").reindex(meta["item_id"])
    evaluated = guessed[known]
    truth = pd.factorize(meta.loc[known, truth_col].astype(str))[0]
    group = pd.factorize(evaluated["group_id"].astype(str))[0]
    source = evaluated["source"].astype(str).to_numpy()
    confident = evaluated["confidence"].astype(float).to_numpy() >= min_confidence
    result = {
        "n_items": int(known.sum()),
        "n_products": int(truth.max() + 1) if len(truth) else 0,
        "true_pairs": _true_pairs(truth),
        "all": _pair_scores(truth, group, np.ones(len(group), dtype=bool)),
        "usable": _pair_scores(truth, group, confident),
        "by_source": {s: {**_pair_scores(truth, group, source == s),
                          "items": int((source == s).sum()),
                          "mean_confidence": float(evaluated["confidence"][source == s].mean())}
                      for s in sorted(set(source))},
    }
    logger.info("group heuristics on %d items of known product: precision %s, recall %s",
                result["n_items"], result["all"]["precision"], result["all"]["recall"])
    return result


def _pair_scores(truth: np.ndarray, group: np.ndarray, member: np.ndarray) -> dict:
    """Same-group pairs among `member` items vs same-product pairs among all evaluated items."""
    # Non-members become singletons so they take part in no guessed pair.
    pred = np.where(member, group, group.max(initial=0) + 1 + np.arange(len(group)))
    counts = pair_confusion_matrix(truth, pred) // 2 if len(truth) > 1 else np.zeros((2, 2), dtype=int)
    (_, wrong), (missed, hit) = counts.tolist()  # [[tn, fp], [fn, tp]], halved: unordered pairs
    guessed, true = hit + wrong, hit + missed
    return {
        "pairs": int(guessed),
        "correct_pairs": int(hit),
        "precision": hit / guessed if guessed else None,
        "recall": hit / true if true else None,
    }


def _true_pairs(truth: np.ndarray) -> int:
    sizes = np.bincount(truth) if len(truth) else np.zeros(0, dtype=int)
    return int((sizes * (sizes - 1) // 2).sum())


def summarize_groups(groups: pd.DataFrame, min_confidence: float) -> dict:
    """Groups in use: counts per source, items in multi-item groups, items usable for positives."""
    size = groups.groupby("group_id")["item_id"].transform("size")
    usable = (groups["confidence"].astype(float) >= min_confidence) & (size > 1)
    by_source = {}
    for source, rows in groups.groupby("source", sort=True):
        sizes = rows.groupby("group_id").size()
        by_source[str(source)] = {"groups": int(len(sizes)), "items": int(len(rows)),
                                  "multi_item_groups": int((sizes > 1).sum()),
                                  "mean_confidence": float(rows["confidence"].astype(float).mean())}
    return {
        "n_items": int(len(groups)),
        "n_groups": int(groups["group_id"].nunique()),
        "n_multi_item_groups": int((groups.groupby("group_id").size() > 1).sum()),
        "usable_items": int(usable.sum()),
        "heuristic_usable_items": int((usable & (groups["source"] != PRODUCT_ID_SOURCE)).sum()),
        "by_source": by_source,
    }


def recommend(summary: dict, evaluation: dict | None, min_confidence: float, threshold: float,
              min_pairs: int = MIN_EVALUATED_PAIRS) -> dict:
    """Whether group positives are reliable at min_confidence, with the figures that decide it."""
    if summary["usable_items"] == 0:
        return _verdict(False, f"no multi-item group reaches confidence {min_confidence}: there are no group "
                               "positives to use")
    if summary["heuristic_usable_items"] == 0:
        return _verdict(True, f"every usable group comes from the source's product_id ({summary['usable_items']} "
                              "items): group positives are exact")
    if evaluation is None:
        return _verdict(False, f"{summary['heuristic_usable_items']} items are grouped by heuristics, but no item "
                               "has a known product to measure them against: check the spot-check sample by hand")
    usable = evaluation["usable"]
    if usable["pairs"] < min_pairs:
        return _verdict(False, f"only {usable['pairs']} guessed pairs at confidence >= {min_confidence} among "
                               f"{evaluation['n_items']} items of known product (need {min_pairs}): "
                               "too few to judge the heuristics")
    ok = usable["precision"] >= threshold
    recall = "n/a" if usable["recall"] is None else f"{usable['recall']:.3f}"
    return _verdict(ok, f"heuristic pairwise precision {usable['precision']:.3f} "
                        f"{'>=' if ok else '<'} {threshold} at confidence >= {min_confidence} "
                        f"({usable['correct_pairs']}/{usable['pairs']} guessed pairs correct, recall {recall}, "
                        f"on {evaluation['n_items']} items of known product)"
                        + ("" if ok else "; raise min_confidence or fix the weakest source in by_source"))


def _verdict(ok: bool, reason: str) -> dict:
    return {"use_group_positives": bool(ok), "reason": reason}


def spot_check_sample(groups: pd.DataFrame, meta: pd.DataFrame, sample_size: int, seed: int = 0) -> pd.DataFrame:
    """`sample_size` multi-item groups, every source represented, one row per item."""
    size = groups.groupby("group_id")["item_id"].transform("size")
    multi = groups[size > 1].drop_duplicates("group_id")
    if multi.empty:
        return pd.DataFrame(columns=list(SPOT_CHECK_COLUMNS))
    n = min(sample_size, len(multi))
    # Every source gets a group when the sample is big enough to hold one of each.
    min_per_source = 1 if n >= multi["source"].nunique() else 0
    picked = stratified_sample(multi, "source", n, min_per_source, seed)["group_id"]
    rows = groups[groups["group_id"].isin(picked)]
    details = meta.set_index("item_id").reindex(rows["item_id"])
    sample = rows.assign(**{c: details[c].to_numpy() for c in ("product_id", "url", "title") if c in meta.columns})
    return sample.loc[:, [c for c in SPOT_CHECK_COLUMNS if c in sample.columns]] \
        .sort_values(["source", "group_id", "item_id"]).reset_index(drop=True)


def _truth_column(meta: pd.DataFrame, requested: str | None) -> str | None:
    if requested is not None:
        if requested not in meta.columns:
            raise ValueError(f"true_product_col {requested!r} is not a column of meta (has {list(meta.columns)})")
        return requested if known_mask(meta[requested]).any() else None
    for column in ("gt_product_id", "product_id"):
        if column in meta.columns and known_mask(meta[column]).any():
            return column
    return None


def _check_groups(groups: pd.DataFrame, meta: pd.DataFrame) -> None:
    missing = [c for c in GROUP_COLUMNS if c not in groups.columns]
    if missing:
        raise ValueError(f"groups lack column(s) {missing}; pass protocol.data.group_key.derive_groups(meta)")
    stray = sorted(set(groups["item_id"].astype(str)) - set(meta["item_id"].astype(str)))
    if stray:
        raise ValueError(f"groups name {len(stray)} item(s) not in meta, e.g. {stray[:5]}; derive them from this meta")


def write_groups_json(groups: pd.DataFrame, path: str | Path, record: dict[str, str]) -> Path:
    """groups.json = {"provenance": record, group_id: {"items": [...], "source": ..., "confidence": ...}, ...},
    written atomically. A group's source is its items' most common one and its confidence their lowest.
    """
    missing = [c for c in GROUP_COLUMNS if c not in groups.columns]
    if missing:
        raise ValueError(f"groups lack column(s) {missing}; pass protocol.data.group_key.derive_groups(meta)")
    doc: dict = {PROVENANCE_KEY: record}
    for group_id, rows in groups.groupby("group_id", sort=True):
        if str(group_id) == PROVENANCE_KEY:
            raise ValueError(f"group id {group_id!r} is groups.json's provenance key; derive groups with "
                             "protocol.data.group_key.derive_groups")
        doc[str(group_id)] = {"items": rows["item_id"].astype(str).tolist(),
                              "source": str(rows["source"].mode().iloc[0]),
                              "confidence": float(rows["confidence"].astype(float).min())}
    return write_json(path, doc)


def read_groups_json(path: str | Path, *, dataset: str) -> pd.DataFrame:
    """groups.json back as DataFrame[item_id, group_id, source, confidence], refusing a file derived
    from another dataset than the one of fingerprint `dataset` (or one that records none)."""
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected an object of group_id -> {{items, source, confidence}}")
    check_provenance(doc.get(PROVENANCE_KEY), f"{GROUPS_FILE} {path}", dataset=dataset, made_by=MADE_BY)
    rows = []
    for group_id, group in doc.items():
        if group_id == PROVENANCE_KEY:
            continue
        if not isinstance(group, dict) or not {"items", "source", "confidence"} <= group.keys():
            raise ValueError(f"{path}: group {group_id!r} needs items, source and confidence; "
                             f"re-run {MADE_BY} to rewrite it")
        rows.extend((item, group_id, group["source"], float(group["confidence"])) for item in group["items"])
    return pd.DataFrame(rows, columns=list(GROUP_COLUMNS))
