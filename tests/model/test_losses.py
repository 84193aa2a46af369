"""Losses on hand-made embeddings whose answers are computed here with plain math."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from protocol.model.losses import (
    IGNORE_INDEX, SoftTargets, attribute_accuracy, attribute_loss, combined_loss, contrastive_loss, fused,
    fusion_loss, info_nce,
)


def unit(*rows) -> torch.Tensor:
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.norm(dim=1, keepdim=True)


def nll(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target], by hand."""
    return -(logits[target] - math.log(sum(math.exp(v) for v in logits)))


def targets(rows) -> SoftTargets:
    return SoftTargets.from_weights(np.array(rows, dtype=np.float32))


E1, E2, E3 = [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]  # cosines: e1.e2 = 0, e1.e3 = 0.6, e2.e3 = 0.8


def test_info_nce_single_positive_matches_hand_computation():
    q, c = unit(E1, E2), unit(E1, E2, E3)
    loss = info_nce(q, c, targets([[1, 0, 0], [0, 1, 0]]), scale=2.0)
    expected = (nll([2.0, 0.0, 1.2], 0) + nll([0.0, 2.0, 1.6], 1)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_info_nce_spreads_the_target_over_several_positives_in_proportion_to_their_weights():
    q, c = unit(E1), unit(E1, E2, E3)
    logits = [1.0, 0.0, 0.6]
    even = info_nce(q, c, targets([[1, 0, 1]]), scale=1.0)
    assert float(even) == pytest.approx(0.5 * nll(logits, 0) + 0.5 * nll(logits, 2), rel=1e-6)
    graded = info_nce(q, c, targets([[1.0, 0, 0.5]]), scale=1.0)  # a positive of weight 0.5 gets a third
    assert float(graded) == pytest.approx(2 / 3 * nll(logits, 0) + 1 / 3 * nll(logits, 2), rel=1e-6)


def test_soft_targets_normalise_rows_and_leave_out_rows_without_a_positive():
    t = targets([[2.0, 0.0, 2.0], [0.0, 0.0, 0.0], [0.0, 0.25, 0.0]])
    assert t.rows.tolist() == [0, 2]
    assert t.targets.tolist() == [[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]]
    assert targets([[1, 0], [0, 1]]).rows is None  # every row kept
    assert targets([[0, 0]]).targets is None  # no row kept
    with pytest.raises(ValueError, match=">= 0"):
        targets([[1.0, -0.5]])


def test_info_nce_excluded_columns_leave_the_softmax_and_rows_without_positives_are_skipped():
    q, c = unit(E1, E2), unit(E1, E2, E3)
    exclude = torch.tensor([[True, False, False], [False, False, False]])
    loss = info_nce(q, c, targets([[0, 0, 1], [0, 0, 0]]), scale=1.0, exclude=exclude)
    # Row 0 sees only columns 1 and 2 (cosines 0 and 0.6); row 1 has no positive and is skipped.
    assert float(loss) == pytest.approx(nll([0.0, 0.6], 1), rel=1e-6)
    assert torch.isfinite(loss)


def test_info_nce_without_any_positive_is_zero_and_differentiable():
    q = unit(E1).requires_grad_(True)
    loss = info_nce(q, unit(E2), targets([[0]]), scale=1.0)
    loss.backward()
    assert loss.item() == 0.0 and q.grad is not None


def test_contrastive_loss_ranks_the_extra_items_in_both_directions_when_given_their_texts():
    text, image = unit(E1, E2), unit(E3, E2)
    extra_image, extra_text = unit([-1.0, 0.0]), unit([0.0, -1.0])
    t = targets([[1, 0, 0], [0, 1, 0]])  # the extra item is a negative of both rows
    loss, parts = contrastive_loss(text, image, 1.0, t, t, extra_image, extra_text)
    # text x [image | extra image]: t1 = (0.6, 0, -1), t2 = (0.8, 1, 0);
    # image x [text | extra text]: i1 = (0.6, 0.8, -0.8), i2 = (0, 1, -1).
    t2i = (nll([0.6, 0.0, -1.0], 0) + nll([0.8, 1.0, 0.0], 1)) / 2
    i2t = (nll([0.6, 0.8, -0.8], 0) + nll([0.0, 1.0, -1.0], 1)) / 2
    assert float(parts["t2i"]) == pytest.approx(t2i, rel=1e-6)
    assert float(parts["i2t"]) == pytest.approx(i2t, rel=1e-6)
    assert float(loss) == pytest.approx((t2i + i2t) / 2, rel=1e-6)


def test_contrastive_loss_without_extra_texts_ranks_the_batch_texts_on_the_image_side():
    text, image = unit(E1, E2), unit(E3, E2)
    extra_image = unit([-1.0, 0.0])
    _, parts = contrastive_loss(text, image, 1.0, targets([[1, 0, 0], [0, 1, 0]]), targets([[1, 0], [0, 1]]),
                                extra_image)
    assert float(parts["t2i"]) == pytest.approx((nll([0.6, 0.0, -1.0], 0) + nll([0.8, 1.0, 0.0], 1)) / 2, rel=1e-6)
    assert float(parts["i2t"]) == pytest.approx((nll([0.6, 0.8], 0) + nll([0.0, 1.0], 1)) / 2, rel=1e-6)


def test_contrastive_loss_without_extras_is_the_plain_symmetric_loss():
    text, image = unit(E1, E2), unit(E3, E2)
    loss, parts = contrastive_loss(text, image, 1.0, targets([[1, 0], [0, 1]]), targets([[1, 0], [0, 1]]))
    t2i = (nll([0.6, 0.0], 0) + nll([0.8, 1.0], 1)) / 2
    i2t = (nll([0.6, 0.8], 0) + nll([0.0, 1.0], 1)) / 2
    assert float(loss) == pytest.approx((t2i + i2t) / 2, rel=1e-6)


def test_group_positives_are_pulled_together_not_pushed_apart():
    # Two items of one product (cosine 0.6). The gradient step on text 0 moves it away from
    # image 1 when image 1 is a negative, and towards it when the targets make it a positive.
    def step_towards_image_1(weights):
        text = unit(E1, E3).requires_grad_(True)
        image = unit(E1, E3)
        loss, _ = contrastive_loss(text, image, 10.0, targets(weights), targets(weights))
        loss.backward()
        return float(-text.grad[0] @ image[1])

    assert step_towards_image_1([[1, 0], [0, 1]]) < 0
    assert step_towards_image_1([[1, 1], [1, 1]]) > 0


def test_fusion_loss_excludes_own_item_and_matches_hand_computation():
    text = unit(E1)
    cand_image, cand_text = unit(E1, E2), unit(E1, E3)
    w = torch.tensor(0.25, requires_grad=True)
    loss = fusion_loss(text, cand_image, cand_text, w, 1.0, targets([[0, 1]]), torch.tensor([[True, False]]))
    # Only candidate 1 remains: its softmax over one column is 1, loss 0; the self column is gone.
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    fused_1 = [0.25 * 0.0 + 0.75 * 0.6, 0.25 * 1.0 + 0.75 * 0.8]
    norm = math.hypot(*fused_1)
    assert fused(cand_image, cand_text, w)[1].detach().tolist() == pytest.approx([v / norm for v in fused_1], rel=1e-6)


def test_fusion_weight_gets_a_gradient():
    text = unit(E1)
    w = torch.tensor(0.5, requires_grad=True)
    loss = fusion_loss(text, unit(E2, E1), unit(E3, E2), w, 5.0, targets([[1, 0]]), torch.tensor([[False, False]]))
    loss.backward()
    assert w.grad is not None and float(w.grad) != 0.0


def test_attribute_loss_weights_heads_and_ignores_unknown_labels():
    logits = {
        "material": torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]]),
        "neckline": torch.tensor([[0.0, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        "sleeve": torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]),
    }
    labels = {
        "material": torch.tensor([0, 0, IGNORE_INDEX]),  # third row unknown
        "neckline": torch.tensor([1, IGNORE_INDEX, IGNORE_INDEX]),
        "sleeve": torch.tensor([IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]),  # no known label: left out
    }
    loss, parts = attribute_loss(logits, labels, {"neckline": 2.0})
    material = (nll([2.0, 0.0], 0) + nll([0.0, 1.0], 0)) / 2
    neckline = nll([0.0, 1.0, 0.0], 1)
    assert float(parts["attr.material"]) == pytest.approx(material, rel=1e-6)
    assert float(parts["attr.neckline"]) == pytest.approx(neckline, rel=1e-6)
    assert float(loss) == pytest.approx((1.0 * material + 2.0 * neckline) / 3.0, rel=1e-6)
    assert float(parts["acc.material"]) == 0.5 and float(parts["acc.neckline"]) == 1.0
    assert "attr.sleeve" not in parts


