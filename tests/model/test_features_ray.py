"""`engine="ray"` on a local Ray instance with 2 CPUs: the same cache as the local engine, and a resume after a kill."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from protocol.model.backbone import BackboneSpec, create_backbone
from protocol.model.features import cache_path, extract_features, load_features
from tests.model.extraction_job import DATASET_FP, Job, drawn_png, image_files, path_dataset, png_dataset

# Ray is an optional extra; `make test` (so CI) installs it, and there a missing Ray is a failure.
ray = pytest.importorskip("ray", reason='pip install -e ".[ray]"') if not os.environ.get("CI") else __import__("ray")

RAY_CPUS = 2
CACHE_FILES = ["image.npy", "item_ids.json", "manifest.json", "text.npy"]
RUN_SPECIFIC = ("created", "completed", "last_run", "files")  # manifest keys that differ between two runs


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def tiny():
    return create_backbone(BackboneSpec("protocol-tiny", seed=0), device="cpu")


def test_ray_engine_writes_the_cache_the_local_engine_writes(local_ray, tiny, tmp_path):
    local = extract_features(png_dataset(40), DATASET_FP, tiny, tmp_path / "local", batch_size=8, num_workers=0,
                             shard_size=16)
    on_ray = extract_features(png_dataset(40), DATASET_FP, tiny, tmp_path / "ray", batch_size=8, shard_size=16,
                              engine="ray")
    assert on_ray.n_computed == 40 and on_ray.item_ids == local.item_ids
    np.testing.assert_allclose(on_ray.image, local.image, atol=1e-5)
    np.testing.assert_allclose(on_ray.text, local.text, atol=1e-5)
    roots = {name: cache_path(tmp_path / name, DATASET_FP, tiny.fingerprint) for name in ("local", "ray")}
    assert sorted(p.name for p in roots["ray"].iterdir()) == CACHE_FILES
    manifests = {name: json.loads((root / "manifest.json").read_text()) for name, root in roots.items()}
    same = {name: {k: v for k, v in m.items() if k not in RUN_SPECIFIC} for name, m in manifests.items()}
    assert same["ray"] == same["local"]
    assert manifests["ray"]["last_run"]["image"] | {"seconds": 0} == {"items": 40, "seconds": 0, "engine": "ray"}
    # either engine reuses the other's cache
    again = extract_features(png_dataset(40), DATASET_FP, tiny, tmp_path / "local", engine="ray")
    assert again.n_computed == 0


def test_ray_extraction_killed_midway_resumes_from_its_shards(local_ray, tiny, tmp_path):
    # Row 30's image is a named pipe: the actor that gets it blocks, while the other actor
    # finishes other shards; the job (its Ray instance too) is then killed with SIGKILL.
    paths = image_files(tmp_path / "images", 40, pipes=(30,))
    cache = tmp_path / "cache"
    root = cache_path(cache, DATASET_FP, tiny.fingerprint)
    job = Job(paths, cache, tmp_path / "job.log", engine="ray", ray_cpus=RAY_CPUS, shard_size=8)
    try:
        job.wait_until(lambda: (root / "image_00000.npy").exists(), "the first image shard", timeout=300)
    finally:
        job.kill()
    kept = {kind: {int(p.stem.split("_")[1]) for p in root.glob(f"{kind}_*.npy")} for kind in ("text", "image")}
    assert 0 in kept["image"] and 3 not in kept["image"]  # shard 3 (rows 24..31) holds the blocked row
    missing_rows = {row for kind in kept for shard in set(range(5)) - kept[kind] for row in range(8 * shard, 8 * shard + 8)}
    with pytest.raises(RuntimeError, match="incomplete"):
        load_features(cache, DATASET_FP, tiny.fingerprint)
    first_shard = np.load(root / "image_00000.npy")

    os.unlink(paths[30])
    open(paths[30], "wb").write(drawn_png(30))
    resumed = extract_features(path_dataset(paths), DATASET_FP, tiny, cache, batch_size=8, shard_size=8, engine="ray")
    assert resumed.n_computed == len(missing_rows) < 40  # only the shards the killed run had not written
    np.testing.assert_array_equal(resumed.image[:8], first_shard)
    reference = extract_features(png_dataset(40), DATASET_FP, tiny, tmp_path / "reference", batch_size=8,
                                 num_workers=0, shard_size=8)
    np.testing.assert_allclose(resumed.image, reference.image, atol=1e-5)
    np.testing.assert_allclose(resumed.text, reference.text, atol=1e-5)
    assert sorted(p.name for p in root.iterdir()) == CACHE_FILES
