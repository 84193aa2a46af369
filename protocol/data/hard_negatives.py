"""Hard-negative mining on cached embeddings ("confusers").

For each anchor, the nearest items by image embedding among those of the SAME category2
and the SAME split that differ from it in a known attribute (material, neckline,
pattern by default). These are the pairs a frozen backbone confuses, so they are the
negatives worth training on. Rules, each enforced here:

- the differing attribute is known on both sides ("unknown" is not "different");
- the negative is never the anchor itself nor an item of the same product (group_id);
- anchor and negative share one split (mining never crosses splits);
- graphic items (and items without a category2) are neither anchors nor negatives:
  "graphic" is a pattern signal, not a category (DESIGN.md, graphic policy).

Only the given embeddings are used (the baseline catalog / feature cache), never a
backbone. Search is `protocol.retrieval.search.topk` inside each (split, category2)
block, so every candidate is already of the anchor's category and split.

hard_negatives.parquet records the dataset and backbone fingerprints of the embeddings it
was mined from; `read_hard_negatives` refuses a file made from other ones, or from none.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from protocol.data.graphic_policy import has_category
from protocol.data.schema import UNKNOWN
from protocol.provenance import MissingProvenanceError, read_parquet, write_parquet
from protocol.retrieval.search import combine_reports, topk

logger = logging.getLogger(__name__)

DEFAULT_ATTRIBUTES = ("material", "neckline", "pattern")
HARD_NEGATIVE_COLUMNS = (
    "anchor_id", "negative_id", "category2", "attribute", "anchor_value", "negative_value", "similarity", "rank",
)
HARD_NEGATIVES_FILE = "hard_negatives.parquet"
MADE_BY = "the mine stage"


def known_mask(values: pd.Series) -> np.ndarray:
    """True where an attribute value is grounded: not "unknown", not empty, not missing."""
    text = values.fillna("").astype(str).str.strip()
    return (text != "").to_numpy() & (text.str.lower() != UNKNOWN).to_numpy()


def category_mask(meta: pd.DataFrame) -> np.ndarray:
    """Items that may take part in category-based supervision (graphic policy: not graphic, not unknown)."""
    return has_category(meta["category2"].to_numpy())


def product_codes(meta: pd.DataFrame) -> np.ndarray:
    """One integer per product (group_id); an item without a group_id is its own product."""
    if "group_id" not in meta.columns:
        raise ValueError("meta has no 'group_id' column; run `prepare` (it derives group_id) before mining")
    keys = np.array(meta["group_id"].fillna("").astype(str), dtype=object)  # a copy: written below
    alone = keys == ""
    keys[alone] = "\0item:" + meta["item_id"].astype(str).to_numpy(dtype=object)[alone]
    return pd.factorize(keys)[0]


def attribute_codes(meta: pd.DataFrame, attributes: Sequence[str]) -> np.ndarray:
    """[N, A] int codes of each attribute's value, -1 where the value is unknown."""
    codes = np.full((len(meta), len(attributes)), -1, dtype=np.int64)
    for j, attribute in enumerate(attributes):
        known = known_mask(meta[attribute])
        codes[known, j] = pd.factorize(meta[attribute].to_numpy()[known])[0]
    return codes


