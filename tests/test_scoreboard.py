"""Scoreboard: deltas in points, per-target marks, the overall rule, files, spec validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from protocol.scoreboard import (
    DEFAULT_SPEC_PATH,
    MissingMetricError,
    ScoreboardSpecError,
    compute_scoreboard,
    compute_scoreboard_files,
    format_table,
    is_better,
    load_targets,
    read_metrics,
    write_scoreboard,
)

NECK, CARD, SHORTS, DENIM, LEATHER = (
    "t2i.neckline.p10", "t2i.category.p10.cardigans", "t2i.category.p10.shorts",
    "t2i.material.p10.denim", "t2i.material.p10.leather",
)
BASELINE = {NECK: 0.40, CARD: 0.20, SHORTS: 0.30, DENIM: 0.10, LEATHER: 0.05}


def candidate(**deltas_points: float) -> dict[str, float]:
    """BASELINE moved by the given deltas in points (keys: neck, card, shorts, denim, leather)."""
    keys = {"neck": NECK, "card": CARD, "shorts": SHORTS, "denim": DENIM, "leather": LEATHER}
    out = dict(BASELINE)
    for short, pts in deltas_points.items():
        out[keys[short]] = BASELINE[keys[short]] + pts / 100
    return out


# ---------------------------------------------------------------- the locked spec


def test_locked_spec_has_the_design_targets():
    spec = load_targets()
    assert spec.version == 1 and spec.mode == "t2i" and spec.primary_metric == NECK
    by_metric = {t.metric: (t.min_delta_points, t.group) for t in spec.targets}
    assert by_metric == {
        NECK: (5.0, "headline"),
        CARD: (10.0, "weak_class"), SHORTS: (10.0, "weak_class"),
        DENIM: (10.0, "rare_material"), LEATHER: (10.0, "rare_material"),
    }
    assert spec.success_rule == {"headline": "meets_threshold", "weak_class": "improves", "rare_material": "improves"}
    assert all(t.description for t in spec.targets)


# ---------------------------------------------------------------- deltas and marks


def test_deltas_in_points_and_per_target_marks():
    # neckline 0.40 -> 0.47 is +7 points; cardigans 0.20 -> 0.21 is +1 (below its +10)
    sb = compute_scoreboard(BASELINE, candidate(neck=7, card=1, shorts=12, denim=10, leather=3))
    deltas = {r.target.name: r.delta_points for r in sb.results}
    assert deltas == {"neckline": 7.0, "cardigans": 1.0, "shorts": 12.0, "denim": 10.0, "leather": 3.0}
    marks = {r.target.name: r.meets_threshold for r in sb.results}
    assert marks == {"neckline": True, "cardigans": False, "shorts": True, "denim": True, "leather": False}
    neck = sb.result("neckline")
    assert neck.baseline == 0.40 and neck.candidate == pytest.approx(0.47)


def test_overall_passes_with_neckline_plus5_and_every_other_just_above_zero():
    # 0.45 - 0.40 is 4.999999999999999 points in floats: still +5
    sb = compute_scoreboard(BASELINE, candidate(neck=5, card=1, shorts=1, denim=1, leather=1))
    assert sb.result("neckline").delta_points == 5.0
    assert sb.passed is True
    assert sb.reasons == ()
    assert not sb.result("cardigans").meets_threshold  # +1 misses its own +10, shown, yet overall passes


def test_overall_fails_with_neckline_plus_4_9():
    sb = compute_scoreboard(BASELINE, candidate(neck=4.9, card=20, shorts=20, denim=20, leather=20))
    assert sb.passed is False
    assert sb.reasons == ("neckline +4.90 pts, needs >= +5",)


def test_overall_fails_when_a_weak_class_does_not_move():
    sb = compute_scoreboard(BASELINE, candidate(neck=8, card=0, shorts=3, denim=3, leather=3))
    assert sb.result("cardigans").delta_points == 0.0
    assert sb.passed is False
    assert sb.reasons == ("cardigans +0.00 pts, needs > 0",)


def test_overall_fails_when_a_rare_material_gets_worse():
    sb = compute_scoreboard(BASELINE, candidate(neck=8, card=3, shorts=3, denim=3, leather=-2))
    assert sb.passed is False
    assert sb.result("leather").delta_points == -2.0
    assert "leather -2.00 pts" in sb.verdict


def test_counts_give_n_and_thin():
    counts = {NECK: 180, CARD: 9, SHORTS: 12, DENIM: 7, LEATHER: 3}
    sb = compute_scoreboard(BASELINE, candidate(neck=5), baseline_counts=counts, candidate_counts=counts)
    assert sb.result("neckline").n_candidate == 180
    assert sb.result("leather").thin and not sb.result("denim").thin
    row = sb.to_dict()["targets"][0]
    assert row["n_baseline"] == 180 and row["delta_points"] == 5.0 and row["meets_threshold"] is True


def test_missing_metric_names_metric_side_and_stage():
    cand = candidate(neck=5)
    del cand[DENIM]
    with pytest.raises(MissingMetricError) as err:
        compute_scoreboard(BASELINE, cand)
    text = str(err.value)
    assert "'t2i.material.p10.denim'" in text and "candidate side" in text and "evaluate stage" in text
    base = dict(BASELINE)
    del base[NECK]
    with pytest.raises(MissingMetricError, match=r"t2i\.neckline\.p10.*baseline side.*baseline stage"):
        compute_scoreboard(base, candidate(neck=5))


def test_metric_given_in_points_is_refused():
    with pytest.raises(ValueError, match=r"t2i\.neckline\.p10.*candidate side.*fractions in \[0, 1\]"):
        compute_scoreboard(BASELINE, {**BASELINE, NECK: 45.0})


# ---------------------------------------------------------------- is_better


def test_is_better_is_strict_on_the_primary_metric():
    assert is_better({NECK: 0.46}, {NECK: 0.45}, NECK) is True
    assert is_better({NECK: 0.45}, {NECK: 0.45}, NECK) is False
    assert is_better({NECK: 0.44}, {NECK: 0.45}, NECK) is False
    # other metrics do not matter
    assert is_better({NECK: 0.46, CARD: 0.0}, {NECK: 0.45, CARD: 0.9}, NECK) is True


def test_is_better_without_champion_and_default_primary():
    assert is_better({NECK: 0.1}, None, NECK) is True
    assert is_better({NECK: 0.5}, {NECK: 0.4}) is True  # primary metric from scoreboard.yaml
    with pytest.raises(MissingMetricError, match="champion side"):
        is_better({NECK: 0.5}, {CARD: 0.4}, NECK)


# ---------------------------------------------------------------- files


def write_step6_eval(eval_dir: Path, neck: float, card: float, shorts: float, denim: float, leather: float) -> None:
    """The Step-6 layout: metrics.json with {value, n, thin}, per-attribute breakdown files."""
    eval_dir.mkdir(parents=True)
    (eval_dir / "metrics.json").write_text(json.dumps({
        NECK: {"value": neck, "n": 180, "thin": False},
        "t2i.recall10": {"value": 0.3, "n": 200, "thin": False},
    }))

    def entry(p10: float, n: int) -> dict:
        return {"p1": p10, "p5": p10, "p10": p10, "map10": p10, "n": n, "thin": n < 5}

    (eval_dir / "metrics_by_category.json").write_text(json.dumps({
        "t2i": {"cardigans": entry(card, 9), "shorts": entry(shorts, 11)},
        "i2i": {"cardigans": entry(0.9, 9)},
    }))
    (eval_dir / "metrics_by_material.json").write_text(json.dumps({
        "t2i": {"denim": entry(denim, 7), "leather": entry(leather, 3)},
    }))


def test_read_metrics_step6_layout(tmp_path):
    write_step6_eval(tmp_path / "eval", 0.4, 0.2, 0.3, 0.1, 0.05)
    m = read_metrics(tmp_path / "eval")
    assert m.metrics[NECK] == 0.4 and m.counts[NECK] == 180
    assert m.metrics[CARD] == 0.2 and m.counts[CARD] == 9
    assert m.metrics["i2i.category.p10.cardigans"] == 0.9
    assert m.metrics["t2i.material.map10.leather"] == 0.05 and m.counts[LEATHER] == 3
    assert "t2i.category.n.cardigans" not in m.metrics
    # a catalog dir and the metrics.json file itself read the same
    assert read_metrics(tmp_path).metrics == m.metrics
    assert read_metrics(tmp_path / "eval" / "metrics.json").metrics == m.metrics


def test_compute_scoreboard_files_flat_vs_step6(tmp_path):
    flat = tmp_path / "baseline.json"
    flat.write_text(json.dumps(BASELINE))
    # candidate: +6, +2, +11, +10, +1 points
    write_step6_eval(tmp_path / "cand" / "eval", 0.46, 0.22, 0.41, 0.20, 0.06)
    sb = compute_scoreboard_files(flat, tmp_path / "cand" / "eval")
    assert {r.target.name: r.delta_points for r in sb.results} == {
        "neckline": 6.0, "cardigans": 2.0, "shorts": 11.0, "denim": 10.0, "leather": 1.0,
    }
    assert sb.passed is True
    assert sb.result("cardigans").n_baseline is None and sb.result("cardigans").n_candidate == 9


def test_compute_scoreboard_files_missing_metric_names_the_files(tmp_path):
    flat = tmp_path / "baseline.json"
    flat.write_text(json.dumps({k: v for k, v in BASELINE.items() if k != LEATHER}))
    other = tmp_path / "candidate.json"
    other.write_text(json.dumps(BASELINE))
    with pytest.raises(MissingMetricError) as err:
        compute_scoreboard_files(flat, other)
    assert "t2i.material.p10.leather" in str(err.value) and "baseline side" in str(err.value)
    assert str(flat) in str(err.value)


def test_bad_metrics_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        read_metrics(tmp_path)
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({NECK: "high"}))
    with pytest.raises(ValueError, match=r"m\.json.*t2i\.neckline\.p10.*must be a number"):
        read_metrics(bad)


def test_write_scoreboard_json_and_table(tmp_path):
    counts = {NECK: 180, LEATHER: 3}
    sb = compute_scoreboard(BASELINE, candidate(neck=5.5, card=1, shorts=12, denim=10, leather=0),
                            baseline_counts=counts, candidate_counts=counts)
    json_path, txt_path = write_scoreboard(sb, tmp_path / "out")
    data = json.loads(json_path.read_text())
    assert data["passed"] is False and data["primary_metric"] == NECK
    assert [t["name"] for t in data["targets"]] == ["neckline", "cardigans", "shorts", "denim", "leather"]
    table = txt_path.read_text()
    assert table == format_table(sb)
    lines = table.splitlines()
    neck_line = next(l for l in lines if " neckline " in l)
    assert neck_line.startswith("PASS") and "40.00" in neck_line and "45.50" in neck_line and "+5.50" in neck_line
    assert ">= +5" in neck_line and "180" in neck_line
    card_line = next(l for l in lines if " cardigans " in l)
    assert card_line.startswith("FAIL") and "+1.00" in card_line and ">= +10" in card_line and "> 0 ok" in card_line
    leather_line = next(l for l in lines if " leather " in l)
    assert leather_line.startswith("FAIL") and "3 thin" in leather_line and "MISSED" in leather_line
    assert lines[-1] == "VERDICT: FAILED (leather +0.00 pts, needs > 0)"
    # aligned: the delta column is right-aligned under its header in every row
    header = lines[1]
    delta_end = header.index("delta") + len("delta")
    rows = [l for l in lines if l.startswith(("PASS", "FAIL"))]
    for row, delta in zip(rows, ["+5.50", "+1.00", "+12.00", "+10.00", "+0.00"]):
        assert row.index(delta) + len(delta) == delta_end


def test_passing_verdict_line():
    sb = compute_scoreboard(BASELINE, candidate(neck=5, card=1, shorts=1, denim=1, leather=1))
    assert format_table(sb).splitlines()[-1] == (
        "VERDICT: PASSED (neckline >= +5 and every weak class > 0 and every rare material > 0)"
    )


# ---------------------------------------------------------------- spec validation


GOOD_YAML = """
version: 1
mode: t2i
primary_metric: t2i.neckline.p10
success_rule: {headline: meets_threshold, weak_class: improves}
targets:
  - {name: neckline, metric: t2i.neckline.p10, min_delta_points: 5, group: headline, description: neck}
  - {name: shorts, metric: t2i.category.p10.shorts, min_delta_points: 10, group: weak_class, description: s}
