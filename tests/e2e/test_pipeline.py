"""The real thing: `mlflow run . -e pipeline` on tiny data, then the step cache, the registry and promotion.

The session's pipeline is a real `mlflow run`; the runs these tests add to a copy of its store
are the entry points' main() in this process (tests/e2e/conftest.py, run_in_process).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from protocol.tracking import registry
from protocol.tracking.runs import EXPERIMENT_NAME
from protocol.tracking.stages.pipeline import PipelineConfig, run_pipeline
from protocol.tracking.stages.scoreboard import ScoreboardConfig, run_scoreboard
from tests.e2e.conftest import TINY_PIPELINE_PARAMS, copy_store, pipeline_env, run_in_process

pytestmark = pytest.mark.e2e
STAGES = ["prepare", "baseline", "audit", "groups", "mine", "pairs", "train", "evaluate", "scoreboard"]


@pytest.fixture(autouse=True)
def _restore_tracking_env():
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def use_store(uri: str) -> None:
    """Point this process at a store the way every stage finds it: MLFLOW_TRACKING_URI."""
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)


def runs_by_stage(uri: str) -> dict[str, list]:
    use_store(uri)
    exp = MlflowClient().get_experiment_by_name(EXPERIMENT_NAME)
    out: dict[str, list] = {}
    for run in MlflowClient().search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
        out.setdefault(run.data.tags.get("stage"), []).append(run)
    return out


def test_pipeline_runs_every_stage_as_child_runs(pipeline_store):
    runs = runs_by_stage(pipeline_store.uri)
    parent = runs["pipeline"][0]
    assert parent.info.status == "FINISHED"
    for stage in STAGES:
        (child,) = runs[stage]
        assert child.info.status == "FINISHED", stage
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id, stage
        assert parent.data.tags[f"step.{stage}.run_id"] == child.info.run_id
        if stage not in ("scoreboard",):
            assert len(child.data.tags["dataset.fingerprint"]) == 64, stage
    assert "VERDICT" in pipeline_store.stdout and "t2i.neckline.p10" in pipeline_store.stdout
    assert "#/experiments/" in pipeline_store.stdout  # the UI link a user needs


# the stages that read the processed dataset, and the context they record it under
DATASET_CONTEXT = {"prepare": "prepare", "baseline": "evaluation", "audit": "training", "groups": "training",
                   "pairs": "training", "train": "training", "evaluate": "evaluation"}


def test_every_run_is_named_and_tagged_and_records_its_dataset(pipeline_store):
    runs = runs_by_stage(pipeline_store.uri)
    version = {r: registry.version_for_run(runs[r][0].info.run_id).version for r in ("baseline", "train")}
    assert runs["pipeline"][0].info.run_name == "pipeline · full"
    assert runs["train"][0].info.run_name == "train · full · seed 42"
    assert runs["evaluate"][0].info.run_name == f"evaluate · v{version['train']}"
    assert runs["scoreboard"][0].info.run_name == f"scoreboard · v{version['baseline']} vs v{version['train']}"
    assert runs["baseline"][0].info.run_name == "baseline · protocol-tiny (none)"
    assert {k: runs["train"][0].data.tags[k] for k in ("stage", "variant", "seed")} == \
        {"stage": "train", "variant": "full", "seed": "42"}
    exp = runs["train"][0].info.experiment_id
    assert [r.info.run_id for r in MlflowClient().search_runs([exp], "tags.variant = 'full' and tags.seed = '42'")
            if r.data.tags["stage"] == "train"] == [runs["train"][0].info.run_id]
    fingerprint = runs["prepare"][0].data.tags["dataset.fingerprint"]
    for stage, context in DATASET_CONTEXT.items():
        (dataset_input,) = runs[stage][0].inputs.dataset_inputs
        assert dataset_input.dataset.digest == fingerprint[:36], stage
        assert {t.key: t.value for t in dataset_input.tags} == {"mlflow.data.context": context,
                                                                "fingerprint": fingerprint}, stage


def test_registry_holds_baseline_and_candidate_with_their_evaluations(pipeline_store):
    use_store(pipeline_store.uri)
    runs = runs_by_stage(pipeline_store.uri)
    baseline, candidate = registry.version_by_alias("baseline"), registry.version_by_alias("candidate")
    assert baseline.run_id == runs["baseline"][0].info.run_id
    assert candidate.run_id == runs["train"][0].info.run_id
    assert candidate.tags[registry.EVALUATION_RUN_TAG] == runs["evaluate"][0].info.run_id
    assert candidate.tags["scoreboard.verdict"] in ("pass", "fail", "not_judged")
    assert candidate.tags["scoreboard.locked"] == "true"  # the pipeline judges by the repository's scoreboard.yaml
    evaluate = runs["evaluate"][0]
    # the candidate is evaluated with the same metric code and names as the baseline
    assert set(evaluate.data.metrics) >= {k for k in runs["baseline"][0].data.metrics if k.startswith("t2i.")}
    board = registry.version_eval_dir(candidate)
    assert (board / "metrics.json").exists() and (board / "metrics_by_neckline.json").exists()
    client = MlflowClient()
    report = {a.path for a in client.list_artifacts(evaluate.info.run_id, "report")}
    assert {"report/report.md", "report/report.html"} <= report
    train_artifacts = {a.path for a in client.list_artifacts(candidate.run_id, "checkpoints")}
    assert "checkpoints/best.pt" in train_artifacts


def private_store(pipeline_store, tmp_path) -> str:
    """A private copy of the pipeline's store, so this test's runs don't disturb the others."""
    return copy_store(Path(pipeline_store.uri[len("sqlite:///"):]), tmp_path / "store")


