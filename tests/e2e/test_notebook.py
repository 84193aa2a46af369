"""notebooks/compare_runs.ipynb and protocol/tracking/compare.py against a real tracking store.

`pipeline_store` (tests/conftest.py) runs the real pipeline on tiny data once per
session and returns its tracking URI; these tests only read it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import TINY_PIPELINE_PARAMS

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "compare_runs.ipynb"
RUN_ENV_VARS = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")


def as_uri(store) -> str:
    s = str(store)
    return s if "://" in s else f"sqlite:///{Path(s).resolve()}"


@pytest.fixture
def store(pipeline_store, monkeypatch) -> str:
    """The pipeline's store as MLFLOW_TRACKING_URI for this test (compare.py reads it from there)."""
    import mlflow

    uri = as_uri(pipeline_store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for var in RUN_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture(scope="module")
def executed_notebook(pipeline_store):
    """The notebook executed by a python3 kernel of this interpreter, pointed at the pipeline's store."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = {k: v for k, v in os.environ.items() if k not in RUN_ENV_VARS}
    env["MLFLOW_TRACKING_URI"] = as_uri(pipeline_store)
    client = NotebookClient(nb, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute(env=env)  # raises CellExecutionError, with the cell and traceback, when a cell fails
    return nb


def outputs(nb):
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def output_text(nb) -> str:
    parts = []
    for out in outputs(nb):
        if out.output_type == "stream":
            parts.append(out.text)
        for mime in ("text/plain", "text/html", "text/markdown"):
            parts.append(out.get("data", {}).get(mime, ""))
    return "\n".join(parts)


# ---------------------------------------------------------------- the stored notebook


def test_notebook_is_stored_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= len(code), "every step is explained"
    assert nb.metadata["kernelspec"]["name"] == "python3"


# ---------------------------------------------------------------- compare.py on an empty store


def test_missing_aliases_name_the_stage_that_makes_them(tracking_uri):
    from protocol.tracking import compare

    with pytest.raises(LookupError, match=r"@baseline.*baseline stage"):
        compare.compare_aliases("category")
    with pytest.raises(LookupError, match=r"@candidate.*train"):
        compare.version_breakdown("candidate", "category")
    with pytest.raises(LookupError, match=r"@champion.*scoreboard"):
        compare.gallery_paths("champion")
    with pytest.raises(LookupError, match=r"scoreboard"):
        compare.latest_scoreboard()
    with pytest.raises(LookupError, match=r"no experiment 'fashion-retrieval'"):
        compare.load_runs()


# ---------------------------------------------------------------- compare.py on the pipeline's store


@pytest.mark.e2e
def test_load_runs_lists_the_stages(store):
    from protocol.tracking import compare

    runs = compare.load_runs()
    assert {"run_id", "stage", "variant", "seed", "status", "start_time", *compare.KEY_METRICS} <= set(runs.columns)
    train = runs[runs["stage"] == "train"].iloc[-1]
    assert (train["run_name"], train["variant"], train["seed"]) == ("train · full · seed 42", "full", "42")
    assert {"baseline", "evaluate", "scoreboard"} <= set(runs["stage"])
    assert runs["start_time"].is_monotonic_increasing
    baseline = runs[runs["stage"] == "baseline"].iloc[-1]
    assert baseline["status"] == "FINISHED"
    assert 0.0 <= baseline["t2i.recall10"] <= 1.0


@pytest.mark.e2e
def test_version_breakdown_matches_the_logged_metrics(store):
    from mlflow.tracking import MlflowClient

    from protocol.tracking import compare

    df = compare.version_breakdown("baseline", "category")
    assert len(df) > 0 and {"value", "p10", "n", "thin"} <= set(df.columns)
    assert "graphic" not in set(df["value"])  # graphic policy: never a category
    logged = MlflowClient().get_run(df.attrs["run_id"]).data.metrics
    for row in df.itertuples():
        assert row.p10 == pytest.approx(logged[f"t2i.category.p10.{row.value}"])
        assert row.n >= 1 and row.thin == (row.n < 5)


@pytest.mark.e2e
@pytest.mark.parametrize("attribute", ["category", "material", "neckline"])
def test_compare_aliases_deltas_are_right_minus_left(store, attribute):
    from protocol.tracking import compare

    df = compare.compare_aliases(attribute)
    assert list(df.columns) == ["value", "baseline_p10", "candidate_p10", "delta_points", "n", "thin"]
    base = compare.version_breakdown("baseline", attribute).set_index("value")
    cand = compare.version_breakdown("candidate", attribute).set_index("value")
    assert set(df["value"]) == set(base.index) | set(cand.index)
    both = df.dropna(subset=["baseline_p10", "candidate_p10"])
    assert len(both) > 0
    np.testing.assert_allclose(both["candidate_p10"] - both["baseline_p10"], both["delta_points"])
    for row in both.itertuples():  # points, from the versions' own eval JSON
        assert row.baseline_p10 == pytest.approx(100 * base.loc[row.value, "p10"])
        assert row.candidate_p10 == pytest.approx(100 * cand.loc[row.value, "p10"])
        assert row.n == min(base.loc[row.value, "n"], cand.loc[row.value, "n"])


@pytest.mark.e2e
def test_plot_comparison_draws_a_pair_of_bars_per_value(store):
    from matplotlib.figure import Figure

    from protocol.tracking import compare

    df = compare.compare_aliases("category")
    fig = compare.plot_comparison(df, "category")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * len(df)
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == list(df["value"])


@pytest.mark.e2e
def test_gallery_paths_downloads_the_evaluation_galleries(store, tmp_path):
    from protocol.tracking import compare, registry

    alias = "champion" if "champion" in registry.aliases() else "candidate"
    paths = compare.gallery_paths(alias, dst=tmp_path)
    names = {p.name for p in paths}
    assert "t2i_queries.png" in names
    for p in paths:
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.e2e
def test_train_runs_compare_by_variant_and_seed(store):
    from protocol.tracking import compare

    trained = compare.train_runs()
    assert list(trained[["variant", "seed"]].itertuples(index=False, name=None)) == [("full", "42")]
    assert 0.0 <= trained["val.t2i.neckline.p10"].iloc[0] <= 1.0 and trained["best.epoch"].iloc[0] >= 1
    table = compare.compare_variants(trained, "val.t2i.neckline.p10")
    row = table.set_index("variant").loc["full"]
    assert row["n_seeds"] == 1 and row["seeds"] == "42" and np.isnan(row["std_points"])  # one seed: no spread
    assert row["mean_points"] == pytest.approx(100 * trained["val.t2i.neckline.p10"].iloc[0])
    with pytest.raises(LookupError, match=r"no finished ablation run.*mlflow run . -e ablation"):
        compare.latest_ablation()


# ---------------------------------------------------------------- the executed notebook


@pytest.mark.e2e
def test_notebook_runs_and_shows_the_comparison(executed_notebook, store):
    from protocol.tracking import compare
    from protocol.tracking.runs import tracking_uri

    text = output_text(executed_notebook)
    assert f"tracking store: {tracking_uri()}" in text  # it read the store it was pointed at
    for attribute in ("category", "material", "neckline"):
        for value in compare.compare_aliases(attribute)["value"]:
            assert value in text, f"{attribute} value {value!r} missing from the notebook's tables"
    assert "delta_points" in text
    assert "train · full · seed 42" in text and "per variant (points)" in text
    _, scoreboard = compare.latest_scoreboard()
    assert scoreboard.strip().splitlines()[0] in text
    errors = [o for o in outputs(executed_notebook) if o.output_type == "error"]
    assert not errors, json.dumps(errors, default=str)[:2000]


@pytest.mark.e2e
def test_notebook_shows_plots_and_galleries(executed_notebook):
    images = [o for o in outputs(executed_notebook) if "image/png" in o.get("data", {})]
    epochs = int(TINY_PIPELINE_PARAMS["epochs"])
    assert len(images) >= 3 + 1 + epochs  # three comparison plots, a gallery, the weak-class gallery per epoch
    assert re.search(rf"@(champion|candidate): {epochs} epochs of 'galleries/weak_classes'", output_text(executed_notebook))
