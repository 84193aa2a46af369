"""The ablation step of a real pipeline (`-P ablation=true`) on the session pipeline's tiny outputs.

The pipeline entry point runs in this process (run_in_process): the session's `mlflow run` has
proved the MLproject wiring, and `ablation=true` is a parameter like any other there.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from entrypoints.cli import parse_config
from protocol.scoreboard import load_targets
from protocol.tracking.runs import EXPERIMENT_NAME
from protocol.tracking.stages.ablation import AblationConfig
from protocol.tracking.stages.pipeline import PipelineConfig, run_pipeline
from protocol.training.ablation import SWITCHES, VARIANTS
from tests.e2e.conftest import TINY_PIPELINE_PARAMS, copy_store, pipeline_env, run_in_process

pytestmark = pytest.mark.e2e
VARIANTS_RUN = ("plain", "+hard_negatives", "full")  # a switched part, its absence, and everything: the suite's budget
SEEDS = ("0",)  # one seed keeps the step short (the default is 0,1,2; tests/training/test_ablation.py aggregates several)


def test_the_pipeline_ablation_step_trains_every_variant_and_seed_as_child_runs_and_writes_the_contract(
        pipeline_store, tmp_path, monkeypatch, capsys):
    # a private copy of the store: every step above is reused, only the ablation runs
    uri = copy_store(Path(pipeline_store.uri[len("sqlite:///"):]), tmp_path / "store")
    params = TINY_PIPELINE_PARAMS | {"work_dir": str(pipeline_store.work_dir), "ablation": "true",
                                     "ablation_seeds": ",".join(SEEDS), "ablation_variants": ",".join(VARIANTS_RUN)}
    capsys.readouterr()
    run_in_process(PipelineConfig, run_pipeline, params, pipeline_env(uri), monkeypatch)
    printed = capsys.readouterr().out
    assert "steps run: ['ablation']" in printed
    assert "| full − plain |" in printed  # the table, printed

    doc = json.loads((pipeline_store.work_dir / "ablation" / "ablation.json").read_text())
    metrics = [t.metric for t in load_targets().targets]
    assert set(doc["variants"]) == set(VARIANTS_RUN)
    for by_metric in doc["variants"].values():
        assert set(by_metric) == set(metrics)
        for summary in by_metric.values():
            assert {"mean", "std", "per_seed"} <= set(summary)
            assert len(summary["per_seed"]) in (0, len(SEEDS))
            assert all(0 <= v <= 100 for v in summary["per_seed"])  # points
    assert set(doc["full_minus_plain"]) == set(metrics)
    headline = doc["full_minus_plain"][metrics[0]]
    assert headline["n"] > 0 and headline["ci_low"] <= headline["mean"] <= headline["ci_high"]
    for diff in doc["full_minus_plain"].values():
        assert diff["n"] == 0 or diff["ci_low"] <= diff["mean"] <= diff["ci_high"]
    full, plain = doc["variants"]["full"][metrics[0]], doc["variants"]["plain"][metrics[0]]
    assert math.isclose(headline["mean"], full["mean"] - plain["mean"], abs_tol=1e-5)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # where stages find the store; restored after the test
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT_NAME)
    (parent,) = client.search_runs([exp.experiment_id], "tags.stage = 'ablation'")
    assert parent.info.status == "FINISHED"
    assert {"ablation.json", "ablation.md"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path="ablation.json", dst_path=str(tmp_path / "dl"))).read_text()) == doc
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted((c.data.tags["variant"], c.data.tags["seed"]) for c in children) == sorted(
        (v, s) for v in VARIANTS_RUN for s in SEEDS)
    for child in children:
        tags, params = child.data.tags, child.data.params
        assert child.info.run_name == f"ablation · {tags['variant']} · seed {tags['seed']}"
        assert params["seed"] == tags["seed"]
        assert [params[s] for s in SWITCHES] == [str(VARIANTS[tags["variant"]][s]) for s in SWITCHES]
        assert f"test.{metrics[0]}" in child.data.metrics
    per_seed = sorted(100 * c.data.metrics[f"test.{metrics[0]}"] for c in children if c.data.tags["variant"] == "full")
    assert sorted(full["per_seed"]) == pytest.approx(per_seed)


def test_a_bad_variant_or_a_per_variant_parameter_is_a_clear_error():
    with pytest.raises(SystemExit, match=r"parameter 'variants': unknown variant\(s\) \['half'\].*the variants are "
                                         r"plain, \+attribute_heads, \+attribute_scoring, \+balanced_sampling, "
                                         r"\+hard_negatives, \+graded_pairs, \+image_side_pairs, \+neutral_compatible, full"):
        parse_config(AblationConfig, ["--variants", "plain,half"])
    with pytest.raises(SystemExit, match=r"\['attribute_heads'\]: each ablation variant sets .*'variants'"):
        parse_config(AblationConfig, ["--attribute_heads", "false"])
    assert parse_config(AblationConfig, ["--variants", "plain,full", "--seeds", "3"]).train_config().seed == \
        AblationConfig.seed
