"""The library on tiny datasets saved in Marqo's column layouts, with the tiny open_clip model."""

from __future__ import annotations

import datasets
import huggingface_hub.constants
import numpy as np
import pytest
import torch

from protocol.benchmark.loading import (
    DISK, HUB, DatasetUnavailable, dataset_source, embedding_view, open_dataset,
)
from protocol.benchmark.runner import BenchmarkModel, RunSettings, run_dataset
from protocol.benchmark.specs import load_protocol
from protocol.model.backbone import BackboneSpec, create_backbone
from protocol.model.features import extract_features
from protocol.model.protocol_model import HeadsConfig, ProtocolHeads
from tests.benchmark import tiny_datasets as tiny
from tests.conftest import TINY_MODEL

PROTOCOL = load_protocol()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tiny.data_dir(tmp_path_factory.mktemp("benchmark-data"))


@pytest.fixture(scope="module")
def backbone():
    return create_backbone(BackboneSpec(TINY_MODEL, "none", 0))


def zero_shot(backbone) -> BenchmarkModel:
    return BenchmarkModel("zero-shot tiny", backbone, ProtocolHeads.identity(backbone.embed_dim))


def run(key, model, data_dir, cache_dir, **settings):
    return run_dataset(PROTOCOL.datasets[key], PROTOCOL, model, RunSettings(cache_dir=cache_dir, num_workers=0,
                                                                           show_progress=False, **settings),
                       data_dir=data_dir)


def test_kagl_layout_scores_as_worked_by_hand_and_a_missing_column_stops_only_its_task(data_dir, backbone, tmp_path):
    outcome = run("KAGL", zero_shot(backbone), data_dir, tmp_path / "cache")
    assert outcome.ok and outcome.n_docs == tiny.N_DOCS and outcome.n_computed == tiny.N_DOCS
    assert outcome.source.kind == DISK
    tasks = {t.task.name: t for t in outcome.tasks}
    assert tasks["usage-to-product"].score is None
    assert "column(s) ['usage'] missing from dataset KAGL" in tasks["usage-to-product"].error
    for name, n in tiny.KAGL_N_QUERIES.items():
        assert tasks[name].error is None and tasks[name].score.n_queries == n, name
    for name, p10 in tiny.KAGL_P10.items():
        m = tasks[name].score.metrics
        assert m["P@10"] == pytest.approx(p10), name
        assert m["AvgP"] == pytest.approx((m["P@1"] + m["P@10"]) / 2)
    assert tasks["color-to-product"].score.metrics == pytest.approx({"P@1": 1, "P@10": 1, "MRR": 1, "AvgP": 1})
    t2i = tasks["text-to-image"].score
    assert t2i.metrics["Recall@10"] == 1.0  # every document is in the top 10
    shared = t2i.per_query.set_index("query").loc["red tee"]
    assert shared["n_relevant"] == 2 and shared["Recall@1"] in (0, 0.5)  # one of its two items, at most, at rank 1

    again = run("KAGL", zero_shot(backbone), data_dir, tmp_path / "cache")
    assert again.n_computed == 0 and again.fingerprint == outcome.fingerprint  # the cache answers
    assert {t.task.name: t.score.metrics for t in again.tasks if t.score} == \
        {t.task.name: t.score.metrics for t in outcome.tasks if t.score}


def test_imaterialist_layout_without_text_and_with_a_repeated_item_id(data_dir, backbone, tmp_path):
    outcome = run("iMaterialist", zero_shot(backbone), data_dir, tmp_path / "cache")
    tasks = {t.task.name: t.score for t in outcome.tasks}
    assert {name: s.n_queries for name, s in tasks.items()} == tiny.IMATERIALIST_N_QUERIES
    for name, p10 in tiny.IMATERIALIST_P10.items():
        assert tasks[name].metrics["P@10"] == pytest.approx(p10), name
    assert tasks["style-to-image"].metrics == pytest.approx({"P@1": 1, "P@10": 0.9, "MRR": 1, "AvgP": 0.95})
    assert all(len(top) == 9 for top in tasks["style-to-image"].per_query["top"])  # im8's two rows: one result


