"""Hostile and careless input to `prepare`: each case with its exact behaviour.

Exit status and the `error: ...` line (naming the file, row, column or parameter), the counts
in the manifest and in rejects.csv, and nothing read from outside the image folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import mlflow
import pandas as pd
import pytest
import yaml

from entrypoints.cli import parse_config
from protocol.data.processed import load_processed
from protocol.tracking.stages.prepare import PrepareConfig

from .conftest import good_rows, jpeg

ROOT = Path(__file__).resolve().parents[2]


def dataset_images(outcome) -> list[bytes]:
    dataset = load_processed(outcome.out / "latest", verify=True).dataset
    return [cell["bytes"] for cell in dataset.cast_column("image", datasets.Image(decode=False))["image"]]


# ---------------------------------------------------------------- 1. paths that leave the image folder

@pytest.fixture
def outside(tmp_path) -> Path:
    """A real JPEG outside the image folder: what an escaping path would read."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.jpg").write_bytes(jpeg((255, 0, 255)))
    return folder


def escaping_rows(shop, outside: Path) -> list[dict]:
    """Rows whose image path climbs out, is absolute, or is a symlink inside that points out."""
    (shop.images / "link.jpg").symlink_to(outside / "secret.jpg")
    paths = {"X1": "../../outside/secret.jpg", "X2": str(outside / "secret.jpg"), "X3": "link.jpg"}
    return [{"sku": sku, "product": sku, "name": f"Escape {sku}", "blurb": "", "cat": "tees", "file": file}
            for sku, file in paths.items()]


def test_image_paths_leaving_the_image_folder_are_rejected_unread(shop, prepare_table, outside):
    rows = good_rows(3) + escaping_rows(shop, outside) + [
        {"sku": "X4", "product": "X4", "name": "Stays inside", "blurb": "", "cat": "tees", "file": "img/../img/4.jpg"},
    ]
    result = prepare_table(shop.table(rows))

    assert result.status == 0, result.message
    manifest, rejects = result.manifest, result.rejects()
    assert (manifest["n_read"], manifest["n_items"], manifest["n_rejects"]) == (7, 4, 3)
    assert manifest["rejects_by_reason"] == {"unsafe_path": 3}
    assert rejects[["row", "item_id", "reason"]].values.tolist() == [
        [4, "X1", "unsafe_path"], [5, "X2", "unsafe_path"], [6, "X3", "unsafe_path"]]
    assert "leads outside" in rejects["detail"][0] and "is absolute" in rejects["detail"][1]
    assert "leads outside" in rejects["detail"][2] and all(d.endswith("not read") for d in rejects["detail"])
    assert (outside / "secret.jpg").read_bytes() not in dataset_images(result)


def test_item_ids_that_escape_through_an_image_pattern_are_rejected(shop, prepare_table, outside, tmp_path):
    mapping = tmp_path / "pattern.yaml"
    mapping.write_text(yaml.safe_dump({**{k: v for k, v in yaml.safe_load(shop.mapping.read_text()).items()
                                          if k != "image"}, "image_pattern": "{item_id}.jpg"}))
    rows = [dict(r, sku=f"img/{i}") for i, r in enumerate(good_rows(3))] + [
        {"sku": "../../../outside/secret", "product": "X", "name": "Escape", "blurb": "", "cat": "tees", "file": ""},
        {"sku": str(outside / "secret"), "product": "Y", "name": "Absolute", "blurb": "", "cat": "tees", "file": ""},
    ]
    result = prepare_table(shop.table(rows), mapping=str(mapping))
    assert result.status == 0, result.message
    assert result.manifest["rejects_by_reason"] == {"unsafe_path": 2}
    assert result.rejects()["item_id"].tolist() == ["../../../outside/secret", str(outside / "secret")]
    assert (outside / "secret.jpg").read_bytes() not in dataset_images(result)


