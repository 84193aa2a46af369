"""The feature cache on the tiny backbone and small real datasets of drawn PNGs."""

from __future__ import annotations

import io
import json
import logging
import os

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from protocol.model.backbone import Backbone, BackboneSpec, FingerprintMismatchError, create_backbone
from protocol.model.feature_cache import lock_path
from protocol.model.features import DamagedCacheError, cache_path, extract_features, load_features
from tests.model.extraction_job import (
    DATASET_FP, FEATURES, Job, drawn_png, image_files, path_dataset, png_dataset, texts, unblock,
)

CACHE_FILES = ["image.npy", "item_ids.json", "manifest.json", "text.npy"]  # all a finished cache holds



@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return create_backbone(BackboneSpec("protocol-tiny", seed=0), device="cpu")  # exact comparisons need one device


@pytest.fixture(scope="module")
def reference(tiny) -> tuple[np.ndarray, np.ndarray]:
    """Features of png_dataset(40) computed directly with the backbone, in row order."""
    images = [Image.open(io.BytesIO(drawn_png(i))) for i in range(40)]
    return tiny.encode_images(images), tiny.encode_texts(texts(40))


def test_computed_once_then_reused(tiny, reference, tmp_path):
    first = extract_features(png_dataset(), DATASET_FP, tiny, tmp_path, batch_size=8, num_workers=2, shard_size=16)
    assert first.n_computed == 40
    assert first.item_ids == [f"P{i:03d}" for i in range(40)]
    assert first.image.shape == first.text.shape == (40, 32)
    assert first.image.dtype == first.text.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first.image, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(first.image, reference[0], atol=1e-5)
    np.testing.assert_allclose(first.text, reference[1], atol=1e-5)

    root = cache_path(tmp_path, DATASET_FP, tiny.fingerprint)
    assert root.name == f"{DATASET_FP[:16]}-{tiny.fingerprint[:16]}"
    assert sorted(p.name for p in root.iterdir()) == CACHE_FILES
    assert lock_path(root).exists()  # beside the cache, not in it
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["complete"] and manifest["n"] == 40 and manifest["dim"] == 32 and manifest["dtype"] == "float32"
    assert manifest["backbone_fingerprint"] == tiny.fingerprint and manifest["dataset_fingerprint"] == DATASET_FP
    assert manifest["model_spec"] == {"model": "protocol-tiny", "pretrained": "none", "seed": 0}
    assert manifest["last_run"]["image"]["items"] == 40

    again = extract_features(png_dataset(), DATASET_FP, tiny, tmp_path, batch_size=8, num_workers=0, shard_size=16)
    loaded = load_features(tmp_path, DATASET_FP, tiny.fingerprint)
    for cached in (again, loaded):
        assert cached.n_computed == 0
        assert cached.item_ids == first.item_ids
        np.testing.assert_array_equal(cached.image, first.image)
        np.testing.assert_array_equal(cached.text, first.text)


def test_row_order_follows_the_dataset(tiny, reference, tmp_path):
    shuffled = png_dataset().shuffle(seed=3)  # an indices mapping over the same table
    order = [int(i[1:]) for i in shuffled["item_id"]]
    assert order != sorted(order)
    features = extract_features(shuffled, "e" * 64, tiny, tmp_path, batch_size=8, num_workers=0, shard_size=16)
    assert features.item_ids == list(shuffled["item_id"])
    np.testing.assert_allclose(features.image, reference[0][order], atol=1e-5)
    np.testing.assert_allclose(features.text, reference[1][order], atol=1e-5)
    image, text = features.take(["P005", "P000"])
    np.testing.assert_array_equal(image, features.image[[order.index(5), order.index(0)]])
    np.testing.assert_array_equal(text, features.text[[order.index(5), order.index(0)]])
    with pytest.raises(KeyError, match="1 item id.*'P999'"):
        features.take(["P001", "P999"])


