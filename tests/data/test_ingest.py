"""Ingest of real-format product tables and datasets into the raw catalog, with rejects."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pandas as pd
import pytest
import yaml
from PIL import Image

from protocol.data.ingest import (
    ColumnMapping,
    IngestError,
    ingest_hf,
    ingest_table,
    load_mapping,
    write_rejects,
)


def image_bytes(color: tuple[int, int, int], fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 32), color).save(buffer, format=fmt)
    return buffer.getvalue()


def write_file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- H&M articles.csv

HM_ROWS = [
    # article_id as the real CSV has it (leading zero lost), image layout, ...
    dict(article_id=108775015, image="010/0108775015.jpg", product_code=108775, prod_name="Strap top",
         product_type_name="Vest top", product_group_name="Garment Upper body",
         graphical_appearance_name="Solid", colour_group_name="Black",
         detail_desc="Jersey top with narrow shoulder straps."),
    dict(article_id=108775044, image="0108775044.jpg", product_code=108775, prod_name="Strap top",
         product_type_name="Vest top", product_group_name="Garment Upper body",
         graphical_appearance_name="Stripe", colour_group_name="White",
         detail_desc="Jersey top with narrow shoulder straps."),
    dict(article_id=110065001, image="011/0110065001.jpg", product_code=110065, prod_name="OP T-shirt, (Idro)",
         product_type_name="Cardigan", product_group_name="Garment Upper body",
         graphical_appearance_name="All over pattern", colour_group_name="Light Pink",
         detail_desc="Fine-knit cardigan, V-neck, buttons down the front."),
    dict(article_id=111565001, image="corrupt", product_code=111565, prod_name="20 den 1p Stockings",
         product_type_name="Leggings/Tights", product_group_name="Socks & Tights",
         graphical_appearance_name="Solid", colour_group_name="Black", detail_desc="Semi shiny nylon stockings."),
    dict(article_id=111586001, image=None, product_code=111586, prod_name="Shape Up 30 den 1p Tights",
         product_type_name="Leggings/Tights", product_group_name="Socks & Tights",
         graphical_appearance_name="Solid", colour_group_name="Black", detail_desc="Tights with built-in support."),
    dict(article_id=111593001, image="011/0111593001.jpg", product_code=111593, prod_name="",
         product_type_name="Shorts", product_group_name="Garment Lower body",
         graphical_appearance_name="Denim", colour_group_name="Blue", detail_desc=""),
    dict(article_id=108775015, image="010/0108775015.jpg", product_code=999, prod_name="Duplicate",
         product_type_name="Dress", product_group_name="Garment Full body",
         graphical_appearance_name="Solid", colour_group_name="Red", detail_desc="Same id again."),
    dict(article_id=None, image=None, product_code=1, prod_name="No id", product_type_name="Dress",
         product_group_name="Garment Full body", graphical_appearance_name="Solid", colour_group_name="Red",
         detail_desc="Has no article_id."),
    dict(article_id=112679048, image="011/0112679048.jpg", product_code=112679, prod_name="Cut-off jpeg",
         product_type_name="Sweater", product_group_name="Garment Upper body",
         graphical_appearance_name="Solid", colour_group_name="Grey", detail_desc="Truncated file."),
    dict(article_id=706016001, image="070/0706016001.jpg", product_code=706016, prod_name="Jade HW Denim Shorts",
         product_type_name="Shorts", product_group_name="Garment Lower body",
         graphical_appearance_name="Denim", colour_group_name="Dark Blue", detail_desc="5-pocket shorts."),
]


@pytest.fixture
def hm(tmp_path: Path) -> dict:
    images = tmp_path / "hm" / "images"
    expected_bytes = {}
    for i, row in enumerate(HM_ROWS):
        if row["image"] is None or row["article_id"] is None:
            continue
        item_id = f"{row['article_id']:010d}"
        if row["image"] == "corrupt":
            write_file(images / item_id[:3] / f"{item_id}.jpg", b"this is not an image")
        elif row["prod_name"] == "Cut-off jpeg":
            # headers intact, scan data cut short: PIL opens it and fails only when decoding
            busy = Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
            buffer = io.BytesIO()
            busy.save(buffer, format="JPEG")
            write_file(images / row["image"], buffer.getvalue()[: len(buffer.getvalue()) * 4 // 5])
        elif row["prod_name"] != "Duplicate":
            written = write_file(images / row["image"], image_bytes((i * 20, 40, 90))).read_bytes()
            if row["prod_name"]:  # the empty-text row has an image but is rejected
                expected_bytes[item_id] = written
    table = pd.DataFrame(HM_ROWS).drop(columns="image")
    table["article_id"] = table["article_id"].astype("Int64")
    csv = tmp_path / "hm" / "articles.csv"
    table.to_csv(csv, index=False)
    return {"csv": csv, "images": images, "bytes": expected_bytes}


def test_hm_preset_ingests_prefix_and_flat_images_and_rejects_bad_rows(hm):
    result = ingest_table(hm["csv"], hm["images"], load_mapping("hm"))

    raw = result.to_frame().set_index("item_id")  # four small images: in memory is fine here
    assert list(raw.index) == ["0108775015", "0108775044", "0110065001", "0706016001"]
    assert result.n_read == len(HM_ROWS)
    assert {k: raw.loc[k, "image_bytes"] for k in raw.index} == hm["bytes"]
    assert list(raw["category2"]) == ["tees", "tees", "cardigans", "shorts"]
    assert list(raw["category1"]) == ["tops", "tops", "tops", "bottoms"]
    # unmapped values stay, lower-cased: grounding.map_label turns them into the vocabulary or unknown
    assert list(raw["src_pattern"]) == ["solid", "striped", "all over pattern", "denim"]
    assert list(raw["src_material"]) == ["solid", "stripe", "all over pattern", "denim"]
    assert list(raw["src_color"]) == ["black", "white", "light pink", "dark blue"]
    assert list(raw["product_id"]) == ["108775", "108775", "110065", "706016"]
    assert raw.loc["0110065001", "title"] == "OP T-shirt, (Idro)"
    assert raw.loc["0110065001", "description"].startswith("Fine-knit cardigan, V-neck")
    assert list(raw["url"]) == ["", "", "", ""]

    rejects = result.rejects
    assert list(rejects.columns) == ["row", "item_id", "reason", "detail"]
    assert rejects[["row", "item_id", "reason"]].values.tolist() == [
        [4, "0111565001", "corrupt_image"],
        [5, "0111586001", "missing_image"],
        [6, "0111593001", "empty_text"],
        [7, "0108775015", "duplicate_item_id"],
        [8, "", "missing_item_id"],
        [9, "0112679048", "corrupt_image"],
    ]
    assert "0111586001.jpg" in rejects.loc[1, "detail"]
    assert "truncated" in rejects.loc[5, "detail"]  # opens fine, fails to decode
    assert result.summary() == {"n_read": 10, "n_items": 4, "n_rejected": 6, "rejected.corrupt_image": 2,
                                "rejected.missing_image": 1, "rejected.empty_text": 1,
                                "rejected.duplicate_item_id": 1, "rejected.missing_item_id": 1}


def test_summary_warning_counts_reasons(hm, caplog):
    with caplog.at_level("WARNING", logger="protocol.data.ingest"):
        ingest_table(hm["csv"], hm["images"], load_mapping("hm"))
    [record] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "rejected 6 of 10 rows" in record.getMessage()
    assert "corrupt_image: 2" in record.getMessage()
    assert "row 4 item '0111565001'" in record.getMessage()


def test_strict_stops_at_first_bad_row_naming_it(hm):
    with pytest.raises(IngestError, match=r"articles\.csv: row 4 \(item_id '0111565001'\) is bad: corrupt_image"):
        ingest_table(hm["csv"], hm["images"], load_mapping("hm"), strict=True)


def test_limit_reads_only_the_first_rows(hm):
    result = ingest_table(hm["csv"], hm["images"], load_mapping("hm"), limit=2)
    assert result.n_read == 2
    assert list(result.meta["item_id"]) == ["0108775015", "0108775044"]
    assert result.rejects.empty


def test_missing_required_column_fails_naming_column_and_file(hm):
    table = pd.read_csv(hm["csv"]).drop(columns=["prod_name"])
    broken = hm["csv"].with_name("articles_no_name.csv")
    table.to_csv(broken, index=False)
    with pytest.raises(ValueError) as err:
        ingest_table(broken, hm["images"], load_mapping("hm"))
    message = str(err.value)
    assert "articles_no_name.csv lacks column(s) ['prod_name'] (for title)" in message
    assert "'detail_desc'" in message  # the columns it does have


def test_write_rejects_writes_atomically(hm, tmp_path):
    result = ingest_table(hm["csv"], hm["images"], load_mapping("hm"))
    out = tmp_path / "prepared" / "rejects.csv"
    out.parent.mkdir()
    out.write_text("stale\n")
    write_rejects(result.rejects, out)
    back = pd.read_csv(out, dtype={"item_id": str}, keep_default_na=False)
    assert back[["row", "item_id", "reason"]].values.tolist() == \
        result.rejects[["row", "item_id", "reason"]].values.tolist()
    assert sorted(p.name for p in out.parent.iterdir()) == ["rejects.csv"]  # no temp file left behind

    write_rejects(result.rejects.iloc[:0], out)
    assert out.read_text().strip() == "row,item_id,reason,detail"


# ---------------------------------------------------------------- Kaggle styles.csv

STYLES_HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
STYLES_LINES = [
    # unquoted commas in the name, as in the real file; first data line on purpose (pandas
    # would take a too-long first line as an index column)
    "11111,Women,Apparel,Topwear,Tops,Red,Fall,2011,Casual,Red top, sleeveless, cotton",
    "15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt",
    "39386,Men,Apparel,Bottomwear,Jeans,Blue,Summer,2012,Casual,Peter England Men Party Blue Jeans",
    "59263,Women,Accessories,Watches,Watches,Silver,Winter,2016,Casual,Titan Women Silver, Watch",
    "21379,Men,Apparel,Bottomwear,Shorts,Black,Fall,2011,Casual,Manchester United Men Solid Black Shorts",
    "53759,Men,Apparel,Topwear,Tshirts,Grey,Summer,2012,Casual,Puma Men Grey T-shirt",
]


@pytest.fixture
def kaggle(tmp_path: Path) -> dict:
    root = tmp_path / "fashion-dataset"
    root.mkdir()
    (root / "styles.csv").write_text("\n".join([STYLES_HEADER, *STYLES_LINES]) + "\n")
    for item_id in ("11111", "15970", "39386", "59263", "21379"):  # 53759 has no image
        write_file(root / "images" / f"{item_id}.jpg", image_bytes((10, int(item_id) % 250, 30)))
    return {"root": root, "csv": root / "styles.csv"}


@pytest.mark.parametrize("image_dir", ["root", "images"])
def test_kaggle_preset_counts_malformed_lines_into_rejects(kaggle, image_dir):
    folder = kaggle["root"] if image_dir == "root" else kaggle["root"] / "images"
    result = ingest_table(kaggle["csv"], folder, load_mapping("kaggle_fashion"))

    assert result.n_read == 6
    assert result.meta[["item_id", "category1", "category2", "src_color"]].values.tolist() == [
        ["15970", "tops", "shirts", "navy blue"],
        ["39386", "bottoms", "trousers", "blue"],
        ["21379", "bottoms", "shorts", "black"],
    ]
    assert list(result.meta["description"]) == ["", "", ""]
    assert result.meta.loc[0, "title"] == "Turtle Check Men Navy Blue Shirt"
    assert result.rejects[["row", "item_id", "reason"]].values.tolist() == [
        [1, "11111", "malformed_line"],
        [4, "59263", "malformed_line"],
        [6, "53759", "missing_image"],
    ]
    assert list(result.rejects["detail"][:2]) == ["12 fields where the header has 10",
                                                  "11 fields where the header has 10"]
    assert "53759.jpg" in result.rejects.loc[2, "detail"]


def test_kaggle_strict_names_the_malformed_line(kaggle):
    with pytest.raises(IngestError, match=r"row 1 \(item_id '11111'\) is bad: malformed_line"):
        ingest_table(kaggle["csv"], kaggle["root"], load_mapping("kaggle_fashion"), strict=True)


# ---------------------------------------------------------------- JSONL / Parquet with a custom mapping

CUSTOM_ROWS = [
    {"sku": 501, "name": "Leather biker jacket", "brand": "Acme", "blurb": "Zip front.", "cat": "Jackets",
     "file": "a/501.png", "fabric": "Leather"},
    {"sku": 502, "name": "Denim shorts", "brand": "Acme", "blurb": "", "cat": "SHORTS",
     "file": "a/502.png", "fabric": "denim"},
    {"sku": 503, "name": "Cardigan", "brand": "Acme", "blurb": "Wool.", "cat": "Knitwear",
     "file": "a/503.png", "fabric": None},
    {"sku": 502, "name": "Again", "brand": "Acme", "blurb": "dup", "cat": "Shorts", "file": "a/502.png",
     "fabric": "denim"},
    {"sku": 504, "name": "No file", "brand": "Acme", "blurb": "x", "cat": "Tops", "file": "", "fabric": ""},
]


@pytest.fixture
def custom(tmp_path: Path) -> dict:
    root = tmp_path / "shop"
    for sku, color in ((501, (5, 5, 5)), (502, (40, 60, 200)), (503, (200, 180, 160))):
        write_file(root / "img" / "a" / f"{sku}.png", image_bytes(color, "PNG"))
    mapping = {
        "item_id": "sku",
        "id_format": "SKU{}",
        "title": "{brand} {name}",
        "description": "blurb",
        "category2": "cat",
        "image": "file",
        "src_material": "fabric",
        "category_map": {"knitwear": "cardigans"},
    }
    mapping_path = root / "mapping.yaml"
    mapping_path.write_text(yaml.safe_dump(mapping))
    jsonl = root / "products.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in CUSTOM_ROWS))
    parquet = root / "products.parquet"
    pd.DataFrame(CUSTOM_ROWS).to_parquet(parquet)
    return {"root": root, "images": root / "img", "mapping": mapping_path, "jsonl": jsonl, "parquet": parquet}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_custom_mapping_on_jsonl_and_parquet(custom, fmt):
    result = ingest_table(custom[fmt], custom["images"], load_mapping(str(custom["mapping"])))
    assert result.meta[["item_id", "title", "category2", "src_material"]].values.tolist() == [
        ["SKU501", "Acme Leather biker jacket", "jackets", "leather"],
        ["SKU502", "Acme Denim shorts", "shorts", "denim"],
        ["SKU503", "Acme Cardigan", "cardigans", ""],
    ]
    assert result.images.fetch([0]) == [(custom["images"] / "a" / "501.png").read_bytes()]
    assert list(result.meta.columns) == ["item_id", "product_id", "url", "title", "description", "category1",
                                         "category2", "src_material"]
    assert result.rejects[["row", "item_id", "reason"]].values.tolist() == [
        [4, "SKU502", "duplicate_item_id"],
        [5, "SKU504", "missing_image"],
    ]


def test_unsupported_table_type_is_a_clear_error(custom):
    table = custom["root"] / "products.xlsx"
    table.write_bytes(b"")
    with pytest.raises(ValueError, match=r"products\.xlsx: unsupported table type '\.xlsx'"):
        ingest_table(table, custom["images"], load_mapping(str(custom["mapping"])))


def test_mapping_unknown_key_names_file_and_key(custom):
    bad = custom["root"] / "bad_mapping.yaml"
    bad.write_text(yaml.safe_dump({"item_id": "sku", "category2": "cat", "title": "name",
                                   "image": "file", "colour": "c"}))
    with pytest.raises(ValueError, match=r"bad_mapping\.yaml: unknown key\(s\) \['colour'\]"):
        load_mapping(str(bad))
    with pytest.raises(ValueError, match=r"overrides for .*mapping\.yaml: unknown key\(s\) \['titel'\]"):
        load_mapping(str(custom["mapping"]), {"titel": "name"})


def test_overrides_replace_preset_values():
    mapping = load_mapping("hm", {"description": None, "title": "{prod_name} ({colour_group_name})"})
    assert mapping.description is None
    assert mapping.required_columns()["title"] == ["prod_name", "colour_group_name"]
    assert mapping.category_map["t-shirt"] == "tees"  # lookups ignore case
    with pytest.raises(FileNotFoundError, match="neither a YAML file nor a preset"):
        load_mapping("zalando")


# ---------------------------------------------------------------- Hugging Face dataset on disk

def hf_mapping() -> ColumnMapping:
    return ColumnMapping(item_id="id", title="title", category2="label", image="image",
                         category_map={"Cardigan": "cardigans"})


@pytest.fixture
def hf_dir(tmp_path: Path) -> dict:
    png = image_bytes((0, 128, 0), "PNG")
    jpeg = image_bytes((128, 0, 0))
    data = {
        "id": ["h1", "h2", "h3", "h4"],
        "title": ["Green cardigan", "Red tee", "Broken", ""],
        "label": ["Cardigan", "Tees", "Tees", "Tees"],
        "image": [{"bytes": png, "path": None}, {"bytes": jpeg, "path": None},
                  {"bytes": b"\x89PNG not really", "path": None}, {"bytes": png, "path": None}],
    }
    features = datasets.Features({"id": datasets.Value("string"), "title": datasets.Value("string"),
                                  "label": datasets.Value("string"), "image": datasets.Image()})
    dataset = datasets.Dataset.from_dict(data, features=features)
    single = tmp_path / "hf_single"
    dataset.save_to_disk(str(single))
    splits = tmp_path / "hf_splits"
    datasets.DatasetDict({"train": dataset, "test": dataset.select([1])}).save_to_disk(str(splits))
    return {"single": single, "splits": splits, "png": png, "jpeg": jpeg}


def test_ingest_hf_from_disk_keeps_encoded_bytes(hf_dir):
    result = ingest_hf(hf_dir["single"], hf_mapping())
    assert result.meta[["item_id", "category2"]].values.tolist() == [["h1", "cardigans"], ["h2", "tees"]]
    assert result.images.fetch([0, 1]) == [hf_dir["png"], hf_dir["jpeg"]]
    assert result.images.fetch([1]) == [hf_dir["jpeg"]]  # a shard at a time, by row
    assert result.rejects[["row", "item_id", "reason"]].values.tolist() == [
        [3, "h3", "corrupt_image"],
        [4, "h4", "empty_text"],
    ]


def test_ingest_hf_dataset_dict_needs_a_split(hf_dir):
    with pytest.raises(ValueError, match=r"has splits \['train', 'test'\]; pass split="):
        ingest_hf(hf_dir["splits"], hf_mapping())
    result = ingest_hf(hf_dir["splits"], hf_mapping(), split="test")
    assert result.meta["item_id"].tolist() == ["h2"]


def test_ingest_hf_missing_column_and_offline_hub(hf_dir, monkeypatch):
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['name'\] \(for title\)"):
        ingest_hf(hf_dir["single"], ColumnMapping(item_id="id", title="name", category2="label", image="image"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets: no retries
    with pytest.raises(OSError, match="pass a local directory written by Dataset.save_to_disk"):
        ingest_hf("someone/no-such-fashion-set", hf_mapping(), split="train")
