"""Decoding an image cell, whatever form it arrives in (PIL, bytes, a path, a datasets.Image dict)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image


def load_image(image: Image.Image | bytes | bytearray | str | Path | dict) -> Image.Image:
    """A PIL image (RGB) from a PIL image, encoded bytes, a file path, or a datasets Image dict."""
    if isinstance(image, dict):  # datasets.Image storage form {"bytes": ..., "path": ...}
        image = image.get("bytes") or image.get("path")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (bytes, bytearray)):
        return Image.open(io.BytesIO(image)).convert("RGB")
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} does not exist")
        with Image.open(path) as im:
            return im.convert("RGB")
    raise TypeError(f"an image must be a PIL image, encoded bytes or a file path, got {type(image).__name__}")
