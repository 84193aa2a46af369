"""The scoreboard stage against a real sqlite store: verdict tags, the lock, comparability, promotion.

Evaluations are real eval/ directories (per-query tables built as test input, see
tests/scoreboard/tables.py) logged as artifacts of real runs, each behind a real
registered version; the stage reads them back through the registry like any other.
"""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from protocol.scoreboard import DEFAULT_SPEC_PATH, LOCKED_TARGETS_SHA256, NotComparableError, targets_sha256
from protocol.tracking import registry
from protocol.tracking.runs import REGISTERED_MODEL, ensure_experiment
from protocol.tracking.stages.scoreboard import ScoreboardConfig, run_scoreboard
from tests.scoreboard.tables import per_query_table, write_eval

PASSING = {"neckline": 7, "cardigans": 3, "shorts": 12, "denim": 10, "leather": 2}


def register(tmp_path, name: str, table, *, alias: str | None = None, evaluated: bool = True, **manifest_changes):
    """A run whose artifact eval/ holds `table`, and a registered version naming it as its evaluation."""
    client = MlflowClient()
    run = client.create_run(ensure_experiment(), run_name=name)
    write_eval(table, tmp_path / name / "eval", **manifest_changes)
    client.log_artifacts(run.info.run_id, str(tmp_path / name / "eval"), "eval")
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name='{REGISTERED_MODEL}'"):
        client.create_registered_model(REGISTERED_MODEL)
    tags = {registry.EVALUATION_RUN_TAG: run.info.run_id} if evaluated else {}
    version = client.create_model_version(REGISTERED_MODEL, f"runs:/{run.info.run_id}/eval", run.info.run_id,
                                          tags=tags)
    if alias:
        registry.set_alias(alias, version)
    return version


def score(tmp_path, candidate, **cfg) -> dict:
    return run_scoreboard(ScoreboardConfig(baseline="@baseline", candidate=str(candidate.version),
                                           output_dir=str(tmp_path / "board"), **cfg))


def tags_of(version) -> dict[str, str]:
    return MlflowClient().get_model_version(version.name, version.version).tags


def champion() -> str | None:
    return registry.aliases().get("champion")


def written_board(result: dict, tmp_path) -> dict:
    return json.loads((tmp_path / "board" / result["run_id"] / "scoreboard.json").read_text())


def test_a_failing_candidate_never_moves_the_champion(tracking_uri, tmp_path):
    register(tmp_path, "baseline", per_query_table(), alias="baseline")
    failing = register(tmp_path, "failing", per_query_table(PASSING | {"neckline": 3}))
    result = score(tmp_path, failing)
    assert result["passed"] is False and result["promoted"] is False and champion() is None
    assert result["reasons"] == ["the candidate failed the targets (neckline +3.00 pts, needs >= +5)"]
    tags = tags_of(failing)
    assert tags["scoreboard.verdict"] == "fail" and tags["scoreboard.promoted"] == "false"
    assert tags["scoreboard.targets_sha256"] == LOCKED_TARGETS_SHA256 and tags["scoreboard.locked"] == "true"
    run = MlflowClient().get_run(result["run_id"])
    assert run.data.tags["targets_sha256"] == LOCKED_TARGETS_SHA256 and run.data.tags["locked"] == "true"
    assert run.data.metrics["scoreboard.n.t2i.neckline.p10"] == 160
    assert run.data.metrics["scoreboard.ci_low.t2i.neckline.p10"] == pytest.approx(3.0)
    board = written_board(result, tmp_path)
    assert board["promotion"]["promoted"] is False and board["promotion"]["champion"]["status"] == "none"
    assert "champion unchanged (the candidate failed the targets" in result["verdict"]


