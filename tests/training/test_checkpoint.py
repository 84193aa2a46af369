"""Checkpoint files: atomic writes, weights_only loads, fingerprint checks, RNG capture."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from protocol.model.backbone import FingerprintMismatchError
from protocol.model.protocol_model import HeadsConfig, ProtocolHeads
from protocol.training.checkpoint import (
    capture_rng_state, epoch_checkpoint, load_checkpoint, restore_rng_state, save_checkpoint,
)


def make_state(fingerprint: str = "backbone-a") -> dict:
    heads = ProtocolHeads(HeadsConfig(in_dim=8, hidden_dim=4, attribute_classes={"neckline": ["crew", "v-neck"]}))
    optimizer = torch.optim.AdamW(heads.parameters(), lr=1e-3)
    heads.forward_text(torch.randn(3, 8)).sum().backward()
    optimizer.step()
    return {
        "heads": heads.state_for_checkpoint(), "optimizer": optimizer.state_dict(), "epoch": 2, "step": 40,
        "rng": capture_rng_state(), "sampler": {"epoch": 2, "position": 0, "seed": 1},
        "config": {"lr": 1e-3, "steps_per_epoch": None}, "backbone_fingerprint": fingerprint,
        "dataset_fingerprint": "dataset-x", "best_metric": None, "best_epoch": None,
        "reference_metrics": {"t2i.neckline.p10": 0.25}, "history": [{"epoch": 1, "val": {"a": 0.5}}],
    }


def test_round_trip_with_weights_only_load(tmp_path):
    state = make_state()
    path = save_checkpoint(epoch_checkpoint(tmp_path, 2), state)
    assert path == tmp_path / "checkpoints" / "epoch_2.pt"
    loaded = load_checkpoint(path, expected_backbone_fingerprint="backbone-a")
    for name, tensor in state["heads"]["state_dict"].items():
        assert torch.equal(loaded["heads"]["state_dict"][name], tensor)
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert loaded["history"] == state["history"] and loaded["best_metric"] is None
    restored = ProtocolHeads.from_checkpoint(loaded)
    x = torch.randn(4, 8)
    assert torch.equal(restored.forward_text(x), ProtocolHeads.from_checkpoint(state).forward_text(x))


def test_backbone_mismatch_names_both_fingerprints(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", make_state("backbone-a"))
    with pytest.raises(FingerprintMismatchError, match="backbone-a") as error:
        load_checkpoint(path, expected_backbone_fingerprint="backbone-b")
    assert "backbone-b" in str(error.value)


def test_objects_outside_weights_only_are_refused(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"heads": {}, "backbone_fingerprint": "x", "obj": random.Random(0)}, path)
    with pytest.raises(ValueError, match="not a readable protocol checkpoint"):
        load_checkpoint(path)


def test_missing_garbage_and_foreign_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_checkpoint(tmp_path / "garbage.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="lacks"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", make_state())
    before = path.read_bytes()
    with pytest.raises(ValueError, match="lacks"):
        save_checkpoint(path, {"epoch": 3})
    bad = make_state()
    bad["unpicklable"] = lambda: None  # torch.save fails half-way through
    with pytest.raises(Exception):
        save_checkpoint(path, bad)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temp files left behind


def test_rng_state_capture_and_restore(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    path = save_checkpoint(tmp_path / "rng.pt", {"heads": {}, "backbone_fingerprint": "x", "rng": state})
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(load_checkpoint(path)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]
