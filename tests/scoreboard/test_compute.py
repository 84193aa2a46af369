"""Scoreboard computation on per-query tables built by hand: paired deltas, n, intervals, verdict, promotion."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from protocol.provenance import FingerprintMismatchError, write_parquet
from protocol.retrieval.eval_files import query_table_file
from protocol.scoreboard import (
    DEFAULT_SPEC_PATH,
    ChampionStanding,
    NotComparableError,
    compare_with_champion,
    compute_scoreboard,
    decide_promotion,
    format_table,
    load_targets,
    read_evidence,
    write_scoreboard,
)
from tests.scoreboard.tables import evidence, per_query_table, write_eval

BASELINE = evidence(per_query_table(), "baseline")
PASSING = {"neckline": 7, "cardigans": 3, "shorts": 12, "denim": 10, "leather": 2}


def board(shift=None, spec=None, n_per_class=40, **noise):
    """The scoreboard of a candidate moved by `shift` (and noise) over a baseline on the same queries."""
    baseline = evidence(per_query_table(n_per_class=n_per_class), "baseline")
    candidate = evidence(per_query_table(shift, n_per_class=n_per_class, **noise), "candidate")
    return compute_scoreboard(baseline, candidate, spec)


# ---------------------------------------------------------------- deltas, marks, the rule


def test_paired_deltas_in_points_and_per_target_marks():
    sb = board({"neckline": 7, "cardigans": 1, "shorts": 12, "denim": 10, "leather": 3})
    assert {r.target.name: r.delta_points for r in sb.results} == {
        "neckline": 7.0, "cardigans": 1.0, "shorts": 12.0, "denim": 10.0, "leather": 3.0}
    assert {r.target.name: r.meets_threshold for r in sb.results} == {
        "neckline": True, "cardigans": False, "shorts": True, "denim": True, "leather": False}
    neck = sb.result("neckline")
    assert neck.baseline == pytest.approx(0.40) and neck.candidate == pytest.approx(0.47)
    # every query knows its neckline (4 classes x 40); each weak class and rare material has its 40
    assert {r.target.name: r.n for r in sb.results} == {
        "neckline": 160, "cardigans": 40, "shorts": 40, "denim": 40, "leather": 40}
    # the same gain on every query: the interval is the point, and it excludes 0
    assert (neck.ci_low_points, neck.ci_high_points) == pytest.approx((7.0, 7.0))
    assert all(r.confident and r.marks == () for r in sb.results)
    assert sb.passed and sb.judged and sb.not_judged == ()


def test_rule_passes_at_exactly_plus_5_and_fails_below():
    sb = board({"neckline": 5, "cardigans": 1, "shorts": 1, "denim": 1, "leather": 1})
    assert sb.result("neckline").delta_points == 5.0  # 0.45 - 0.40 in floats is 4.999999999999999
    assert sb.passed and not sb.result("cardigans").meets_threshold  # +1 misses its own +10, the rule only asks > 0
    assert sb.verdict == "VERDICT: PASSED (neckline >= +5 and every weak class > 0 and every rare material > 0)"
    sb = board({"neckline": 4.9, "cardigans": 20, "shorts": 20, "denim": 20, "leather": 20})
    assert not sb.passed and sb.reasons == ("neckline +4.90 pts, needs >= +5",)
    sb = board({"neckline": 8, "cardigans": 0, "shorts": 3, "denim": 3, "leather": -2})
    assert sb.reasons == ("cardigans +0.00 pts, needs > 0", "leather -2.00 pts, needs > 0")
    assert sb.verdict.startswith("VERDICT: FAILED (cardigans +0.00 pts")


def test_pairing_follows_query_ids_not_row_order():
    table = per_query_table({"neckline": 6, "cardigans": 2, "shorts": 2, "denim": 2, "leather": 2}, noise=0.05,
                            seed=1)
    shuffled = table.sample(frac=1.0, random_state=0).reset_index(drop=True)
    a = compute_scoreboard(BASELINE, evidence(table, "candidate"))
    b = compute_scoreboard(BASELINE, evidence(shuffled, "candidate"))
    assert [r.to_dict() for r in a.results] == [r.to_dict() for r in b.results]


def test_noisy_small_gains_are_marked_and_not_confident():
    sb = board({"neckline": 6, "cardigans": 1, "shorts": 12, "denim": 10, "leather": 1}, n_per_class=10,
               noise=0.15, seed=2)
    card = sb.result("cardigans")
    assert card.n == 10 and card.few_queries and "n < 30" in card.marks and not card.confident
    assert card.ci_low_points < card.delta_points < card.ci_high_points
    neck = sb.result("neckline")
    assert neck.n == 40 and not neck.few_queries
    rows = {r.target.name: r for r in sb.results}
    for r in rows.values():
        assert r.interval_includes_zero == (r.ci_low_points <= 0 <= r.ci_high_points)
        assert ("interval includes 0" in r.marks) == r.interval_includes_zero
    # "with confidence" is asked per part of the rule: every target of the part, over its whole interval
    parts = {p.text: p for p in sb.rule_parts}
    assert set(parts) == {"neckline >= +5", "every weak class > 0", "every rare material > 0"}
    assert parts["neckline >= +5"].holds_with_confidence == (neck.ci_low_points >= 5)
    assert not parts["every weak class > 0"].holds_with_confidence  # cardigans has 10 queries, fewer than 30
    assert sb.details[0].startswith("with 95% confidence: neckline >= +5: ")


def test_a_confident_part_of_the_rule():
    sb = board(PASSING, noise=0.01, seed=3)
    assert all(p.holds and p.holds_with_confidence for p in sb.rule_parts)
    assert sb.details[0] == ("with 95% confidence: neckline >= +5: yes; every weak class > 0: yes; "
                             "every rare material > 0: yes")


def test_a_target_without_queries_cannot_be_judged_and_is_left_out_of_the_rule():
    base = evidence(per_query_table(absent=("leather",)), "baseline")
    cand = evidence(per_query_table(PASSING | {"leather": -50}, absent=("leather",)), "candidate")
    sb = compute_scoreboard(base, cand)
    leather = sb.result("leather")
    assert leather.n == 0 and not leather.judged and leather.meets_rule is None and not leather.confident
    assert leather.marks == ("cannot be judged: no queries",)
    assert sb.passed and sb.not_judged == ("leather",)
    assert "not judged (no queries): leather" in sb.details
    row = sb.to_dict()["targets"][4]
    assert row["n"] == 0 and row["delta_points"] is None and row["ci_low_points"] is None and row["confident"] is False
    leather_line = next(line for line in format_table(sb).splitlines() if " leather " in line)
    assert leather_line.startswith("N/A") and "not judged" in leather_line and "cannot be judged" in leather_line


def test_a_headline_without_queries_makes_the_verdict_unjudgeable():
    def no_neckline(table: pd.DataFrame) -> pd.DataFrame:
        table = table.copy()
        table["neckline"] = "unknown"
        for k in ("p1", "p5", "p10", "map10"):
            table[f"neckline.{k}"] = np.nan
        return table

    sb = compute_scoreboard(evidence(no_neckline(per_query_table()), "baseline"),
                            evidence(no_neckline(per_query_table(PASSING)), "candidate"))
    assert not sb.judged and not sb.passed and sb.reasons == ()
    assert sb.verdict == "VERDICT: CANNOT BE JUDGED (no queries behind the headline neckline)"
    decision = decide_promotion(sb, ChampionStanding("none"))
    assert not decision.promote and "cannot be judged" in decision.reasons[0]


# ---------------------------------------------------------------- comparability


def test_evaluations_of_different_things_are_refused_naming_each_field_and_both_values():
    table = per_query_table(PASSING)
    with pytest.raises(NotComparableError) as err:
        compute_scoreboard(BASELINE, evidence(table, "candidate", dataset_fingerprint="e" * 64))
    text = str(err.value)
    assert f"dataset_fingerprint: baseline {'d' * 64}; candidate {'e' * 64}" in text
    assert "metric_version" not in text and "backbone_fingerprint" not in text
    with pytest.raises(NotComparableError) as err:
        compute_scoreboard(BASELINE, evidence(table.iloc[:-3], "candidate", metric_version=99,
                                              backbone_fingerprint="f" * 64, catalog_splits=("train",)))
    text = str(err.value)
    for line in ("query_ids: baseline {'sha256'", "'n': 160}; candidate {'sha256'", "'n': 157}",
                 "catalog_splits: baseline ['train', 'val']; candidate ['train']",
                 f"backbone_fingerprint: baseline {'b' * 64}; candidate {'f' * 64}",
                 "metric_version: baseline 1; candidate 99"):
        assert line in text
    comparable = board(PASSING).comparable
    assert comparable["checked"] == ["dataset_fingerprint", "query_ids", "catalog_splits", "backbone_fingerprint",
                                     "metric_version"]
    assert comparable["baseline"] == comparable["candidate"] and comparable["baseline"]["query_ids"]["n"] == 160


def test_evidence_read_from_an_eval_dir_round_trips_and_is_checked(tmp_path):
    table = per_query_table(PASSING, noise=0.02, seed=4)
    write_eval(table, tmp_path / "cand" / "eval")
    write_eval(per_query_table(), tmp_path / "base" / "eval")
    on_disk = compute_scoreboard(read_evidence(tmp_path / "base" / "eval", "baseline"),
                                 read_evidence(tmp_path / "cand" / "eval", "candidate"))
    in_memory = board(PASSING, noise=0.02, seed=4)
    assert [r.to_dict() for r in on_disk.results] == [r.to_dict() for r in in_memory.results]
    metrics = json.loads((tmp_path / "cand" / "eval" / "metrics.json").read_text())
    assert metrics["t2i.neckline.p10"]["n"] == 160  # the Step-6 files come from the same table
    # a per-query table made from another dataset than its manifest says is refused by name
    write_parquet(table, tmp_path / "cand" / "eval" / query_table_file("t2i"), {"dataset_fingerprint": "x" * 64})
    with pytest.raises(FingerprintMismatchError, match="x" * 64):
        read_evidence(tmp_path / "cand" / "eval", "candidate")
    with pytest.raises(FileNotFoundError, match=r"candidate: .*manifest.json does not exist.*re-run the baseline"):
        read_evidence(tmp_path, "candidate")


# ---------------------------------------------------------------- promotion


def test_promotion_needs_lock_rule_headline_interval_and_a_better_champion(tmp_path):
    passing = board(PASSING, noise=0.01, seed=5)
    assert decide_promotion(passing, ChampionStanding("none")).promote
    # failing the rule
    failing = board(PASSING | {"neckline": 2})
    assert decide_promotion(failing, ChampionStanding("none")).reasons == (
        "the candidate failed the targets (neckline +2.00 pts, needs >= +5)",)
    # the same numbers under a spec that is not the locked file
    unlocked_file = tmp_path / "copy.yaml"
    unlocked_file.write_bytes(DEFAULT_SPEC_PATH.read_bytes().replace(b"version: 2", b"version: 2 "))
    unlocked = board(PASSING, spec=load_targets(unlocked_file), noise=0.01, seed=5)
    assert unlocked.passed and not unlocked.spec.locked
    (reason,) = decide_promotion(unlocked, ChampionStanding("none")).reasons
    assert reason.startswith(f"the targets file {unlocked_file} is not the locked scoreboard.yaml")
    # a lucky headline: +5 on average over 40 queries, from 8 at +55 and 8 at -30 points: the interval reaches below 0
    table = per_query_table(PASSING, n_per_class=10)
    table["neckline.p10"] = 0.40 + np.repeat([0.55, -0.30, 0.0], [8, 8, 24])
    lucky = compute_scoreboard(evidence(per_query_table(n_per_class=10), "baseline"), evidence(table, "candidate"))
    neck = lucky.result("neckline")
    assert lucky.passed and neck.delta_points == 5.0 and neck.ci_low_points < 0 < neck.ci_high_points
    assert [r for r in decide_promotion(lucky, ChampionStanding("none")).reasons] == [
        f"the headline neckline is not shown better: its interval [{neck.ci_low_points:+.2f}, "
        f"{neck.ci_high_points:+.2f}] points does not lie above 0"]


def test_the_champion_must_be_beaten_on_the_same_queries():
    candidate = evidence(per_query_table(PASSING), "candidate")
    same = compare_with_champion(candidate, evidence(per_query_table(PASSING), "champion"), load_targets())
    assert same.status == "compared" and same.candidate_points == same.champion_points == pytest.approx(47.0)
    assert not same.candidate_is_better
    passing = compute_scoreboard(BASELINE, candidate)
    assert decide_promotion(passing, same).reasons == (
        "not better than the current champion on t2i.neckline.p10: candidate 47.00 vs champion 47.00 points",)
    weaker = compare_with_champion(candidate, evidence(per_query_table({"neckline": 6}), "champion"), load_targets())
    assert weaker.candidate_is_better and decide_promotion(passing, weaker).promote
    elsewhere = compare_with_champion(candidate, evidence(per_query_table(), "champion", metric_version=0),
                                      load_targets())
    assert elsewhere.status == "blocked" and "metric_version: candidate 1; champion 0" in elsewhere.message
    assert not decide_promotion(passing, elsewhere).promote


def test_a_judged_target_that_is_confidently_worse_blocks_promotion(tmp_path):
    lenient = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())
    lenient["success_rule"]["weak_class"] = "meets_threshold"
    for t in lenient["targets"]:
        if t["group"] == "weak_class":
            t["min_delta_points"] = -10
    path = tmp_path / "lenient.yaml"
    path.write_text(yaml.safe_dump(lenient))
    sb = board(PASSING | {"cardigans": -4}, spec=load_targets(path))
    assert sb.passed and sb.result("cardigans").confidently_worse
    reasons = decide_promotion(sb, ChampionStanding("none")).reasons
    assert "cardigans is confidently worse: interval [-4.00, -4.00] points" in reasons


# ---------------------------------------------------------------- output


def test_table_and_json_carry_n_intervals_and_the_lock(tmp_path):
    sb = board(PASSING | {"cardigans": 1}, n_per_class=20, noise=0.05, seed=7)
    json_path, txt_path = write_scoreboard(sb, tmp_path / "out", {"promotion": {"promoted": False}})
    data = json.loads(json_path.read_text())
    assert data["targets_sha256"] == load_targets().sha256 and data["locked"] is True
    assert data["comparable"]["checked"][0] == "dataset_fingerprint" and data["promotion"] == {"promoted": False}
    for row, result in zip(data["targets"], sb.results):
        assert isinstance(row["n"], int) and row["n"] == result.n
        assert isinstance(row["ci_low_points"], float) and isinstance(row["ci_high_points"], float)
        assert row["ci_low_points"] <= row["delta_points"] <= row["ci_high_points"]
        assert isinstance(row["confident"], bool)
        # the fields scoreboard.json always had are all still there
        assert {"name", "metric", "baseline", "candidate", "baseline_points", "candidate_points", "delta_points",
                "min_delta_points", "meets_threshold", "rule", "meets_rule", "n_baseline", "n_candidate",
                "thin"} <= set(row)
    table = txt_path.read_text()
    assert table == format_table(sb)
    lines = table.splitlines()
    card = sb.result("cardigans")
    card_line = next(line for line in lines if " cardigans " in line)
    assert card_line.startswith("FAIL") and f"[{card.ci_low_points:+.2f}, {card.ci_high_points:+.2f}]" in card_line
    assert " 20 " in card_line and "n < 30" in card_line
    # aligned: the delta column is right-aligned under its header in every row
    header = next(line for line in lines if line.startswith(" ") and "delta" in line)
    delta_end = header.index("delta") + len("delta")
    for line, r in zip((line for line in lines if line.startswith(("PASS", "FAIL"))), sb.results):
        assert line.index(f"{r.delta_points:+.2f}") + len(f"{r.delta_points:+.2f}") == delta_end
    assert lines[-3] == sb.verdict and lines[-1].endswith(", locked")
