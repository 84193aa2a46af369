"""Validation on the mini catalog, from cached features only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocol.model.protocol_model import HeadsConfig, ProtocolHeads
from protocol.retrieval.metrics import evaluate_retrieval
from protocol.training.synthetic import synthetic_features, synthetic_meta
from protocol.training.validation import deltas, validate, validation_rows


@pytest.fixture(scope="module")
def data():
    meta, truth = synthetic_meta(n_products=120, seed=4)
    return synthetic_features(meta, truth, dim=16, seed=4), meta


def test_identity_validation_is_the_zero_shot_evaluation_on_the_mini_catalog(data):
    features, meta = data
    metrics = validate(ProtocolHeads.identity(16), features, meta, max_catalog=100, max_queries=30, seed=2)
    queries, catalog = validation_rows(meta, 100, seed=2)
    direct = evaluate_retrieval(
        meta.iloc[queries].reset_index(drop=True), features.text[queries], features.image[queries],
        meta.iloc[catalog].reset_index(drop=True), features.image[catalog], features.text[catalog],
        fusion_weight=0.5, max_queries=30, seed=2,
    ).metrics
    assert metrics.keys() == direct.keys()
    for name in direct:
        assert metrics[name] == pytest.approx(direct[name], abs=1e-6), name
    assert "t2i.neckline.p10" in metrics and metrics["t2i.n_queries"] == 30


def test_the_mini_catalog_is_the_val_items_themselves_none_trained_on(data):
    _, meta = data
    queries, catalog = validation_rows(meta, 10_000, seed=1)
    assert (meta["split"].to_numpy()[queries] == "val").all()
    assert len(queries) == (meta["split"] == "val").sum()
    assert np.array_equal(catalog, queries)  # each query's own item included, as in the held-out view
    with pytest.raises(ValueError, match=r"catalog split must be one of \('val', 'train'\), got 'test'"):
        validation_rows(meta, 50, seed=1, catalog_split="test")


def test_a_train_mini_catalog_is_a_seeded_sample_of_train_items(data):
    _, meta = data
    queries, catalog = validation_rows(meta, 50, seed=1, catalog_split="train")
    assert len(queries) == (meta["split"] == "val").sum()
    assert len(catalog) == 50 and (meta["split"].to_numpy()[catalog] == "train").all()
    assert np.array_equal(catalog, validation_rows(meta, 50, seed=1, catalog_split="train")[1])
    assert not np.array_equal(catalog, validation_rows(meta, 50, seed=2, catalog_split="train")[1])
    everything = validation_rows(meta, 10_000, seed=1, catalog_split="train")[1]
    assert len(everything) == (meta["split"] == "train").sum()


def test_fusion_weight_one_makes_t2f_equal_t2i(data):
    features, meta = data
    heads = ProtocolHeads(HeadsConfig(in_dim=16, out_dim=16, hidden_dim=8))
    metrics = validate(heads, features, meta, max_catalog=80, max_queries=20, fusion_weight=1.0)
    for name, value in metrics.items():
        if name.startswith("t2i."):
            assert metrics["t2f." + name[4:]] == pytest.approx(value), name


def test_heads_change_the_metrics(data):
    features, meta = data
    heads = ProtocolHeads(HeadsConfig(in_dim=16, out_dim=16, hidden_dim=8))
    reference = validate(heads, features, meta, max_catalog=80, max_queries=30)
    with torch.no_grad():
        heads.text_head.residual[-1].weight.normal_(std=2.0)
    changed = validate(heads, features, meta, max_catalog=80, max_queries=30)
    assert changed["t2i.category.p10"] != reference["t2i.category.p10"]
    assert changed["i2i.category.p10"] == pytest.approx(reference["i2i.category.p10"])  # image side untouched


def test_deltas_are_points_over_the_shared_metrics():
    out = deltas({"t2i.neckline.p10": 0.30, "t2i.recall10": 0.5, "new": 1.0},
                 {"t2i.neckline.p10": 0.25, "t2i.recall10": 0.6})
    assert out == {"delta.t2i.neckline.p10": pytest.approx(5.0), "delta.t2i.recall10": pytest.approx(-10.0)}


def test_validation_needs_a_val_split_and_aligned_features(data):
    features, meta = data
    with pytest.raises(ValueError, match="'val'"):
        validate(ProtocolHeads.identity(16), features, meta.assign(split="train"))
    with pytest.raises(ValueError, match="same row order"):
        validate(ProtocolHeads.identity(16), features, meta.iloc[:-1])
