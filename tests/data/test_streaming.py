"""Ingest and prepare stream images into the dataset: memory stays flat as the catalog's image bytes grow.

Each size runs in a fresh process that ingests a table whose images are on disk and prepares it,
and reports its peak Python heap (tracemalloc: every bytes object) plus the peak of pyarrow's
memory pool (arrow buffers). Holding the catalog's images at any point would raise the peak by
their size; streaming a shard at a time keeps it where the small catalog had it.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
from PIL import Image

from protocol.data.ingest import ingest_table
from protocol.data.mapping import ColumnMapping
from protocol.data.prepare import prepare_processed
from protocol.data.processed import load_processed

ROOT = Path(__file__).resolve().parents[2]
MAPPING = {"item_id": "sku", "title": "name", "category2": "cat", "image": "file", "product_id": "product"}
SHARD_ROWS = 8
MEASURE = """
import json, resource, sys, tracemalloc
import pyarrow as pa
from protocol.data.ingest import ingest_table
from protocol.data.mapping import ColumnMapping
from protocol.data.prepare import prepare_processed
table, images, out, mapping, shard_rows = sys.argv[1:]
tracemalloc.start()
raw = ingest_table(table, images, ColumnMapping(**json.loads(mapping)))
prepare_processed(raw, out, shard_rows=int(shard_rows), show_progress=False)
print(json.dumps({"python_peak": tracemalloc.get_traced_memory()[1],
                  "arrow_peak": pa.default_memory_pool().max_memory(),
                  "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def noise_png(rng: np.random.Generator, size: int = 192) -> bytes:
    """A photo-sized image that PNG cannot compress (~110 KB)."""
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG",
                                                                                 compress_level=0)
    return buffer.getvalue()


def write_catalog(root: Path, n: int) -> tuple[Path, Path, int]:
    """A table of n products with an image each on disk; (table, image dir, image bytes in all)."""
    rng = np.random.default_rng(n)
    images = root / "images"
    images.mkdir(parents=True)
    total = 0
    rows = []
    for i in range(n):
        data = noise_png(rng)
        (images / f"{i}.png").write_bytes(data)
        total += len(data)
        category = ["tees", "shorts", "cardigans", "dresses"][i % 4]
        rows.append({"sku": f"S{i:05d}", "product": f"P{i // 2:05d}", "name": f"Cotton {category} number {i}",
                     "cat": category, "file": f"{i}.png"})
    table = root / "products.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table, images, total


def measure(tmp_path: Path, n: int) -> tuple[dict, int, Path]:
    table, images, total = write_catalog(tmp_path / f"n{n}", n)
    out = tmp_path / f"n{n}" / "prepared"
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(table), str(images), str(out), json.dumps(MAPPING),
                           str(SHARD_ROWS)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), total, out


def test_memory_stays_flat_as_the_catalog_grows(tmp_path):
    small, small_bytes, _ = measure(tmp_path, 40)
    large, large_bytes, out = measure(tmp_path, 160)
    grown_images = large_bytes - small_bytes  # ~13 MB more image bytes
    grown_peak = (large["python_peak"] + large["arrow_peak"]) - (small["python_peak"] + small["arrow_peak"])
    print(f"images {small_bytes / 1e6:.1f} -> {large_bytes / 1e6:.1f} MB; peak python+arrow "
          f"{(small['python_peak'] + small['arrow_peak']) / 1e6:.1f} -> "
          f"{(large['python_peak'] + large['arrow_peak']) / 1e6:.1f} MB; max RSS {small['max_rss_kb'] / 1e3:.0f} -> "
          f"{large['max_rss_kb'] / 1e3:.0f} MB")
    assert grown_images > 10e6
    assert grown_peak < 0.15 * grown_images, (small, large)
    # and the streamed dataset is whole: every image, in row order
    processed = load_processed(out, verify=True)
    assert len(processed.meta) == 160 and processed.manifest["n_read"] == 160


def test_streamed_dataset_holds_every_image_in_row_order(tmp_path):
    table, images, _ = write_catalog(tmp_path, 21)
    raw = ingest_table(table, images, ColumnMapping(**MAPPING))
    manifest = prepare_processed(raw, tmp_path / "prepared", shard_rows=4, rows_per_file=8, show_progress=False)
    processed = load_processed(tmp_path / "prepared", verify=True)
    assert processed.fingerprint == manifest["fingerprint"]
    files = sorted(p.name for p in (tmp_path / "prepared" / "dataset").iterdir())
    assert files == [f"data-0000{i}-of-00003.arrow" for i in range(3)] + ["dataset_info.json", "state.json"]
    assert processed.dataset.features["image"] == datasets.Image()
    cells = processed.dataset.cast_column("image", datasets.Image(decode=False))["image"]
    for item_id, cell in zip(processed.meta["item_id"], cells):
        assert cell["bytes"] == (images / f"{int(item_id[1:])}.png").read_bytes()
