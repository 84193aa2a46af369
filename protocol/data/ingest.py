"""Ingest real product data (a CSV/JSONL/Parquet table plus image files, or a Hugging Face
dataset) into the raw catalog (`protocol.data.raw.RawCatalog`) that prepare turns into
the processed dataset.

A `ColumnMapping` (protocol.data.mapping: a preset YAML, or your own) says which source
column feeds which raw-catalog column. Every source row either becomes one raw item or
one row of `rejects` (row number, item_id, reason, detail): bad rows are never dropped
silently, and `strict=True` stops at the first one instead.

Images are read once here, to check that they decode, and dropped again: the raw catalog
keeps where each one is, and prepare reads them a shard at a time when it writes the
dataset. An image path (a column, or a pattern over the row) must stay inside the image
folder: absolute paths, `..` and symlinks out of it are rejected as `unsafe_path`, unread.
"""

from __future__ import annotations

import io
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import datasets
import pandas as pd
from PIL import Image
from tqdm import tqdm

from protocol.data.grounding import CONTROL_CHARACTERS
from protocol.data.mapping import (PATTERN_FORMATTER, ColumnMapping, check_columns, load_mapping,  # noqa: F401
                                   mapped_value, render_template)
from protocol.data.processed import image_sha256, write_rejects  # noqa: F401 (write_rejects: public here too)
from protocol.data.raw import RawCatalog
from protocol.data.schema import REJECT_COLUMNS, validate_raw
from protocol.io import InputError, InputNotFoundError, UnsafePathError, contained_path

logger = logging.getLogger(__name__)

# The raw catalog's columns in the order ingest returns them (schema.py has the contract).
RAW_COLUMNS = ("item_id", "product_id", "url", "title", "description", "category1", "category2")
TABLE_READERS_BY_SUFFIX = {
    ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet",
}
# How many rejected rows the summary warning spells out.
N_EXAMPLES = 5


class IngestError(InputError):
    """A bad row met in strict mode."""


@dataclass
class _Rejection:
    row: int
    item_id: str
    reason: str
    detail: str


def printable(value: str) -> str:
    """`value` with control characters shown as \\xNN, for messages and rejects.csv."""
    return CONTROL_CHARACTERS.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


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


class _SourceImages(Protocol):
    """Where ingest finds a row's image, reads it to check it, and keeps the accepted ones."""

    def locate(self, texts: dict[str, str], item_id: str, position: int) -> tuple[Any, str]:
        """(a reference to the row's image or None, where it is / why there is none); UnsafePathError."""

    def read(self, ref: Any) -> bytes: ...

    def accept(self, ref: Any) -> None: ...


@dataclass
class FileImages:
    """Image files inside one folder; `fetch` reads them again, a shard at a time, for prepare."""

    root: Path
    mapping: ColumnMapping
    paths: list[Path] = field(default_factory=list)  # accepted rows' images, resolved, inside root

    def locate(self, texts: dict[str, str], item_id: str, position: int) -> tuple[Path | None, str]:
        if self.mapping.image:
            relative = [texts[self.mapping.image]] if texts[self.mapping.image] else []
        else:
            values = {**texts, "item_id": item_id}
            relative = [PATTERN_FORMATTER.vformat(pattern, (), values) for pattern in self.mapping.image_pattern]
        candidates = [contained_path(self.root, r, what="image path") for r in relative]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            tried = [str(p) for p in candidates][:3]
            return None, f"no file at {tried}" if tried else f"column {self.mapping.image!r} is empty"
        return found, str(found)

    def read(self, ref: Path) -> bytes:
        return ref.read_bytes()

    def accept(self, ref: Path) -> None:
        self.paths.append(ref)

    def fetch(self, rows: Sequence[int]) -> list[bytes]:
        return [self.paths[i].read_bytes() for i in rows]


def _dataset_cell_bytes(cell: Any, roots: tuple[Path, ...]) -> bytes | None:
    """Encoded bytes of a `datasets.Image` cell ({bytes, path} or PIL); a path-only cell must lie in `roots`."""
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return cell["bytes"]
        cell = cell.get("path")
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    if isinstance(cell, str) and cell:
        errors = []
        for root in roots:
            try:
                path = contained_path(root, cell, what="image path of the dataset", allow_absolute=True)
            except UnsafePathError as e:
                errors.append(str(e))
                continue
            return path.read_bytes() if path.is_file() else None
        raise UnsafePathError("; ".join(errors))
    if isinstance(cell, Image.Image):
        buffer = io.BytesIO()
        cell.save(buffer, format="PNG")
        return buffer.getvalue()
    return None


