"""Real short trainings on structured synthetic features (protocol.training.synthetic).

The synthetic text features are a rotated, noisy view of the image features, so zero-shot
text->image retrieval is weak and heads that learn the rotation do much better: a signal
that training must find. Runs use one torch thread and a few hundred items (seconds each).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from protocol.events import RecordingLogger
from protocol.io import read_json
from protocol.model.backbone import FingerprintMismatchError
from protocol.model.protocol_model import ProtocolHeads
from protocol.training.batches import UNIFORM_RELEVANCE
from protocol.training.checkpoint import load_checkpoint
from protocol.training.config import TrainConfig
from protocol.training.synthetic import synthetic_training_set
from protocol.training.optim import clip_grads_, grad_norm
from protocol.training.train import TrainingDivergedError, out_of_patience, train

CFG = TrainConfig(epochs=3, batch_size=32, lr=1e-3, warmup_fraction=0.1, num_threads=1, log_every=10,
                  val_max_queries=500)
PRIMARY = CFG.primary_metric


@pytest.fixture(scope="module")
def data():
    return synthetic_training_set(n_products=200, dim=32, n_pairs=2000, seed=0)


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    recorder = RecordingLogger()
    result = train(CFG, data.features, data.meta, data.pairs, data.hard_negatives, out, groups=data.groups,
                   logger=recorder)
    return result, out, recorder


def run(data, out, cfg=CFG, **kwargs):
    return train(cfg, data.features, data.meta, data.pairs, data.hard_negatives, out, groups=data.groups, **kwargs)


def state_of(heads: ProtocolHeads) -> dict[str, torch.Tensor]:
    return heads.state_dict()


def test_training_improves_text_to_image_retrieval_over_zero_shot(full_run):
    result, _, _ = full_run
    ref, final = result.reference_metrics, result.final_metrics
    for name in ("t2i.category.p10", "t2i.material.p10", "t2i.neckline.p10"):
        assert final[name] - ref[name] > 0.05, (name, ref[name], final[name])
    assert final["t2i.recall10"] - ref["t2i.recall10"] > 0.2  # of a small, held-out catalog: zero-shot is ~0.7
    losses = [h["train"]["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.best_epoch == 1 + int(np.argmax([h["primary"] for h in result.history]))
    assert result.best_metric == pytest.approx(max(h["primary"] for h in result.history))


def test_training_writes_config_log_and_checkpoints(full_run):
    result, out, _ = full_run
    config = read_json(out / "config.json")
    assert config["train"] == CFG.to_dict()
    assert config["heads"]["attribute_classes"].keys() == {"category", "material", "pattern", "neckline", "sleeve"}
    assert config["n_trainable_parameters"] == result.heads.n_trainable_parameters()
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]
    steps = [r for r in records if r["kind"] == "step"]
    assert steps and all(r["step"] % CFG.log_every == 0 for r in steps)
    assert {"train.loss", "train.t2i", "train.attribute", "train.acc.neckline", "train.lr"} <= steps[0].keys()

    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch_1.pt", "epoch_2.pt", "epoch_3.pt", "final.pt"]
    final = load_checkpoint(result.final_path, expected_backbone_fingerprint=result_fingerprint(out))
    assert final["epoch"] == 3 and final["best_epoch"] == result.best_epoch
    restored = ProtocolHeads.from_checkpoint(final)
    for name, tensor in state_of(result.heads).items():
        assert torch.equal(restored.state_dict()[name], tensor), name
    best = load_checkpoint(result.best_path)
    assert best["epoch"] == result.best_epoch


def result_fingerprint(out: Path) -> str:
    return read_json(out / "config.json")["backbone_fingerprint"]


def test_training_reports_metrics_mix_tables_and_artifacts(full_run):
    _, _, recorder = full_run
    per_epoch = {step: m for step, m in recorder.metrics if f"val.{PRIMARY}" in m}
    assert sorted(per_epoch) == [1, 2, 3]
    for metrics in per_epoch.values():
        expected = 100 * (metrics[f"val.{PRIMARY}"] - recorder.metrics[0][1][f"val.reference.{PRIMARY}"])
        assert metrics[f"val.delta.{PRIMARY}"] == pytest.approx(expected)
        assert metrics["train.pairs_per_s"] > 0
    table = recorder.tables["sampler/mix_epoch_001.json"]
    assert {"group", "target_share", "achieved_share"} <= set(table.columns)
    assert table.set_index("group").loc["category2=tees", "achieved_share"] <= CFG.dominant_cap + 1e-9
    artifacts = {(Path(path).name, where) for path, where in recorder.artifacts}
    assert ("final.pt", "checkpoints") in artifacts and ("best.pt", "checkpoints") in artifacts


def test_resumed_run_ends_with_the_same_weights_and_metrics(data, full_run, tmp_path):
    full, _, _ = full_run
    first = run(data, tmp_path, stop_after_epochs=1)
    assert first.stopped_early and first.final_path is None
    assert first.last_checkpoint == tmp_path / "checkpoints" / "epoch_1.pt"
    resumed = run(data, tmp_path, resume=first.last_checkpoint)
    assert not resumed.stopped_early
    for name, tensor in state_of(full.heads).items():
        assert torch.equal(state_of(resumed.heads)[name], tensor), name
    assert resumed.final_metrics == full.final_metrics
    assert resumed.reference_metrics == full.reference_metrics
    assert (resumed.best_epoch, resumed.best_metric) == (full.best_epoch, full.best_metric)
    timing = {"seconds", "pairs_per_s"}
    strip = lambda history: [{k: v for k, v in h.items() if k not in timing} for h in history]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    assert epochs == [1, 2, 3]


@pytest.mark.parametrize("epoch, best_epoch, patience, expected", [
    (4, 1, 3, True), (3, 1, 3, False), (5, 4, 1, True), (9, 1, 0, False), (10, 1, 3, False), (2, None, 1, False)])
def test_out_of_patience_counts_the_epochs_since_the_best_one_before_the_last(epoch, best_epoch, patience, expected):
    assert out_of_patience(epoch, best_epoch, patience, epochs=10) is expected


@pytest.mark.parametrize("patience, epochs_run", [(2, 3), (0, 6)])
def test_training_stops_once_validation_has_not_improved_for_patience_epochs(data, tmp_path, patience, epochs_run):
    # lr so small that no ranking moves: epoch 1 stays the best, no later epoch improves on it
    cfg = dataclasses.replace(CFG, epochs=6, steps_per_epoch=3, lr=1e-12, patience=patience)
    result = run(data, tmp_path, cfg)
    assert [h["epoch"] for h in result.history] == list(range(1, epochs_run + 1))
    assert result.best_epoch == 1 and not result.stopped_early  # a finished run: final.pt, not an interruption
    assert result.final_path == tmp_path / "checkpoints" / "final.pt" and result.final_path.is_file()
    assert (tmp_path / "checkpoints" / f"epoch_{epochs_run}.pt").is_file()
    assert not (tmp_path / "checkpoints" / f"epoch_{epochs_run + 1}.pt").exists()


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(data, tmp_path):
    good = run(data, tmp_path, stop_after_epochs=1).last_checkpoint
    before = good.read_bytes()
    with pytest.raises(TrainingDivergedError) as error:
        run(data, tmp_path, dataclasses.replace(CFG, lr=1e38), resume=good)
    message = str(error.value)
    assert "epoch 2, step 2 of the epoch" in message and "'contrastive': nan" in message
    assert str(good) in message
    assert good.read_bytes() == before
    assert not (tmp_path / "checkpoints" / "epoch_2.pt").exists()
    assert not (tmp_path / "checkpoints" / "final.pt").exists()
    heads = ProtocolHeads.from_checkpoint(load_checkpoint(good))
    assert all(torch.isfinite(p).all() for p in heads.parameters())
    recovered = run(data, tmp_path, resume=good)  # the recovery the message suggests
    assert np.isfinite(recovered.final_metrics[PRIMARY])


def test_huge_lr_from_the_start_diverges_before_any_checkpoint(data, tmp_path):
    with pytest.raises(TrainingDivergedError, match="no checkpoint written yet"):
        run(data, tmp_path, dataclasses.replace(CFG, lr=1e38, epochs=1))


def test_plain_infonce_ablation_really_turns_the_features_off(data, tmp_path):
    plain = dataclasses.replace(CFG, epochs=1, attribute_heads=False, balanced_sampling=False, hard_negatives=False,
                                graded_pairs=False)
    recorder = RecordingLogger()
    with_negatives = train(plain, data.features, data.meta, data.pairs, data.hard_negatives, tmp_path / "a",
                           logger=recorder)
    without = train(plain, data.features, data.meta, data.pairs, None, tmp_path / "b")
    assert len(with_negatives.heads.attribute_heads) == 0
    assert plain.relevance() == UNIFORM_RELEVANCE  # graded_pairs off: every positive weighs 1
    for name, tensor in state_of(with_negatives.heads).items():  # the mined negatives are not used at all
        assert torch.equal(state_of(without.heads)[name], tensor), name
    steps = [m for _, m in recorder.metrics if "train.loss" in m]
    assert steps and not any(k.startswith(("train.attr", "train.acc", "train.attribute")) for k in steps[0])
    table = recorder.tables["sampler/mix_epoch_001.json"].set_index("group")
    natural = (data.meta.loc[data.meta["split"] == "train", "category2"] == "cardigans").mean()
    assert table.loc["category2=cardigans", "target_share"] == pytest.approx(natural)  # no oversampling


def test_changing_the_pair_mix_changes_the_trained_model(data, tmp_path):
    from protocol.data.pair_generator import PairMix, generate_pairs

    cfg = dataclasses.replace(CFG, epochs=1, steps_per_epoch=20)
    weak_heavy, _ = generate_pairs(data.meta, data.groups, data.hard_negatives, n_pairs=len(data.pairs), seed=0,
                                   mix=PairMix(strong_group=0.05, strong_attribute=0.05, medium=0.05, weak=0.5,
                                               hard_mined=0.1, hard_attribute=0.05, easy=0.2))
    default = run(data, tmp_path / "default", cfg)
    other = run(dataclasses.replace(data, pairs=weak_heavy), tmp_path / "weak", cfg)
    assert other.history[0]["train"]["partner_share.weak"] > default.history[0]["train"]["partner_share.weak"] + 0.3
    changed = [name for name, tensor in state_of(default.heads).items()
               if not torch.equal(state_of(other.heads)[name], tensor)]
    assert changed  # same seed, same steps: only the mix differs
    again = run(data, tmp_path / "again", cfg)
    assert all(torch.equal(state_of(again.heads)[n], t) for n, t in state_of(default.heads).items())


def test_image_to_text_negatives_train_and_change_the_model(data, tmp_path):
    cfg = dataclasses.replace(CFG, epochs=1, steps_per_epoch=10)
    both = run(data, tmp_path / "both", dataclasses.replace(cfg, image_to_text_negatives=True))
    one = run(data, tmp_path / "one", cfg)
    assert math.isfinite(both.history[0]["train"]["i2t"])
    assert any(not torch.equal(state_of(one.heads)[n], t) for n, t in state_of(both.heads).items())


def test_resume_refuses_another_config_or_backbone(data, tmp_path):
    checkpoint = run(data, tmp_path, dataclasses.replace(CFG, epochs=2), stop_after_epochs=1).last_checkpoint
    with pytest.raises(ValueError, match=r"batch_size \(32 -> 16\)"):
        run(data, tmp_path, dataclasses.replace(CFG, epochs=2, batch_size=16), resume=checkpoint)
    other = dataclasses.replace(data.features, backbone_fingerprint="another-backbone")
    with pytest.raises(FingerprintMismatchError, match="another-backbone"):
        train(dataclasses.replace(CFG, epochs=2), other, data.meta, data.pairs, data.hard_negatives, tmp_path,
              resume=checkpoint)


def test_bad_inputs_are_named(data, tmp_path):
    nan_features = dataclasses.replace(data.features, image=data.features.image.copy())
    nan_features.image[5, 3] = np.nan
    with pytest.raises(ValueError, match=data.meta["item_id"].iloc[5]):
        train(CFG, nan_features, data.meta, data.pairs, data.hard_negatives, tmp_path)
    stray = data.pairs.copy()
    stray.loc[0, "other_id"] = "no-such-item"
    with pytest.raises(ValueError, match="pairs.parquet column 'other_id'.*no-such-item"):
        run(dataclasses.replace(data, pairs=stray), tmp_path)
    with pytest.raises(ValueError, match="same dataset row order"):
        train(CFG, data.features, data.meta.iloc[::-1].reset_index(drop=True), data.pairs, None, tmp_path)
    with pytest.raises(ValueError, match="primary_metric 't2i.nothing.p10'"):
        run(data, tmp_path, dataclasses.replace(CFG, primary_metric="t2i.nothing.p10"))


@pytest.mark.parametrize("field, value, match", [
    ("lr", -1.0, "lr must be > 0, got -1.0"), ("epochs", 0, "epochs must be > 0"),
    ("dropout", 1.0, "dropout must be in"), ("head", "conv", "head must be"),
    ("dominant_groups", "category2", "column=value"), ("weak_categories", "graphic", "graphic"),
    ("steps_per_epoch", 0, "steps_per_epoch"), ("batch_size", 1, "batch_size must be >= 2"),
])
def test_config_rejects_bad_values_naming_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})


def test_epoch_means_are_the_means_of_the_logged_step_values(data, tmp_path):
    # Step parts stay tensors until logged or averaged: the epoch means must still be the plain
    # means of every step's values (acc.<head> included), summed in step order.
    cfg = dataclasses.replace(CFG, epochs=1, log_every=1)
    recorder = RecordingLogger()
    result = train(cfg, data.features, data.meta, data.pairs, data.hard_negatives, tmp_path, logger=recorder)
    steps = [m for _, m in recorder.metrics if "train.loss" in m]
    assert len(steps) == result.history[0]["step"]
    means = result.history[0]["train"]
    assert {"loss", "t2i", "i2t", "contrastive", "attribute", "fusion", "acc.neckline", "attr.neckline"} <= set(means)
    shares = {k: v for k, v in means.items() if k.startswith(("partner_share.", "negative_share."))}
    assert sum(v for k, v in shares.items() if k.startswith("partner")) == pytest.approx(1.0)
    for name, mean in means.items():
        if name in shares:  # what the epoch drew, not a step value
            continue
        total = 0.0
        for values in steps:
            total += values.get(f"train.{name}", 0.0)
        assert mean == total / len(steps), name
    for values in steps:
        for name, value in values.items():
            if name.startswith("train.acc."):
                assert 0.0 <= value <= 1.0
        assert list(values)[:3] == ["train.t2i", "train.i2t", "train.contrastive"]


@pytest.mark.parametrize("max_norm", [1e-3, 0.5, 1e6])
def test_grad_norm_and_clipping_are_clip_grad_norm_bit_for_bit(max_norm):
    g = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in ((7, 5), (5,), (3, 7), ())]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    reference = [p.grad.clone() for p in params]
    mirror = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for m, r in zip(mirror, reference):
        m.grad = r.clone()
    expected_norm = torch.nn.utils.clip_grad_norm_(mirror, max_norm, foreach=True)
    grads = [p.grad for p in params]
    norm = grad_norm(grads)
    assert torch.equal(norm, expected_norm)
    clip_grads_(grads, norm, max_norm)
    for p, m in zip(params, mirror):
        assert torch.equal(p.grad, m.grad)
    assert (max_norm < float(norm)) == (not torch.equal(params[0].grad, reference[0]))