def test_resumes_after_the_process_is_killed(tiny, reference, tmp_path):
    # Row 30's image is a named pipe: the extraction blocks there after the first image
    # shard is written, and is then killed with SIGKILL.
    paths = image_files(tmp_path / "images", 40, pipes=(30,))
    cache = tmp_path / "cache"
    root = cache_path(cache, DATASET_FP, tiny.fingerprint)
    job = Job(paths, cache, tmp_path / "job.log", shard_size=16)
    try:
        job.wait_until(lambda: (root / "image_00000.npy").exists(), "the first image shard")
        job.wait_until(lambda: "image phase" in job.output(), "the image phase")
    finally:
        job.kill()
    left = sorted(p.name for p in root.glob("*.npy"))
    assert left == ["image_00000.npy", "text_00000.npy", "text_00001.npy", "text_00002.npy"]
    with pytest.raises(RuntimeError, match="incomplete"):
        load_features(cache, DATASET_FP, tiny.fingerprint)
    first_shard = np.load(root / "image_00000.npy")

    os.unlink(paths[30])  # the stalled file becomes readable
    open(paths[30], "wb").write(drawn_png(30))
    resumed = extract_features(path_dataset(paths), DATASET_FP, tiny, cache, batch_size=8, num_workers=2, shard_size=16)
    assert resumed.n_computed == 24  # image rows 16..39 only: the text shards and image shard 0 were kept
    np.testing.assert_array_equal(resumed.image[:16], first_shard)
    np.testing.assert_allclose(resumed.image, reference[0], atol=1e-5)
    np.testing.assert_allclose(resumed.text, reference[1], atol=1e-5)
    assert sorted(p.name for p in root.iterdir()) == CACHE_FILES


def test_two_processes_on_one_cache_take_turns(tiny, reference, tmp_path):
    # The first blocks on row 30 (a named pipe) while it holds the cache; the second must
    # wait for it, say so, and then find the cache complete instead of racing its consolidation.
    paths = image_files(tmp_path / "images", 40, pipes=(30,))
    cache = tmp_path / "cache"
    root = cache_path(cache, DATASET_FP, tiny.fingerprint)
    first = Job(paths, cache, tmp_path / "first.log", shard_size=16, num_workers=1)
    second = None
    try:
        first.wait_until(lambda: "image phase" in first.output(), "the first job's image phase")
        second = Job(paths, cache, tmp_path / "second.log", shard_size=16)
        second.wait_until(lambda: "waiting for it to finish" in second.output(), "the second job waiting")
        assert str(lock_path(root)) in second.output()
        unblock(paths[30], 30)
        assert first.result()["n_computed"] == 40
        assert second.result()["n_computed"] == 0
    finally:
        first.kill()
        if second is not None:
            second.kill()
    assert "lock on" in second.output() and "all 40 items cached" in second.output()
    assert sorted(p.name for p in root.iterdir()) == CACHE_FILES  # no stray shard, no temp dir
    features = load_features(cache, DATASET_FP, tiny.fingerprint)
    np.testing.assert_allclose(features.image, reference[0], atol=1e-5)
    np.testing.assert_allclose(features.text, reference[1], atol=1e-5)


def test_a_truncated_or_altered_consolidated_array_is_named_and_recomputed(tiny, reference, tmp_path, caplog):
    first = extract_features(png_dataset(), DATASET_FP, tiny, tmp_path, batch_size=8, num_workers=0, shard_size=16)
    root = cache_path(tmp_path, DATASET_FP, tiny.fingerprint)
    image_npy, text_npy = root / "image.npy", root / "text.npy"
    text_bytes = text_npy.read_bytes()
    image_npy.write_bytes(image_npy.read_bytes()[:1000])  # truncated, as by a full disk or a bad copy
    with pytest.raises(DamagedCacheError, match=f"{image_npy}.*truncated.*run extract_features.*or delete"):
        load_features(tmp_path, DATASET_FP, tiny.fingerprint)

    with caplog.at_level(logging.WARNING, logger="protocol"):
        again = extract_features(png_dataset(), DATASET_FP, tiny, tmp_path, batch_size=8, num_workers=0,
                                 shard_size=16)
    assert f"{image_npy} is damaged" in caplog.text
    assert again.n_computed == 40  # every image row again; the intact text.npy was kept as it was
    assert text_npy.read_bytes() == text_bytes
    np.testing.assert_array_equal(again.image, first.image)
    assert sorted(p.name for p in root.iterdir()) == CACHE_FILES

    altered = bytearray(text_npy.read_bytes())  # same size, other numbers: only the sha256 can tell
    altered[-8:] = b"\x00" * 8
    text_npy.write_bytes(bytes(altered))
    with pytest.raises(DamagedCacheError, match=f"{text_npy}.*sha256"):
        load_features(tmp_path, DATASET_FP, tiny.fingerprint)
    repaired = extract_features(png_dataset(), DATASET_FP, tiny, tmp_path, batch_size=8, num_workers=0, shard_size=16)
    np.testing.assert_array_equal(repaired.text, first.text)
    np.testing.assert_allclose(repaired.text, reference[1], atol=1e-5)


