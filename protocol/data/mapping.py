"""Column mappings: which source column (or template over columns) feeds which raw-catalog column.

A preset YAML in protocol/configs/ingest/ (`hm`, `kaggle_fashion`) or your own file.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from protocol.data.schema import SRC_COLUMNS
from protocol.io import InputError, InputNotFoundError, UnsafePathError, contained_path

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "ingest"


@dataclass
class ColumnMapping:
    """Which source column feeds which raw-catalog column.

    `title` and `description` are a column name or a template over columns
    (``"{prod_name} in {colour_group_name}"``); at least one is required.
    `image` names a column holding an image path relative to image_dir (for a Hugging
    Face dataset: the `datasets.Image` column); without it, `image_pattern` lists
    candidate paths tried in order, formatted with the row's columns plus `item_id`
    (the formatted id), slices allowed: ``"{item_id[:3]}/{item_id}.jpg"``.
    `id_format` is a format string applied to the source id, e.g. ``"{:0>10}"`` zero-pads
    to 10 characters. `category_map` maps source categories to the project's category2
    vocabulary; `value_maps` does the same for category1 and src_* columns. Map lookups
    ignore case; unmapped values are kept, stripped and lower-cased.
    """

    item_id: str
    category2: str
    title: str | None = None
    description: str | None = None
    category1: str | None = None
    product_id: str | None = None
    url: str | None = None
    image: str | None = None
    image_pattern: list[str] = field(default_factory=list)
    id_format: str | None = None
    src_material: str | None = None
    src_pattern: str | None = None
    src_color: str | None = None
    src_neckline: str | None = None
    src_sleeve: str | None = None
    category_map: dict[str, str] = field(default_factory=dict)
    value_maps: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.category_map, self.value_maps = self.category_map or {}, self.value_maps or {}
        if isinstance(self.image_pattern, str):
            self.image_pattern = [self.image_pattern]
        self.image_pattern = list(self.image_pattern or [])
        if not self.image and not self.image_pattern:
            raise InputError("mapping needs `image` (a column of image paths, or a dataset's image column) "
                             "or `image_pattern` (candidate paths like '{item_id}.jpg')")
        if not self.title and not self.description:
            raise InputError("mapping needs `title` or `description` (a column name or a template)")
        for spec in (self.title, self.description, *self.image_pattern):
            if spec:
                template_fields(spec)  # raises on malformed braces
        if self.id_format:
            try:
                self.id_format.format("0")
            except (ValueError, IndexError, KeyError) as e:
                raise InputError(f"id_format {self.id_format!r} does not format a string id ({e}); "
                                 "use a string format like '{:0>10}'") from e
        for name in ("category_map", "value_maps"):
            if not isinstance(getattr(self, name), dict):
                raise InputError(f"{name} must be a mapping, got {type(getattr(self, name)).__name__}")
        if not all(isinstance(table, dict) for table in self.value_maps.values()):
            raise InputError("value_maps must map a column (category1, src_*) to a mapping of values")
        bad_targets = sorted(set(self.value_maps) - {"category1", *SRC_COLUMNS})
        if bad_targets:
            raise InputError(f"value_maps has keys {bad_targets}; allowed: category1, {', '.join(SRC_COLUMNS)} "
                             "(category2 values are mapped by `category_map`)")
        self.category_map = _lookup_table(self.category_map)
        self.value_maps = {target: _lookup_table(table) for target, table in self.value_maps.items()}

    @property
    def src_columns(self) -> dict[str, str]:
        """raw src_* column -> source column, for the labels this source provides."""
        return {name: getattr(self, name) for name in SRC_COLUMNS if getattr(self, name)}

    def required_columns(self) -> dict[str, list[str]]:
        """mapping field -> the source columns it reads (every one must exist in the source)."""
        needs: dict[str, list[str]] = {"item_id": [self.item_id], "category2": [self.category2]}
        for name in ("category1", "product_id", "url", "image", *SRC_COLUMNS):
            if getattr(self, name):
                needs[name] = [getattr(self, name)]
        for name in ("title", "description"):
            if getattr(self, name):
                needs[name] = template_fields(getattr(self, name))
        if not self.image:
            pattern_fields = {name for pattern in self.image_pattern for name in template_fields(pattern)}
            needs["image_pattern"] = sorted(pattern_fields - {"item_id"})
        return {name: cols for name, cols in needs.items() if cols}


def load_mapping(preset_or_path: str, overrides: dict[str, Any] | None = None) -> ColumnMapping:
    """A preset name ("hm", "kaggle_fashion") or a YAML path -> ColumnMapping; `overrides` win.

    A preset name is looked up inside the preset folder only: "../x" is no preset.
    """
    path = Path(preset_or_path)
    if not path.is_file():
        try:
            path = contained_path(PRESET_DIR, f"{preset_or_path}.yaml", what="mapping preset")
        except UnsafePathError:
            path = None
    if path is None or not path.is_file():
        presets = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise InputNotFoundError(f"ingest mapping {preset_or_path!r} is neither a YAML file nor a preset; "
                                 f"presets: {presets}")
    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise InputError(f"{path}: expected a mapping of keys to columns, got {type(values).__name__}")
    _check_keys(values, f"{path}")
    _check_keys(overrides or {}, f"overrides for {path}")
    values.update(overrides or {})
    try:
        return ColumnMapping(**values)
    except (TypeError, ValueError) as e:
        raise InputError(f"{path}: {e}") from e


def _check_keys(values: dict[str, Any], where: str) -> None:
    known = [f.name for f in fields(ColumnMapping)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; known keys: {known}")


def _lookup_table(table: dict[str, str] | None) -> dict[str, str]:
    return {str(k).strip().lower(): str(v).strip() for k, v in (table or {}).items()}


def mapped_value(texts: dict[str, str], column: str | None, table: dict[str, str]) -> str:
    """The row's value in `column` through a lookup table (case-insensitive; unmapped: lower-cased)."""
    if not column:
        return ""
    key = texts[column].strip().lower()
    return table.get(key, key)


