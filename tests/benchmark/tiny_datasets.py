"""Tiny datasets in the column layouts of Marqo's hub datasets, saved with save_to_disk.

Ten documents each, so the top 10 is every document and P@10 / Recall@10 follow from the labels
alone, whatever the model ranks first: the hand-worked expectations below.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
from PIL import Image

N_DOCS = 10


def images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)) for _ in range(n)]


# KAGL (Marqo/KAGL): item_ID (int), text, category1-3, baseColour, season, usage. `usage` is left out here,
# so its task is the one that cannot run.
KAGL = {
    "item_ID": list(range(101, 111)),
    "text": ["red tee", "red tee", "blue jeans", "black boots", "white sneakers", "green shirt", "grey hoodie",
             "brown sandals", "navy shorts", "pink top"],
    "category1": ["Apparel", "Apparel", "Apparel", "Footwear", "Footwear", "Apparel", "Apparel", "Footwear",
                  "Apparel", "Apparel"],
    "category2": ["Topwear", "Topwear", "Bottomwear", "Shoes", "Shoes", "Topwear", "Topwear", "Shoes",
                  "Bottomwear", "Bottomwear"],
    "category3": ["Tshirts", "Tshirts", "", None, "", "Tshirts", "", None, "", "Tshirts"],
    "baseColour": ["Black"] * N_DOCS,
    "season": ["Summer", "Summer", "Fall", "Fall", "Summer", "Summer", "Fall", "Summer", "Summer", "Summer"],
}
# Expected P@10 (every document is in the top 10): a value held by m distinct item_IDs scores m/10.
KAGL_P10 = {
    "category-to-product": (7 + 3) / 10 / 2,                  # Apparel 7, Footwear 3
    "sub-category-to-product": (4 + 3 + 3) / 10 / 3,          # Topwear 4, Bottomwear 3, Shoes 3
    "fine-category-to-product": 4 / 10,                       # Tshirts 4; "" and None are no query
    "color-to-product": 1.0,                                  # Black on every item
    "season-to-product": (7 + 3) / 10 / 2,                    # Summer 7, Fall 3
}
KAGL_N_QUERIES = {"text-to-image": 9, "category-to-product": 2, "sub-category-to-product": 3,
                  "fine-category-to-product": 1, "color-to-product": 1, "season-to-product": 2}

# iMaterialist (Marqo/iMaterialist): item_ID, image, category, style, neckline; no text column. Rows 8 and 9
# share an item_ID: Marqo keys results by item_ID, so they are one document and one result.
IMATERIALIST = {
    "item_ID": [f"im{i}" for i in range(8)] + ["im8", "im8"],
    "category": ["dress"] * 6 + ["top"] * 4,
    "style": ["casual"] * N_DOCS,
    "neckline": ["v-neck", "v-neck", "v-neck", None, None, None, None, "crew", "crew", "crew"],
}
# The top 10 rows hold 9 distinct item_IDs; P@10 still divides by 10 (BEIR).
IMATERIALIST_P10 = {
    "category-to-image": (6 + 3) / 10 / 2,    # dress: im0-im5; top: im6, im7, im8
    "style-to-image": 9 / 10,                 # casual on all 9 distinct items
    "neckline-to-image": (3 + 2) / 10 / 2,    # v-neck: im0-im2; crew: im7, im8
}
IMATERIALIST_N_QUERIES = {"category-to-image": 2, "style-to-image": 1, "neckline-to-image": 2}


def save(columns: dict, path: Path, seed: int, as_dict: bool = False) -> Path:
    data = dict(columns) | {"image": images(len(next(iter(columns.values()))), seed)}
    ds = datasets.Dataset.from_dict(data).cast_column("image", datasets.Image())
    (datasets.DatasetDict({"data": ds}) if as_dict else ds).save_to_disk(str(path))
    return path


def data_dir(root: Path) -> Path:
    """<root>/KAGL (a DatasetDict with Marqo's `data` split, as load_dataset returns it) and <root>/iMaterialist."""
    save(KAGL, root / "KAGL", seed=1, as_dict=True)
    save(IMATERIALIST, root / "iMaterialist", seed=2)
    return root
