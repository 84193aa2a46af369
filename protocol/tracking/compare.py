"""Read the tracking store for the comparison notebook: runs, per-value breakdowns, galleries, scoreboard.

Every function reads the store that `protocol.tracking.runs.tracking_uri()` resolves
(`MLFLOW_TRACKING_URI`, else the project's `mlflow.db`). A registered version's
figures come from the run named by its `evaluation.run_id` tag (baseline or
evaluate), from the artifacts that `protocol.tracking.evaluation` logs:
`eval/metrics_by_<attribute>.json` ({mode: {value: {p1, p5, p10, map10, n, thin}}})
and `galleries/*.png`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from protocol.retrieval.metrics import THIN_BELOW
from protocol.tracking import registry
from protocol.tracking.runs import EXPERIMENT_NAME, REGISTERED_MODEL, configure, tracking_uri

KEY_METRICS = ("t2i.recall10", "t2i.mrr10", "t2i.category.p10", "t2i.material.p10", "t2i.neckline.p10")
PRIMARY_MODE = "t2i"


def _client() -> MlflowClient:
    configure()
    return MlflowClient()


def load_runs(experiment: str = EXPERIMENT_NAME) -> pd.DataFrame:
    """One row per run of `experiment`, oldest first: run_id, run_name, stage, status, start_time,
    parent_run_id and the KEY_METRICS the run logged (NaN where it logged none)."""
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"the tracking store {tracking_uri()} has no experiment {experiment!r}: "
                          "run the pipeline first (make demo, or mlflow run . -e pipeline)")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=50000)
    rows = []
    for run in runs:
        tags = run.data.tags
        rows.append({
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "stage": tags.get("stage", ""),
            "status": run.info.status,
            "start_time": pd.Timestamp(run.info.start_time, unit="ms"),
            "parent_run_id": tags.get("mlflow.parentRunId", ""),
            **{m: run.data.metrics.get(m, float("nan")) for m in KEY_METRICS},
        })
    columns = ["run_id", "run_name", "stage", "status", "start_time", "parent_run_id", *KEY_METRICS]
    return pd.DataFrame(rows, columns=columns)


def _download(run_id: str, artifact_path: str, what: str) -> Path:
    client = _client()
    parent = Path(artifact_path).parent.as_posix()
    parent = None if parent == "." else parent
    present = [f.path for f in client.list_artifacts(run_id, parent)]
    if artifact_path not in present:
        listing = ", ".join(present) or "nothing"
        raise FileNotFoundError(f"{what}: run {run_id} has no artifact {artifact_path!r} "
                                f"(under {parent or 'the root'} it has {listing})")
    return Path(client.download_artifacts(run_id, artifact_path, tempfile.mkdtemp(prefix="protocol-compare-")))


def version_breakdown(alias: str, attribute: str, mode: str = PRIMARY_MODE) -> pd.DataFrame:
    """Per value of `attribute` for the version behind `@alias`: value, p1, p5, p10, map10 (fractions), n, thin.

    Read from eval/metrics_by_<attribute>.json of the version's evaluation run;
    `df.attrs` holds alias, version and run_id."""
    _client()
    version = registry.version_by_alias(alias)  # LookupError names the stage that makes the alias
    run_id = registry.evaluation_run_id(version)
    path = _download(run_id, f"eval/metrics_by_{attribute}.json", f"@{alias} (version {version.version})")
    by_mode = json.loads(path.read_text())
    if mode not in by_mode:
        raise LookupError(f"@{alias} (version {version.version}, run {run_id}) has no {mode} figures for "
                          f"{attribute}; it has modes {', '.join(sorted(by_mode)) or 'none'}")
    rows = [{"value": value, **stats} for value, stats in by_mode[mode].items()]
    df = pd.DataFrame(rows, columns=["value", "p1", "p5", "p10", "map10", "n", "thin"])
    df = df.sort_values("value").reset_index(drop=True).astype({"n": int, "thin": bool})
    df.attrs.update(alias=alias, version=version.version, run_id=run_id, attribute=attribute, mode=mode)
    return df


def compare_aliases(attribute: str, left: str = "baseline", right: str = "candidate",
                    mode: str = PRIMARY_MODE) -> pd.DataFrame:
    """p10 per value of `attribute`, `@left` vs `@right`, in points (x100) like the scoreboard.

    Columns: value, <left>_p10, <right>_p10, delta_points (= right - left), n (the smaller
    query count of the two sides), thin (n < 5). A value seen on one side only has NaN on the other."""
    a, b = version_breakdown(left, attribute, mode), version_breakdown(right, attribute, mode)
    merged = pd.merge(a[["value", "p10", "n"]], b[["value", "p10", "n"]], on="value", how="outer",
                      suffixes=("_l", "_r"))
    lcol, rcol = f"{left}_p10", f"{right}_p10"
    df = pd.DataFrame({
        "value": merged["value"],
        lcol: merged["p10_l"].astype(float) * 100,
        rcol: merged["p10_r"].astype(float) * 100,
    })
    df["delta_points"] = df[rcol] - df[lcol]
    df["n"] = merged[["n_l", "n_r"]].min(axis=1).fillna(0).astype(int)
    df["thin"] = df["n"] < THIN_BELOW
    df = df.sort_values("value").reset_index(drop=True)
    df.attrs.update(attribute=attribute, mode=mode, left=left, right=right,
                    left_version=a.attrs["version"], right_version=b.attrs["version"])
    return df


def plot_comparison(df: pd.DataFrame, title: str) -> Figure:
    """Grouped bars, left vs right p10 per value (a frame from compare_aliases); delta above each pair."""
    lcol, rcol = [c for c in df.columns if c.endswith("_p10")][:2]
    fig = Figure(figsize=(max(6.0, 0.9 * len(df) + 2), 4.0), layout="constrained")
    ax = fig.add_subplot()
    x = range(len(df))
    width = 0.4
    names = [c.removesuffix("_p10") for c in (lcol, rcol)]
    versions = [df.attrs.get(f"{side}_version") for side in ("left", "right")]
    names = [f"{n} (v{v})" if v is not None else n for n, v in zip(names, versions)]
    ax.bar([i - width / 2 for i in x], df[lcol].fillna(0), width, label=names[0], color="#9aa5b1")
    ax.bar([i + width / 2 for i in x], df[rcol].fillna(0), width, label=names[1], color="#2f6fb0")
    for i, row in enumerate(df.itertuples(index=False)):
        delta = getattr(row, "delta_points")
        if pd.notna(delta):
            top = max(v for v in (getattr(row, lcol), getattr(row, rcol)) if pd.notna(v))
            ax.annotate(f"{delta:+.1f}", (i, top), xytext=(0, 3), textcoords="offset points", ha="center",
                        fontsize=8, color="#1a7f37" if delta > 0 else "#b42318")
    labels = [f"{v}\nn={n}" + (" (thin)" if t else "") for v, n, t in zip(df["value"], df["n"], df["thin"])]
    ax.set_xticks(list(x), labels, fontsize=8, rotation=30 if len(df) > 8 else 0)
    ax.set_ylabel("p@10 (points)")
    ax.set_ylim(0, min(110, max(10.0, float(df[[lcol, rcol]].max().max()) + 10)))
    ax.set_title(title)
    ax.legend()
    return fig


def gallery_paths(alias: str = "champion", dst: str | Path | None = None) -> list[Path]:
    """The galleries/*.png of the evaluation run behind `@alias`, downloaded (to `dst` or a temp dir)."""
    client = _client()
    version = registry.version_by_alias(alias)
    run_id = registry.evaluation_run_id(version)
    pngs = [f.path for f in client.list_artifacts(run_id, "galleries") if f.path.endswith(".png")]
    if not pngs:
        raise FileNotFoundError(f"@{alias} (version {version.version}): evaluation run {run_id} logged no "
                                "galleries/*.png (gallery_queries=0?)")
    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="protocol-galleries-"))
    dst.mkdir(parents=True, exist_ok=True)
    return [Path(client.download_artifacts(run_id, p, str(dst))) for p in sorted(pngs)]


def latest_scoreboard(experiment: str = EXPERIMENT_NAME) -> tuple[str, str]:
    """(run_id, text of scoreboard.txt) of the latest finished scoreboard run."""
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], filter_string="tags.stage = 'scoreboard' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise LookupError(f"no finished scoreboard run in experiment {experiment!r}: "
                          "run the scoreboard stage first (mlflow run . -e scoreboard)")
    run_id = runs[0].info.run_id
    return run_id, _download(run_id, "scoreboard.txt", "scoreboard").read_text()


def model_aliases(model: str = REGISTERED_MODEL) -> pd.DataFrame:
    """alias, version, evaluation run of each alias of the registered model."""
    client = _client()
    rows = []
    for alias, number in sorted(registry.aliases(model).items()):
        v = client.get_model_version(model, number)
        rows.append({"alias": alias, "version": number, "evaluation_run_id": v.tags.get(registry.EVALUATION_RUN_TAG, ""),
                     "scoreboard_verdict": v.tags.get("scoreboard.verdict", "")})
    return pd.DataFrame(rows, columns=["alias", "version", "evaluation_run_id", "scoreboard_verdict"])