def test_attribute_loss_with_nothing_known_is_zero():
    loss, parts = attribute_loss({"material": torch.zeros(2, 3, requires_grad=True)},
                                 {"material": torch.full((2,), IGNORE_INDEX)}, {})
    assert loss.item() == 0.0 and parts == {}
    loss.backward()


def test_combined_loss_is_the_weighted_sum():
    c, a, f = torch.tensor(2.0), torch.tensor(3.0), torch.tensor(5.0)
    assert float(combined_loss(c, a, f, w_contrastive=1.0, w_attribute=0.3, w_fusion=0.1)) == pytest.approx(3.4)
    assert float(combined_loss(c, None, None, w_contrastive=0.5, w_attribute=0.3, w_fusion=0.1)) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- the training loop's shortcuts
# The loop passes the number of known labels it counted in numpy and computes accuracy once per
# epoch: both must give what the plain call gives, bit for bit.


def test_attribute_loss_with_known_counts_is_the_same_and_can_leave_accuracy_out():
    g = torch.Generator().manual_seed(0)
    logits = {name: torch.randn(6, n, generator=g, requires_grad=True)
              for name, n in (("material", 3), ("neckline", 4), ("sleeve", 2))}
    labels = {"material": torch.tensor([0, 2, IGNORE_INDEX, 1, 1, 0]),
              "neckline": torch.tensor([IGNORE_INDEX, 3, IGNORE_INDEX, IGNORE_INDEX, 0, IGNORE_INDEX]),
              "sleeve": torch.full((6,), IGNORE_INDEX)}
    known = {name: int((v != IGNORE_INDEX).sum()) for name, v in labels.items()}
    ref, ref_parts = attribute_loss(logits, labels, {"neckline": 2.0})
    got, parts = attribute_loss(logits, labels, {"neckline": 2.0}, known_counts=known, accuracy=False)
    assert torch.equal(ref, got)
    assert list(parts) == ["attr.material", "attr.neckline"]
    assert all(torch.equal(parts[k], ref_parts[k]) for k in parts)
    with_acc = attribute_loss(logits, labels, {"neckline": 2.0}, known_counts=known)[1]
    assert with_acc.keys() == ref_parts.keys() and all(torch.equal(with_acc[k], ref_parts[k]) for k in with_acc)


@pytest.mark.parametrize("seed", range(5))
def test_attribute_accuracy_is_the_acc_part_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    steps, batch, classes = 7, int(rng.integers(1, 300)), 5
    logits = rng.normal(size=(steps, batch, classes)).astype(np.float32)
    labels = rng.integers(0, classes, size=(steps, batch))
    labels[rng.random((steps, batch)) < 0.4] = IGNORE_INDEX
    labels[:, 0] = 1  # every batch has a known label, as the training loop guarantees
    got = attribute_accuracy(logits, labels)
    assert got.dtype == np.float32
    for s in range(steps):
        _, parts = attribute_loss({"material": torch.from_numpy(logits[s])},
                                  {"material": torch.from_numpy(labels[s])}, {})
        assert float(got[s]) == float(parts["acc.material"])