def test_the_attribute_heads_late_fusion_ranks_class_name_queries_it_grounds(data_dir, backbone, tmp_path):
    """Heads whose neckline classifier is exact on these images and whose fitted weight dominates the cosine:
    "v-neck" and "crew" find their items first, as the served model would rank them."""
    view = embedding_view(open_dataset(PROTOCOL.datasets["iMaterialist"],
                                       dataset_source(PROTOCOL.datasets["iMaterialist"], data_dir), "data"),
                          PROTOCOL, show_progress=False)
    features = extract_features(view.dataset, view.fingerprint, backbone, tmp_path / "cache", num_workers=0)
    classes = ["v-neck", "crew", "none"]
    labels = [classes.index(v) if v else 2 for v in tiny.IMATERIALIST["neckline"]]
    config = HeadsConfig(in_dim=backbone.embed_dim, out_dim=backbone.embed_dim, head="identity",
                         attribute_classes={"neckline": classes}, learn_fusion=False, attribute_weight=1.0)
    heads = ProtocolHeads(config).eval()
    image = heads.embed_numpy(features.image, None)[0]
    # logits = 100 x one-hot of each image's class, solved exactly on these 10 images
    weight, *_ = np.linalg.lstsq(image, 100 * np.eye(3)[labels], rcond=None)
    with torch.no_grad():
        heads.attribute_heads["neckline"].weight.copy_(torch.from_numpy(weight.T.astype(np.float32)))
        heads.attribute_heads["neckline"].bias.zero_()
    assert heads.attribute_log_probs(image).argmax(axis=1).tolist() == labels

    fused = {t.task.name: t.score.metrics for t in run("iMaterialist", BenchmarkModel("fused", backbone, heads),
                                                       data_dir, tmp_path / "cache").tasks}
    plain = {t.task.name: t.score.metrics for t in run("iMaterialist", zero_shot(backbone), data_dir,
                                                       tmp_path / "cache").tasks}
    assert fused["neckline-to-image"] == pytest.approx({"P@1": 1, "P@10": 0.25, "MRR": 1, "AvgP": 0.625})
    assert plain["neckline-to-image"]["MRR"] < 1  # the embedding alone does not find both first
    assert fused["category-to-image"] == pytest.approx(plain["category-to-image"])  # "dress" grounds no neckline


def test_a_dataset_that_cannot_be_loaded_is_an_outcome_with_its_reason(backbone, tmp_path):
    model, data_dir = zero_shot(backbone), tiny.data_dir(tmp_path / "data")
    missing = run("polyvore", model, data_dir, tmp_path / "cache")
    assert not missing.ok and missing.tasks == []
    assert f"no folder {data_dir / 'polyvore'}: save the dataset there with `datasets.load_dataset('Marqo/polyvore'" \
        in missing.error
    (data_dir / "atlas").mkdir()
    assert "is not a dataset saved with save_to_disk" in run("atlas", model, data_dir, tmp_path / "cache").error
    columns = {k: v for k, v in tiny.KAGL.items() if k != "item_ID"}
    tiny.save(columns | {"id": tiny.KAGL["item_ID"]}, data_dir / "fashion200k", seed=3)
    assert "lacks column 'item_ID', which every task needs" in run("fashion200k", model, data_dir,
                                                                    tmp_path / "cache").error
    splits = datasets.DatasetDict({"train": datasets.load_from_disk(str(data_dir / "iMaterialist")),
                                   "test": datasets.load_from_disk(str(data_dir / "iMaterialist"))})
    splits.save_to_disk(str(data_dir / "deepfashion-inshop"))
    assert "holds splits ['train', 'test'] but not 'data'" in run("deepfashion-inshop", model, data_dir,
                                                                   tmp_path / "cache").error


def test_without_a_data_dir_the_dataset_comes_from_the_hub(monkeypatch):
    spec = PROTOCOL.datasets["KAGL"]
    disk = dataset_source(spec, "/data")
    assert (disk.kind, disk.location) == (DISK, "/data/KAGL")
    source = dataset_source(spec, "")
    assert (source.kind, source.location) == (HUB, "Marqo/KAGL")
    # the real hub call, answered at once: these machines reach no hub, so it must fail, and say how
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetUnavailable, match=r"datasets.load_dataset\('Marqo/KAGL', split='data'\) failed: "):
        open_dataset(spec, source, "data")


def test_the_dataset_fingerprint_follows_the_content_not_the_copy(tmp_path):
    spec = PROTOCOL.datasets["iMaterialist"]
    a = tiny.save(tiny.IMATERIALIST, tmp_path / "a" / "iMaterialist", seed=2)
    b = tiny.save(tiny.IMATERIALIST, tmp_path / "b" / "iMaterialist", seed=2)
    c = tiny.save(tiny.IMATERIALIST, tmp_path / "c" / "iMaterialist", seed=9)  # other images
    fp = [embedding_view(open_dataset(spec, dataset_source(spec, p.parent), "data"), PROTOCOL,
                         show_progress=False).fingerprint for p in (a, b, c)]
    assert fp[0] == fp[1] != fp[2]
