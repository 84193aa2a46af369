"""SIGKILL a real feature extraction at several points, then run it again.

After each kill nothing torn is visible (every array in the cache loads whole, the cache
reads as incomplete), and the rerun gives the same features as an uninterrupted run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from protocol.model.backbone import BackboneSpec, create_backbone
from protocol.model.features import cache_path, extract_features, load_features
from tests.model.extraction_job import DATASET_FP, Job, image_files, path_dataset, unpipe

N, SHARD, BATCH = 1200, 4, 4  # many small shards, so that each phase lasts long enough to be hit
BLOCKED_ROW = 900  # a named pipe: the image phase stops there
CACHE_FILES = ["image.npy", "item_ids.json", "manifest.json", "text.npy"]


@pytest.fixture(scope="module")
def tiny():
    return create_backbone(BackboneSpec("protocol-tiny", seed=0), device="cpu")


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("uninterrupted")
    return extract_features(path_dataset(image_files(d / "images", N)), DATASET_FP, tiny, d / "cache",
                            batch_size=BATCH, num_workers=0, shard_size=SHARD)


def shards(root, kind) -> list:
    return sorted(root.glob(f"{kind}_*.npy"))


def assert_nothing_torn(root, cache, tiny) -> None:
    names = {p.name for p in root.iterdir() if not p.name.startswith(".")}  # hidden: temp dirs, never read
    assert names <= {"item_ids.json", "manifest.json", "text.npy", "image.npy"} | {p.name for p in root.glob("*_*.npy")}
    for array in root.glob("*.npy"):
        np.load(array)  # whole: written under a temp name and renamed
    json.loads((root / "manifest.json").read_text())
    with pytest.raises(RuntimeError, match="incomplete"):
        load_features(cache, DATASET_FP, tiny.fingerprint)


# (what to wait for before the kill, and what must hold at that moment for the kill to be where it is meant)
KILL_POINTS = {
    "text phase": (lambda root: len(shards(root, "text")) >= 3,
                   lambda root: not shards(root, "image") and not (root / "text.npy").exists()),
    "image phase": (lambda root: len(shards(root, "image")) >= 3,
                    lambda root: len(shards(root, "text")) == N // SHARD and not (root / "image.npy").exists()),
    "consolidation": (lambda root: (root / "text.npy").exists(),
                      lambda root: not json.loads((root / "manifest.json").read_text())["complete"]),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_extraction_reruns_to_the_uninterrupted_features(point, tiny, uninterrupted, tmp_path):
    ready, where = KILL_POINTS[point]
    pipes = (BLOCKED_ROW,) if point == "image phase" else ()
    paths = image_files(tmp_path / "images", N, pipes=pipes)
    cache = tmp_path / "cache"
    root = cache_path(cache, DATASET_FP, tiny.fingerprint)
    job = Job(paths, cache, tmp_path / "job.log", shard_size=SHARD, batch_size=BATCH)
    try:
        job.wait_until(lambda: root.exists() and ready(root), f"the {point}")
        job.kill()
        assert where(root), f"the kill missed the {point}:\n{job.output()[-2000:]}"
        to_compute = {kind: 0 if (root / f"{kind}.npy").exists() else N // SHARD - len(shards(root, kind))
                for kind in ("text", "image")}  # shards still to compute
    finally:
        job.kill()
    assert_nothing_torn(root, cache, tiny)
    if pipes:
        unpipe(paths[BLOCKED_ROW], BLOCKED_ROW)

    rerun = extract_features(path_dataset(paths), DATASET_FP, tiny, cache, batch_size=BATCH, num_workers=0,
                             shard_size=SHARD)
    last_run = json.loads((root / "manifest.json").read_text())["last_run"]
    assert {kind: last_run[kind]["items"] for kind in to_compute} == {kind: SHARD * n for kind, n in to_compute.items()}
    assert rerun.item_ids == uninterrupted.item_ids
    np.testing.assert_allclose(rerun.image, uninterrupted.image, atol=1e-6)
    np.testing.assert_allclose(rerun.text, uninterrupted.text, atol=1e-6)
    assert sorted(p.name for p in root.iterdir()) == CACHE_FILES
