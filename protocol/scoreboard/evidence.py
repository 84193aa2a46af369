"""Reading the evidence of an evaluation: metrics files and eval/ directories."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.io import read_json
from protocol.scoreboard.compute import MissingMetricError, Scoreboard, compute_scoreboard
from protocol.scoreboard.spec import ScoreboardSpec

_EVAL_BREAKDOWN_KEYS = ("n", "thin")  # keys of a metrics_by_*.json entry that are not metrics


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