def test_a_truncated_shard_is_named_and_recomputed(tiny, reference, tmp_path, caplog):
    rows = png_dataset(40).to_dict()
    rows["image"][20] = {"bytes": b"not an image", "path": None}  # stops the image phase after shard 0
    with pytest.raises(ValueError, match="row 20"):
        extract_features(datasets.Dataset.from_dict(rows, features=FEATURES), DATASET_FP, tiny, tmp_path,
                         batch_size=8, num_workers=0, shard_size=16)
    root = cache_path(tmp_path, DATASET_FP, tiny.fingerprint)
    shard = root / "image_00000.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING, logger="protocol"):
        features = extract_features(png_dataset(40), DATASET_FP, tiny, tmp_path, batch_size=8, num_workers=0,
                                    shard_size=16)
    assert f"shard {shard} is unreadable" in caplog.text
    assert features.n_computed == 40  # every image shard (0 was damaged); the text shards were kept
    np.testing.assert_allclose(features.image, reference[0], atol=1e-5)
    assert sorted(p.name for p in root.iterdir()) == CACHE_FILES


def test_other_backbone_or_dataset_fingerprint_is_refused(tiny, tmp_path):
    extract_features(png_dataset(12), DATASET_FP, tiny, tmp_path, batch_size=8, num_workers=0, shard_size=8)
    other = create_backbone(BackboneSpec("protocol-tiny", seed=1), device="cpu")
    with pytest.raises(FingerprintMismatchError) as err:
        load_features(tmp_path, DATASET_FP, other.fingerprint)
    assert tiny.fingerprint in str(err.value) and other.fingerprint in str(err.value)

    # same 16-character prefix (same directory), other full fingerprint: the manifest decides
    lookalike = tiny.fingerprint[:16] + "0" * 48
    with pytest.raises(FingerprintMismatchError) as err:
        load_features(tmp_path, DATASET_FP, lookalike)
    assert tiny.fingerprint in str(err.value) and lookalike in str(err.value)
    dataset_lookalike = DATASET_FP[:16] + "f" * 48
    with pytest.raises(FingerprintMismatchError, match=f"{DATASET_FP}.*{dataset_lookalike}|{dataset_lookalike}.*{DATASET_FP}"):
        extract_features(png_dataset(12), dataset_lookalike, tiny, tmp_path, num_workers=0)

    with pytest.raises(FileNotFoundError, match="run extract_features"):
        load_features(tmp_path, "a" * 64, "b" * 64)


def test_stale_dataset_fingerprint_is_refused(tiny, tmp_path):
    extract_features(png_dataset(12), DATASET_FP, tiny, tmp_path, num_workers=0)
    with pytest.raises(ValueError, match="other item ids or another row order"):
        extract_features(png_dataset(12).shuffle(seed=0), DATASET_FP, tiny, tmp_path, num_workers=0)


def test_bad_rows_are_named_and_finished_shards_kept(tiny, tmp_path):
    rows = png_dataset(20).to_dict()
    rows["image"][13] = {"bytes": b"this is not a png", "path": None}
    broken = datasets.Dataset.from_dict(rows, features=FEATURES)
    with pytest.raises(ValueError, match="row 13 \\(item_id 'P013'\\): image cannot be decoded"):
        extract_features(broken, DATASET_FP, tiny, tmp_path, batch_size=4, num_workers=1, shard_size=8)
    root = cache_path(tmp_path, DATASET_FP, tiny.fingerprint)
    assert (root / "image_00000.npy").exists() and not (root / "image_00001.npy").exists()

    rows = png_dataset(6).to_dict()
    rows["text"][4] = None
    with pytest.raises(ValueError, match="row 4 \\(item_id 'P004'\\): column 'text' is None"):
        extract_features(datasets.Dataset.from_dict(rows, features=FEATURES), "c" * 64, tiny, tmp_path, num_workers=0)

    rows["text"][4] = "fine"
    rows["item_id"][5] = "P001"
    with pytest.raises(ValueError, match="duplicate.*'P001' \\(rows 1 and 5\\)"):
        extract_features(datasets.Dataset.from_dict(rows, features=FEATURES), "c" * 64, tiny, tmp_path)
    with pytest.raises(ValueError, match="lacks column\\(s\\) \\['text'\\]"):
        extract_features(png_dataset(4).remove_columns("text"), "c" * 64, tiny, tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_extraction_on_cuda_matches_cpu(reference, tmp_path):
    on_gpu = create_backbone(BackboneSpec("protocol-tiny", seed=0), device="cuda")
    features = extract_features(png_dataset(), DATASET_FP, on_gpu, tmp_path, batch_size=8, num_workers=2, shard_size=16)
    assert features.n_computed == 40 and features.image.dtype == np.float32
    np.testing.assert_allclose(features.image, reference[0], atol=1e-2)
    np.testing.assert_allclose(features.text, reference[1], atol=1e-2)
