"""The benchmark stage in-process on a real sqlite store: parent and child runs, the registry route,
failed datasets; and one real `mlflow run . -e benchmark` on local data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from protocol.io import InputError
from protocol.tracking.stages.baseline import BaselineConfig, run_baseline
from protocol.tracking.stages.benchmark import BenchmarkConfig, run_benchmark
from protocol.tracking.store import prepare_store
from tests.benchmark import tiny_datasets as tiny
from tests.conftest import TINY_MODEL
from tests.e2e.conftest import mlflow_run, pipeline_env


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tiny.data_dir(tmp_path_factory.mktemp("benchmark-data"))


def config(data_dir, tmp_path, **overrides) -> BenchmarkConfig:
    values = dict(datasets="KAGL,iMaterialist", version="baseline", model=TINY_MODEL, data_dir=str(data_dir),
                  cache_dir=str(tmp_path / "cache"), num_workers=0, output_dir=str(tmp_path / "benchmark"))
    return BenchmarkConfig(**(values | overrides))


def children(client, parent_id):
    runs = client.search_runs([client.get_run(parent_id).info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.data.tags["benchmark.dataset"]: r for r in runs}


def test_parent_holds_the_comparison_and_each_dataset_is_a_child_run(tracking_uri, data_dir, tmp_path):
    result = run_benchmark(config(data_dir, tmp_path, datasets="KAGL,polyvore,iMaterialist"))
    client = MlflowClient()
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["stage"] == "benchmark"
    assert parent.info.run_name == f"benchmark · zero-shot {TINY_MODEL} (none)"
    assert parent.data.tags["benchmark.datasets_run"] == "KAGL,iMaterialist"
    assert parent.data.tags["benchmark.datasets_failed"] == "polyvore"
    assert {"benchmark.md", "benchmark.json", "tables"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}

    runs = children(client, parent.info.run_id)
    assert set(runs) == {"KAGL", "iMaterialist", "polyvore"}
    kagl = runs["KAGL"]
    assert kagl.info.status == "FINISHED" and kagl.data.tags["stage"] == "benchmark_dataset"
    assert kagl.data.tags["dataset.fingerprint"] == result["report"]["datasets"]["KAGL"]["fingerprint"]
    assert kagl.data.tags["backbone.fingerprint"] == parent.data.tags["backbone.fingerprint"]
    metrics = kagl.data.metrics
    assert metrics["text-to-image.recall10"] == 1.0 and metrics["text-to-image.n_queries"] == 9
    assert metrics["color-to-product.p10"] == 1.0 and metrics["color-to-product.avgp"] == 1.0
    assert metrics["sub-category-to-product.p10"] == pytest.approx(tiny.KAGL_P10["sub-category-to-product"])
    for key in ("p1", "p10", "mrr", "avgp"):
        assert f"season-to-product.{key}" in metrics
    assert not any(k.startswith("usage-to-product.") for k in metrics)
    assert "column(s) ['usage'] missing" in kagl.data.tags["usage-to-product.error"]
    assert metrics["features.n_computed"] == tiny.N_DOCS
    assert runs["iMaterialist"].data.metrics["neckline-to-image.p10"] == pytest.approx(
        tiny.IMATERIALIST_P10["neckline-to-image"])
    polyvore = runs["polyvore"]
    assert polyvore.info.status == "FAILED" and polyvore.data.tags["benchmark.status"] == "failed"
    assert "no folder" in polyvore.data.tags["benchmark.error"] and not polyvore.data.metrics

    out = tmp_path / "benchmark" / parent.info.run_id
    doc = json.loads((out / "benchmark.json").read_text())
    assert doc == json.loads(json.dumps(result["report"], default=str))
    neckline = doc["datasets"]["iMaterialist"]["tasks"]["neckline-to-image"]
    assert neckline["status"] == "ok" and neckline["n_queries"] == 2
    assert [p["model"] for p in neckline["published"]] == ["FashionCLIP2.0", "Marqo-FashionCLIP",
                                                           "ViT-B-16-laion2b_s34b_b88k"]
    assert neckline["published"][0]["metrics"]["P@10"] == 0.555
    assert neckline["published"][0]["source"]["commit"] == "60a875dfcec9538f745e31bc9eddcc1d2cae229f"
    assert doc["datasets"]["polyvore"]["status"] == "failed"
    assert doc["datasets"]["polyvore"]["tasks"]["text-to-image"]["status"] == "not run"
    assert doc["datasets"]["KAGL"]["tasks"]["usage-to-product"]["status"] == "failed"

    md = (out / "benchmark.md").read_text()
    assert "## Polyvore (local folder" in md and "**Not run**: no folder" in md
    assert "### neckline-to-image (query: neckline; documents: image)" in md
    assert ("| FashionCLIP 2.0 | 0.595 | 0.636 | 0.555 | 0.708 | | marqo-ai/marqo-FashionCLIP LEADERBOARD.md "
            "@ 60a875d (iMaterialist / Neckline-To-Image) |") in md
    assert "### category-to-product (query: category1; documents: 0.9 image + 0.1 text)" in md
    assert f"| **zero-shot {TINY_MODEL} (none)** | " in md
    assert "(published as FashionCLIP)" not in md  # deepfashion-multimodal was not asked for


def test_a_registered_version_resolves_through_the_registry_and_shares_the_cache(tracking_uri, tiny_prepared, data_dir,
                                                                                 tmp_path):
    run_baseline(BaselineConfig(prepared=str(tiny_prepared), model=TINY_MODEL, num_workers=0, gallery_queries=2,
                                cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "baseline")))
    zero_shot = run_benchmark(config(data_dir, tmp_path, datasets="iMaterialist"))
    registered = run_benchmark(config(data_dir, tmp_path, datasets="iMaterialist", version="@baseline"))
    client = MlflowClient()
    parent = client.get_run(registered["run_id"])
    assert parent.data.tags["benchmark.version"] == "1"
    assert parent.data.tags["benchmark.model"] == "@baseline (version 1)"
    assert parent.data.tags["backbone.fingerprint"] == client.get_run(zero_shot["run_id"]).data.tags[
        "backbone.fingerprint"]
    child = children(client, registered["run_id"])["iMaterialist"]
    assert child.data.metrics["features.n_computed"] == 0  # the same backbone: its features were cached
    same = {k: v for k, v in child.data.metrics.items() if "." in k and not k.startswith("features.")}
    before = children(client, zero_shot["run_id"])["iMaterialist"].data.metrics
    assert same and same == {k: before[k] for k in same}  # identity heads on the same backbone


def test_when_no_dataset_can_be_run_the_run_fails_with_its_report(tracking_uri, tmp_path):
    with pytest.raises(InputError, match=r"no benchmark dataset could be run: KAGL: no folder .*KAGL"):
        run_benchmark(config(tmp_path / "empty", tmp_path, datasets="KAGL"))
    client = MlflowClient()
    (parent,) = client.search_runs([client.get_experiment_by_name("fashion-retrieval").experiment_id],
                                   "tags.stage = 'benchmark'")
    assert parent.info.status == "FAILED"
    assert {"benchmark.md", "benchmark.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert mlflow.active_run() is None


@pytest.mark.e2e
def test_mlflow_run_benchmark_on_local_data(migrated_store, data_dir, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(migrated_store, store / "mlflow.db")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    prepare_store(uri)
    params = {"datasets": "iMaterialist,KAGL", "version": "baseline", "model": TINY_MODEL, "data_dir": str(data_dir),
              "cache_dir": str(tmp_path / "cache"), "num_workers": "0", "output_dir": str(tmp_path / "benchmark")}
    proc = mlflow_run("benchmark", params, pipeline_env(uri))
    assert "# Fashion leaderboard benchmark" in proc.stdout  # the table, printed

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("fashion-retrieval")
    (parent,) = client.search_runs([exp.experiment_id], "tags.stage = 'benchmark'")
    assert parent.info.status == "FINISHED"
    assert {"benchmark.md", "benchmark.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert parent.data.params["datasets"] == "iMaterialist,KAGL"
    runs = {r.data.tags["benchmark.dataset"]: r for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert set(runs) == {"iMaterialist", "KAGL"}
    assert runs["KAGL"].data.metrics["text-to-image.recall10"] == 1.0
    assert runs["KAGL"].data.metrics["category-to-product.p10"] == pytest.approx(tiny.KAGL_P10["category-to-product"])
    assert runs["iMaterialist"].data.metrics["style-to-image.avgp"] == pytest.approx(0.95)
    md = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="benchmark.md",
                                                  dst_path=str(tmp_path / "dl"), tracking_uri=uri)).read_text()
    assert "## KAGL (local folder" in md and "ViT-B-16 laion2b" in md
