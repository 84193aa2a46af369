"""The two columns of the search page: a registered version each, searched by its own `predict`.

A side is one registered version of the model, loaded as MLflow loads it for serving
(`protocol.tracking.registry.load_version_model`), so the page ranks exactly as `mlflow models serve` does: same
embedding, same scoring, same packed catalog. The page adds only what a person needs to
look at the ranking: the catalog's attribute columns beside each match, filters applied to
the ranking (asking predict for a deeper list and keeping the first k that pass), and the
photos, read from the processed dataset the version was registered with, by item id.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import datasets
import pandas as pd
from PIL import Image

from protocol.data.attribute_schema import load_attribute_schema
from protocol.data.grounding import ground_attributes, map_category
from protocol.data.processed import load_processed
from protocol.data.schema import ATTRIBUTES, IMAGE_COLUMN, UNKNOWN
from protocol.tracking.artifact_cache import resolve_input
from protocol.tracking.pyfunc import MAX_TOP_K
from protocol.tracking.registry import load_version_model, version_by_alias, version_by_number
from protocol.tracking.runs import REGISTERED_MODEL, ui_links

log = logging.getLogger(__name__)

# Filter name on the page -> catalog column. "category" is the fine category a match reports.
FILTER_COLUMNS: dict[str, str] = {"category": "category2", **{a: a for a in ATTRIBUTES}}
MAX_K = 100
_VERSION_SPEC = re.compile(r"^(?:@(?P<alias>[A-Za-z0-9_-]+)|(?P<number>\d+))$")


@dataclass
class Photos:
    """A processed dataset's rows and encoded photos, looked up by item id only."""

    ref: str
    rows: dict[str, int]
    meta: pd.DataFrame
    encoded: datasets.Dataset  # the image column left encoded: photos are sent as the dataset holds them

    @classmethod
    def open(cls, ref: str) -> "Photos":
        processed = load_processed(resolve_input(ref, "the processed dataset the model was registered with"))
        encoded = processed.dataset.select_columns([IMAGE_COLUMN]).cast_column(IMAGE_COLUMN,
                                                                               datasets.Image(decode=False))
        rows = {item_id: i for i, item_id in enumerate(processed.meta["item_id"].astype(str))}
        return cls(ref=ref, rows=rows, meta=processed.meta, encoded=encoded)

    def row(self, item_id: str) -> dict[str, str]:
        return self.meta.iloc[self._index(item_id)].to_dict()

    def photo(self, item_id: str) -> tuple[bytes, str]:
        """(encoded bytes, media type) of an item's photo."""
        data = self.encoded[self._index(item_id)][IMAGE_COLUMN]["bytes"]
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            media_type = Image.MIME.get(im.format or "")
        return data, media_type or "application/octet-stream"

    def _index(self, item_id: str) -> int:
        if item_id not in self.rows:
            raise LookupError(f"the processed dataset {self.ref} has no item {item_id!r}")
        return self.rows[item_id]


@dataclass
class Side:
    key: str  # the column's name in URLs: "champion" or "baseline"
    title: str
    spec: str  # as the user gave it: "@champion", "3"
    version: str
    run_id: str
    links: dict[str, str]
    model: Any  # mlflow.pyfunc.PyFuncModel
    meta: pd.DataFrame  # the packed catalog's rows, every attribute column
    photos: Photos
    values: dict[str, dict[str, str]] = field(default_factory=dict)  # item id -> filter name -> value

    def describe(self) -> dict[str, Any]:
        return {"side": self.key, "title": self.title, "spec": self.spec, "version": self.version,
                "run_id": self.run_id, "links": self.links, "catalog_size": len(self.meta)}