"""


def spec_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scoreboard.yaml"
    path.write_text(text)
    return path


def test_custom_spec_loads(tmp_path):
    spec = load_targets(spec_file(tmp_path, GOOD_YAML))
    assert [t.name for t in spec.targets] == ["neckline", "shorts"]
    sb = compute_scoreboard({NECK: 0.4, SHORTS: 0.3}, {NECK: 0.45, SHORTS: 0.31}, spec)
    assert sb.passed is True


@pytest.mark.parametrize("old, new, expected", [
    ("group: weak_class", "group: weak", r"`targets\[1\]\.group` = 'weak' is not one of headline, weak_class, rare_material"),
    ("min_delta_points: 5,", "min_delta_points: five,", r"`targets\[0\]\.min_delta_points` must be a number"),
    ("metric: t2i.category.p10.shorts", "metric: i2i.category.p10.shorts", r"`targets\[1\]\.metric` = 'i2i.category.p10.shorts' must be a metric of mode 't2i'"),
    (", description: s}", "}", r"`targets\[1\]\.description` is missing"),
    ("description: s}", "description: s, thresold: 3}", r"`targets\[1\]\.thresold` is not a known key"),
    ("weak_class: improves", "weak_class: maybe", r"`success_rule\.weak_class` = 'maybe' is not one of"),
    ("success_rule: {headline: meets_threshold, weak_class: improves}", "success_rule: {headline: meets_threshold}", r"`success_rule\.weak_class` is missing \(target 'shorts'"),
    ("version: 1", "version: one", r"`version` must be an integer"),
    ("name: shorts", "name: neckline", r"`targets\[1\]\.name` = 'neckline' is a duplicate"),
])
def test_spec_validation_errors_name_file_and_key(tmp_path, old, new, expected):
    assert old in GOOD_YAML
    path = spec_file(tmp_path, GOOD_YAML.replace(old, new))
    with pytest.raises(ScoreboardSpecError, match=expected) as err:
        load_targets(path)
    assert str(path) in str(err.value)


def test_spec_missing_or_not_yaml(tmp_path):
    with pytest.raises(ScoreboardSpecError, match="not found"):
        load_targets(tmp_path / "nope.yaml")
    with pytest.raises(ScoreboardSpecError, match="not valid YAML"):
        load_targets(spec_file(tmp_path, "targets: [unclosed"))
    with pytest.raises(ScoreboardSpecError, match="`primary_metric` is missing"):
        load_targets(spec_file(tmp_path, GOOD_YAML.replace("primary_metric: t2i.neckline.p10\n", "")))


def test_focus_classes_are_read_from_the_per_value_targets_of_the_spec(tmp_path):
    from protocol.scoreboard import focus_classes

    assert focus_classes() == {"category": ("cardigans", "shorts"), "material": ("denim", "leather")}
    spec = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())
    spec["targets"] = [t for t in spec["targets"] if t["name"] == "neckline"]
    spec["success_rule"] = {"headline": "meets_threshold"}
    path = tmp_path / "headline_only.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert focus_classes(path) == {}