@dataclass
class DatasetImages:
    """The image column of a Hugging Face dataset (encoded, not decoded); rows are its positions."""

    dataset: datasets.Dataset          # only the image column, decode=False
    column: str
    roots: tuple[Path, ...]            # where path-only cells may point: the dataset's own folder
    positions: list[int] = field(default_factory=list)  # accepted rows' positions in `dataset`

    def locate(self, texts: dict[str, str], item_id: str, position: int) -> tuple[int | None, str]:
        return position, f"column {self.column!r}"

    def read(self, ref: int) -> bytes | None:
        return _dataset_cell_bytes(self.dataset[ref][self.column], self.roots)

    def accept(self, ref: int) -> None:
        self.positions.append(ref)

    def fetch(self, rows: Sequence[int]) -> list[bytes]:
        cells = self.dataset.select([self.positions[i] for i in rows])[self.column]
        return [_dataset_cell_bytes(cell, self.roots) for cell in cells]


# ---------------------------------------------------------------- rows

def _format_id(raw_id: str, mapping: ColumnMapping) -> str:
    return mapping.id_format.format(raw_id) if raw_id and mapping.id_format else raw_id


def _build_item(row: int, texts: dict[str, str], item_id: str, position: int, mapping: ColumnMapping,
                images: _SourceImages) -> tuple[dict[str, Any], Any, str] | _Rejection:
    """One source row -> (raw item, its image reference, sha256 of the image), or why it cannot be one.

    Cheap checks come before the image is read.
    """
    title, description = render_template(mapping.title, texts), render_template(mapping.description, texts)
    if not title and not description:
        return _Rejection(row, item_id, "empty_text", f"{mapping.title!r} and {mapping.description!r} are empty")
    try:
        ref, detail = images.locate(texts, item_id, position)
        data = None if ref is None else images.read(ref)
    except UnsafePathError as e:
        return _Rejection(row, item_id, "unsafe_path", f"{e}; not read")
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
        "category1": mapped_value(texts, mapping.category1, mapping.value_maps.get("category1", {})),
        "category2": mapped_value(texts, mapping.category2, mapping.category_map),
    }
    for target, column in mapping.src_columns.items():
        item[target] = mapped_value(texts, column, mapping.value_maps.get(target, {}))
    return item, ref, image_sha256(data)


def _id_with_control_characters(texts: dict[str, str], item_id: str, mapping: ColumnMapping) -> str | None:
    """The mapping column of an id holding a control character, or None."""
    if CONTROL_CHARACTERS.search(item_id):
        return mapping.item_id
    if mapping.product_id and CONTROL_CHARACTERS.search(texts[mapping.product_id]):
        return mapping.product_id
    return None


def _ingest_records(table: pd.DataFrame, mapping: ColumnMapping, images: _SourceImages, source: str,
                    strict: bool, malformed: dict[int, str] | None = None) -> RawCatalog:
    """Every row of `table` becomes a raw item or a rejection (row numbers are 1-based positions)."""
    malformed = malformed or {}
    items: list[dict[str, Any]] = []
    hashes: list[str] = []
    rejections: list[_Rejection] = []
    seen: set[str] = set()
    records = table.to_dict("records")
    for position, record in enumerate(tqdm(records, desc=f"ingest {Path(source).name}", unit="item")):
        row = position + 1
        texts = {c: _cell_text(v) for c, v in record.items()}
        item_id = _format_id(texts[mapping.item_id], mapping)
        bad_id_column = _id_with_control_characters(texts, item_id, mapping)
        if position in malformed:
            outcome = _Rejection(row, item_id, "malformed_line", malformed[position])
        elif not item_id:
            outcome = _Rejection(row, "", "missing_item_id", f"column {mapping.item_id!r} is empty")
        elif bad_id_column:
            outcome = _Rejection(row, item_id, "control_characters",
                                 f"column {bad_id_column!r} holds a control character (NUL, ...); not read")
        elif item_id in seen:
            outcome = _Rejection(row, item_id, "duplicate_item_id", "an earlier row has this id; kept that one")
        else:
            outcome = _build_item(row, texts, item_id, position, mapping, images)
        if item_id:
            seen.add(item_id)
        if isinstance(outcome, _Rejection):
            outcome.item_id = printable(outcome.item_id)
            if strict:
                raise IngestError(f"{source}: row {outcome.row} (item_id {outcome.item_id!r}) is bad: "
                                  f"{outcome.reason} ({outcome.detail}); fix it, or ingest without strict "
                                  "to skip such rows into rejects.csv")
            rejections.append(outcome)
        else:
            item, ref, sha = outcome
            items.append(item)
            images.accept(ref)
            hashes.append(sha)
    catalog = RawCatalog(
        meta=pd.DataFrame(items, columns=[*RAW_COLUMNS, *mapping.src_columns]),
        images=images, source=source, n_read=len(records), image_sha256=hashes,
        rejects=pd.DataFrame([vars(r) for r in rejections], columns=list(REJECT_COLUMNS)),
    )
    validate_raw(catalog.meta, f"raw catalog from {source}")
    _log_summary(catalog, rejections)
    return catalog