def test_nothing_outside_the_image_folder_is_even_opened(shop, outside):
    """Proof by the interpreter's audit hook: no open() of any path under the outside folder."""
    table = shop.table(good_rows(2) + escaping_rows(shop, outside))
    script = f"""
import os, sys
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.append(os.path.realpath(os.fsdecode(args[0])))
sys.addaudithook(hook)
from protocol.data.ingest import ingest_table, load_mapping
from protocol.data.prepare import prepare_processed
raw = ingest_table({str(table)!r}, {str(shop.images)!r}, load_mapping({str(shop.mapping)!r}))
prepare_processed(raw, {str(shop.root / "prepared")!r}, show_progress=False)
outside = os.path.realpath({str(outside)!r})
print("OPENED-OUTSIDE", [p for p in opened if p.startswith(outside)])
print("OPENED-INSIDE", sum(p.startswith(os.path.realpath({str(shop.images)!r})) for p in opened))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OPENED-OUTSIDE []" in proc.stdout
    assert "OPENED-INSIDE 4" in proc.stdout  # two good images, read to check and again to write


def test_a_preset_name_cannot_climb_out_of_the_preset_folder(shop, prepare_table, tmp_path):
    # a valid mapping file outside the presets, named by a relative "preset" that climbs out to it
    (tmp_path / "evil.yaml").write_text(shop.mapping.read_text())
    presets = ROOT / "protocol" / "configs" / "ingest"
    climb = os.path.relpath(tmp_path / "evil", presets)
    result = prepare_table(shop.table(good_rows()), mapping=climb)
    assert result.status == 1
    assert f"ingest mapping {climb!r} is neither a YAML file nor a preset" in result.message


# ---------------------------------------------------------------- 2. no accepted row

def test_header_only_table_is_a_clear_error_and_rejects_are_written(shop, prepare_table):
    table = shop.table([])
    result = prepare_table(table)
    assert result.status == 1
    assert result.message.startswith(f"error: {table}: no item to prepare: it has no data rows (only a header?)")
    rejects = result.run_dir / "rejects.csv"
    assert f"Every rejected row is in {rejects}." in result.message
    assert rejects.read_text().strip() == "row,item_id,reason,detail"
    assert result.run.info.status == "FAILED"
    assert not (result.out / "latest").exists()  # no later stage picks it up
    artifacts = mlflow.MlflowClient().list_artifacts(result.run.info.run_id, "processed")
    assert [a.path for a in artifacts] == ["processed/rejects.csv"]


def test_every_row_rejected_names_the_cause_and_writes_the_rejects(shop, prepare_table, tmp_path):
    wrong = tmp_path / "not-the-images"
    wrong.mkdir()
    table = shop.table(good_rows(4))
    result = prepare_table(table, image_dir=wrong)
    assert result.status == 1
    assert f"error: {table}: no item to prepare: all 4 rows were rejected (missing_image: 4)." in result.message
    assert "check image_dir" in result.message and str(wrong / "img" / "0.jpg") in result.message
    rejects = result.rejects(result.run_dir)
    assert rejects[["row", "item_id", "reason"]].values.tolist() == [
        [1, "S0", "missing_image"], [2, "S1", "missing_image"], [3, "S2", "missing_image"],
        [4, "S3", "missing_image"]]


def test_zero_rows_from_the_command_line_is_one_error_line_and_status_1(shop, tracking_uri, tmp_path):
    table = shop.table([])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "entrypoints.prepare", "--source", "table", "--input", str(table),
                           "--image_dir", str(shop.images), "--mapping", str(shop.mapping),
                           "--output_dir", str(tmp_path / "prepared")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {table}: no item to prepare")
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- 4. abbreviated and unknown parameters

@pytest.mark.parametrize("argv, closest", [
    (["--test_frac", "0.3"], "test_fraction"),
    (["--n_product", "5"], "n_products"),
    (["--seeds=3"], "seed"),
])
def test_an_abbreviated_parameter_is_an_error_naming_the_closest_one(argv, closest):
    with pytest.raises(SystemExit) as err:
        parse_config(PrepareConfig, argv)
    name = argv[0].lstrip("-").split("=")[0]
    assert str(err.value).startswith(f"error: unknown parameter {name!r}; did you mean {closest!r}?")


def test_an_unknown_parameter_without_a_close_one_lists_the_parameters():
    with pytest.raises(SystemExit) as err:
        parse_config(PrepareConfig, ["--zzz", "1"])
    assert str(err.value).startswith("error: unknown parameter 'zzz'; parameters: source, input,")


def test_epoch_is_not_taken_for_epochs_by_the_train_entry_point():
    # what `mlflow run . -e train -P epoch=1` runs: MLflow appends `--epoch 1` to the command
    proc = subprocess.run([sys.executable, "-m", "entrypoints.train", "--epoch", "1"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "error: unknown parameter 'epoch'; did you mean 'epochs'?" in proc.stderr


# ---------------------------------------------------------------- 5. control characters

def test_control_characters_are_removed_from_text_and_counted(shop, prepare_table):
    rows = good_rows(4)
    rows[0]["name"] = "Red\x00 tee"
    rows[1]["blurb"] = "Soft\x07 cotton\x1b[31m with\ttabs"
    rows[2]["cat"] = "short\x00s"
    result = prepare_table(shop.table(rows))
    assert result.status == 0, result.message
    meta = load_processed(result.out / "latest").meta
    for column in ("title", "description", "text", "category2"):
        assert not meta[column].str.contains("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]").any(), column
    assert meta.loc[0, "title"] == "Red tee" and meta.loc[2, "category2"] == "shorts"
    assert meta.loc[1, "text"].endswith("Soft cotton[31m with tabs")
    assert result.manifest["control_characters_removed"] == {"title": 1, "description": 1, "category2": 1}


def test_an_id_with_a_control_character_is_rejected_not_rewritten(shop, prepare_table):
    rows = good_rows(4)
    rows[1]["sku"] = "S\x001"
    rows[2]["product"] = "P\x1b1"
    result = prepare_table(shop.table(rows))
    assert result.status == 0, result.message
    rejects = result.rejects()
    assert rejects[["row", "item_id", "reason"]].values.tolist() == [
        [2, "S\\x001", "control_characters"], [3, "S2", "control_characters"]]
    assert "column 'sku'" in rejects["detail"][0] and "column 'product'" in rejects["detail"][1]
    assert result.manifest["rejects_by_reason"] == {"control_characters": 2}


# ---------------------------------------------------------------- the cases handled before

def test_a_missing_column_names_the_column_and_the_file(shop, prepare_table):
    table = shop.table(good_rows())
    pd.read_csv(table).drop(columns=["name"]).to_csv(table, index=False)
    result = prepare_table(table)
    assert result.status == 1
    assert f"error: {table} lacks column(s) ['name'] (for title)" in result.message


def test_corrupt_and_missing_images_empty_text_and_duplicate_ids_are_counted(shop, prepare_table):
    (shop.images / "img" / "2.jpg").write_bytes(b"not a jpeg")
    (shop.images / "img" / "3.jpg").unlink()
    rows = good_rows(6)
    rows[4]["name"], rows[4]["blurb"] = "", ""
    rows.append(dict(rows[0], name="Again"))
    result = prepare_table(shop.table(rows))
    assert result.status == 0, result.message
    assert result.rejects()[["row", "item_id", "reason"]].values.tolist() == [
        [3, "S2", "corrupt_image"], [4, "S3", "missing_image"], [5, "S4", "empty_text"],
        [7, "S0", "duplicate_item_id"]]
    manifest = result.manifest
    assert (manifest["n_read"], manifest["n_items"], manifest["n_rejects"]) == (7, 3, 4)
    assert manifest["rejects_by_reason"] == {"corrupt_image": 1, "missing_image": 1, "empty_text": 1,
                                             "duplicate_item_id": 1}
    metrics = result.run.data.metrics
    assert (metrics["rows_read"], metrics["rejects"], metrics["rejects.corrupt_image"]) == (7, 4, 1)


def test_strict_stops_at_the_first_bad_row_naming_file_row_and_item(shop, prepare_table):
    (shop.images / "img" / "3.jpg").unlink()
    table = shop.table(good_rows())
    result = prepare_table(table, "--strict", "true")
    assert result.status == 1
    assert result.message.startswith(f"error: {table}: row 4 (item_id 'S3') is bad: missing_image")


@pytest.mark.parametrize("argv, message", [
    (["--n_products", "many"], "error: parameter 'n_products' must be an integer, got 'many'"),
    (["--limit", "0"], "error: parameter 'limit' must be >= 1, got 0"),
    (["--shard_rows", "0"], "error: parameter 'shard_rows' must be >= 1, got 0"),
])
def test_bad_parameter_values_name_the_parameter(argv, message):
    with pytest.raises(SystemExit) as err:
        parse_config(PrepareConfig, argv)
    assert str(err.value) == message


def test_an_unknown_mapping_lists_the_presets(shop, prepare_table):
    result = prepare_table(shop.table(good_rows()), mapping="zalando")
    assert result.status == 1
    assert result.message == ("error: ingest mapping 'zalando' is neither a YAML file nor a preset; "
                              "presets: ['hm', 'kaggle_fashion']")


def test_an_unknown_model_names_the_model():
    from protocol.model.backbone import BackboneSpec, create_backbone

    with pytest.raises(ValueError, match="unknown open_clip model 'no-such-model'"):
        create_backbone(BackboneSpec(model="no-such-model"))


def test_a_missing_image_folder_names_it(shop, prepare_table, tmp_path):
    result = prepare_table(shop.table(good_rows()), image_dir=tmp_path / "nowhere")
    assert result.status == 1
    assert result.message.startswith(f"error: image directory {tmp_path / 'nowhere'} does not exist")


def test_manifest_counts_match_rejects_csv(shop, prepare_table):
    (shop.images / "img" / "1.jpg").unlink()
    result = prepare_table(shop.table(good_rows()))
    rejects, manifest = result.rejects(), result.manifest
    assert manifest["n_rejects"] == len(rejects) == 1
    assert manifest["rejects_by_reason"] == rejects["reason"].value_counts().to_dict()
    assert json.loads((result.out / "latest" / "manifest.json").read_text())["n_read"] == 6
