"""Graphic policy: `category2 == "graphic"` is a pattern signal, never a category.

Shops file printed tees under "graphic"; the garment is still a tee (or a sweater).
Such items are never used for category-based positives or negatives, are left out
of category metrics as queries, and count as no match when they are results.
Their pattern is `graphic` when the text is silent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from protocol.data.schema import UNKNOWN

GRAPHIC = "graphic"


def is_graphic(category2: object) -> bool:
    return isinstance(category2, str) and category2.strip().lower() == GRAPHIC


def graphic_mask(category2: Sequence | pd.Series | np.ndarray) -> np.ndarray:
    """Boolean array: which rows are filed under `graphic`."""
    return np.array([is_graphic(c) for c in category2], dtype=bool)


def has_category(category2: Sequence | pd.Series | np.ndarray) -> np.ndarray:
    """Rows whose category2 can take part in category positives, negatives and queries."""
    return np.array(
        [isinstance(c, str) and c.strip() not in ("", UNKNOWN) and not is_graphic(c) for c in category2], dtype=bool
    )


def same_category(a: object, b: object) -> bool:
    """Category match under the policy: graphic or unknown never matches anything."""
    return bool(has_category([a])[0] and has_category([b])[0] and a == b)


def category_match_matrix(query_category2: Sequence, result_category2: np.ndarray) -> np.ndarray:
    """[Q, K] bool: result category equals the query's, graphic/unknown counting as no match.

    `result_category2` is a [Q, K] array of the categories of each query's results.
    """
    results = np.asarray(result_category2, dtype=object)
    queries = np.asarray(query_category2, dtype=object).reshape(-1, 1)
    valid = has_category(results.ravel()).reshape(results.shape)
    return (results == queries) & valid & has_category(queries.ravel()).reshape(-1, 1)


def pattern_for_category(category2: object, pattern: str) -> str:
    """`graphic` for items filed under graphic whose pattern the text left unknown."""
    return GRAPHIC if pattern == UNKNOWN and is_graphic(category2) else pattern
