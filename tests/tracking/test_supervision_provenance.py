"""Supervision files through the real stages: groups, mine and pairs record the fingerprints they were
made from, and pairs / train refuse a file of another seed's catalog, naming it, both fingerprints
and the stage to re-run (issue 11, item 7)."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from protocol.data.pair_generator import write_pairs
from protocol.data.processed import load_processed
from protocol.io import read_json
from protocol.provenance import FingerprintMismatchError, MissingProvenanceError, provenance
from protocol.retrieval.catalog import load_catalog
from protocol.tracking.stages.supervision import GroupsConfig, MineConfig, PairsConfig, run_groups, run_mine, run_pairs
from protocol.tracking.stages.train import TrainStageConfig, run_train
from tests.data.test_hard_negatives import stored_provenance
from tests.tracking.test_stages import tiny_baseline


@pytest.fixture(scope="module")
def seed1_prepared(tmp_path_factory):
    """The tiny catalog of tests.conftest.tiny_prepared, generated and split with seed 1."""
    from protocol.data.prepare import finalize, save_processed
    from protocol.data.synthetic import generate_catalog

    out = tmp_path_factory.mktemp("tiny_seed1") / "prepared"
    raw = generate_catalog(n_products=80, seed=1, image_size=64, show_progress=False)
    save_processed(finalize(raw, seed=1, show_progress=False), out, source="synthetic(tiny, seed 1)")
    return out


def _pairs(prepared, groups, hard_negatives, out) -> dict:
    return run_pairs(PairsConfig(prepared=str(prepared), groups=str(groups), hard_negatives=str(hard_negatives),
                                 n_pairs=200, output_dir=str(out)))


def _train(tiny_prepared, baseline, pairs, hard_negatives, tmp_path, groups) -> dict:
    return run_train(TrainStageConfig(prepared=str(tiny_prepared), catalog=baseline["catalog_dir"], pairs=str(pairs),
                                      hard_negatives_path=str(hard_negatives), groups=str(groups),
                                      cache_dir=str(tmp_path / "cache"), epochs=1, register=False,
                                      output_dir=str(tmp_path / "train")))


def test_supervision_records_its_fingerprints_and_another_seeds_files_are_refused(
        tracking_uri, tiny_prepared, seed1_prepared, tmp_path):
    baseline = tiny_baseline(tiny_prepared, tmp_path, register=False)
    manifest = load_catalog(baseline["catalog_dir"]).manifest
    dataset_0, backbone = manifest["dataset_fingerprint"], manifest["backbone_fingerprint"]
    dataset_1 = load_processed(seed1_prepared).fingerprint
    assert dataset_1 != dataset_0

    mine = run_mine(MineConfig(catalog=baseline["catalog_dir"], max_anchors=60, per_anchor=2, candidates=10,
                               output_dir=str(tmp_path / "mine")))
    assert mine["n"] > 0
    assert stored_provenance(mine["hard_negatives"]) == {"dataset_fingerprint": dataset_0,
                                                         "backbone_fingerprint": backbone}
    groups_0 = run_groups(GroupsConfig(prepared=str(tiny_prepared), spot_check=5, output_dir=str(tmp_path / "g0")))
    groups_1 = run_groups(GroupsConfig(prepared=str(seed1_prepared), spot_check=5, output_dir=str(tmp_path / "g1")))
    assert read_json(groups_0["groups_json"])["provenance"] == {"dataset_fingerprint": dataset_0}
    assert read_json(groups_1["groups_json"])["provenance"] == {"dataset_fingerprint": dataset_1}
    pairs = _pairs(tiny_prepared, groups_0["groups_json"], mine["hard_negatives"], tmp_path / "pairs")
    # pairs has no backbone of its own: it records the one its hard negatives were mined with
    assert stored_provenance(pairs["pairs"]) == {"dataset_fingerprint": dataset_0, "backbone_fingerprint": backbone}

    # the case: the seed-1 catalog with the seed-0 hard negatives
    with pytest.raises(FingerprintMismatchError, match=(
            f"(?s)hard_negatives.parquet {re.escape(mine['hard_negatives'])}.*{dataset_0}.*{dataset_1}"
            ".*re-run the mine stage")):
        _pairs(seed1_prepared, groups_1["groups_json"], mine["hard_negatives"], tmp_path / "pairs_1")
    with pytest.raises(FingerprintMismatchError, match=(
            f"(?s)groups.json {re.escape(groups_1['groups_json'])}.*{dataset_1}.*{dataset_0}"
            ".*re-run the groups stage")):
        _pairs(tiny_prepared, groups_1["groups_json"], mine["hard_negatives"], tmp_path / "pairs_2")

    # train refuses pairs of another backbone, and pairs or hard negatives without provenance
    table = pd.read_parquet(pairs["pairs"])
    other_backbone = write_pairs(table, {}, tmp_path / "other_backbone", provenance(dataset_0, "e" * 64))["pairs"]
    with pytest.raises(FingerprintMismatchError, match=(
            f"(?s)pairs.parquet {re.escape(str(other_backbone))} \\(backbone\\).*{'e' * 64}.*{backbone}"
            ".*re-run the pairs stage")):
        _train(tiny_prepared, baseline, other_backbone, mine["hard_negatives"], tmp_path, groups_0["groups_json"])
    (tmp_path / "old").mkdir()
    table.to_parquet(tmp_path / "old" / "pairs.parquet")
    pd.read_parquet(mine["hard_negatives"]).to_parquet(tmp_path / "old" / "hard_negatives.parquet")
    with pytest.raises(MissingProvenanceError, match="pairs.parquet .*re-run the pairs stage"):
        _train(tiny_prepared, baseline, tmp_path / "old" / "pairs.parquet", mine["hard_negatives"], tmp_path,
               groups_0["groups_json"])
    with pytest.raises(MissingProvenanceError, match="hard_negatives.parquet .*re-run the mine stage"):
        _train(tiny_prepared, baseline, pairs["pairs"], tmp_path / "old" / "hard_negatives.parquet", tmp_path,
               groups_0["groups_json"])
    # ... and groups of another seed's catalog: its in-batch group positives would pair other products
    with pytest.raises(FingerprintMismatchError, match=(
            f"(?s)groups.json {re.escape(groups_1['groups_json'])}.*{dataset_1}.*{dataset_0}"
            ".*re-run the groups stage")):
        _train(tiny_prepared, baseline, pairs["pairs"], mine["hard_negatives"], tmp_path, groups_1["groups_json"])
    trained = _train(tiny_prepared, baseline, pairs["pairs"], mine["hard_negatives"], tmp_path, groups_0["groups_json"])
    assert trained["best_path"]
