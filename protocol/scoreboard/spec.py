"""The scoreboard spec: `protocol/configs/scoreboard.yaml`, parsed and validated.

The targets define what "better" means, so the file is locked: its sha256 must equal
`LOCKED_TARGETS_SHA256`, written here in code. A spec read from any other bytes (an
edited copy, `-P targets=<file>`) still judges, but its verdict is marked unlocked and
never moves `@champion`; changing the locked targets takes a change to both the file and
this constant, in one reviewed commit.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_SPEC_PATH = Path(__file__).resolve().parents[1] / "configs" / "scoreboard.yaml"

GROUPS = ("headline", "weak_class", "rare_material")
RULES = ("meets_threshold", "improves")

# sha256 of the bytes of protocol/configs/scoreboard.yaml: the only spec whose verdicts promote.
LOCKED_TARGETS_SHA256 = "a176a5cbe0093de219fdde43b018902ed7e2c8043a739aaf68151e675c4567ff"
MIN_RESAMPLES = 1000  # fewer bootstrap resamples give intervals too noisy to judge by

_SPEC_KEYS = {"version", "mode", "primary_metric", "success_rule", "evidence", "targets"}
_TARGET_KEYS = {"name", "metric", "min_delta_points", "group", "description"}
_EVIDENCE_KEYS = {"min_queries", "confidence", "resamples", "seed"}


class ScoreboardSpecError(ValueError):
    """scoreboard.yaml is missing, malformed, or has a bad key."""


@dataclass(frozen=True)
class Target:
    """One locked target: `metric` must improve by at least `min_delta_points`."""

    name: str
    metric: str
    min_delta_points: float
    group: str  # "headline" | "weak_class" | "rare_material"
    description: str


@dataclass(frozen=True)
class EvidenceRule:
    """How much evidence a target needs: paired queries, and the paired bootstrap that gives its interval."""

    min_queries: int  # fewer paired queries: the row is marked and never `confident`
    confidence: float  # of the interval, e.g. 0.95
    resamples: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {"min_queries": self.min_queries, "confidence": self.confidence, "resamples": self.resamples,
                "seed": self.seed}


@dataclass(frozen=True)
class ScoreboardSpec:
    """The parsed, validated scoreboard.yaml, with the sha256 of its bytes."""

    version: int
    mode: str
    primary_metric: str
    success_rule: dict[str, str]  # group -> "meets_threshold" | "improves"
    evidence: EvidenceRule
    targets: tuple[Target, ...]
    path: str
    sha256: str

    @property
    def locked(self) -> bool:
        """True only for the bytes of the repository's scoreboard.yaml (LOCKED_TARGETS_SHA256)."""
        return self.sha256 == LOCKED_TARGETS_SHA256

    def rule_for(self, target: Target) -> str:
        return self.success_rule[target.group]

    def focus_classes(self) -> dict[str, tuple[str, ...]]:
        """attribute -> the values its per-value targets name (weak classes, rare materials), in spec order.

        `t2i.category.p10.cardigans` names category `cardigans`: the sampler, the galleries and
        the evaluation read the weak classes and rare materials from here, and only here.
        """
        focus: dict[str, list[str]] = {}
        for t in self.targets:
            attribute, value = _metric_attribute_value(t.metric)
            if value is not None:
                focus.setdefault(attribute, []).append(value)
        return {a: tuple(v) for a, v in focus.items()}


def focus_classes(path: str | Path | None = None) -> dict[str, tuple[str, ...]]:
    """The weak classes and rare materials of the locked spec: {"category": ("cardigans", "shorts"), ...}."""
    return load_targets(path).focus_classes()


def _metric_attribute_value(metric: str) -> tuple[str | None, str | None]:
    """("category", "cardigans") for "t2i.category.p10.cardigans"; (attribute, None) for an overall metric."""
    parts = metric.split(".", 3)
    if len(parts) < 3:
        return None, None
    return parts[1], (parts[3] if len(parts) == 4 else None)


def load_targets(path: str | Path | None = None) -> ScoreboardSpec:
    """Read and validate scoreboard.yaml (the packaged, locked one by default)."""
    path = Path(path) if path is not None else DEFAULT_SPEC_PATH
    if not path.exists():
        raise ScoreboardSpecError(f"{path}: scoreboard spec not found; pass the path to scoreboard.yaml")
    data = path.read_bytes()
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ScoreboardSpecError(f"{path}: not valid YAML ({e})") from e
    return _parse_spec(raw, str(path), targets_sha256(data))


def targets_sha256(data: bytes) -> str:
    """sha256 of a targets file's bytes: what `locked` compares and what the verdict records."""
    return hashlib.sha256(data).hexdigest()


def _spec_error(path: str, key: str, problem: str) -> ScoreboardSpecError:
    return ScoreboardSpecError(f"{path}: `{key}` {problem}. Fix scoreboard.yaml (it is locked: see its header comment).")


