"""Ingest real product data (a CSV/JSONL/Parquet table plus image files, or a Hugging Face
dataset) into the raw catalog that `protocol.data.prepare.finalize` turns into the
processed dataset.

A `ColumnMapping` (a preset YAML in protocol/configs/ingest/, or your own) says which
source column feeds which raw-catalog column. Every source row either becomes one raw
item or one row of `rejects` (row number, item_id, reason, detail): bad rows are never
dropped silently, and `strict=True` stops at the first one instead.
"""

from __future__ import annotations

import io
import logging
import math
import re
import string
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import datasets
import pandas as pd
import yaml
from PIL import Image
from tqdm import tqdm

from protocol.data.schema import REJECT_COLUMNS, SRC_COLUMNS, validate_raw
from protocol.io import atomic_path

logger = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "ingest"
# The raw catalog's columns in the order ingest returns them (schema.py has the contract).
RAW_COLUMNS = ("item_id", "product_id", "url", "title", "description", "category1", "category2", "image_bytes")
TABLE_READERS_BY_SUFFIX = {
    ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet",
}
# How many rejected rows the summary warning spells out.
N_EXAMPLES = 5


class IngestError(ValueError):
    """A bad row met in strict mode."""


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
            raise ValueError("mapping needs `image` (a column of image paths, or a dataset's image column) "
                             "or `image_pattern` (candidate paths like '{item_id}.jpg')")
        if not self.title and not self.description:
            raise ValueError("mapping needs `title` or `description` (a column name or a template)")
        for spec in (self.title, self.description, *self.image_pattern):
            if spec:
                _template_fields(spec)  # raises on malformed braces
        if self.id_format:
            try:
                self.id_format.format("0")
            except (ValueError, IndexError, KeyError) as e:
                raise ValueError(f"id_format {self.id_format!r} does not format a string id ({e}); "
                                 "use a string format like '{:0>10}'") from e
        for name in ("category_map", "value_maps"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a mapping, got {type(getattr(self, name)).__name__}")
        if not all(isinstance(table, dict) for table in self.value_maps.values()):
            raise ValueError("value_maps must map a column (category1, src_*) to a mapping of values")
        bad_targets = sorted(set(self.value_maps) - {"category1", *SRC_COLUMNS})
        if bad_targets:
            raise ValueError(f"value_maps has keys {bad_targets}; allowed: category1, {', '.join(SRC_COLUMNS)} "
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
                needs[name] = _template_fields(getattr(self, name))
        if not self.image:
            pattern_fields = {name for pattern in self.image_pattern for name in _template_fields(pattern)}
            needs["image_pattern"] = sorted(pattern_fields - {"item_id"})
        return {name: cols for name, cols in needs.items() if cols}


@dataclass
class IngestResult:
    raw: pd.DataFrame  # RAW_COLUMNS + the mapping's src_* columns, one row per accepted item
    rejects: pd.DataFrame  # REJECT_COLUMNS, one row per skipped source row
    n_read: int  # source rows read (accepted + rejected)

    def summary(self) -> dict[str, int]:
        counts = {"n_read": self.n_read, "n_items": len(self.raw), "n_rejected": len(self.rejects)}
        by_reason = self.rejects["reason"].value_counts()
        counts.update({f"rejected.{reason}": int(n) for reason, n in by_reason.items()})
        return counts


@dataclass
class _Rejection:
    row: int
    item_id: str
    reason: str
    detail: str


# ---------------------------------------------------------------- mapping

def load_mapping(preset_or_path: str, overrides: dict[str, Any] | None = None) -> ColumnMapping:
    """A preset name ("hm", "kaggle_fashion") or a YAML path -> ColumnMapping; `overrides` win."""
    path = Path(preset_or_path)
    if not path.is_file():
        path = PRESET_DIR / f"{preset_or_path}.yaml"
    if not path.is_file():
        presets = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"ingest mapping {preset_or_path!r} is neither a YAML file nor a preset; "
                                f"presets: {presets}")
    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of keys to columns, got {type(values).__name__}")
    _check_keys(values, f"{path}")
    _check_keys(overrides or {}, f"overrides for {path}")
    values.update(overrides or {})
    try:
        return ColumnMapping(**values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def _check_keys(values: dict[str, Any], where: str) -> None:
    known = [f.name for f in fields(ColumnMapping)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {known}")


def _lookup_table(table: dict[str, str] | None) -> dict[str, str]:
    return {str(k).strip().lower(): str(v).strip() for k, v in (table or {}).items()}


def _map_value(value: str, table: dict[str, str]) -> str:
    key = value.strip().lower()
    return table.get(key, key)


def _mapped_column(texts: dict[str, str], column: str | None, table: dict[str, str]) -> str:
    return _map_value(texts[column], table) if column else ""


# ---------------------------------------------------------------- templates and cells

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


_FORMATTER = _PatternFormatter()


def _template_fields(spec: str) -> list[str]:
    """Columns a column-name-or-template reads: "prod_name" -> [prod_name]; "{a} {b[:3]}" -> [a, b]."""
    if "{" not in spec:
        return [spec]
    try:
        names = [name for _, name, _, _ in _FORMATTER.parse(spec) if name is not None]
    except ValueError as e:
        raise ValueError(f"template {spec!r} is malformed ({e})") from e
    if any(not name for name in names):
        raise ValueError(f"template {spec!r} has an empty field {{}}: name a column")
    return list(dict.fromkeys(re.match(r"\w+", name).group(0) for name in names))


def _render(spec: str | None, texts: dict[str, str]) -> str:
    if not spec:
        return ""
    return _FORMATTER.vformat(spec, (), texts).strip() if "{" in spec else texts[spec]


def _cell_text(value: Any) -> str:
    """A table cell as clean text: missing -> "", 123.0 (an int column with gaps) -> "123"."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


# ---------------------------------------------------------------- images

def _decode_error(data: bytes) -> str | None:
    """None if PIL decodes the whole image, else why not."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (256, 256))  # JPEG: decode at reduced scale, still reads every byte
            im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def _image_candidates(image_root: Path, mapping: ColumnMapping, texts: dict[str, str], item_id: str) -> list[Path]:
    if mapping.image:
        return [image_root / texts[mapping.image]] if texts[mapping.image] else []
    values = {**texts, "item_id": item_id}
    return [image_root / _FORMATTER.vformat(pattern, (), values) for pattern in mapping.image_pattern]


def _hf_image_bytes(cell: Any) -> bytes | None:
    """Encoded bytes of a `datasets.Image` cell ({bytes, path} or PIL); PNG re-encode only when no bytes exist."""
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return cell["bytes"]
        cell = cell.get("path")
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    if isinstance(cell, str) and cell and Path(cell).is_file():
        return Path(cell).read_bytes()
    if isinstance(cell, Image.Image):
        buffer = io.BytesIO()
        cell.save(buffer, format="PNG")
        return buffer.getvalue()
    return None


# ---------------------------------------------------------------- rows

# (texts of the row, its formatted item_id, its raw record) -> (image bytes or None, where from / why not)
ImageFetcher = Callable[[dict[str, str], str, dict[str, Any]], tuple[bytes | None, str]]


def _format_id(raw_id: str, mapping: ColumnMapping) -> str:
    return mapping.id_format.format(raw_id) if raw_id and mapping.id_format else raw_id


def _build_item(row: int, texts: dict[str, str], item_id: str, record: dict[str, Any],
                mapping: ColumnMapping, fetch_image: ImageFetcher) -> dict[str, Any] | _Rejection:
    """One source row -> one raw item, or why it cannot be one. Cheap checks before the image."""
    title, description = _render(mapping.title, texts), _render(mapping.description, texts)
    if not title and not description:
        return _Rejection(row, item_id, "empty_text", f"{mapping.title!r} and {mapping.description!r} are empty")
    data, detail = fetch_image(texts, item_id, record)
    if data is None:
        return _Rejection(row, item_id, "missing_image", detail)
    error = _decode_error(data)
    if error:
        return _Rejection(row, item_id, "corrupt_image", f"{detail}: {error}")
    item = {
        "item_id": item_id,
        "product_id": texts[mapping.product_id] if mapping.product_id else "",
        "url": texts[mapping.url] if mapping.url else "",
        "title": title,
        "description": description,
        "category1": _mapped_column(texts, mapping.category1, mapping.value_maps.get("category1", {})),
        "category2": _mapped_column(texts, mapping.category2, mapping.category_map),
        "image_bytes": data,
    }
    for target, column in mapping.src_columns.items():
        item[target] = _mapped_column(texts, column, mapping.value_maps.get(target, {}))
    return item


def _ingest_records(table: pd.DataFrame, mapping: ColumnMapping, fetch_image: ImageFetcher, source: str,
                    strict: bool, malformed: dict[int, str] | None = None,
                    binary_columns: tuple[str, ...] = ()) -> IngestResult:
    """Every row of `table` becomes a raw item or a rejection (row numbers are 1-based positions)."""
    malformed = malformed or {}
    text_columns = [c for c in table.columns if c not in binary_columns]
    items: list[dict[str, Any]] = []
    rejections: list[_Rejection] = []
    seen: set[str] = set()
    records = table.to_dict("records")
    for position, record in enumerate(tqdm(records, desc=f"ingest {Path(source).name}", unit="item")):
        row = position + 1
        texts = {c: _cell_text(record[c]) for c in text_columns}
        item_id = _format_id(texts[mapping.item_id], mapping)
        if position in malformed:
            outcome = _Rejection(row, item_id, "malformed_line", malformed[position])
        elif not item_id:
            outcome = _Rejection(row, "", "missing_item_id", f"column {mapping.item_id!r} is empty")
        elif item_id in seen:
            outcome = _Rejection(row, item_id, "duplicate_item_id", "an earlier row has this id; kept that one")
        else:
            outcome = _build_item(row, texts, item_id, record, mapping, fetch_image)
        if item_id:
            seen.add(item_id)
        if isinstance(outcome, _Rejection):
            if strict:
                raise IngestError(f"{source}: row {outcome.row} (item_id {outcome.item_id!r}) is bad: "
                                  f"{outcome.reason} ({outcome.detail}); fix it, or ingest without strict "
                                  "to skip such rows into rejects.csv")
            rejections.append(outcome)
        else:
            items.append(outcome)
    columns = list(RAW_COLUMNS) + list(mapping.src_columns)
    result = IngestResult(
        raw=pd.DataFrame(items, columns=columns),
        rejects=pd.DataFrame([vars(r) for r in rejections], columns=list(REJECT_COLUMNS)),
        n_read=len(records),
    )
    validate_raw(result.raw, f"raw catalog from {source}")
    _log_summary(result, rejections, source)
    return result


def _log_summary(result: IngestResult, rejections: list[_Rejection], source: str) -> None:
    logger.info("ingest %s: %d rows read, %d items, %d rejected", source, result.n_read, len(result.raw),
                len(rejections))
    if rejections:
        counts = Counter(r.reason for r in rejections)
        examples = "; ".join(f"row {r.row} item {r.item_id!r}: {r.reason} ({r.detail})"
                             for r in rejections[:N_EXAMPLES])
        logger.warning("ingest %s: rejected %d of %d rows (%s); first: %s", source, len(rejections),
                       result.n_read, ", ".join(f"{k}: {n}" for k, n in counts.most_common()), examples)


def check_columns(columns: list[str], mapping: ColumnMapping, source: str) -> None:
    """Fail at once when the source lacks a column the mapping reads."""
    missing = {name: [c for c in cols if c not in columns]
               for name, cols in mapping.required_columns().items()}
    missing = {name: cols for name, cols in missing.items() if cols}
    if missing:
        what = ", ".join(f"{cols} (for {name})" for name, cols in missing.items())
        raise ValueError(f"{source} lacks column(s) {what}; it has columns {list(columns)}. "
                         "Fix the file, or pass a mapping (or overrides) naming the right columns.")


# ---------------------------------------------------------------- tables

_MALFORMED_MARK = "\x00malformed-line\x00"


def _read_csv(path: Path, limit: int | None) -> tuple[pd.DataFrame, dict[int, str]]:
    """Read every cell as text; a line with too many fields stays in place as a marked row."""
    header = list(pd.read_csv(path, nrows=0, encoding="utf-8-sig").columns)
    bad_lines: list[list[str]] = []

    def mark_bad_line(fields_of_line: list[str]) -> list[str]:
        # Returning a marker row (instead of None) keeps the row count, so row numbers stay true.
        bad_lines.append(fields_of_line)
        return [_MALFORMED_MARK]

    # header=None: the header line fixes the field count, so every longer line reaches
    # mark_bad_line; with a header, pandas would instead take a too-long first data line
    # as a sign of an index column and shift or truncate it without a word.
    grid = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, encoding="utf-8-sig",
                       engine="python", on_bad_lines=mark_bad_line, nrows=None if limit is None else limit + 1)
    table = grid.iloc[1:].reset_index(drop=True)
    table.columns = header  # as pandas names them (duplicates made unique)
    positions = [i for i, cell in enumerate(table.iloc[:, 0]) if cell == _MALFORMED_MARK]
    malformed = {}
    for position, fields_of_line in zip(positions, bad_lines):
        table.iloc[position] = (fields_of_line + [""] * len(header))[: len(header)]  # best guess, for item_id
        malformed[position] = f"{len(fields_of_line)} fields where the header has {len(header)}"
    return table, malformed


def read_table(path: str | Path, limit: int | None = None) -> tuple[pd.DataFrame, dict[int, str]]:
    """CSV / JSONL / Parquet by extension -> (table, {row position: why the line is malformed})."""
    path = Path(path)
    kind = TABLE_READERS_BY_SUFFIX.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: unsupported table type {path.suffix!r}; use one of "
                         f"{sorted(TABLE_READERS_BY_SUFFIX)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        if kind == "csv":
            return _read_csv(path, limit)
        if kind == "jsonl":
            return pd.read_json(path, lines=True, dtype=False, nrows=limit, encoding="utf-8"), {}
        table = pd.read_parquet(path)
        return (table if limit is None else table.head(limit)), {}
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, OSError) as e:
        raise ValueError(f"{path}: cannot be read as {kind} ({type(e).__name__}: {e})") from e


def ingest_table(table_path: str | Path, image_dir: str | Path, mapping: ColumnMapping,
                 strict: bool = False, limit: int | None = None) -> IngestResult:
    """A product table + a folder of images -> raw catalog. `limit` caps the source rows read."""
    table_path, image_root = Path(table_path), Path(image_dir)
    if not image_root.is_dir():
        raise FileNotFoundError(f"image directory {image_root} does not exist (images for {table_path})")
    table, malformed = read_table(table_path, limit)
    check_columns(list(table.columns), mapping, str(table_path))

    def fetch_image(texts: dict[str, str], item_id: str, record: dict[str, Any]) -> tuple[bytes | None, str]:
        candidates = _image_candidates(image_root, mapping, texts, item_id)
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            return None, f"no file at {[str(p) for p in candidates][:3]}"
        return found.read_bytes(), str(found)

    return _ingest_records(table, mapping, fetch_image, str(table_path), strict, malformed)


# ---------------------------------------------------------------- Hugging Face datasets

def load_hf_dataset(name_or_path: str | Path, split: str | None = None):
    """A local save_to_disk directory, else the hub; a DatasetDict is narrowed to `split`."""
    if Path(name_or_path).is_dir():
        try:
            loaded = datasets.load_from_disk(str(name_or_path))
        except FileNotFoundError as e:
            raise ValueError(f"{name_or_path} is not a dataset saved with save_to_disk ({e})") from e
    else:
        try:
            loaded = datasets.load_dataset(str(name_or_path), split=split)
        except Exception as e:  # network, auth and not-found errors all mean the same thing to the user
            raise OSError(f"could not load {str(name_or_path)!r}: it is not a local directory and loading it "
                          f"from the Hugging Face hub failed ({type(e).__name__}: {e}). Without network, pass "
                          "a local directory written by Dataset.save_to_disk / DatasetDict.save_to_disk.") from e
    if isinstance(loaded, datasets.DatasetDict):
        if split is None and len(loaded) == 1:
            return next(iter(loaded.values()))
        if split not in loaded:
            raise ValueError(f"{name_or_path} has splits {list(loaded)}; pass split= one of them")
        return loaded[split]
    return loaded


def ingest_hf(name_or_path: str | Path, mapping: ColumnMapping, split: str | None = None,
              strict: bool = False, limit: int | None = None) -> IngestResult:
    """A Hugging Face dataset whose `mapping.image` column holds the images -> raw catalog."""
    if not mapping.image:
        raise ValueError("ingest_hf needs mapping.image: the name of the dataset's image column")
    dataset = load_hf_dataset(name_or_path, split)
    source = f"{name_or_path}" + (f" [{split}]" if split else "")
    check_columns(dataset.column_names, mapping, source)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    if isinstance(dataset.features[mapping.image], datasets.Image):
        dataset = dataset.cast_column(mapping.image, datasets.Image(decode=False))  # keep the encoded bytes
    table = dataset.to_pandas()

    def fetch_image(texts: dict[str, str], item_id: str, record: dict[str, Any]) -> tuple[bytes | None, str]:
        data = _hf_image_bytes(record[mapping.image])
        return data, f"column {mapping.image!r}" if data is not None else f"column {mapping.image!r} has no image"

    return _ingest_records(table, mapping, fetch_image, source, strict, binary_columns=(mapping.image,))


# ---------------------------------------------------------------- rejects

def write_rejects(rejects: pd.DataFrame, path: str | Path) -> Path:
    """rejects.csv, written atomically; header only when nothing was rejected."""
    with atomic_path(path) as tmp:
        rejects.reindex(columns=list(REJECT_COLUMNS)).to_csv(tmp, index=False)
    return Path(path)
