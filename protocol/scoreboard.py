"""The scoreboard: locked targets, deltas in points, per-target and overall pass/fail.

The targets live in `protocol/configs/scoreboard.yaml` (locked: they define what
"better" means). This module only compares two dicts of metrics (fractions in
[0, 1], DESIGN.md metric names); where the dicts come from (registry versions,
files) is the caller's business. `compute_scoreboard_files` reads them from two
metrics JSON files, so the scoreboard is usable alone.

No MLflow here: the tracking side reads metrics from runs, tags the verdict and
moves aliases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from protocol.io import atomic_path, read_json, write_json

DEFAULT_SPEC_PATH = Path(__file__).parent / "configs" / "scoreboard.yaml"

GROUPS = ("headline", "weak_class", "rare_material")
RULES = ("meets_threshold", "improves")
THIN_BELOW = 5  # DESIGN.md: a figure with fewer than 5 queries behind it is thin
# Deltas are rounded to this many decimals of a point before any comparison, so
# float noise (0.45 - 0.40 = 4.999999999999999 points) does not flip a verdict.
DELTA_DECIMALS = 6

_SPEC_KEYS = {"version", "mode", "primary_metric", "success_rule", "targets"}
_TARGET_KEYS = {"name", "metric", "min_delta_points", "group", "description"}
_EVAL_BREAKDOWN_KEYS = ("n", "thin")  # keys of a metrics_by_*.json entry that are not metrics


class ScoreboardSpecError(ValueError):
    """scoreboard.yaml is missing, malformed, or has a bad key."""


class MissingMetricError(KeyError):
    """A target metric is absent on the baseline or candidate side."""

    def __str__(self) -> str:  # KeyError would repr() the message with quotes
        return str(self.args[0])


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


@dataclass(frozen=True)
class TargetResult:
    """One scoreboard row."""

    target: Target
    baseline: float  # fraction in [0, 1]
    candidate: float
    delta_points: float  # (candidate - baseline) x 100, rounded to DELTA_DECIMALS
    meets_threshold: bool  # the target's own PASS/FAIL
    rule: str  # what the overall verdict asks of this target
    meets_rule: bool
    n_baseline: int | None = None
    n_candidate: int | None = None

    @property
    def thin(self) -> bool:
        """True when either side has fewer than THIN_BELOW queries behind the figure."""
        return any(n is not None and n < THIN_BELOW for n in (self.n_baseline, self.n_candidate))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.target.name,
            "metric": self.target.metric,
            "group": self.target.group,
            "description": self.target.description,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "baseline_points": _points(self.baseline),
            "candidate_points": _points(self.candidate),
            "delta_points": self.delta_points,
            "min_delta_points": self.target.min_delta_points,
            "meets_threshold": self.meets_threshold,
            "rule": self.rule,
            "meets_rule": self.meets_rule,
            "n_baseline": self.n_baseline,
            "n_candidate": self.n_candidate,
            "thin": self.thin,
        }


@dataclass(frozen=True)
class Scoreboard:
    """All rows plus the overall verdict (`passed` = the success rule of the spec)."""

    spec: ScoreboardSpec
    results: tuple[TargetResult, ...]
    passed: bool
    reasons: tuple[str, ...] = field(default=())  # why it failed; empty when passed

    @property
    def verdict(self) -> str:
        """One line: PASSED/FAILED and why."""
        if self.passed:
            return "VERDICT: PASSED (" + _rule_summary(self.spec) + ")"
        return "VERDICT: FAILED (" + "; ".join(self.reasons) + ")"

    def result(self, name: str) -> TargetResult:
        for r in self.results:
            if r.target.name == name:
                return r
        raise KeyError(f"no scoreboard target named {name!r}; targets: {[r.target.name for r in self.results]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what scoreboard.json holds."""
        return {
            "passed": self.passed,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "version": self.spec.version,
            "mode": self.spec.mode,
            "primary_metric": self.spec.primary_metric,
            "success_rule": dict(self.spec.success_rule),
            "spec_path": self.spec.path,
            "targets": [r.to_dict() for r in self.results],
        }


# ---------------------------------------------------------------- spec loading


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


# ---------------------------------------------------------------- computing


def _points(fraction: float) -> float:
    return round(fraction * 100.0, DELTA_DECIMALS)


def delta_points(baseline: float, candidate: float) -> float:
    """(candidate - baseline) in points (x100), rounded so float noise cannot flip a comparison."""
    return round((candidate - baseline) * 100.0, DELTA_DECIMALS)