def _log_summary(catalog: RawCatalog, rejections: list[_Rejection]) -> None:
    logger.info("ingest %s: %d rows read, %d items, %d rejected", catalog.source, catalog.n_read,
                len(catalog.meta), len(rejections))
    if rejections:
        counts = Counter(r.reason for r in rejections)
        examples = "; ".join(f"row {r.row} item {r.item_id!r}: {r.reason} ({r.detail})"
                             for r in rejections[:N_EXAMPLES])
        logger.warning("ingest %s: rejected %d of %d rows (%s); first: %s", catalog.source, len(rejections),
                       catalog.n_read, ", ".join(f"{k}: {n}" for k, n in counts.most_common()), examples)


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
        raise InputError(f"{path}: unsupported table type {path.suffix!r}; use one of "
                         f"{sorted(TABLE_READERS_BY_SUFFIX)}")
    if not path.is_file():
        raise InputNotFoundError(f"{path} does not exist")
    try:
        if kind == "csv":
            return _read_csv(path, limit)
        if kind == "jsonl":
            return pd.read_json(path, lines=True, dtype=False, nrows=limit, encoding="utf-8"), {}
        table = pd.read_parquet(path)
        return (table if limit is None else table.head(limit)), {}
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, OSError) as e:
        raise InputError(f"{path}: cannot be read as {kind} ({type(e).__name__}: {e})") from e


def ingest_table(table_path: str | Path, image_dir: str | Path, mapping: ColumnMapping,
                 strict: bool = False, limit: int | None = None) -> RawCatalog:
    """A product table + a folder of images -> raw catalog. `limit` caps the source rows read."""
    table_path, image_root = Path(table_path), Path(image_dir)
    if not image_root.is_dir():
        raise InputNotFoundError(f"image directory {image_root} does not exist (images for {table_path})")
    table, malformed = read_table(table_path, limit)
    check_columns(list(table.columns), mapping, str(table_path))
    return _ingest_records(table, mapping, FileImages(image_root, mapping), str(table_path), strict, malformed)


# ---------------------------------------------------------------- Hugging Face datasets

def load_hf_dataset(name_or_path: str | Path, split: str | None = None):
    """A local save_to_disk directory, else the hub; a DatasetDict is narrowed to `split`."""
    if Path(name_or_path).is_dir():
        try:
            loaded = datasets.load_from_disk(str(name_or_path))
        except FileNotFoundError as e:
            raise InputError(f"{name_or_path} is not a dataset saved with save_to_disk ({e})") from e
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
            raise InputError(f"{name_or_path} has splits {list(loaded)}; pass split= one of them")
        return loaded[split]
    return loaded



def ingest_hf(name_or_path: str | Path, mapping: ColumnMapping, split: str | None = None,
              strict: bool = False, limit: int | None = None) -> RawCatalog:
    """A Hugging Face dataset whose `mapping.image` column holds the images -> raw catalog."""
    if not mapping.image:
        raise InputError("ingest_hf needs mapping.image: the name of the dataset's image column")
    dataset = load_hf_dataset(name_or_path, split)
    source = f"{name_or_path}" + (f" [{split}]" if split else "")
    check_columns(dataset.column_names, mapping, source)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    if isinstance(dataset.features[mapping.image], datasets.Image):
        dataset = dataset.cast_column(mapping.image, datasets.Image(decode=False))  # keep the encoded bytes
    # Path-only image cells may point into the dataset's own folder (hub datasets: the datasets cache).
    local = Path(name_or_path)
    root = local if local.is_dir() else Path(datasets.config.HF_DATASETS_CACHE)
    binary = [name for name, feature in dataset.features.items()
              if isinstance(feature, datasets.Image) or getattr(feature, "dtype", "") in ("binary", "large_binary")]
    table = dataset.remove_columns(binary).to_pandas()  # text columns only: the images stay on disk
    images = DatasetImages(dataset.select_columns([mapping.image]), mapping.image, roots=(root,))
    return _ingest_records(table, mapping, images, source, strict)
