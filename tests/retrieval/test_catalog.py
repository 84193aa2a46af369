"""The Step-6 catalog: round trip, float16 on disk, missing files, fingerprint checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from protocol.retrieval.catalog import build_catalog, fuse, load_catalog

MANIFEST = {"dataset_fingerprint": "d" * 64, "backbone_fingerprint": "b" * 64, "model_spec": {"model": "tiny"}}


def sample(n=5, dim=4):
    rng = np.random.default_rng(0)
    image = rng.standard_normal((n, dim)).astype(np.float32) * 3  # not normalised on purpose
    text = rng.standard_normal((n, dim)).astype(np.float32)
    meta = pd.DataFrame({"item_id": [f"P{i}_front" for i in range(n)], "category2": ["tees"] * n},
                        index=np.arange(10, 10 + n))  # a non-default index must not leak into row order
    return image, text, meta


def test_round_trip_normalises_rows_and_keeps_order(tmp_path):
    image, text, meta = sample()
    out = build_catalog(tmp_path / "catalog", image, text, meta, MANIFEST)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["catalog_img.npy", "catalog_txt.npy", "catalog_meta.parquet", "manifest.json"])
    cat = load_catalog(out, expected_backbone_fingerprint="b" * 64)  # matching: no error
    assert cat.image.dtype == np.float32 and cat.path == out
    np.testing.assert_allclose(np.linalg.norm(cat.image, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(cat.image, image / np.linalg.norm(image, axis=1, keepdims=True), rtol=1e-6)
    assert list(cat.meta["item_id"]) == list(meta["item_id"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_items"] == 5 and manifest["dim"] == 4 and manifest["dtype"] == "float32"
    assert manifest["dataset_fingerprint"] == "d" * 64 and manifest["model_spec"] == {"model": "tiny"}
    assert "created" in manifest


def test_float16_on_disk_loads_as_float32(tmp_path):
    image, text, meta = sample()
    out = build_catalog(tmp_path, image, text, meta, MANIFEST, dtype="float16")
    assert np.load(out / "catalog_img.npy").dtype == np.float16
    cat = load_catalog(out)
    assert cat.image.dtype == np.float32 and cat.manifest["dtype"] == "float16"
    np.testing.assert_allclose(cat.text, text / np.linalg.norm(text, axis=1, keepdims=True), atol=1e-3)


def test_missing_file_and_disagreeing_rows_name_the_directory(tmp_path):
    image, text, meta = sample()
    out = build_catalog(tmp_path / "cat", image, text, meta, MANIFEST)
    (out / "catalog_txt.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"cat lacks \['catalog_txt.npy'\]"):
        load_catalog(out)
    np.save(out / "catalog_txt.npy", text[:3])
    with pytest.raises(ValueError, match="row counts disagree .image 5, text 3, meta 5."):
        load_catalog(out)
    with pytest.raises(ValueError, match="row counts disagree"):
        build_catalog(tmp_path / "bad", image, text[:4], meta, MANIFEST)
    with pytest.raises(ValueError, match="lacks \\['backbone_fingerprint'\\]"):
        build_catalog(tmp_path / "bad", image, text, meta, {"dataset_fingerprint": "d"})


def test_other_backbone_fingerprint_is_an_error_naming_both(tmp_path):
    from protocol.model.backbone import FingerprintMismatchError

    image, text, meta = sample()
    out = build_catalog(tmp_path, image, text, meta, MANIFEST)
    with pytest.raises(FingerprintMismatchError) as err:
        load_catalog(out, expected_backbone_fingerprint="c" * 64)
    assert "b" * 64 in str(err.value) and "c" * 64 in str(err.value) and str(out) in str(err.value)


def test_fuse_weights_image_and_text():
    image = np.array([[1, 0]], np.float32)
    text = np.array([[0, 1]], np.float32)
    # 0.75 * (1,0) + 0.25 * (0,1) = (.75,.25), normalised by sqrt(.625)
    np.testing.assert_allclose(fuse(image, text, 0.75), [[0.75 / 0.625**0.5, 0.25 / 0.625**0.5]], rtol=1e-6)
    with pytest.raises(ValueError, match="fusion weight"):
        fuse(image, text, 1.5)