def _metric_value(metrics: dict[str, float], metric: str, side: str) -> float:
    if metric not in metrics:
        raise MissingMetricError(
            f"metric {metric!r} is missing on the {side} side; it is produced by the "
            f"{'baseline' if side == 'baseline' else 'evaluate'} stage (Step-6 eval/metrics*.json). "
            f"Re-run that stage, or check the metric name against scoreboard.yaml. "
            f"The {side} has {len(metrics)} metrics"
            + (f", e.g. {sorted(metrics)[:5]}" if metrics else "")
        )
    value = metrics[metric]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"metric {metric!r} on the {side} side must be a finite number, got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"metric {metric!r} on the {side} side is {value!r}; metrics are fractions in [0, 1] "
            "(the scoreboard converts to points itself)"
        )
    return float(value)


def _meets(rule: str, delta: float, threshold: float) -> bool:
    return delta >= threshold if rule == "meets_threshold" else delta > 0


def _rule_summary(spec: ScoreboardSpec) -> str:
    parts = []
    for group in GROUPS:
        members = [t for t in spec.targets if t.group == group]
        if not members:
            continue
        rule = spec.success_rule[group]
        if rule == "meets_threshold":
            parts += [f"{t.name} >= {t.min_delta_points:+g}" for t in members]
        else:
            parts.append(f"every {group.replace('_', ' ')} > 0")
    return " and ".join(parts)


def _reason(r: TargetResult) -> str:
    need = f">= {r.target.min_delta_points:+g}" if r.rule == "meets_threshold" else "> 0"
    return f"{r.target.name} {r.delta_points:+.2f} pts, needs {need}"


def compute_scoreboard(
    baseline_metrics: dict[str, float],
    candidate_metrics: dict[str, float],
    spec: ScoreboardSpec | None = None,
    baseline_counts: dict[str, int] | None = None,
    candidate_counts: dict[str, int] | None = None,
) -> Scoreboard:
    """Compare candidate with baseline on every locked target; `passed` follows spec.success_rule."""
    spec = spec or load_targets()
    results = []
    for t in spec.targets:
        base = _metric_value(baseline_metrics, t.metric, "baseline")
        cand = _metric_value(candidate_metrics, t.metric, "candidate")
        delta = delta_points(base, cand)
        rule = spec.rule_for(t)
        results.append(TargetResult(
            target=t, baseline=base, candidate=cand, delta_points=delta,
            meets_threshold=delta >= t.min_delta_points,
            rule=rule, meets_rule=_meets(rule, delta, t.min_delta_points),
            n_baseline=(baseline_counts or {}).get(t.metric),
            n_candidate=(candidate_counts or {}).get(t.metric),
        ))
    reasons = tuple(_reason(r) for r in results if not r.meets_rule)
    return Scoreboard(spec=spec, results=tuple(results), passed=not reasons, reasons=reasons)


def is_better(
    candidate_metrics: dict[str, float],
    champion_metrics: dict[str, float] | None,
    primary_metric: str | None = None,
) -> bool:
    """True when the candidate beats the champion strictly on the primary metric.

    No champion yet (None) -> True. Compared in points rounded like deltas, so
    two runs that differ by float noise only are equal, hence not better.
    """
    if champion_metrics is None:
        return True
    primary_metric = primary_metric or load_targets().primary_metric
    cand = _metric_value(candidate_metrics, primary_metric, "candidate")
    champ = _metric_value(champion_metrics, primary_metric, "champion")
    return delta_points(champ, cand) > 0


# ---------------------------------------------------------------- metrics files


@dataclass(frozen=True)
class MetricsFile:
    """Metrics read from a file: flat DESIGN names -> fraction, and -> query count where known."""

    metrics: dict[str, float]
    counts: dict[str, int]
    path: str


def read_metrics(path: str | Path) -> MetricsFile:
    """Read metrics from a flat JSON file, a Step-6 metrics.json, or an eval/ (or catalog) directory.

    Layouts accepted:
    - flat: {"t2i.neckline.p10": 0.41, ...}
    - Step-6 metrics.json: {"t2i.neckline.p10": {"value": 0.41, "n": 180, "thin": false}, ...},
      plus, beside it, metrics_by_<attribute>.json: {mode: {value: {"p10": 0.3, "n": 9, ...}}}
      which give "{mode}.{attribute}.{key}.{value}" (e.g. "t2i.category.p10.cardigans").
    Names in metrics.json win over the same name derived from a breakdown file.
    """
    metrics_json = _locate_metrics_json(Path(path))
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    for by_file in sorted(metrics_json.parent.glob("metrics_by_*.json")):
        _read_breakdown(by_file, metrics, counts)
    _read_flat(metrics_json, metrics, counts)
    return MetricsFile(metrics=metrics, counts=counts, path=str(metrics_json))


def _locate_metrics_json(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / "metrics.json", path / "eval" / "metrics.json"):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"{path}: no metrics.json here nor in {path / 'eval'}; pass a metrics JSON file or the "
            "eval/ directory the baseline/evaluate stage wrote"
        )
    raise FileNotFoundError(f"{path} does not exist; pass a metrics JSON file or an eval/ directory")


