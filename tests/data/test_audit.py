"""Grounding audit: stratified sample, simulated review, analysis and its error messages."""

from __future__ import annotations

import pandas as pd
import pytest

from protocol.data.audit import (
    AUDIT_README, COVERAGE_CSV, NOT_IN_TEXT, VERDICTS, analyze_audit, coverage_by_category, make_audit_sample,
    simulate_review, write_audit,
)
from protocol.data.grounding import ground_attributes
from protocol.data.schema import ATTRIBUTES

# (category2, title, description, true values that differ from what the text grounds)
PRODUCTS = [
    *[("tees", f"Cotton crew neck tee {i}", "A soft everyday tee in white. Pairs well with our denim shorts.", {})
      for i in range(6)],
    *[("tees", f"Crew neck tee {i}", f"Throw on with {m} for a casual day.", {"material": "cotton"})
      for i, m in enumerate(("denim", "leather", "silk"))],
    ("tees", "Striped tee", "Shorts sold separately, denim wash.", {"material": "cotton"}),
    ("tees", "Plain tee", "A tee in black.", {}),
    ("tees", "Plain tee", "A tee in grey.", {}),
    *[("cardigans", f"Knitted wool cardigan {i}", "Long sleeves and a v neck.", {}) for i in range(4)],
    ("shorts", "Pull-on shorts", "Tees sold separately, in striped linen.", {"material": "cotton", "pattern": "solid"}),
    *[("shorts", f"Denim shorts {i}", "Five pockets.", {}) for i in range(3)],
    *[("graphic", f"Graphic tee {i}", "Cotton jersey with a logo print.", {}) for i in range(3)],
    ("skirts", "Leather mini skirt", "A black skirt.", {}),
    ("skirts", "Midi skirt", "Floral print.", {}),
]


@pytest.fixture
def meta() -> pd.DataFrame:
    rows = []
    for i, (category2, title, description, truth) in enumerate(PRODUCTS):
        grounded = ground_attributes(title, description, category2)
        rows.append({"item_id": f"I{i:03d}", "product_id": "", "url": "", "title": title,
                     "description": description, "text": f"{title}. {description}", "category1": "x",
                     "category2": category2, **grounded, "split": "train", "group_id": f"I{i:03d}",
                     **{f"gt_{a}": truth.get(a, grounded[a]) for a in ATTRIBUTES}})
    return pd.DataFrame(rows)


def test_sample_is_stratified_with_a_minimum_per_category(meta):
    sample = make_audit_sample(meta, n=14, seed=0)
    items = sample.drop_duplicates("item_id")
    per_category = items["category2"].value_counts()
    assert items["item_id"].nunique() == 14
    assert set(per_category.index) == set(meta["category2"])
    assert per_category.min() >= 2 and per_category.idxmax() == "tees"
    assert (sample["verdict"] == "").all()
    with pytest.raises(ValueError, match="cannot hold 2 rows for each of the 5 values"):
        make_audit_sample(meta, n=6)


def test_sample_lists_every_grounded_attribute_with_its_sentence(meta):
    sample = make_audit_sample(meta, n=len(meta), seed=0)
    known = meta.melt(id_vars="item_id", value_vars=list(ATTRIBUTES), var_name="attribute")
    known = known[known["value"] != "unknown"]
    assert len(sample) == len(known)
    row = sample[(sample["item_id"] == "I006") & (sample["attribute"] == "material")].iloc[0]
    assert (row["value"], row["evidence"]) == ("denim", "Throw on with denim for a casual day.")
    # A value the text does not support (e.g. a source label) is flagged, not given a made-up sentence.
    meta.loc[meta["item_id"] == "I010", "material"] = "wool"
    flagged = make_audit_sample(meta, n=len(meta), seed=0)
    assert flagged.query("item_id == 'I010' and attribute == 'material'")["evidence"].item() == NOT_IN_TEXT


