"""c2i through the stages: baseline embeds the prompts into the feature cache, evaluate reads them (never the
backbone), both log c2i figures with n, and the scoreboard reports them beside the locked targets."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from protocol.model.prompt_features import PROMPT_FEATURES_FILE
from protocol.tracking import registry
from protocol.tracking.runs import REGISTERED_MODEL
from protocol.tracking.stages.scoreboard import ScoreboardConfig, run_scoreboard
from tests.tracking.test_stages import tiny_baseline


def test_class_name_queries_run_in_baseline_and_evaluate_and_are_reported_not_judged(tracking_uri, tiny_prepared,
                                                                                     tmp_path):
    from protocol.model.protocol_model import ProtocolHeads
    from protocol.retrieval.catalog import load_catalog
    from protocol.tracking.stages.evaluate import EvaluateConfig, run_evaluate
    from protocol.training.checkpoint import save_checkpoint

    base = tiny_baseline(tiny_prepared, tmp_path)
    metrics = base["metrics"]
    assert 0.0 <= metrics["c2i.category.avgp"] <= 1.0 and 0.0 <= metrics["c2i.material.mrr"] <= 1.0
    eval_dir = tmp_path / "baseline" / base["run_id"] / "catalog" / "eval"
    classes = pd.read_parquet(eval_dir / "queries_c2i.parquet")
    category = classes[(classes["attribute"] == "category") & (classes["n_relevant"] > 0)]
    assert metrics["c2i.category.p10"] == pytest.approx(category["P@10"].mean())
    overall = json.loads((eval_dir / "metrics.json").read_text())
    assert overall["c2i.category.avgp"]["n"] == len(category)  # n = the classes behind the figure
    ui_tables = {a.path for a in MlflowClient().list_artifacts(base["run_id"], "tables")}
    assert "tables/queries_c2i.json" in ui_tables

    catalog = load_catalog(base["catalog_dir"])
    heads = tmp_path / "identity.pt"
    save_checkpoint(heads, {"heads": ProtocolHeads.identity(catalog.manifest["dim"]).state_for_checkpoint(),
                            "backbone_fingerprint": catalog.manifest["backbone_fingerprint"]})
    config = dict(prepared=str(tiny_prepared), checkpoint=str(heads), baseline_catalog=base["catalog_dir"],
                  cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "evaluate"), gallery_queries=2)
    evaluated = run_evaluate(EvaluateConfig(**config))
    # the identity heads on the cached prompt features rank exactly as the zero-shot baseline did
    assert {k: v for k, v in evaluated["metrics"].items() if k.startswith("c2i.")} == \
        {k: v for k, v in metrics.items() if k.startswith("c2i.")}

    candidate = MlflowClient().create_model_version(REGISTERED_MODEL, f"runs:/{evaluated['run_id']}/eval",
                                                    evaluated["run_id"],
                                                    tags={registry.EVALUATION_RUN_TAG: evaluated["run_id"]})
    result = run_scoreboard(ScoreboardConfig(candidate=str(candidate.version), output_dir=str(tmp_path / "board")))
    board = json.loads((tmp_path / "board" / result["run_id"] / "scoreboard.json").read_text())
    reported = {row["name"]: row for row in board["reported"]}
    assert reported["c2i category"]["n"] == len(category) and reported["c2i category"]["delta_points"] == 0
    assert reported["c2i category"]["locked"] is False
    assert "reported, not locked" in result["table"]
    assert [t["name"] for t in board["targets"]] == ["neckline", "cardigans", "shorts", "denim", "leather"]

    # evaluate never calls the backbone: without the cached prompts it says which stage makes them
    (cached,) = (tmp_path / "cache").glob(f"*/{PROMPT_FEATURES_FILE}")
    cached.unlink()
    with pytest.raises(FileNotFoundError, match="run the baseline stage"):
        run_evaluate(EvaluateConfig(**config))
    assert run_evaluate(EvaluateConfig(**config, modes="t2i,t2f,i2i"))["metrics"].keys().isdisjoint(
        {"c2i.category.avgp"})
