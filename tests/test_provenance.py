"""Derived files carry the fingerprints they were made from; readers refuse other data, naming both."""

from __future__ import annotations

import pandas as pd
import pytest

from protocol.provenance import (FingerprintMismatchError, MissingProvenanceError, check_provenance, provenance,
                                 read_parquet, write_parquet)

DATASET, BACKBONE = "d" * 64, "b" * 64


def test_parquet_round_trip_keeps_table_and_fingerprints(tmp_path):
    df = pd.DataFrame({"anchor_id": ["a", "b"], "similarity": [0.5, 0.25]})
    path = write_parquet(df, tmp_path / "hard_negatives.parquet", provenance(DATASET, BACKBONE))
    table, record = read_parquet(path, "hard negatives", dataset=DATASET, backbone=BACKBONE)
    pd.testing.assert_frame_equal(table, df)
    assert record == {"dataset_fingerprint": DATASET, "backbone_fingerprint": BACKBONE}
    assert list(tmp_path.iterdir()) == [path]  # written atomically: no temp left beside it


def test_a_file_of_another_dataset_is_refused_naming_both_fingerprints(tmp_path):
    path = write_parquet(pd.DataFrame({"x": [1]}), tmp_path / "pairs.parquet", provenance("other" + "0" * 59))
    with pytest.raises(FingerprintMismatchError, match=f"(?s)pairs {path}.*other0.*{DATASET}"):
        read_parquet(path, "pairs", dataset=DATASET)


def test_a_file_without_fingerprints_is_refused_with_the_stage_to_rerun(tmp_path):
    path = tmp_path / "old.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(path)
    with pytest.raises(MissingProvenanceError, match="re-run the mine stage"):
        read_parquet(path, "hard negatives", dataset=DATASET, made_by="the mine stage")
    with pytest.raises(MissingProvenanceError, match="records no backbone_fingerprint"):
        check_provenance(provenance(DATASET), "groups.json", dataset=DATASET, backbone=BACKBONE)
    with pytest.raises(FileNotFoundError, match="run the pairs stage first"):
        read_parquet(tmp_path / "missing.parquet", "pairs", made_by="the pairs stage")