def mine_hard_negatives(
    meta: pd.DataFrame,
    image_emb: np.ndarray,
    *,
    max_anchors: int = 2000,
    per_anchor: int = 5,
    candidates: int = 50,
    attributes: Sequence[str] = DEFAULT_ATTRIBUTES,
    splits: Sequence[str] = ("train",),
    seed: int = 0,
    search_report: dict | None = None,
) -> pd.DataFrame:
    """Up to `per_anchor` confusers for each of up to `max_anchors` anchors.

    Anchors are a seeded sample of the eligible items of `splits`, stratified by
    category2 (proportional). For each anchor, its `candidates` nearest items of the same
    (split, category2) are scanned in order of similarity and the first `per_anchor` that
    differ in a known attribute are kept. `attribute` names the first attribute of
    `attributes` that differs (order them by priority); `rank` is 1..per_anchor in order
    of similarity. Returns HARD_NEGATIVE_COLUMNS, one row per (anchor, negative).
    `search_report`, when given, is filled with what searched the blocks (search.combine_reports).
    """
    attributes = tuple(attributes)
    _check_inputs(meta, image_emb, attributes, splits, per_anchor, candidates, max_anchors)
    codes = attribute_codes(meta, attributes)
    products = product_codes(meta)
    eligible = category_mask(meta) & meta["split"].isin(splits).to_numpy()
    anchors = sample_anchors(meta, eligible & (codes >= 0).any(axis=1), max_anchors, seed)
    logger.info("mining hard negatives: %d anchors among %d eligible items of splits %s",
                len(anchors), int(eligible.sum()), list(splits))

    eligible_rows = np.flatnonzero(eligible)
    blocks = meta.iloc[eligible_rows].groupby(["split", "category2"], sort=True).indices
    is_anchor = np.zeros(len(meta), dtype=bool)
    is_anchor[anchors] = True
    found, searches = [], []
    with tqdm(total=len(anchors), unit="item", desc="mine hard negatives") as bar:
        for positions in blocks.values():
            block = eligible_rows[positions]
            anchor_pos = np.flatnonzero(is_anchor[block])
            if len(anchor_pos):
                searches.append({})
                found.append(_mine_block(block, anchor_pos, image_emb, codes, products, per_anchor, candidates,
                                         searches[-1]))
                bar.update(len(anchor_pos))
    if search_report is not None:
        search_report.clear()
        search_report.update(combine_reports(searches))
    return _to_frame(meta, attributes, found)


def sample_anchors(meta: pd.DataFrame, pool: np.ndarray, max_anchors: int, seed: int) -> np.ndarray:
    """Row indices of a seeded sample of the `pool` rows, proportional per category2, sorted."""
    rows = np.flatnonzero(pool)
    if len(rows) <= max_anchors:
        return rows
    frac = max_anchors / len(rows)
    sample = meta.iloc[rows].assign(_row=rows).groupby("category2").sample(frac=frac, random_state=seed)
    if len(sample) > max_anchors:  # per-category rounding can overshoot by a few
        sample = sample.sample(n=max_anchors, random_state=seed)
    return np.sort(sample["_row"].to_numpy())


def _mine_block(block, anchor_pos, image_emb, codes, products, per_anchor, candidates, search_report):
    """(anchor row, negative row, attribute index, similarity, rank) arrays for one (split, category2) block."""
    k = min(candidates, len(block) - 1)
    if k < 1:
        return None
    emb = np.asarray(image_emb[block], dtype=np.float32)
    scores, neighbours = topk(emb[anchor_pos], emb, k, exclude=anchor_pos.astype(np.int64), backend="auto",
                              report=search_report)
    anchor_rows = block[anchor_pos]
    filled = neighbours >= 0
    cand_rows = block[np.where(filled, neighbours, 0)]
    a_codes, c_codes = codes[anchor_rows][:, None, :], codes[cand_rows]
    differs = (a_codes >= 0) & (c_codes >= 0) & (a_codes != c_codes)  # [Q, k, A]
    other_product = products[cand_rows] != products[anchor_rows][:, None]
    usable = filled & other_product & differs.any(axis=2)
    rank = np.cumsum(usable, axis=1)
    keep = usable & (rank <= per_anchor)
    q, j = np.nonzero(keep)
    return (anchor_rows[q], cand_rows[q, j], differs[q, j].argmax(axis=1), scores[q, j], rank[q, j])


