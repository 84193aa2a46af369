"""finalize + save_processed + load_processed: the processed dataset contract, end to end on small data."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from PIL import Image

from protocol.data.prepare import finalize, save_processed
from protocol.data.processed import dataset_fingerprint, image_sha256, load_processed
from protocol.data.schema import ATTRIBUTES, REQUIRED_COLUMNS, SchemaError, validate_processed
from protocol.data.synthetic import generate_catalog


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return generate_catalog(n_products=60, seed=0, image_size=32, show_progress=False)


@pytest.fixture(scope="module")
def table(raw) -> pd.DataFrame:
    return finalize(raw, seed=0, show_progress=False)


def test_finalize_columns_and_values(raw, table):
    assert list(table.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    assert "gt_material" in table.columns and "image_bytes" in table.columns
    assert list(table["item_id"]) == list(raw["item_id"])
    assert set(table["category2"]) <= {"tees", "graphic", "shirts", "sweaters", "cardigans", "jackets", "dresses",
                                       "shorts", "trousers", "skirts"}
    assert (table["category1"] != "other").all()
    graphic = table["category2"] == "graphic"
    assert graphic.any() and (table.loc[graphic, "pattern"] == "graphic").all()
    row = table.iloc[0]
    assert row["text"].startswith(row["title"]) and row["description"] in row["text"]
    for attribute in ATTRIBUTES:
        assert table[attribute].notna().all()
    assert table.groupby("group_id")["split"].nunique().max() == 1
    assert set(table["split"]) == {"train", "val", "test"}
    assert "title" in raw.columns and "text" not in raw.columns  # the input is left alone


def test_save_load_round_trip(tmp_path, table):
    rejects = pd.DataFrame({"row": [7], "item_id": ["bad_1"], "reason": ["unreadable image"], "detail": ["x.jpg"]})
    manifest = save_processed(table, tmp_path / "prepared", source="synthetic(test)", rejects=rejects)
    processed = load_processed(tmp_path / "prepared", verify=True)

    assert processed.fingerprint == manifest["fingerprint"] == processed.manifest["fingerprint"]
    assert manifest["n_items"] == len(table) and manifest["n_products"] == table["group_id"].nunique()
    assert manifest["counts_by_split"] == table["split"].value_counts().to_dict()
    expected = table.drop(columns=["image_bytes"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(processed.meta, expected)
    assert processed.dataset.features["image"].__class__.__name__ == "Image"
    first = processed.dataset[0]["image"]
    assert isinstance(first, Image.Image) and first.size == (32, 32)
    assert list(first.getdata()) == list(Image.open(io.BytesIO(table["image_bytes"].iloc[0])).getdata())

    assert pd.read_csv(tmp_path / "prepared" / "rejects.csv").to_dict("records") == rejects.to_dict("records")
    grounding = json.loads((tmp_path / "prepared" / "grounding.json").read_text())
    assert set(grounding) == set(ATTRIBUTES) and grounding["material"]["precision"] >= 0.9
    assert not [p.name for p in (tmp_path / "prepared").iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_fingerprint_is_stable_and_sensitive(tmp_path, raw, table):
    a = save_processed(table, tmp_path / "a", source="s")
    again = finalize(raw, seed=0, show_progress=False)
    b = save_processed(again, tmp_path / "b", source="s")
    assert a["fingerprint"] == b["fingerprint"]
    # rewriting the same directory keeps it, and an empty rejects.csv has its header
    assert save_processed(table, tmp_path / "a", source="s")["fingerprint"] == a["fingerprint"]
    assert (tmp_path / "a" / "rejects.csv").read_text().strip() == "row,item_id,reason,detail"

    edited = table.copy()
    edited.loc[0, "text"] = edited.loc[0, "text"] + " Extra."
    assert save_processed(edited, tmp_path / "c", source="s")["fingerprint"] != a["fingerprint"]
    resplit = finalize(raw, seed=1, show_progress=False)
    assert save_processed(resplit, tmp_path / "d", source="s")["fingerprint"] != a["fingerprint"]


def test_fingerprint_known_answer():
    import hashlib

    one = hashlib.sha256(b"png").hexdigest()
    expected = hashlib.sha256(b'["item_id", "split", "text"]\n'
                              + f'["i1", "train", "a tee", "{one}"]\n'.encode()).hexdigest()
    meta = pd.DataFrame({"text": ["a tee"], "item_id": ["i1"], "split": ["train"]})
    assert dataset_fingerprint(meta, [one]) == expected


@pytest.mark.parametrize("column", ["item_id", "text", "split", "group_id", "product_id", "category1", "category2",
                                    "material", "pattern", "neckline", "sleeve", "color", "title", "url"])
def test_fingerprint_covers_every_column_a_later_stage_reads(table, column):
    meta = table.drop(columns=["image_bytes"]).reset_index(drop=True)
    hashes = [image_sha256(b) for b in table["image_bytes"]]
    base = dataset_fingerprint(meta, hashes)
    edited = meta.copy()
    edited.loc[3, column] = "other" if edited.loc[3, column] != "other" else "another"
    assert dataset_fingerprint(edited, hashes) != base
    assert dataset_fingerprint(meta[list(reversed(meta.columns))], hashes) == base  # column order is not content
    assert dataset_fingerprint(meta, hashes[:3] + [image_sha256(b"other")] + hashes[4:]) != base


def test_regrounded_data_fingerprints_differently(tmp_path, raw, table):
    import dataclasses

    from protocol.data.attribute_schema import load_attribute_schema

    a = save_processed(table, tmp_path / "a", source="s")
    # the same rows grounded with a schema that knows one synonym less: only attributes change
    schema = load_attribute_schema()
    values = {**schema.values, "material": {k: v for k, v in schema.values["material"].items() if k != "denim"}}
    regrounded = finalize(raw, schema=dataclasses.replace(schema, values=values), seed=0, show_progress=False)
    changed = (regrounded["material"] != table["material"])
    same = ["item_id", "text", "group_id"]  # the split may move too: it is stratified by material
    assert changed.any() and (regrounded[same] == table[same]).all().all()
    b = save_processed(regrounded, tmp_path / "b", source="s")
    assert b["fingerprint"] != a["fingerprint"]
    assert load_processed(tmp_path / "b", verify=True).fingerprint == b["fingerprint"]


def test_manifest_of_an_older_fingerprint_scheme_is_refused(tmp_path, table):
    save_processed(table, tmp_path / "p", source="s")
    manifest_path = tmp_path / "p" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["fingerprint_scheme"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"older prepare \(fingerprint scheme 1, now 2.*re-run the prepare stage"):
        load_processed(tmp_path / "p")


def test_verify_catches_a_changed_manifest(tmp_path, table):
    save_processed(table, tmp_path / "p", source="s")
    manifest_path = tmp_path / "p" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(manifest | {"fingerprint": "0" * 64}))
    assert load_processed(tmp_path / "p").fingerprint == "0" * 64
    with pytest.raises(ValueError, match="re-run the prepare stage"):
        load_processed(tmp_path / "p", verify=True)


def test_source_labels_fill_silent_text():
    raw = pd.DataFrame({
        "item_id": ["A_front", "B_front"], "title": ["Tee", "Striped tee"], "description": ["", ""],
        "category2": ["Tees", "Tees"], "image_bytes": [b"x", b"y"], "src_pattern": ["Check", "Solid"],
    })
    out = finalize(raw, fractions={"train": 1.0}, show_progress=False)
    assert list(out["pattern"]) == ["plaid", "striped"]
    assert list(out["product_id"]) == ["", ""] and list(out["group_id"]) == ["A", "B"]
    assert list(out["split"]) == ["train", "train"]


def test_missing_columns_are_named(tmp_path, raw, table):
    with pytest.raises(SchemaError, match=r"missing column\(s\) \['title'\]"):
        finalize(raw.drop(columns=["title"]), show_progress=False)
    with pytest.raises(SchemaError, match=r"\['split'\]"):
        validate_processed(table.drop(columns=["split"]))
    with pytest.raises(SchemaError, match="image_bytes"):
        save_processed(table.drop(columns=["image_bytes"]), tmp_path / "x", source="s")
    with pytest.raises(SchemaError, match="repeated ids"):
        finalize(pd.concat([raw.head(2), raw.head(1)]), show_progress=False)
    with pytest.raises(FileNotFoundError, match=r"not a processed dataset.*run the prepare stage first"):
        load_processed(tmp_path / "nothing-here")