def test_a_passing_candidate_is_promoted_only_when_it_beats_the_champion(tracking_uri, tmp_path):
    register(tmp_path, "baseline", per_query_table(), alias="baseline")
    first = register(tmp_path, "first", per_query_table(PASSING))
    assert score(tmp_path, first)["promoted"] is True  # no @champion yet: nothing to beat
    assert champion() == first.version and tags_of(first)["scoreboard.promoted"] == "true"

    # passes the targets as well, but is no better than the champion on the same queries
    equal = register(tmp_path, "equal", per_query_table(PASSING))
    result = score(tmp_path, equal)
    assert result["passed"] is True and result["promoted"] is False and champion() == first.version
    assert result["reasons"] == [
        "not better than the current champion on t2i.neckline.p10: candidate 47.00 vs champion 47.00 points"]
    assert written_board(result, tmp_path)["promotion"]["champion"]["version"] == first.version

    better = register(tmp_path, "better", per_query_table(PASSING | {"neckline": 9}))
    assert score(tmp_path, better)["promoted"] is True and champion() == better.version
    # promote=false keeps the alias where it is whatever the verdict
    best = register(tmp_path, "best", per_query_table(PASSING | {"neckline": 12}))
    result = score(tmp_path, best, promote=False)
    assert result["reasons"] == ["promotion disabled (promote=false)"] and champion() == better.version


def test_an_unlocked_verdict_never_moves_the_champion(tracking_uri, tmp_path):
    register(tmp_path, "baseline", per_query_table(), alias="baseline")
    candidate = register(tmp_path, "candidate", per_query_table(PASSING))
    edited = tmp_path / "scoreboard.yaml"
    edited.write_bytes(DEFAULT_SPEC_PATH.read_bytes() + b"# same targets, other bytes\n")
    result = score(tmp_path, candidate, targets=str(edited))
    assert result["passed"] is True and result["promoted"] is False and champion() is None
    assert result["reasons"][0].startswith(f"the targets file {edited} is not the locked scoreboard.yaml")
    sha = targets_sha256(edited.read_bytes())
    assert tags_of(candidate)["scoreboard.locked"] == "false" and tags_of(candidate)["scoreboard.targets_sha256"] == sha
    assert MlflowClient().get_run(result["run_id"]).data.tags["locked"] == "false"
    board = written_board(result, tmp_path)
    assert board["locked"] is False and board["targets_sha256"] == sha
    assert "UNLOCKED" in result["table"]


def test_a_candidate_evaluated_on_another_dataset_is_refused_by_name(tracking_uri, tmp_path):
    register(tmp_path, "baseline", per_query_table(), alias="baseline")
    first = register(tmp_path, "first", per_query_table(PASSING), alias="champion")
    other = register(tmp_path, "other", per_query_table(PASSING | {"neckline": 20}), dataset_fingerprint="e" * 64)
    with pytest.raises(NotComparableError) as err:
        score(tmp_path, other)
    text = str(err.value)
    assert f"baseline (version 1) and candidate (version {other.version}) were not evaluated" in text
    assert f"dataset_fingerprint: baseline (version 1) {'d' * 64}; candidate (version {other.version}) {'e' * 64}" \
        in text
    assert champion() == first.version
    assert tags_of(other)["scoreboard.verdict"] == "not_comparable" and tags_of(other)["scoreboard.promoted"] == "false"
    failed = MlflowClient().search_runs([ensure_experiment()], "tags.stage = 'scoreboard'")
    assert [r.info.status for r in failed] == ["FAILED"]
    assert mlflow.active_run() is None


def test_a_champion_whose_evaluation_cannot_be_read_blocks_promotion(tracking_uri, tmp_path):
    register(tmp_path, "baseline", per_query_table(), alias="baseline")
    unreadable = register(tmp_path, "unreadable", per_query_table(PASSING), alias="champion", evaluated=False)
    candidate = register(tmp_path, "candidate", per_query_table(PASSING | {"neckline": 9}))
    result = score(tmp_path, candidate)
    assert result["passed"] is True and result["promoted"] is False and champion() == unreadable.version
    (reason,) = result["reasons"]
    assert reason.startswith(f"the evaluation of the champion (version {unreadable.version}) cannot be read")
    assert "tag evaluation.run_id is missing" in reason and f"-P version={unreadable.version}" in reason
    # a champion evaluated under other metric definitions cannot be compared: blocked too, naming the field
    stale = register(tmp_path, "stale", per_query_table(PASSING), alias="champion", metric_version=0)
    result = score(tmp_path, candidate)
    assert result["promoted"] is False and champion() == stale.version
    assert "the champion cannot be compared with the candidate" in result["reasons"][0]
    assert f"metric_version: candidate (version {candidate.version}) 1; champion (version {stale.version}) 0" \
        in result["reasons"][0]