def _read_flat(path: Path, metrics: dict[str, float], counts: dict[str, int]) -> None:
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of metric name -> value, got {type(data).__name__}")
    for name, entry in data.items():
        if isinstance(entry, dict):
            if "value" not in entry:
                raise ValueError(f"{path}: metric {name!r} is an object without a 'value' key: {entry!r}")
            metrics[name] = _number(entry["value"], path, name)
            if entry.get("n") is not None:
                counts[name] = int(entry["n"])
        else:
            metrics[name] = _number(entry, path, name)


def _read_breakdown(path: Path, metrics: dict[str, float], counts: dict[str, int]) -> None:
    attribute = path.stem[len("metrics_by_"):]
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected {{mode: {{value: {{p10: ..., n: ...}}}}}}, got {type(data).__name__}")
    for mode, by_value in data.items():
        if not isinstance(by_value, dict):
            raise ValueError(f"{path}: [{mode!r}] must be an object of value -> metrics")
        for value, entry in by_value.items():
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: [{mode!r}][{value!r}] must be an object like {{'p10': 0.3, 'n': 9}}")
            for key, number in entry.items():
                if key in _EVAL_BREAKDOWN_KEYS:
                    continue
                name = f"{mode}.{attribute}.{key}.{value}"
                metrics[name] = _number(number, path, name)
                if entry.get("n") is not None:
                    counts[name] = int(entry["n"])


def _number(value: Any, path: Path, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: metric {name!r} must be a number, got {value!r}")
    return float(value)


def compute_scoreboard_files(
    baseline_json: str | Path,
    candidate_json: str | Path,
    spec: ScoreboardSpec | None = None,
) -> Scoreboard:
    """The scoreboard from two metrics files/eval directories (see `read_metrics` for layouts)."""
    base = read_metrics(baseline_json)
    cand = read_metrics(candidate_json)
    try:
        return compute_scoreboard(base.metrics, cand.metrics, spec, base.counts, cand.counts)
    except MissingMetricError as e:
        raise MissingMetricError(f"{e} (baseline file: {base.path}; candidate file: {cand.path})") from e


# ---------------------------------------------------------------- output


TABLE_HEADER = ("", "target", "metric", "baseline", "candidate", "delta", "threshold", "n", "overall rule")


def _n_cell(r: TargetResult) -> str:
    ns = [n for n in (r.n_baseline, r.n_candidate) if n is not None]
    if not ns:
        return "-"
    text = str(ns[0]) if len(set(ns)) == 1 else f"{r.n_baseline if r.n_baseline is not None else '-'}/{r.n_candidate if r.n_candidate is not None else '-'}"
    return text + (" thin" if r.thin else "")


def _rule_cell(r: TargetResult) -> str:
    need = f">= {r.target.min_delta_points:+g}" if r.rule == "meets_threshold" else "> 0"
    return f"{need} {'ok' if r.meets_rule else 'MISSED'}"


def scoreboard_rows(scoreboard: Scoreboard) -> list[tuple[str, ...]]:
    """One tuple of display cells per target (columns: TABLE_HEADER); values in points."""
    return [
        (
            "PASS" if r.meets_threshold else "FAIL",
            r.target.name,
            r.target.metric,
            f"{_points(r.baseline):.2f}",
            f"{_points(r.candidate):.2f}",
            f"{r.delta_points:+.2f}",
            f">= {r.target.min_delta_points:+g}",
            _n_cell(r),
            _rule_cell(r),
        )
        for r in scoreboard.results
    ]


def format_table(scoreboard: Scoreboard) -> str:
    """An aligned text table (PASS/FAIL = each target against its own threshold) and the verdict line."""
    rows = [TABLE_HEADER, *scoreboard_rows(scoreboard)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]
    right = {3, 4, 5, 6, 7}  # numbers read best right-aligned

    def line(row: tuple[str, ...]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(rows[0]))
    spec = scoreboard.spec
    head = (
        f"Scoreboard v{spec.version}, mode {spec.mode}; values in points (x100), "
        "delta = candidate - baseline; PASS/FAIL = target's own threshold"
    )
    body = [line(rows[0]), rule, *(line(r) for r in rows[1:]), rule]
    return "\n".join([head, *body, scoreboard.verdict]) + "\n"


def write_scoreboard(scoreboard: Scoreboard, out_dir: str | Path) -> tuple[Path, Path]:
    """Write scoreboard.json and scoreboard.txt (atomic) into out_dir."""
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / "scoreboard.json", scoreboard.to_dict())
    txt_path = out_dir / "scoreboard.txt"
    with atomic_path(txt_path) as tmp:
        tmp.write_text(format_table(scoreboard))
    return json_path, txt_path
