"""The Step-6 catalog on disk: embeddings, metadata and a manifest, in one directory.

```
<catalog_dir>/catalog_img.npy  catalog_txt.npy  catalog_meta.parquet  manifest.json
```
Rows of the .npy files are L2-normalised (float32, or float16 to halve the disk size)
in the row order of catalog_meta.parquet. manifest.json is written last, so a catalog
with a manifest is complete. Loading always returns float32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from protocol.io import atomic_path, read_json, write_json
from protocol.provenance import check_fingerprint

logger = logging.getLogger(__name__)

IMAGE_FILE = "catalog_img.npy"
TEXT_FILE = "catalog_txt.npy"
META_FILE = "catalog_meta.parquet"
MANIFEST_FILE = "manifest.json"
CATALOG_FILES = (IMAGE_FILE, TEXT_FILE, META_FILE, MANIFEST_FILE)
DISK_DTYPES = ("float32", "float16")
REQUIRED_MANIFEST_KEYS = ("dataset_fingerprint", "backbone_fingerprint")


@dataclass
class Catalog:
    image: np.ndarray  # [N, D] float32, L2-normalised
    text: np.ndarray  # [N, D] float32, L2-normalised
    meta: pd.DataFrame  # row i describes row i of image and text
    manifest: dict[str, Any]
    path: Path


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float32; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def fuse(image: np.ndarray, text: np.ndarray, weight: float) -> np.ndarray:
    """The fused item embedding normalize(w * image + (1 - w) * text) used by mode t2f."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    return l2_normalize(weight * np.asarray(image, np.float32) + (1.0 - weight) * np.asarray(text, np.float32))


def build_catalog(
    out_dir: str | Path,
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    meta: pd.DataFrame,
    manifest: dict[str, Any],
    dtype: str = "float32",
) -> Path:
    """Write the Step-6 catalog to `out_dir` (each file atomically, manifest last); return the dir.

    `manifest` comes from the caller and must name `dataset_fingerprint` and
    `backbone_fingerprint`; counts, dimension, dtype, file names and the creation time
    are added here.
    """
    out_dir = Path(out_dir)
    if dtype not in DISK_DTYPES:
        raise ValueError(f"catalog dtype must be one of {DISK_DTYPES}, got {dtype!r}")
    missing = [key for key in REQUIRED_MANIFEST_KEYS if not manifest.get(key)]
    if missing:
        raise ValueError(f"catalog manifest for {out_dir} lacks {missing}; pass the fingerprints of the dataset and backbone")
    image_emb, text_emb = np.asarray(image_emb), np.asarray(text_emb)
    _check_rows(out_dir, image_emb, text_emb, meta)
    if "item_id" not in meta.columns:
        raise ValueError(f"catalog meta for {out_dir} has no item_id column (columns: {list(meta.columns)})")
    dupes = meta["item_id"][meta["item_id"].duplicated()]
    if len(dupes):
        raise ValueError(f"catalog meta for {out_dir} repeats item_id {dupes.iloc[0]!r}; item ids must be unique")

    for name, emb in ((IMAGE_FILE, image_emb), (TEXT_FILE, text_emb)):
        with atomic_path(out_dir / name) as tmp:
            np.save(tmp, l2_normalize(emb).astype(dtype))
    with atomic_path(out_dir / META_FILE) as tmp:
        meta.reset_index(drop=True).to_parquet(tmp, index=False)
    full_manifest = {
        **manifest,
        "n_items": int(len(meta)),
        "dim": int(image_emb.shape[1]),
        "dtype": dtype,
        "files": list(CATALOG_FILES[:3]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out_dir / MANIFEST_FILE, full_manifest)
    logger.info("catalog of %d items (dim %d, %s) written to %s", len(meta), image_emb.shape[1], dtype, out_dir)
    return out_dir


def load_catalog(catalog_dir: str | Path, expected_backbone_fingerprint: str | None = None) -> Catalog:
    """Read a catalog written by `build_catalog`; embeddings come back as float32.

    With `expected_backbone_fingerprint`, a catalog built by another backbone raises
    FingerprintMismatchError (a ValueError naming both fingerprints).
    """
    catalog_dir = Path(catalog_dir)
    missing = [name for name in CATALOG_FILES if not (catalog_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"catalog directory {catalog_dir} lacks {missing}; build it with the baseline stage (build_catalog)"
        )
    manifest = read_json(catalog_dir / MANIFEST_FILE)
    if expected_backbone_fingerprint is not None:
        _check_backbone(expected_backbone_fingerprint, manifest.get("backbone_fingerprint", ""), catalog_dir)
    image = np.load(catalog_dir / IMAGE_FILE).astype(np.float32, copy=False)
    text = np.load(catalog_dir / TEXT_FILE).astype(np.float32, copy=False)
    meta = pd.read_parquet(catalog_dir / META_FILE)
    _check_rows(catalog_dir, image, text, meta)
    if manifest.get("n_items") != len(meta):
        raise ValueError(
            f"catalog {catalog_dir}: manifest.json says {manifest.get('n_items')} items but the files hold "
            f"{len(meta)}; rebuild the catalog"
        )
    return Catalog(image=image, text=text, meta=meta, manifest=manifest, path=catalog_dir)


def _check_rows(where: Path, image: np.ndarray, text: np.ndarray, meta: pd.DataFrame) -> None:
    if image.ndim != 2 or text.ndim != 2:
        raise ValueError(f"catalog {where}: embeddings must be 2-D, got image {image.shape} and text {text.shape}")
    if not (len(image) == len(text) == len(meta)):
        raise ValueError(
            f"catalog {where}: row counts disagree (image {len(image)}, text {len(text)}, meta {len(meta)}); "
            "they must describe the same items in the same order"
        )
    if image.shape[1] != text.shape[1]:
        raise ValueError(f"catalog {where}: image dim {image.shape[1]} != text dim {text.shape[1]}")


def _check_backbone(expected: str, actual: str, where: Path) -> None:
    check_fingerprint(expected, actual, f"catalog {where} (backbone)")