# ---------------------------------------------------------------- templates

class _PatternFormatter(string.Formatter):
    """str.format that also takes slices in fields: ``{item_id[:3]}`` -> first three characters."""

    _SLICE = re.compile(r"(?P<name>\w+)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]")

    def get_field(self, field_name, args, kwargs):
        m = self._SLICE.fullmatch(field_name)
        if m is None:
            return super().get_field(field_name, args, kwargs)
        value = self.get_value(m["name"], args, kwargs)
        start, stop = (int(m[k]) if m[k] else None for k in ("start", "stop"))
        return value[start:stop], m["name"]


PATTERN_FORMATTER = _PatternFormatter()


def template_fields(spec: str) -> list[str]:
    """Columns a column-name-or-template reads: "prod_name" -> [prod_name]; "{a} {b[:3]}" -> [a, b]."""
    if "{" not in spec:
        return [spec]
    try:
        names = [name for _, name, _, _ in PATTERN_FORMATTER.parse(spec) if name is not None]
    except ValueError as e:
        raise InputError(f"template {spec!r} is malformed ({e})") from e
    if any(not name for name in names):
        raise InputError(f"template {spec!r} has an empty field {{}}: name a column")
    return list(dict.fromkeys(re.match(r"\w+", name).group(0) for name in names))


def render_template(spec: str | None, texts: dict[str, str]) -> str:
    """A column's value, or a template filled from the row's columns ("" without a spec)."""
    if not spec:
        return ""
    return PATTERN_FORMATTER.vformat(spec, (), texts).strip() if "{" in spec else texts[spec]


def check_columns(columns: list[str], mapping: ColumnMapping, source: str) -> None:
    """Fail at once when the source lacks a column the mapping reads."""
    missing = {name: [c for c in cols if c not in columns]
               for name, cols in mapping.required_columns().items()}
    missing = {name: cols for name, cols in missing.items() if cols}
    if missing:
        what = ", ".join(f"{cols} (for {name})" for name, cols in missing.items())
        raise InputError(f"{source} lacks column(s) {what}; it has columns {list(columns)}. "
                         "Fix the file, or pass a mapping (or overrides) naming the right columns.")


