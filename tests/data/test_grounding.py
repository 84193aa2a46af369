"""Grounding: hand-made cases with known answers, schema errors, and floors on a generated catalog."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from protocol.data.attribute_schema import DEFAULT_SCHEMA_PATH, AttributeSchemaError, load_attribute_schema
from protocol.data.grounding import (build_text, ground_attributes, ground_attributes_with_evidence, grounding_report,
                                     map_category, map_label)
from protocol.data.prepare import finalize
from protocol.data.schema import ATTRIBUTES, UNKNOWN
from protocol.data.synthetic import generate_catalog


@pytest.fixture(scope="module")
def schema():
    return load_attribute_schema()


@pytest.mark.parametrize("title,description,category2,attribute,expected", [
    ("Relaxed tee", "Pairs well with our denim shorts.", "tees", "material", UNKNOWN),
    ("Relaxed cotton tee", "Pairs well with our denim shorts.", "tees", "material", "cotton"),
    ("Dress without sleeves", "", "dresses", "sleeve", "sleeveless"),
    ("Relaxed tee", "Also available: our denim shorts.", "tees", "material", UNKNOWN),
    ("Tee", "Finished with a leather belt.", "tees", "material", UNKNOWN),
    ("Tee", "Styled with a leather belt.", "tees", "material", UNKNOWN),
    ("Shorts in denim", "", "shorts", "material", "denim"),
    ("Tee", "Our shorts in denim are back.", "tees", "material", UNKNOWN),
    ("Tee", "A tee made of soft linen.", "tees", "material", "linen"),
    ("Denim Jeans", "", "trousers", "material", "denim"),
    ("Tee", "Layer it under a hooded jacket.", "tees", "neckline", UNKNOWN),
    ("Hooded jacket", "", "tees", "neckline", UNKNOWN),
    ("Hooded jacket", "", "jackets", "neckline", "hood"),
    ("Sweater", "Crew neck, no hood.", "sweaters", "neckline", "crew"),
    ("Sweater", "Made with no hood.", "sweaters", "neckline", UNKNOWN),
    ("Collar-less shirt", "", "shirts", "neckline", UNKNOWN),
    ("V-Neck Tee", "", "tees", "neckline", "v-neck"),
    ("Tee", "Features a crewneck.", "tees", "neckline", "crew"),
    ("Tee", "Short-sleeved cut.", "tees", "sleeve", "short"),
    ("Navy tee", "With white stripes.", "tees", "color", "navy"),
    ("Tee", "With white stripes.", "tees", "color", UNKNOWN),
    ("Tee", "With white stripes.", "tees", "pattern", "striped"),
    ("Tee", "Colour: Dark Blue.", "tees", "color", "navy"),
    ("Graphic Tee", "Soft cotton.", "graphic", "material", "cotton"),
    ("Tee", "Soft cotton.", "graphic", "pattern", "graphic"),
    ("<b>Silk</b> blouse", "", "shirts", "material", "silk"),
])
def test_hand_made_cases(schema, title, description, category2, attribute, expected):
    assert ground_attributes(title, description, category2, schema)[attribute] == expected


def test_title_wins_over_description_and_evidence_is_the_sentence(schema):
    evidence = ground_attributes_with_evidence("Linen shirt", "Cut from cotton. Pairs with denim.", "shirts", schema)
    assert evidence["material"] == ("linen", "Linen shirt")
    evidence = ground_attributes_with_evidence("Shirt", "Relaxed fit. Cut from cotton. Colour: red.", "shirts", schema)
    assert evidence["material"] == ("cotton", "Cut from cotton.")
    assert evidence["color"] == ("red", "Colour: red.")
    assert evidence["neckline"] == (UNKNOWN, "")


def test_source_labels_fill_in_only_where_text_is_silent(schema):
    labels = {"pattern": "Stripe", "color": "Dark Blue", "material": "Denim"}
    out = ground_attributes("Cotton tee", "", "tees", schema, source_labels=labels)
    assert out["material"] == "cotton"          # the text said it
    assert out["pattern"] == "striped"          # the label filled in
    assert out["color"] == "navy"
    assert ground_attributes_with_evidence("Tee", "", "tees", schema, {"pattern": "All over pattern"})["pattern"] == \
        (UNKNOWN, "")


def test_map_category_synonyms_and_unknowns(schema):
    assert map_category("T-Shirt", schema) == ("tops", "tees")
    assert map_category("Coats & Jackets", schema) == ("outerwear", "jackets")
    assert map_category("Jeans", schema) == ("bottoms", "trousers")
    assert map_category("Graphic Tees", schema) == ("tops", "graphic")
    assert map_category("Cardigan", schema) == ("knitwear", "cardigans")
    assert map_category("Swimwear", schema, "Beach") == ("beach", "swimwear")
    assert map_category("", schema) == ("other", UNKNOWN)


def test_map_label_and_build_text(schema):
    assert map_label("pattern", "Check", schema) == "plaid"
    assert map_label("material", None, schema) == UNKNOWN
    cleaned = build_text("<b>Cotton</b> Tee", "Soft &amp; light.\n Relaxed  fit.")
    assert cleaned == "Cotton Tee. Soft & light. Relaxed fit."
    assert build_text("Tee!", None) == "Tee!"


def _write_schema(tmp_path: Path, mutate) -> Path:
    doc = yaml.safe_load(DEFAULT_SCHEMA_PATH.read_text())
    mutate(doc)
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_schema_errors_name_the_file_and_key(tmp_path):
    path = _write_schema(tmp_path, lambda d: d["attributes"].pop("neckline"))
    with pytest.raises(AttributeSchemaError, match=r"schema\.yaml.*attributes\.neckline"):
        load_attribute_schema(path)
    path = _write_schema(tmp_path, lambda d: d["attributes"]["material"]["silk"].append("denim"))
    with pytest.raises(AttributeSchemaError, match=r"repeats synonym 'denim'"):
        load_attribute_schema(path)
    # A bare `no` in YAML is the boolean false, not the word.
    path = tmp_path / "bool.yaml"
    path.write_text(DEFAULT_SCHEMA_PATH.read_text().replace('["no", "not", "without", "non"]', "[no, not]"))
    with pytest.raises(AttributeSchemaError, match="negation.words"):
        load_attribute_schema(path)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_attribute_schema(tmp_path / "nope.yaml")


def test_grounding_report_known_answer():
    df = pd.DataFrame({
        "material": ["denim", "cotton", UNKNOWN, "wool"],
        "gt_material": ["denim", "linen", "cotton", UNKNOWN],
        "neckline": [UNKNOWN] * 4,
        "gt_neckline": ["crew", UNKNOWN, UNKNOWN, UNKNOWN],
    })
    report = grounding_report(df)
    assert set(report) == {"material", "neckline"}
    m = report["material"]
    assert m["precision"] == pytest.approx(1 / 3)   # 3 extracted, 1 right (wool vs unknown gt is wrong)
    assert m["recall"] == pytest.approx(1 / 3)      # 3 with known gt, 1 right
    assert m["coverage"] == pytest.approx(3 / 4)
    assert m["by_value"]["denim"] == {"precision": 1.0, "recall": 1.0, "n_extracted": 1, "n_gt": 1}
    assert report["neckline"]["precision"] is None and report["neckline"]["recall"] == 0.0


@pytest.fixture(scope="module")
def grounded_catalog():
    raw = generate_catalog(n_products=400, seed=1, image_size=32, show_progress=False)
    return finalize(raw, show_progress=False)


def test_precision_floors_under_contamination(grounded_catalog):
    report = grounding_report(grounded_catalog)
    for attribute in ("material", "neckline"):
        assert report[attribute]["precision"] >= 0.95, (attribute, report[attribute])
    for attribute in ATTRIBUTES:
        assert report[attribute]["recall"] > 0.4, (attribute, report[attribute])
    for rare in ("denim", "leather"):
        assert report["material"]["by_value"][rare]["precision"] >= 0.95
    # neckline is unsaid on about 40% of the items that have one
    applicable = grounded_catalog["gt_neckline"] != UNKNOWN
    stated = (grounded_catalog.loc[applicable, "neckline"] != UNKNOWN).mean()
    assert 0.45 < stated < 0.75


def test_the_catalog_fools_keyword_matching(grounded_catalog):
    """The floors have teeth: items whose text merely mentions denim/leather are often not denim/leather."""
    text = grounded_catalog["text"].str.lower()
    for rare in ("denim", "leather"):
        mentions = text.str.contains(rare)
        keyword_precision = (grounded_catalog.loc[mentions, "gt_material"] == rare).mean()
        grounded = grounded_catalog["material"] == rare
        grounded_precision = (grounded_catalog.loc[grounded, "gt_material"] == rare).mean()
        assert keyword_precision < grounded_precision - 0.05, (rare, keyword_precision, grounded_precision)


def test_graphic_policy_helpers():
    from protocol.data.graphic_policy import (category_match_matrix, graphic_mask, has_category, is_graphic,
                                              pattern_for_category, same_category)

    assert is_graphic(" Graphic ") and not is_graphic("tees") and not is_graphic(None)
    assert list(graphic_mask(["graphic", "tees"])) == [True, False]
    assert list(has_category(["tees", "graphic", UNKNOWN, "", None])) == [True, False, False, False, False]
    assert same_category("tees", "tees") and not same_category("graphic", "graphic")
    matches = category_match_matrix(["tees", "graphic"], [["tees", "graphic", "shorts"], ["graphic", "tees", "tees"]])
    assert matches.tolist() == [[True, False, False], [False, False, False]]
    assert pattern_for_category("graphic", UNKNOWN) == "graphic"
    assert pattern_for_category("graphic", "striped") == "striped"
    assert pattern_for_category("tees", UNKNOWN) == UNKNOWN


def test_a_text_grounds_the_first_garment_it_names_before_any_contamination_cue():
    from protocol.data.grounding import ground_category

    assert ground_category("Essential Rigid Denim Bermuda Shorts. Model is 178 cm tall.") == "shorts"
    assert ground_category("Graphic tee in cotton") == "graphic"  # the longest name wins
    assert ground_category("Wool Crew-neck Jumper") == "sweaters"  # a synonym
    assert ground_category("A soft top. Pairs well with our denim shorts.") == "unknown"  # another item's
    assert ground_category("A soft tee. Pairs well with our denim shorts.") == "tees"
    assert ground_category("Leather belt") == "unknown"
    assert ground_category("") == "unknown"