def _parse_spec(raw: Any, path: str, sha256: str) -> ScoreboardSpec:
    if not isinstance(raw, dict):
        raise ScoreboardSpecError(f"{path}: expected a mapping with keys {sorted(_SPEC_KEYS)}, got {type(raw).__name__}")
    _check_keys(raw, _SPEC_KEYS, path, prefix="")
    if not isinstance(raw["version"], int) or isinstance(raw["version"], bool):
        raise _spec_error(path, "version", f"must be an integer, got {raw['version']!r}")
    mode = _nonempty_str(raw, "mode", path, "mode")
    primary = _nonempty_str(raw, "primary_metric", path, "primary_metric")
    if not primary.startswith(mode + "."):
        raise _spec_error(path, "primary_metric", f"= {primary!r} must be a metric of mode {mode!r} (start with '{mode}.')")
    targets = _parse_targets(raw["targets"], mode, path)
    if not any(t.group == "headline" for t in targets):
        raise _spec_error(path, "targets", "must include a target of group headline (the verdict rests on it)")
    success_rule = _parse_success_rule(raw["success_rule"], targets, path)
    return ScoreboardSpec(
        version=raw["version"], mode=mode, primary_metric=primary, success_rule=success_rule,
        evidence=_parse_evidence(raw["evidence"], path), targets=targets, path=path, sha256=sha256,
    )


def _parse_evidence(raw: Any, path: str) -> EvidenceRule:
    if not isinstance(raw, dict):
        raise _spec_error(path, "evidence", f"must be a mapping with keys {sorted(_EVIDENCE_KEYS)}")
    _check_keys(raw, _EVIDENCE_KEYS, path, prefix="evidence.")
    for key, low in (("min_queries", 1), ("resamples", MIN_RESAMPLES), ("seed", 0)):
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise _spec_error(path, f"evidence.{key}", f"must be an integer >= {low}, got {value!r}")
    confidence = raw["confidence"]
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise _spec_error(path, "evidence.confidence", f"must be a number in (0, 1), e.g. 0.95, got {confidence!r}")
    return EvidenceRule(min_queries=raw["min_queries"], confidence=float(confidence), resamples=raw["resamples"],
                        seed=raw["seed"])


def _check_keys(raw: dict, expected: set[str], path: str, prefix: str) -> None:
    missing = sorted(expected - set(raw))
    if missing:
        raise _spec_error(path, prefix + missing[0], "is missing")
    unknown = sorted(set(raw) - expected)
    if unknown:
        raise _spec_error(path, prefix + str(unknown[0]), f"is not a known key (expected {sorted(expected)})")


def _nonempty_str(raw: dict, key: str, path: str, where: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise _spec_error(path, where, f"must be a non-empty string, got {value!r}")
    return value.strip()


def _parse_targets(raw: Any, mode: str, path: str) -> tuple[Target, ...]:
    if not isinstance(raw, list) or not raw:
        raise _spec_error(path, "targets", "must be a non-empty list of targets")
    targets = tuple(_parse_target(item, i, mode, path) for i, item in enumerate(raw))
    for attr in ("name", "metric"):
        seen: set[str] = set()
        for i, t in enumerate(targets):
            value = getattr(t, attr)
            if value in seen:
                raise _spec_error(path, f"targets[{i}].{attr}", f"= {value!r} is a duplicate")
            seen.add(value)
    return targets


def _parse_target(item: Any, i: int, mode: str, path: str) -> Target:
    where = f"targets[{i}]"
    if not isinstance(item, dict):
        raise _spec_error(path, where, f"must be a mapping with keys {sorted(_TARGET_KEYS)}")
    _check_keys(item, _TARGET_KEYS, path, prefix=where + ".")
    name = _nonempty_str(item, "name", path, f"{where}.name")
    metric = _nonempty_str(item, "metric", path, f"{where}.metric")
    if not metric.startswith(mode + "."):
        raise _spec_error(path, f"{where}.metric", f"= {metric!r} must be a metric of mode {mode!r} (start with '{mode}.')")
    threshold = item["min_delta_points"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise _spec_error(path, f"{where}.min_delta_points", f"must be a number of points (e.g. 5 for +5), got {threshold!r}")
    group = item["group"]
    if group not in GROUPS:
        raise _spec_error(path, f"{where}.group", f"= {group!r} is not one of {', '.join(GROUPS)}")
    description = _nonempty_str(item, "description", path, f"{where}.description")
    return Target(name=name, metric=metric, min_delta_points=float(threshold), group=group, description=description)


def _parse_success_rule(raw: Any, targets: tuple[Target, ...], path: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise _spec_error(path, "success_rule", f"must map each group to one of {', '.join(RULES)}")
    for group, rule in raw.items():
        if group not in GROUPS:
            raise _spec_error(path, f"success_rule.{group}", f"is not a group (one of {', '.join(GROUPS)})")
        if rule not in RULES:
            raise _spec_error(path, f"success_rule.{group}", f"= {rule!r} is not one of {', '.join(RULES)}")
    for t in targets:
        if t.group not in raw:
            raise _spec_error(path, f"success_rule.{t.group}", f"is missing (target {t.name!r} is in that group)")
    return dict(raw)
