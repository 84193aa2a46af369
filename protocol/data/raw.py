"""The raw catalog that synthetic generation and ingest both hand to prepare.

Its rows (ids, text, categories, source labels) live in memory; its images never do all
at once. `images.fetch(rows)` reads, or renders, the encoded bytes of a few rows, and
prepare calls it one shard at a time while it writes the dataset. So peak memory does
not grow with the catalog's image bytes (105K H&M photos are 20-30 GB).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pandas as pd

from protocol.data.schema import REJECT_COLUMNS

IMAGE_BYTES = "image_bytes"  # the in-memory form's image column (raw DataFrames, finalize's output)


class ImageSource(Protocol):
    """Encoded image bytes (PNG/JPEG/...) of raw-catalog rows, in the order asked."""

    def fetch(self, rows: Sequence[int]) -> list[bytes]: ...


@dataclass
class InMemoryImages:
    """Images already held in memory, e.g. a small raw DataFrame's `image_bytes` column."""

    data: Sequence[bytes]

    def fetch(self, rows: Sequence[int]) -> list[bytes]:
        return [self.data[i] for i in rows]


def empty_rejects() -> pd.DataFrame:
    return pd.DataFrame(columns=list(REJECT_COLUMNS))


@dataclass
class RawCatalog:
    """One row of `meta` per accepted item; `images.fetch([i])` is row i's image."""

    meta: pd.DataFrame         # the raw columns (docs/ARCHITECTURE.md) except image_bytes
    images: ImageSource
    source: str                # where the rows came from, for messages and the manifest
    rejects: pd.DataFrame = field(default_factory=empty_rejects)  # REJECT_COLUMNS: skipped source rows
    n_read: int | None = None  # source rows read (accepted + rejected); None: len(meta)
    # sha256 of each row's image as ingest validated it; prepare checks the bytes it writes
    # against it, so a file changed in between is an error, not a silent swap. None: not checked.
    image_sha256: list[str] | None = None

    def __post_init__(self):
        if self.n_read is None:
            self.n_read = len(self.meta) + len(self.rejects)
        if self.image_sha256 is not None and len(self.image_sha256) != len(self.meta):
            raise ValueError(f"raw catalog from {self.source}: {len(self.image_sha256)} image hashes "
                             f"for {len(self.meta)} rows")

    @classmethod
    def from_frame(cls, raw: pd.DataFrame, source: str, rejects: pd.DataFrame | None = None) -> RawCatalog:
        """A raw DataFrame with its images in an `image_bytes` column (small catalogs, tests)."""
        if IMAGE_BYTES not in raw.columns:
            raise ValueError(f"raw catalog from {source} has no {IMAGE_BYTES!r} column")
        raw = raw.reset_index(drop=True)
        return cls(meta=raw.drop(columns=[IMAGE_BYTES]), images=InMemoryImages(list(raw[IMAGE_BYTES])),
                   source=source, rejects=empty_rejects() if rejects is None else rejects)

    def to_frame(self) -> pd.DataFrame:
        """The whole catalog with its image bytes in memory: for small catalogs and tests only."""
        return self.meta.assign(**{IMAGE_BYTES: self.images.fetch(range(len(self.meta)))})

    def rejects_by_reason(self) -> dict[str, int]:
        return dict(Counter(self.rejects["reason"]).most_common())

    def summary(self) -> dict[str, int]:
        counts = {"n_read": int(self.n_read), "n_items": len(self.meta), "n_rejected": len(self.rejects)}
        counts.update({f"rejected.{reason}": n for reason, n in self.rejects_by_reason().items()})
        return counts
