"""What one training step back-propagates into: the image head learns from partner and negative columns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocol.model.protocol_model import HeadsConfig, ProtocolHeads
from protocol.training.batches import EmbeddingBank, Relevance, StepPlanner
from protocol.training.data import build_training_data
from protocol.training.step import StepLoss
from protocol.training.synthetic import synthetic_training_set


@pytest.fixture(scope="module")
def data():
    s = synthetic_training_set(n_products=120, dim=16, n_pairs=2000, seed=4)
    return build_training_data(s.features, s.meta, s.pairs, s.hard_negatives, s.groups, attribute_heads=True,
                               min_group_confidence=0.5, category_head=True)


def feature_gradient(data, image_gradients: bool, bank: bool) -> tuple[np.ndarray, np.ndarray]:
    """(anchor rows, gradient of the loss w.r.t. each row's image features) after one step."""
    torch.manual_seed(0)
    heads = ProtocolHeads(HeadsConfig(in_dim=16, out_dim=16, attribute_classes=data.attribute_classes)).train()
    for p in heads.parameters():  # off the identity start, so every column's gradient is non-zero
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    bank_ = EmbeddingBank(data, refresh_every=10) if bank else None
    if bank_ is not None:
        bank_.refresh(heads)
    planner = StepPlanner(data, relevance=Relevance(), group_positives=False, fusion=False, text_negatives=False,
                          bank=bank_)
    anchors = data.train_rows[:8]
    extra = data.train_rows[20:28]
    plan = planner.plan(anchors, extra[:4], np.zeros(4, dtype=np.int64), extra[4:], np.zeros(4, dtype=np.int64))
    data.image.requires_grad_(True)
    data.image.grad = None
    try:
        loss, _ = StepLoss(data, bank_, head_weights={}, weights=(1.0, 0.3, 0.0),
                           image_gradients=image_gradients)(heads, plan)
        loss.backward()
        grad = data.image.grad.abs().sum(dim=1).numpy()
    finally:
        data.image.requires_grad_(False)
        data.image.grad = None
    return extra, grad


@pytest.mark.parametrize("bank", [False, True])
def test_partner_and_negative_columns_send_gradients_into_the_image_head(data, bank):
    extra, grad = feature_gradient(data, image_gradients=True, bank=bank)
    assert (grad[extra[:4]] > 0).all()  # the partners
    assert (grad[extra[4:]] > 0).all()  # the negatives
    extra, grad = feature_gradient(data, image_gradients=False, bank=bank)
    assert (grad[extra] == 0).all()  # lookups: the image head learns from the anchors only