def _to_frame(meta: pd.DataFrame, attributes: tuple[str, ...], found: list) -> pd.DataFrame:
    found = [f for f in found if f is not None]
    if not found:
        logger.warning("no hard negatives found: no anchor has a same-category neighbour that differs "
                       "in a known attribute among %s", list(attributes))
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in HARD_NEGATIVE_COLUMNS})
    anchor, negative, attr_idx, similarity, rank = (np.concatenate(parts) for parts in zip(*found))
    values = meta[list(attributes)].astype(str).to_numpy()
    item_ids = meta["item_id"].astype(str).to_numpy()
    frame = pd.DataFrame({
        "anchor_id": item_ids[anchor],
        "negative_id": item_ids[negative],
        "category2": meta["category2"].astype(str).to_numpy()[anchor],
        "attribute": np.asarray(attributes, dtype=object)[attr_idx],
        "anchor_value": values[anchor, attr_idx],
        "negative_value": values[negative, attr_idx],
        "similarity": similarity.astype(np.float32),
        "rank": rank.astype(np.int64),
    })
    order = np.lexsort((frame["rank"].to_numpy(), anchor))
    return frame.iloc[order].reset_index(drop=True)


def _dtype(column: str) -> str:
    return {"similarity": "float32", "rank": "int64"}.get(column, "object")


def _check_inputs(meta, image_emb, attributes, splits, per_anchor, candidates, max_anchors) -> None:
    required = ["item_id", "category2", "split", "group_id", *attributes]
    missing = [c for c in required if c not in meta.columns]
    if missing:
        raise ValueError(f"meta lacks column(s) {missing} needed for hard-negative mining; "
                         "pass the processed dataset's meta (load_processed(dir).meta)")
    if image_emb.ndim != 2 or len(image_emb) != len(meta):
        raise ValueError(f"image embeddings have shape {image_emb.shape} but meta has {len(meta)} rows; "
                         "pass the embeddings of the same dataset in meta's row order")
    if meta["item_id"].duplicated().any():
        dup = meta.loc[meta["item_id"].duplicated(), "item_id"].head(5).tolist()
        raise ValueError(f"meta has duplicate item_id values, e.g. {dup}; item_id must be unique")
    for name, value in (("per_anchor", per_anchor), ("candidates", candidates), ("max_anchors", max_anchors)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not meta["split"].isin(splits).any():
        raise ValueError(f"no item of meta is in splits {list(splits)}; meta has splits "
                         f"{sorted(meta['split'].astype(str).unique())}")


def write_hard_negatives(negatives: pd.DataFrame, path: str | Path, record: dict[str, str]) -> Path:
    """hard_negatives.parquet with its provenance `record` (dataset + backbone) in its metadata, atomically."""
    missing = [c for c in HARD_NEGATIVE_COLUMNS if c not in negatives.columns]
    if missing:
        raise ValueError(f"hard negatives lack column(s) {missing}; produce them with mine_hard_negatives")
    if "backbone_fingerprint" not in record:
        raise ValueError("hard negatives are mined from a backbone's embeddings: their provenance record must "
                         "name its backbone_fingerprint (protocol.provenance.provenance(dataset_fp, backbone_fp))")
    return write_parquet(negatives, path, record)


def read_hard_negatives(path: str | Path, *, dataset: str, backbone: str | None) -> tuple[pd.DataFrame, dict[str, str]]:
    """(hard_negatives.parquet, its provenance record), refusing a file mined from another dataset or
    backbone (`backbone=None`: any backbone, for a reader that passes on the one the file names)."""
    negatives, record = read_parquet(path, HARD_NEGATIVES_FILE, dataset=dataset, backbone=backbone, made_by=MADE_BY)
    if "backbone_fingerprint" not in record:
        raise MissingProvenanceError(f"{HARD_NEGATIVES_FILE} {path} records no backbone_fingerprint, so nothing "
                                     f"shows which embeddings it was mined from: re-run {MADE_BY} to rewrite it")
    return negatives, record


def summarize_hard_negatives(negatives: pd.DataFrame) -> dict:
    """Counts to log: rows, anchors, and rows per attribute and per category2, mean similarity."""
    return {
        "n_negatives": int(len(negatives)),
        "n_anchors": int(negatives["anchor_id"].nunique()),
        "by_attribute": {str(k): int(v) for k, v in negatives["attribute"].value_counts().items()},
        "by_category2": {str(k): int(v) for k, v in negatives["category2"].value_counts().items()},
        "mean_similarity": float(negatives["similarity"].mean()) if len(negatives) else float("nan"),
    }
