"""Synthetic cached features with a learnable text->image signal, for tests and benchmarks.

Each product has a category and attributes drawn with a realistic skew (many tees and
cotton, few cardigans, shorts, denim, leather); it has `views` items (images). Features:

    latent = sum of a prototype vector per attribute value + a product vector
    image  = normalize(latent + noise)
    text   = normalize(a * latent + (1 - a) * R @ latent + noise)    R: a fixed random rotation

With a small `text_alignment` a, zero-shot text->image retrieval is weak, and heads that
learn to undo R do much better: a real signal for training to find. Some attributes are
"unknown" in the metadata (as grounding leaves them) while still shaping the features.
Pairs and hard negatives come from the real generators (protocol.data.pair_generator,
protocol.data.hard_negatives) run on these features, so they follow the real contracts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from protocol.data.hard_negatives import mine_hard_negatives
from protocol.data.pair_generator import generate_pairs
from protocol.model.features import FeatureSet

CATEGORIES = {  # category2 -> (category1, share)
    "tees": ("tops", 0.34), "cardigans": ("tops", 0.08), "sweaters": ("tops", 0.12), "shorts": ("bottoms", 0.08),
    "jeans": ("bottoms", 0.14), "dresses": ("dresses", 0.12), "jackets": ("outerwear", 0.12),
}
VALUES = {
    "material": {"cotton": 0.42, "denim": 0.07, "leather": 0.06, "wool": 0.15, "polyester": 0.15, "linen": 0.15},
    "pattern": {"solid": 0.5, "striped": 0.2, "floral": 0.15, "checked": 0.15},
    "neckline": {"crew": 0.35, "v-neck": 0.25, "collared": 0.2, "turtleneck": 0.2},
    "sleeve": {"short": 0.4, "long": 0.4, "sleeveless": 0.2},
    "color": {"black": 0.25, "white": 0.2, "red": 0.15, "blue": 0.25, "green": 0.15},
}
UNKNOWN_RATE = {"material": 0.15, "pattern": 0.2, "neckline": 0.35, "sleeve": 0.25, "color": 0.1}
NO_NECKLINE = ("shorts", "jeans")  # garments without one: always "unknown"
GRAPHIC_RATE = 0.08  # share of tees filed under "graphic"
SPLIT_SHARES = {"train": 0.7, "val": 0.15, "test": 0.15}


@dataclass
class SyntheticTrainingSet:
    features: FeatureSet
    meta: pd.DataFrame
    pairs: pd.DataFrame
    hard_negatives: pd.DataFrame
    groups: pd.DataFrame  # groups.json as read back: item_id, group_id, source, confidence


def synthetic_meta(n_products: int, views: int = 2, seed: int = 0) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Item metadata (observed attributes, "unknown" where not grounded) and the true values behind it."""
    rng = np.random.default_rng(seed)
    truth = {"category2": _draw(rng, {k: v[1] for k, v in CATEGORIES.items()}, n_products)}
    for attribute, dist in VALUES.items():
        truth[attribute] = _draw(rng, dist, n_products)
    split = _draw(rng, SPLIT_SHARES, n_products)
    product = np.repeat(np.arange(n_products), views)
    rows = {
        "item_id": [f"S{p:05d}_v{v}" for p in range(n_products) for v in range(views)],
        "product_id": [f"S{p:05d}" for p in product],
        "split": split[product],
        "category1": [CATEGORIES[c][0] for c in truth["category2"][product]],
        "category2": truth["category2"][product].astype(object),
    }
    graphic = (truth["category2"] == "tees") & (rng.random(n_products) < GRAPHIC_RATE)
    rows["category2"][graphic[product]] = "graphic"
    for attribute in VALUES:
        observed = truth[attribute].astype(object)
        observed[rng.random(n_products) < UNKNOWN_RATE[attribute]] = "unknown"
        if attribute == "neckline":
            observed[np.isin(truth["category2"], NO_NECKLINE)] = "unknown"
        rows[attribute] = observed[product]
    meta = pd.DataFrame(rows)
    meta["group_id"] = meta["product_id"]
    meta["url"] = ""
    meta["title"] = meta["text"] = meta["description"] = meta["category2"] + " " + meta["material"]
    return meta, {k: v[product] for k, v in truth.items()}


def synthetic_features(meta: pd.DataFrame, truth: dict[str, np.ndarray], dim: int, seed: int = 0,
                       text_alignment: float = 0.3, noise: float = 0.35) -> FeatureSet:
    """Image/text features of `meta`'s items, with the structure described in the module docstring."""
    rng = np.random.default_rng(seed + 1)
    n = len(meta)
    latent = np.zeros((n, dim))
    for attribute, values in truth.items():
        names, codes = np.unique(values, return_inverse=True)
        prototypes = _unit(rng.standard_normal((len(names), dim)))
        latent += prototypes[codes]
    products = pd.factorize(meta["group_id"])[0]
    latent += 0.8 * _unit(rng.standard_normal((products.max() + 1, dim)))[products]
    latent = _unit(latent)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    image = _unit(latent + noise / np.sqrt(dim) * rng.standard_normal((n, dim)))
    text = text_alignment * latent + (1 - text_alignment) * latent @ rotation.T
    text = _unit(text + noise / np.sqrt(dim) * rng.standard_normal((n, dim)))
    digest = hashlib.sha256(f"{n}|{dim}|{seed}|{text_alignment}|{noise}".encode()).hexdigest()
    return FeatureSet(
        item_ids=meta["item_id"].tolist(), image=image.astype(np.float32), text=text.astype(np.float32),
        dataset_fingerprint=f"synthetic-dataset-{digest[:24]}", backbone_fingerprint=f"synthetic-backbone-{dim}",
        n_computed=0,
    )


def synthetic_training_set(n_products: int = 200, dim: int = 32, n_pairs: int = 2000, seed: int = 0,
                           views: int = 2, text_alignment: float = 0.3) -> SyntheticTrainingSet:
    """Meta, features, hard negatives and pairs, all consistent with each other and the contracts."""
    meta, truth = synthetic_meta(n_products, views, seed)
    features = synthetic_features(meta, truth, dim, seed, text_alignment)
    hard_negatives = mine_hard_negatives(meta, features.image, max_anchors=len(meta), per_anchor=3, seed=seed)
    groups = pd.DataFrame({"item_id": meta["item_id"], "group_id": meta["group_id"], "source": "product_id",
                           "confidence": 1.0})
    pairs, _ = generate_pairs(meta, groups, hard_negatives, n_pairs=n_pairs, seed=seed)
    return SyntheticTrainingSet(features, meta, pairs, hard_negatives, groups)


def _draw(rng: np.random.Generator, dist: dict[str, float], n: int) -> np.ndarray:
    p = np.array(list(dist.values()), dtype=float)
    return np.array(list(dist), dtype=object)[rng.choice(len(p), size=n, p=p / p.sum())]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
