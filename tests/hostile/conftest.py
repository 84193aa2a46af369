"""A small shop table with images on disk, and prepare run the way `mlflow run . -e prepare` runs it."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from PIL import Image

from entrypoints.cli import main
from protocol.tracking.stages.prepare import PrepareConfig, run_prepare

MAPPING = {"item_id": "sku", "title": "name", "description": "blurb", "category2": "cat", "image": "file",
           "product_id": "product"}


def jpeg(color: tuple[int, int, int], size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="JPEG")
    return buffer.getvalue()


@dataclass
class Shop:
    root: Path
    images: Path
    mapping: Path

    def table(self, rows: list[dict], name: str = "products.csv") -> Path:
        path = self.root / name
        pd.DataFrame(rows, columns=["sku", "product", "name", "blurb", "cat", "file"]).to_csv(path, index=False)
        return path

    def image(self, name: str, color: tuple[int, int, int]) -> bytes:
        data = jpeg(color)
        (self.images / name).parent.mkdir(parents=True, exist_ok=True)
        (self.images / name).write_bytes(data)
        return data


def good_rows(n: int = 6) -> list[dict]:
    categories = ["tees", "shorts", "cardigans", "dresses", "shirts", "skirts"]
    return [{"sku": f"S{i}", "product": f"P{i // 2}", "name": f"Cotton {categories[i % 6]} {i}",
             "blurb": "Soft and light.", "cat": categories[i % 6], "file": f"img/{i}.jpg"} for i in range(n)]


@pytest.fixture
def shop(tmp_path) -> Shop:
    root = tmp_path / "shop"
    images = root / "images"
    images.mkdir(parents=True)
    mapping = root / "mapping.yaml"
    mapping.write_text(yaml.safe_dump(MAPPING))
    s = Shop(root, images, mapping)
    for i in range(6):
        s.image(f"img/{i}.jpg", (40 * i, 80, 120))
    return s


@dataclass
class Outcome:
    status: int          # the process exit status `python -m entrypoints.prepare` would have
    message: str         # the `error: ...` line, "" on success
    out: Path            # output_dir
    run: mlflow.entities.Run | None

    @property
    def run_dir(self) -> Path:
        return self.out / self.run.info.run_id

    @property
    def manifest(self) -> dict:
        return json.loads((self.out / "latest" / "manifest.json").read_text())

    def rejects(self, where: Path | None = None) -> pd.DataFrame:
        return pd.read_csv((where or self.out / "latest") / "rejects.csv", keep_default_na=False)


def run_entry_point(argv: list[str], out: Path) -> Outcome:
    """entrypoints.prepare's main() in this process: same parsing, same stage, same error handling."""
    status, message = 0, ""
    try:
        main(PrepareConfig, run_prepare, [*argv, "--output_dir", str(out)])
    except SystemExit as e:
        status, message = (1, e.code) if isinstance(e.code, str) else (e.code, "")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", order_by=["start_time DESC"])
    return Outcome(status, message, out, runs[0] if runs else None)


@pytest.fixture
def prepare_table(shop, tracking_uri, tmp_path):
    """Run prepare on a table of `shop` (source=table, the shop's mapping unless given)."""
    def run(table: Path, *extra: str, image_dir: Path | None = None, mapping: str | None = None) -> Outcome:
        argv = ["--source", "table", "--input", str(table), "--image_dir", str(image_dir or shop.images),
                "--mapping", mapping or str(shop.mapping), *extra]
        return run_entry_point(argv, tmp_path / "prepared")
    return run
