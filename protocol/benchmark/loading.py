"""Where a benchmark dataset comes from, opening it, and the view of it the feature cache embeds.

With a `data_dir`, dataset `<key>` is `datasets.load_from_disk(<data_dir>/<key>)` (a Dataset, or a
DatasetDict holding Marqo's `data` split); without one it is `datasets.load_dataset("Marqo/<key>",
split="data")`, as Marqo's data/utils.py loads it. Every row is a document.

The feature cache wants unique, non-empty `item_id`s and one `text` per row. Marqo's `item_ID`s
are neither guaranteed unique nor strings, so the cache is keyed by row (`row000000012`) and the
dataset fingerprint covers the row keys, Marqo's item_IDs, the embedded text and every image's
bytes: each backbone embeds each dataset once, and another version of the dataset is another cache.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
import pandas as pd
from tqdm.auto import tqdm

from protocol.benchmark.specs import TEXT_COLUMN, DatasetSpec, Protocol
from protocol.data.processed import dataset_fingerprint

log = logging.getLogger(__name__)

DISK, HUB = "disk", "hub"
HASH_BATCH_ROWS = 256


class DatasetUnavailable(Exception):
    """A benchmark dataset that cannot be opened or lacks what every task needs; the message says why."""


@dataclass(frozen=True)
class DatasetSource:
    kind: str       # DISK | HUB
    location: str   # the folder, or the Hugging Face id

    def describe(self) -> str:
        return f"local folder {self.location}" if self.kind == DISK else f"Hugging Face {self.location}"


def dataset_source(spec: DatasetSpec, data_dir: str | Path | None) -> DatasetSource:
    """A local folder `<data_dir>/<key>` when a data_dir is given, else the hub."""
    if data_dir:
        return DatasetSource(DISK, str(Path(data_dir) / spec.key))
    return DatasetSource(HUB, spec.hub)


def open_dataset(spec: DatasetSpec, source: DatasetSource, split: str) -> datasets.Dataset:
    """The dataset's documents; DatasetUnavailable says what is missing and what to do."""
    if source.kind == DISK:
        path = Path(source.location)
        if not path.is_dir():
            raise DatasetUnavailable(
                f"no folder {path}: save the dataset there with `datasets.load_dataset({spec.hub!r}, "
                f"split={split!r}).save_to_disk({str(path)!r})` on a machine with a network")
        try:
            loaded = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError, OSError) as e:
            raise DatasetUnavailable(f"{path} is not a dataset saved with save_to_disk: {e}") from e
        return _split_of(loaded, split, source)
    try:
        return datasets.load_dataset(source.location, split=split)
    except Exception as e:  # noqa: BLE001 - offline, missing, gated, renamed: any of them leaves the others to run
        raise DatasetUnavailable(f"datasets.load_dataset({source.location!r}, split={split!r}) failed: "
                                 f"{type(e).__name__}: {e}") from e


def _split_of(loaded, split: str, source: DatasetSource) -> datasets.Dataset:
    if isinstance(loaded, datasets.Dataset):
        return loaded
    if split in loaded:
        return loaded[split]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    raise DatasetUnavailable(f"{source.describe()} holds splits {list(loaded)} but not {split!r}, the one Marqo "
                             f"evaluates: save that split alone")


def check_columns(dataset: datasets.Dataset, spec: DatasetSpec, protocol: Protocol) -> dict[str, str]:
    """{task name: why it cannot run} for tasks whose columns are missing; DatasetUnavailable when none can."""
    columns = set(dataset.column_names)
    where = f"dataset {spec.key} (columns {sorted(columns)})"
    for needed in (protocol.item_id_column, protocol.image_column):
        if needed not in columns:
            raise DatasetUnavailable(f"{where} lacks column {needed!r}, which every task needs")
    if not isinstance(dataset.features[protocol.image_column], datasets.Image):
        raise DatasetUnavailable(f"{where}: column {protocol.image_column!r} is "
                                 f"{dataset.features[protocol.image_column]!r}, not datasets.Image")
    if len(dataset) == 0:
        raise DatasetUnavailable(f"{where} has no rows")
    missing = {}
    for task in spec.tasks:
        absent = [c for c in (task.query, *task.text_columns) if c not in columns]
        if absent:
            missing[task.name] = f"column(s) {absent} missing from {where}"
    return missing


@dataclass
class EmbeddingView:
    dataset: datasets.Dataset   # columns item_id (row key), text, image: what extract_features reads
    doc_ids: list[str]          # Marqo's item_ID of each row, as str() (the ids its results are keyed by)
    texts: list[str]            # the embedded text of each row ("" where the dataset has no text column)
    fingerprint: str


def row_key(row: int) -> str:
    return f"row{row:09d}"


def embedding_view(dataset: datasets.Dataset, protocol: Protocol, show_progress: bool = True) -> EmbeddingView:
    """The rows as the feature cache embeds them, with the content fingerprint of what is embedded."""
    n = len(dataset)
    doc_ids = [str(x) for x in dataset[protocol.item_id_column]]
    if TEXT_COLUMN in dataset.column_names:
        texts = ["" if t is None else str(t) for t in dataset[TEXT_COLUMN]]
    else:
        texts = [""] * n  # image-only tasks (iMaterialist): the cache still holds a text per row
    keys = [row_key(i) for i in range(n)]
    view = dataset.select_columns([protocol.image_column])
    if protocol.image_column != "image":
        view = view.rename_column(protocol.image_column, "image")
    view = view.add_column("item_id", keys).add_column("text", texts)
    meta = pd.DataFrame({"item_id": keys, "doc_id": doc_ids, "text": texts})
    fingerprint = dataset_fingerprint(meta, image_hashes(view, show_progress=show_progress))
    return EmbeddingView(dataset=view, doc_ids=doc_ids, texts=texts, fingerprint=fingerprint)


def image_hashes(view: datasets.Dataset, show_progress: bool = True) -> list[str]:
    """sha256 of each row's encoded image (its bytes, or the file it points to), a batch at a time."""
    cells = view.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    hashes: list[str] = []
    batches = cells.iter(batch_size=HASH_BATCH_ROWS)
    for batch in tqdm(batches, total=-(-len(cells) // HASH_BATCH_ROWS), desc="hashing images", unit="batch",
                      disable=not show_progress):
        for cell in batch["image"]:
            data = (cell or {}).get("bytes")
            if data is None and (cell or {}).get("path") and Path(cell["path"]).is_file():
                data = Path(cell["path"]).read_bytes()
            if data is None:
                raise DatasetUnavailable(f"row {len(hashes)}: column 'image' holds neither bytes nor a readable "
                                         f"file ({cell!r})")
            hashes.append(hashlib.sha256(data).hexdigest())
    return hashes
