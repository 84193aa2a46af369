"""The scoreboard spec: `protocol/configs/scoreboard.yaml`, parsed and validated.

The targets define what "better" means, so the file is locked (see its header comment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_SPEC_PATH = Path(__file__).resolve().parents[1] / "configs" / "scoreboard.yaml"

GROUPS = ("headline", "weak_class", "rare_material")
RULES = ("meets_threshold", "improves")

_SPEC_KEYS = {"version", "mode", "primary_metric", "success_rule", "targets"}
_TARGET_KEYS = {"name", "metric", "min_delta_points", "group", "description"}


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
class ScoreboardSpec:
    """The parsed, validated scoreboard.yaml."""

    version: int
    mode: str
    primary_metric: str
    success_rule: dict[str, str]  # group -> "meets_threshold" | "improves"
    targets: tuple[Target, ...]
    path: str

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
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ScoreboardSpecError(f"{path}: not valid YAML ({e})") from e
    return _parse_spec(raw, str(path))


def _spec_error(path: str, key: str, problem: str) -> ScoreboardSpecError:
    return ScoreboardSpecError(f"{path}: `{key}` {problem}. Fix scoreboard.yaml (it is locked: see its header comment).")


def _parse_spec(raw: Any, path: str) -> ScoreboardSpec:
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
    success_rule = _parse_success_rule(raw["success_rule"], targets, path)
    return ScoreboardSpec(
        version=raw["version"], mode=mode, primary_metric=primary,
        success_rule=success_rule, targets=targets, path=path,
    )


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