def test_review_and_analysis_end_to_end(meta, tmp_path):
    sample = simulate_review(make_audit_sample(meta, n=len(meta), seed=0), meta)
    csv_path = write_audit(sample, tmp_path, coverage_by_category(meta))
    assert (tmp_path / COVERAGE_CSV).exists()
    readme = (tmp_path / AUDIT_README).read_text()
    assert f"mlflow run . -e analyze_audit -P audit_csv={csv_path.resolve()}" in readme
    assert all(f"`{v}`" in readme for v in VERDICTS)

    report = analyze_audit(csv_path)
    for attribute in ("material", "pattern"):
        known = meta[meta[attribute] != "unknown"]
        wrong = int((known[attribute] != known[f"gt_{attribute}"]).sum())
        stats = report.per_attribute[attribute]
        assert (stats["n"], stats["wrong"], stats["correct"]) == (len(known), wrong, len(known) - wrong)
        assert stats["precision"] == pytest.approx((len(known) - wrong) / len(known))
    assert report.per_attribute["material"]["wrong"] == 5

    cues = {c["cue"]: c for c in report.contamination}
    assert cues["throw on with"]["kind"] == "phrase"
    assert cues["throw on with"]["wrong_by_attribute"] == {"material": 3}
    assert cues["sold separately"]["n_wrong"] == 3 and cues["sold separately"]["n_correct"] == 0
    assert cues["tees"]["kind"] == "garment" and cues["tees"]["wrong_by_attribute"] == {"material": 1, "pattern": 1}
    assert "pairs well with" not in cues  # only in sentences of correct rows
    assert "for a casual day" not in cues  # follows the value: it cannot have caused it
    assert "tees sold" not in cues  # explains nothing "sold separately" does not
    advice = "\n".join(report.recommendations)
    assert "add 'throw on with' to contamination_cues: 3 wrong material extractions" in advice
    assert "attribute material precision" in advice and "'denim' (2 wrong)" in advice
    assert report.to_dict()["per_attribute"]["material"]["wrong"] == 5


def test_a_clean_audit_recommends_no_change(meta, tmp_path):
    clean = meta[(meta[list(ATTRIBUTES)].to_numpy() == meta[[f"gt_{a}" for a in ATTRIBUTES]].to_numpy()).all(1)]
    sample = simulate_review(make_audit_sample(clean, n=len(clean)), clean)
    report = analyze_audit(write_audit(sample, tmp_path))
    assert report.counts["wrong"] == 0 and report.contamination == []
    assert report.recommendations == [f"all {len(sample)} judged extractions are correct and no attribute is below "
                                      "0.95: this audit calls for no schema change"]


def test_invalid_verdicts_are_named_by_csv_line(tmp_path):
    path = tmp_path / "grounding_audit.csv"
    path.write_text(
        "item_id,category2,attribute,value,evidence,verdict\n"
        'I1,tees,material,cotton,"Cotton tee.\nSoft.",correct\n'   # lines 2-3
        "I2,tees,color,red,Red tee.,\n"                             # line 4: empty
        "I3,tees,pattern,solid,Solid tee., Wrong \n"               # line 5: fine after normalising
        "I4,tees,neckline,crew,Crew tee.,yes\n"                     # line 6: invalid
    )
    with pytest.raises(ValueError) as error:
        analyze_audit(path)
    message = str(error.value)
    assert "2 row(s)" in message and "4 ('')" in message and "6 ('yes')" in message
    assert "allowed values: correct, wrong, unsure" in message


def test_missing_file_and_columns_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        analyze_audit(tmp_path / "nope.csv")
    path = tmp_path / "partial.csv"
    path.write_text("item_id,category2,attribute,value\nI1,tees,material,cotton\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['evidence', 'verdict'\]"):
        analyze_audit(path)


def test_coverage_is_the_known_fraction_per_category():
    meta = pd.DataFrame({
        "category2": ["tees", "tees", "shorts"],
        "material": ["cotton", "unknown", "denim"],
        "pattern": ["unknown", "unknown", "solid"],
        "neckline": ["crew", "v-neck", "unknown"],
        "sleeve": ["unknown"] * 3,
        "color": ["red", "", "blue"],
    })
    coverage = coverage_by_category(meta).set_index("category2")
    assert coverage.loc["tees"].to_dict() == {"n_items": 2, "material": 0.5, "pattern": 0.0, "neckline": 1.0,
                                              "sleeve": 0.0, "color": 0.5}
    assert coverage.loc["shorts", "pattern"] == 1.0