def test_unchanged_pipeline_reuses_every_step_and_a_change_reruns_what_is_below(pipeline_store, tmp_path, capsys,
                                                                               monkeypatch):
    uri = private_store(pipeline_store, tmp_path)
    params = TINY_PIPELINE_PARAMS | {"work_dir": str(pipeline_store.work_dir)}
    capsys.readouterr()
    run_in_process(PipelineConfig, run_pipeline, params, pipeline_env(uri), monkeypatch)
    assert "reused: ['prepare', 'baseline', 'audit', 'groups', 'mine', 'pairs', 'train', 'evaluate', 'scoreboard']" \
        in capsys.readouterr().out
    runs = runs_by_stage(uri)
    assert len(runs["pipeline"]) == 2 and all(len(runs[s]) == 1 for s in STAGES)

    run_in_process(PipelineConfig, run_pipeline, params | {"epochs": "2"}, pipeline_env(uri), monkeypatch)
    assert "steps run: ['train', 'evaluate', 'scoreboard']" in capsys.readouterr().out
    runs = runs_by_stage(uri)
    assert [len(runs[s]) for s in STAGES] == [1, 1, 1, 1, 1, 1, 2, 2, 2]
    use_store(uri)
    assert registry.version_by_alias("candidate").run_id == runs["train"][1].info.run_id


def test_scoreboard_under_a_lenient_unlocked_targets_file_never_promotes(pipeline_store, tmp_path, capsys,
                                                                        monkeypatch):
    uri = private_store(pipeline_store, tmp_path)
    env = pipeline_env(uri)
    use_store(uri)
    candidate = registry.version_by_alias("candidate")
    # the pipeline's own scoreboard judged by the locked file: @champion moved exactly when it said so
    pipeline_tags = candidate.tags
    assert pipeline_tags["scoreboard.locked"] == "true"
    assert (registry.aliases().get("champion") == candidate.version) == (pipeline_tags["scoreboard.promoted"] == "true")
    before = registry.aliases().get("champion")

    # every target passes under a file that asks for nothing, but that file is not the locked one
    locked = yaml.safe_load((Path(__file__).resolve().parents[2] / "protocol/configs/scoreboard.yaml").read_text())
    lenient = dict(locked, targets=[dict(t, min_delta_points=-100.0) for t in locked["targets"]],
                   success_rule={g: "meets_threshold" for g in locked["success_rule"]})
    targets = tmp_path / "lenient.yaml"
    targets.write_text(yaml.safe_dump(lenient))
    out = tmp_path / "board"
    capsys.readouterr()
    run_in_process(ScoreboardConfig, run_scoreboard, {"targets": str(targets), "output_dir": str(out)}, env, monkeypatch)
    printed = capsys.readouterr().out
    assert "VERDICT: PASSED" in printed and "UNLOCKED" in printed
    assert f"champion unchanged (the targets file {targets} is not the locked scoreboard.yaml" in printed
    assert registry.aliases().get("champion") == before
    tags = MlflowClient().get_model_version(candidate.name, candidate.version).tags
    assert tags["scoreboard.locked"] == "false" and tags["scoreboard.promoted"] == "false"
    board = json.loads((out / "latest" / "scoreboard.json").read_text())  # latest: the run that just succeeded
    assert board["locked"] is False and board["passed"] is True and board["promotion"]["promoted"] is False
    assert len(board["targets_sha256"]) == 64 and board["comparable"]["checked"][0] == "dataset_fingerprint"
    for target in board["targets"]:
        assert isinstance(target["n"], int) and isinstance(target["confident"], bool)
        assert target["n"] == 0 or target["ci_low_points"] <= target["delta_points"] <= target["ci_high_points"]