def registered_version(spec: str):
    """(the registered version a `--version` names, its short name): `@alias`, a number, or `models:/<model>@alias`."""
    text, model_uri = spec.strip(), f"models:/{REGISTERED_MODEL}"
    if text.startswith((model_uri + "@", model_uri + "/")):
        text = text[len(model_uri):].removeprefix("/")
    match = _VERSION_SPEC.match(text)
    if not match:
        raise ValueError(f"version {spec!r}: give an alias (@champion, @baseline, @candidate), a version number (3) "
                         f"or models:/{REGISTERED_MODEL}@<alias>")
    if match["alias"]:
        return version_by_alias(match["alias"]), match["alias"]
    return version_by_number(match["number"]), f"version {match['number']}"


def model_links(version, ui_base: str) -> dict[str, str]:
    """The version's training run and its registry page, in the MLflow UI at `ui_base`."""
    run = urlsplit(ui_links(version.run_id)["run"]).fragment  # ui_links knows the run's experiment
    base = ui_base.rstrip("/")
    return {"run": f"{base}/#{run}", "version": f"{base}/#/models/{version.name}/versions/{version.version}"}


def load_side(key: str, spec: str, ui_base: str, photos: dict[str, Photos], title: str | None = None) -> Side:
    """Load one registered version (titled by its alias unless `title`); `photos` shares one opened
    dataset between sides that use the same."""
    version, name = registered_version(spec)
    # Pinned to the number: an alias that moves while the page runs does not change what it shows.
    model = load_version_model(version)
    inner = model.unwrap_python_model()
    if getattr(inner, "catalog", None) is None:
        raise ValueError(f"version {version.version} ({spec}) carries no catalog to search; "
                         "give a registered version made by the baseline or train stage")
    if inner.dataset_ref not in photos:
        photos[inner.dataset_ref] = Photos.open(inner.dataset_ref)
    meta = inner.catalog.meta.reset_index(drop=True)
    present = {name: column for name, column in FILTER_COLUMNS.items() if column in meta.columns}
    values = {str(row["item_id"]): {name: str(row[column]) for name, column in present.items()}
              for row in meta.to_dict("records")}
    log.info("%s: version %s (%s), %d catalog items, photos from %s", key, version.version, spec, len(meta),
             inner.dataset_ref)
    return Side(key=key, title=title or name, spec=spec, version=str(version.version), run_id=version.run_id,
                links=model_links(version, ui_base), model=model, meta=meta, photos=photos[inner.dataset_ref],
                values=values)


def filter_options(sides: list[Side]) -> dict[str, list[str]]:
    """Every value each filter can take in any side's catalog."""
    options: dict[str, set[str]] = {name: set() for name in FILTER_COLUMNS}
    for side in sides:
        for item in side.values.values():
            for name, value in item.items():
                options[name].add(value)
    return {name: sorted(values) for name, values in options.items()}


def grounded_query(text: str | None) -> dict[str, str]:
    """What the query text says about the item wanted: its category and grounded attributes (known ones)."""
    if not text:
        return {}
    known = {a: v for a, v in ground_attributes(text, "", "").items() if v != UNKNOWN}
    category = map_category(text)[1]
    if category in load_attribute_schema().categories:
        known = {"category": category, **known}
    return known


def _field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def search(side: Side, row: dict[str, Any], k: int, filters: dict[str, str], grounded: dict[str, str]) -> dict:
    """The first `k` of the version's own ranking that pass `filters`, each with its attribute values.

    Without filters predict is asked for k; with filters, for as deep a list as it gives
    (MAX_TOP_K or the whole catalog), and the page says how deep it looked.
    """
    depth = min(MAX_TOP_K if filters else k, len(side.meta))
    (answer,) = side.model.predict([row], params={"top_k": depth})
    ranked = _field(answer, "matches")
    matches = []
    for match in ranked:
        item_id = _field(match, "item_id")
        values = side.values.get(item_id, {})
        if any(values.get(name) != value for name, value in filters.items()):
            continue
        matches.append({
            "item_id": item_id, "score": float(_field(match, "score")), "category": _field(match, "category"),
            "url": _field(match, "url"), "attributes": values,
            "shared": [name for name, value in grounded.items() if values.get(name) == value],
        })
        if len(matches) == k:
            break
    return {**side.describe(), "searched": len(ranked), "matches": matches}
