"""Stages run in-process against a real sqlite store: tags, artifacts, registry, feature-cache reuse."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from protocol.retrieval.eval_files import query_ids_sha256
from protocol.retrieval.metrics import METRIC_VERSION
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
    assert {run.data.tags[f"search.{mode}.backend"] for mode in ("t2i", "t2f", "i2i")} == {"exact"}
    (dataset_input,) = run.inputs.dataset_inputs
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "evaluation"

    # the per-query evidence and the manifest that makes evaluations comparable
    eval_files = {a.path for a in MlflowClient().list_artifacts(first["run_id"], "eval")}
    assert {"eval/queries_t2i.parquet", "eval/queries_t2f.parquet", "eval/queries_i2i.parquet",
            "eval/manifest.json", "eval/metrics.json"} <= eval_files
    eval_dir = tmp_path / "baseline" / first["run_id"] / "catalog" / "eval"
    manifest = json.loads((eval_dir / "manifest.json").read_text())
    queries = pd.read_parquet(eval_dir / "queries_t2i.parquet")
    assert manifest["provenance"] == {"dataset_fingerprint": run.data.tags["dataset.fingerprint"],
                                      "backbone_fingerprint": run.data.tags["backbone.fingerprint"]}
    assert manifest["query_ids_sha256"] == query_ids_sha256(queries["query_id"])
    assert manifest["n_queries"] == len(queries) == run.data.metrics["t2i.n_queries"]
    assert manifest["catalog_splits"] == ["train", "val"] and manifest["metric_version"] == METRIC_VERSION
    assert queries["neckline.p10"].mean() == pytest.approx(run.data.metrics["t2i.neckline.p10"])
    assert all(len(top) == 10 for top in queries["top10"])
    ui_table = {a.path for a in MlflowClient().list_artifacts(first["run_id"], "tables")}
    assert "tables/queries_t2i.json" in ui_table
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


@pytest.fixture
def prepared_without_test_leather(tiny_prepared, tmp_path):
    """The tiny dataset with every test product made of leather moved to train: a target class absent from the
    test split, however the split fell."""
    import datasets

    from protocol.data.prepare import save_processed
    from protocol.data.processed import load_processed

    processed = load_processed(tiny_prepared)
    df = processed.meta.copy()
    df["image_bytes"] = [cell["bytes"] for cell in
                         processed.dataset.cast_column("image", datasets.Image(decode=False))["image"]]
    leather = df["group_id"].isin(df.loc[(df["split"] == "test") & (df["material"] == "leather"), "group_id"])
    df.loc[leather, "split"] = "train"
    assert (df["material"] == "leather").any() and not ((df["split"] == "test") & (df["material"] == "leather")).any()
    save_processed(df, tmp_path / "prepared", source="tiny, no leather in test")
    return tmp_path / "prepared"


def test_a_class_absent_from_the_test_split_is_a_row_with_n_0_in_every_stage(tracking_uri, tmp_path,
                                                                             prepared_without_test_leather):
    """baseline -> evaluate (the zero-shot heads as the candidate) -> scoreboard: nothing crashes, leather has
    n = 0 and cannot be judged, and the candidate (no better than the baseline) fails and is not promoted."""
    from protocol.model.protocol_model import ProtocolHeads
    from protocol.retrieval.catalog import load_catalog
    from protocol.tracking.stages.evaluate import EvaluateConfig, run_evaluate
    from protocol.training.checkpoint import save_checkpoint

    base = tiny_baseline(prepared_without_test_leather, tmp_path)
    catalog = load_catalog(base["catalog_dir"])
    heads = tmp_path / "identity.pt"
    save_checkpoint(heads, {"heads": ProtocolHeads.identity(catalog.manifest["dim"]).state_for_checkpoint(),
                            "backbone_fingerprint": catalog.manifest["backbone_fingerprint"]})
    evaluated = run_evaluate(EvaluateConfig(
        prepared=str(prepared_without_test_leather), checkpoint=str(heads), baseline_catalog=base["catalog_dir"],
        cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "evaluate"), gallery_queries=2))
    assert "t2i.material.p10.leather" not in evaluated["metrics"] and "t2i.neckline.p10" in evaluated["metrics"]
    report = (tmp_path / "evaluate" / evaluated["run_id"] / "report" / "report.md").read_text()
    assert "| N/A | leather | t2i.material.p10.leather | - | - | - | - | >= +10 | 0 | not judged |" in report
    assert "VERDICT: FAILED (neckline +0.00 pts, needs >= +5" in report
    assert "| t2i | material | leather | - | 0 | (thin) |" in report  # the weak-class table names it too

    client = MlflowClient()
    candidate = client.create_model_version(REGISTERED_MODEL, f"runs:/{evaluated['run_id']}/eval",
                                            evaluated["run_id"],
                                            tags={registry.EVALUATION_RUN_TAG: evaluated["run_id"]})
    result = run_scoreboard(ScoreboardConfig(candidate=str(candidate.version), output_dir=str(tmp_path / "board")))
    board = json.loads((tmp_path / "board" / result["run_id"] / "scoreboard.json").read_text())
    leather = next(t for t in board["targets"] if t["name"] == "leather")
    assert leather["n"] == 0 and leather["judged"] is False and "leather" in board["not_judged"]
    assert board["passed"] is False and result["promoted"] is False and "champion" not in registry.aliases()
    assert board["comparable"]["baseline (version 1)"] == board["comparable"][f"candidate (version {candidate.version})"]
