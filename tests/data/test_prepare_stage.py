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


def test_the_pipeline_passes_limit_hf_split_and_strict_to_prepare(tracking_uri, tmp_path):
    import datasets
    import pytest
    import yaml

    from entrypoints.cli import parse_config
    from protocol.tracking.stages.pipeline import PipelineConfig

    from .test_ingest import image_bytes

    n = 5
    data = {"id": [f"h{i}" for i in range(n)], "title": [f"Green cardigan {i}" for i in range(n)],
            "label": ["Cardigan"] * n, "image": [{"bytes": image_bytes((0, 20 * i, 0), "PNG"), "path": None}
                                                 for i in range(n)]}
    data["image"][3] = {"bytes": b"\x89PNG broken", "path": None}
    features = datasets.Features({"id": datasets.Value("string"), "title": datasets.Value("string"),
                                  "label": datasets.Value("string"), "image": datasets.Image()})
    dataset = datasets.Dataset.from_dict(data, features=features)
    saved = tmp_path / "hf"
    datasets.DatasetDict({"train": dataset.select([0]), "test": dataset}).save_to_disk(str(saved))
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(yaml.safe_dump({"item_id": "id", "title": "title", "category2": "label", "image": "image"}))

    cfg = parse_config(PipelineConfig, ["--source", "hf", "--input", str(saved), "--mapping", str(mapping),
                                        "--hf_split", "test", "--limit", "3", "--strict", "true",
                                        "--work_dir", str(tmp_path / "work")])
    prepare_cfg = PrepareConfig(**cfg._prepare_kwargs())
    assert (prepare_cfg.hf_split, prepare_cfg.limit, prepare_cfg.strict) == ("test", 3, True)
    manifest = run_prepare(prepare_cfg)["manifest"]
    assert (manifest["n_read"], manifest["n_items"]) == (3, 3)  # the limit, on the split asked for
    assert manifest["source"] == f"{saved} [test]"

    # strict reaches prepare too: the broken row 4 inside a larger limit stops it
    strict = PrepareConfig(**PipelineConfig(**{**vars(cfg), "limit": 5})._prepare_kwargs())
    with pytest.raises(ValueError, match=r"row 4 \(item_id 'h3'\) is bad: corrupt_image"):
        run_prepare(strict)
    with pytest.raises(SystemExit, match="parameter 'limit' must be >= 1, got 0"):
        parse_config(PipelineConfig, ["--limit", "0"])
