"""Group keys: which images show the same product.

A source's product_id wins (confidence 1.0). Every key is normalised to upper-case
letters and digits, so a product_id and a heuristic key for the same product meet. Without one, three heuristics
each propose a key:
- item id with its view suffix removed (`P00123_front`, `P00123-back`, `P00123_view2`, `P00123_A`);
- url: an id query parameter, else the trailing id token of the last path segment
  (`classic-crew-tee-p00123` -> `P00123`), else the slug itself when it is descriptive;
- a SKU / article number in the title or description (`SKU P00123`, `Art. no. P00123`).
The key most heuristics agree on is taken (ties: SKU, then url, then item id); each
agreeing heuristic raises the confidence. With no key at all, the item is its own group.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pandas as pd

SOURCE_PRODUCT_ID = "product_id"
SOURCE_ITEM_ID = "item_id"  # fallback: the item is its own group
# Base confidence of a heuristic alone, in tie-break order (strongest first).
HEURISTIC_CONFIDENCE = {"sku": 0.8, "url": 0.7, "item_suffix": 0.6}
AGREEMENT_BONUS = 0.1
MAX_HEURISTIC_CONFIDENCE = 0.95
FALLBACK_CONFIDENCE = 0.2

_VIEW_SUFFIX = re.compile(
    r"^(?P<base>.+?)[_\-.]"
    r"(?:front|back|side|detail|top|bottom|worn|flat|model|alt\d*|view\d*|v\d+|img\d*|\d{1,2}|[A-Z])$",
    re.IGNORECASE,
)
_SINGLE_LETTER = re.compile(r"[_\-.][A-Za-z]$")
_SKU = re.compile(
    r"\b(?:sku|art(?:icle)?\.?\s*(?:no|nr|number)\.?|item\s*(?:no\.?|#)|style\s*(?:no\.?|#)|product\s*(?:code|id))"
    r"\s*[:#]?\s*(?P<code>[A-Z0-9][A-Z0-9\-]{2,})",
    re.IGNORECASE,
)
_URL_ID = re.compile(r"(?:^|[-_.])(?P<id>[a-z]{0,4}\d{3,}[a-z0-9]*)$", re.IGNORECASE)
_URL_ID_PARAMS = {"id", "pid", "product", "product_id", "productid", "sku", "article", "article_id", "item"}


def normalise_key(value: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", value.upper())


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value).strip()


def key_from_item_id(item_id: str) -> str | None:
    """The item id without its view suffix, or None when it has no recognised suffix."""
    item_id = _text(item_id)
    m = _VIEW_SUFFIX.match(item_id)
    if not m:
        return None
    # A single-letter view suffix is only upper case (`_A`), so `tee_a` is not taken apart.
    if _SINGLE_LETTER.search(item_id) and not item_id[-1].isupper():
        return None
    return normalise_key(m.group("base")) or None


def key_from_url(url: str) -> str | None:
    """A product id in the url's query (`?pid=123`), else the trailing id of its last path segment,
    else the whole slug when it is descriptive (`striped-linen-shirt`, not `product`)."""
    url = _text(url)
    if not url:
        return None
    parts = urlsplit(url if "//" in url else "//" + url)
    for name, values in parse_qs(parts.query).items():
        if name.lower() in _URL_ID_PARAMS and values and values[0].strip():
            return normalise_key(values[0])
    stem = re.sub(r"\.[a-z]{2,5}$", "", parts.path.rstrip("/").rsplit("/", 1)[-1], flags=re.IGNORECASE)
    m = _URL_ID.search(stem)
    if m:
        return normalise_key(m.group("id"))
    return "URL" + normalise_key(stem) if "-" in stem or "_" in stem else None


def key_from_sku(text: str) -> str | None:
    m = _SKU.search(_text(text))
    return normalise_key(m.group("code").rstrip("-.")) if m else None


def _row_group(item_id: str, product_id: str, url: str, text: str) -> tuple[str, str, float]:
    if product_id:
        return normalise_key(product_id) or product_id, SOURCE_PRODUCT_ID, 1.0
    proposals = {"sku": key_from_sku(text), "url": key_from_url(url), "item_suffix": key_from_item_id(item_id)}
    proposals = {source: key for source, key in proposals.items() if key}
    if not proposals:
        return normalise_key(item_id) or item_id, SOURCE_ITEM_ID, FALLBACK_CONFIDENCE
    order = list(HEURISTIC_CONFIDENCE)
    support: dict[str, list[str]] = {}
    for source in order:
        if source in proposals:
            support.setdefault(proposals[source], []).append(source)
    key, sources = max(support.items(), key=lambda kv: (len(kv[1]), -order.index(kv[1][0])))
    confidence = HEURISTIC_CONFIDENCE[sources[0]] + AGREEMENT_BONUS * (len(sources) - 1)
    return key, "+".join(sources), round(min(confidence, MAX_HEURISTIC_CONFIDENCE), 3)


def derive_groups(meta: pd.DataFrame) -> pd.DataFrame:
    """One row per meta row: item_id, group_id, source (which heuristics agreed), confidence."""
    if "item_id" not in meta.columns:
        raise KeyError(f"derive_groups needs an 'item_id' column (has {list(meta.columns)})")
    n = len(meta)

    def column(name: str) -> list[str]:
        return [_text(v) for v in meta[name]] if name in meta.columns else [""] * n

    item_ids, product_ids, urls = column("item_id"), column("product_id"), column("url")
    texts = [f"{t} {d}" for t, d in zip(column("title"), column("description"))]
    rows = [_row_group(*args) for args in zip(item_ids, product_ids, urls, texts)]
    return pd.DataFrame({
        "item_id": item_ids,
        "group_id": [r[0] for r in rows],
        "source": [r[1] for r in rows],
        "confidence": [r[2] for r in rows],
    }, index=meta.index)


def derive_group_ids(meta: pd.DataFrame) -> pd.Series:
    """Group ids aligned with meta's rows."""
    return derive_groups(meta)["group_id"].rename("group_id")
