"""The prepare stage on a real sqlite store: what it writes, what it logs."""

from __future__ import annotations

import json

import mlflow

from protocol.data.processed import load_processed
from protocol.tracking.stages.prepare import PrepareConfig, run_prepare


def test_prepare_logs_the_test_quotas(tracking_uri, tmp_path):
    cfg = PrepareConfig(n_products=40, image_size=32, test_quota=6, neckline_test_quota=10,
                        output_dir=str(tmp_path / "prepared"))
    result = run_prepare(cfg)

    processed = load_processed(tmp_path / "prepared" / "latest", verify=True)
    manifest = json.loads((processed.path / "manifest.json").read_text())
    quotas = manifest["split_quotas"]
    assert set(quotas) == {"category2.cardigans", "category2.shorts", "material.denim", "material.leather",
                           "neckline.known"}
    test = processed.meta[processed.meta["split"] == "test"]
    for name, report in quotas.items():
        column, value = name.split(".")
        rows = test[column] != "unknown" if value == "known" else test[column] == value
        assert report["test"] == int(rows.sum())
        assert report["test"] >= min(report["quota"], report["cap"]) and report["test"] <= report["cap"]
    metrics = mlflow.get_run(result["run_id"]).data.metrics
    assert metrics["quota.category2.cardigans.test"] == quotas["category2.cardigans"]["test"]
    assert metrics["quota.neckline.known.catalog"] == quotas["neckline.known"]["catalog"]
