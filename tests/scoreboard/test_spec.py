"""The scoreboard spec: the locked targets, the evidence rule, the lock itself, validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from protocol.scoreboard import (
    DEFAULT_SPEC_PATH,
    LOCKED_TARGETS_SHA256,
    ScoreboardSpecError,
    focus_classes,
    load_targets,
    targets_sha256,
)

NECK, CARD, SHORTS, DENIM, LEATHER = (
    "t2i.neckline.p10", "t2i.category.p10.cardigans", "t2i.category.p10.shorts",
    "t2i.material.p10.denim", "t2i.material.p10.leather",
)


def test_locked_spec_has_the_design_targets_and_evidence_rule():
    spec = load_targets()
    assert spec.version == 2 and spec.mode == "t2i" and spec.primary_metric == NECK
    by_metric = {t.metric: (t.min_delta_points, t.group) for t in spec.targets}
    assert by_metric == {
        NECK: (5.0, "headline"),
        CARD: (10.0, "weak_class"), SHORTS: (10.0, "weak_class"),
        DENIM: (10.0, "rare_material"), LEATHER: (10.0, "rare_material"),
    }
    assert spec.success_rule == {"headline": "meets_threshold", "weak_class": "improves", "rare_material": "improves"}
    assert spec.evidence.to_dict() == {"min_queries": 30, "confidence": 0.95, "resamples": 2000, "seed": 0}
    assert all(t.description for t in spec.targets)


def test_the_lock_constant_is_the_sha256_of_the_repository_file():
    # Editing scoreboard.yaml without changing LOCKED_TARGETS_SHA256 in code fails here (and unlocks verdicts).
    assert targets_sha256(DEFAULT_SPEC_PATH.read_bytes()) == LOCKED_TARGETS_SHA256
    spec = load_targets()
    assert spec.sha256 == LOCKED_TARGETS_SHA256 and spec.locked


def test_any_other_bytes_are_unlocked(tmp_path):
    same = tmp_path / "copy.yaml"
    same.write_bytes(DEFAULT_SPEC_PATH.read_bytes())
    assert load_targets(same).locked  # the same bytes are the same spec, wherever they live
    edited = tmp_path / "edited.yaml"
    edited.write_bytes(DEFAULT_SPEC_PATH.read_bytes() + b"\n# one more comment\n")
    spec = load_targets(edited)
    assert not spec.locked and spec.sha256 == targets_sha256(edited.read_bytes()) != LOCKED_TARGETS_SHA256
    assert spec.targets == load_targets().targets  # same targets, still unlocked: the bytes decide


GOOD_YAML = """
version: 1
mode: t2i
primary_metric: t2i.neckline.p10
success_rule: {headline: meets_threshold, weak_class: improves}
evidence: {min_queries: 30, confidence: 0.95, resamples: 2000, seed: 0}
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
    assert spec.evidence.min_queries == 30 and not spec.locked


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
    ("group: headline", "group: weak_class", r"`targets` must include a target of group headline"),
    ("resamples: 2000", "resamples: 200", r"`evidence\.resamples` must be an integer >= 1000, got 200"),
    ("min_queries: 30", "min_queries: 0", r"`evidence\.min_queries` must be an integer >= 1"),
    ("confidence: 0.95", "confidence: 95", r"`evidence\.confidence` must be a number in \(0, 1\)"),
    ("seed: 0}", "seed: 0, n: 3}", r"`evidence\.n` is not a known key"),
    ("evidence: {min_queries: 30, confidence: 0.95, resamples: 2000, seed: 0}\n", "", r"`evidence` is missing"),
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
    assert focus_classes() == {"category": ("cardigans", "shorts"), "material": ("denim", "leather")}
    spec = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())
    spec["targets"] = [t for t in spec["targets"] if t["name"] == "neckline"]
    spec["success_rule"] = {"headline": "meets_threshold"}
    path = tmp_path / "headline_only.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert focus_classes(path) == {}
