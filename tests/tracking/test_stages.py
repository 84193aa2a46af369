"""Stages run in-process against a real sqlite store: tags, artifacts, registry, feature-cache reuse."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from protocol.tracking import registry
from protocol.tracking.runs import REGISTERED_MODEL
from protocol.tracking.stages.baseline import BaselineConfig, run_baseline
from protocol.tracking.stages.scoreboard import ScoreboardConfig, run_scoreboard
from tests.conftest import TINY_MODEL


def tiny_baseline(tiny_prepared, tmp_path, **overrides) -> dict:
    cfg = BaselineConfig(prepared=str(tiny_prepared), model=TINY_MODEL, num_workers=0,
                         cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "baseline"),
                         gallery_queries=2, **overrides)
    return run_baseline(cfg)


def test_baseline_logs_registers_and_reuses_the_feature_cache(tracking_uri, tiny_prepared, tmp_path):
    first = tiny_baseline(tiny_prepared, tmp_path)
    assert first["n_computed"] > 0
    run = MlflowClient().get_run(first["run_id"])
    assert run.data.tags["stage"] == "baseline"
    assert len(run.data.tags["dataset.fingerprint"]) == 64 and len(run.data.tags["backbone.fingerprint"]) == 64
    assert run.data.params["model"] == TINY_MODEL
    for name in ("t2i.neckline.p10", "t2i.category.p10", "t2i.recall10", "t2i.mrr10", "i2i.material.p5",
                 "t2f.neckline.map10"):
        assert 0.0 <= run.data.metrics[name] <= 1.0, name
    artifacts = {a.path for a in MlflowClient().list_artifacts(first["run_id"])}
    assert {"catalog", "eval", "galleries", "tables"} <= artifacts
    version = registry.version_by_alias("baseline")
    assert version.run_id == first["run_id"]
    assert version.tags[registry.EVALUATION_RUN_TAG] == first["run_id"]

    # a second baseline on the same dataset and backbone embeds nothing: the cache answers
    second = tiny_baseline(tiny_prepared, tmp_path, register=False)
    assert second["n_computed"] == 0
    assert MlflowClient().get_run(second["run_id"]).data.metrics["features.n_computed"] == 0
    assert second["metrics"] == first["metrics"]
    assert registry.version_by_alias("baseline").version == version.version

    # each run wrote its own directory; `latest` names the newest finished one, nothing was overwritten
    out = tmp_path / "baseline"
    assert (out / first["run_id"] / "catalog" / "manifest.json").is_file()
    assert (out / second["run_id"] / "catalog" / "manifest.json").is_file()
    assert (out / "latest").resolve() == (out / second["run_id"]).resolve()


def test_a_failed_stage_leaves_latest_where_it_was(tracking_uri, tiny_prepared, tmp_path):
    first = tiny_baseline(tiny_prepared, tmp_path, register=False)
    with pytest.raises(FileNotFoundError):
        tiny_baseline(tmp_path / "no-such-dataset", tmp_path, register=False)
    out = tmp_path / "baseline"
    assert (out / "latest").resolve() == (out / first["run_id"]).resolve()


def test_missing_alias_names_the_stage_that_creates_it(tracking_uri, tmp_path):
    with pytest.raises(LookupError, match=r"no alias @baseline: run the baseline stage first"):
        run_scoreboard(ScoreboardConfig(output_dir=str(tmp_path)))
    assert mlflow.active_run() is None


def test_scoreboard_rejects_a_malformed_version_reference():
    with pytest.raises(ValueError, match="parameter 'candidate' must be @alias or a version number"):
        ScoreboardConfig(candidate="latest")


def test_model_registry_name(tracking_uri, tiny_prepared, tmp_path):
    tiny_baseline(tiny_prepared, tmp_path)
    assert [m.name for m in MlflowClient().search_registered_models()] == [REGISTERED_MODEL]
