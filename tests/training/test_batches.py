"""Step inputs: epoch-wide draws and per-step plans equal what the step-by-step construction gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocol.model.losses import IGNORE_INDEX, SoftTargets, positive_mask
from protocol.model.protocol_model import HeadsConfig, ProtocolHeads
from protocol.model.sampler import BalancedBatchSampler
from protocol.training.batches import EmbeddingBank, StepPlanner, build_training_data, draw_batch, draw_epoch
from protocol.training.config import TrainConfig
from protocol.training.synthetic import synthetic_training_set


@pytest.fixture(scope="module")
def data():
    s = synthetic_training_set(n_products=120, dim=16, n_pairs=1200, seed=3)
    return s, build_training_data(s.features, s.meta, s.pairs, s.hard_negatives, attribute_heads=True)


@pytest.fixture(scope="module")
def batches(data):
    s, training = data
    sampler = BalancedBatchSampler(s.meta, training.train_rows, 24, 12, TrainConfig().sampler_config(), seed=5)
    return sampler.epoch_batches(0)


@pytest.mark.parametrize("n_partners, n_negatives", [(1, 2), (0, 3), (1, 0), (0, 0)])
def test_draw_epoch_makes_the_draws_of_draw_batch_step_by_step(data, batches, n_partners, n_negatives):
    _, training = data
    draws = draw_epoch(batches, training, n_partners, n_negatives, np.random.default_rng([7, 1, 1]))
    rng = np.random.default_rng([7, 1, 1])
    for step, anchors in enumerate(batches):
        batch = draw_batch(anchors, training, n_partners, n_negatives, rng)
        has = np.flatnonzero(draws.partners[step] >= 0)
        assert np.array_equal(has, batch.partner_of.numpy())
        assert np.array_equal(draws.partners[step][has], batch.partners.numpy())
        negatives = draws.negatives[step]
        assert np.array_equal(negatives[negatives >= 0], batch.negatives.numpy())
    assert rng.random() == np.random.default_rng([7, 1, 1]).random(draws.partners.size * n_partners
                                                                     + draws.negatives.size + 1)[-1]
    if n_partners:
        assert (draws.partners >= 0).any()
    if n_negatives:
        assert (draws.negatives >= 0).any()


def reference_targets(training, batch, group_positives: bool, fusion: bool):
    """The masks as the training step used to build them, with positive_mask on tensors."""
    a, partners, extra = batch.anchors, batch.partners, torch.cat([batch.partners, batch.negatives])
    groups = training.groups

    def positives(rows, cols):
        return positive_mask(rows, cols, groups[rows], groups[cols]) if group_positives else positive_mask(rows, cols)

    batch_positives = positives(a, a)
    extra_positives = positives(a, extra)
    extra_positives[batch.partner_of, torch.arange(len(partners))] = True
    columns = torch.cat([batch_positives, extra_positives], dim=1)
    out = {"t2i": SoftTargets.from_mask(columns.numpy()), "i2t": SoftTargets.from_mask(batch_positives.T.numpy())}
    if fusion and len(partners):
        self_mask = positive_mask(a, torch.cat([a, partners]))
        out["fusion_exclude"] = self_mask
        out["fusion"] = SoftTargets.from_mask((columns[:, : len(a) + len(partners)] & ~self_mask).numpy())
    return out


def same_targets(a: SoftTargets, b: SoftTargets) -> bool:
    def same(x, y):
        return (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
    return same(a.targets, b.targets) and same(a.rows, b.rows)


@pytest.mark.parametrize("group_positives", [True, False])
@pytest.mark.parametrize("fusion", [True, False])
def test_step_plans_hold_the_targets_of_positive_mask(data, batches, group_positives, fusion):
    _, training = data
    planner = StepPlanner(training, group_positives=group_positives, fusion=fusion)
    draws = draw_epoch(batches, training, 1, 2, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    checked_fusion = 0
    for step, anchors in enumerate(batches):
        plan = planner.plan(anchors, draws.partners[step], draws.negatives[step])
        batch = draw_batch(anchors, training, 1, 2, rng)
        ref = reference_targets(training, batch, group_positives, fusion)
        assert torch.equal(plan.anchors, batch.anchors) and torch.equal(plan.partners, batch.partners)
        assert torch.equal(plan.extra_rows, torch.cat([batch.partners, batch.negatives]))
        assert same_targets(plan.t2i, ref["t2i"]) and same_targets(plan.i2t, ref["i2t"])
        if "fusion" in ref:
            checked_fusion += 1
            assert torch.equal(plan.fusion_exclude, ref["fusion_exclude"])
            assert same_targets(plan.fusion, ref["fusion"])
        else:
            assert plan.fusion is None and plan.fusion_exclude is None
        for name, labels in training.labels.items():
            assert torch.equal(plan.labels[name], labels[batch.anchors])
            assert plan.known[name] == int((labels[batch.anchors] != IGNORE_INDEX).sum())
    assert checked_fusion == (len(batches) if fusion else 0)


def test_bank_take_by_position_is_lookup_by_row(data, batches):
    _, training = data
    heads = ProtocolHeads(HeadsConfig(in_dim=16, out_dim=16, hidden_dim=8))
    torch.nn.init.normal_(heads.image_head.residual[-1].weight)
    bank = EmbeddingBank(training, refresh_every=5, with_text=True)
    bank.refresh(heads)
    planner = StepPlanner(training, group_positives=True, fusion=True, bank=bank)
    draws = draw_epoch(batches, training, 1, 2, np.random.default_rng(1))
    plan = planner.plan(batches[0], draws.partners[0], draws.negatives[0])
    image, text = bank.take(plan.bank_extra, plan.bank_partners)
    ref_image, ref_text = bank.lookup(plan.extra_rows, plan.partners)
    assert torch.equal(image, ref_image) and torch.equal(text, ref_text)
    expected = heads.embed_numpy(training.image[plan.extra_rows].numpy(), None)[0]
    assert np.array_equal(image.numpy(), expected)
