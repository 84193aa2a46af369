"""Losses on hand-made embeddings whose answers are computed here with plain math."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from protocol.model.losses import (
    IGNORE_INDEX, SoftTargets, attribute_accuracy, attribute_loss, combined_loss, contrastive_loss,
    contrastive_loss_targets, fused, fusion_loss, fusion_loss_targets, info_nce, info_nce_targets, positive_mask,
)


def unit(*rows) -> torch.Tensor:
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.norm(dim=1, keepdim=True)


def nll(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target], by hand."""
    return -(logits[target] - math.log(sum(math.exp(v) for v in logits)))


E1, E2, E3 = [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]  # cosines: e1.e2 = 0, e1.e3 = 0.6, e2.e3 = 0.8


def test_info_nce_single_positive_matches_hand_computation():
    q, c = unit(E1, E2), unit(E1, E2, E3)
    positives = torch.tensor([[True, False, False], [False, True, False]])
    loss = info_nce(q, c, positives, scale=2.0)
    expected = (nll([2.0, 0.0, 1.2], 0) + nll([0.0, 2.0, 1.6], 1)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_info_nce_spreads_the_target_over_several_positives():
    q, c = unit(E1), unit(E1, E2, E3)
    positives = torch.tensor([[True, False, True]])
    logits = [1.0, 0.0, 0.6]
    expected = 0.5 * nll(logits, 0) + 0.5 * nll(logits, 2)
    assert float(info_nce(q, c, positives, scale=1.0)) == pytest.approx(expected, rel=1e-6)


def test_info_nce_excluded_columns_leave_the_softmax_and_rows_without_positives_are_skipped():
    q, c = unit(E1, E2), unit(E1, E2, E3)
    positives = torch.tensor([[False, False, True], [False, False, False]])
    exclude = torch.tensor([[True, False, False], [False, False, False]])
    loss = info_nce(q, c, positives, scale=1.0, exclude=exclude)
    # Row 0 sees only columns 1 and 2 (cosines 0 and 0.6); row 1 has no positive and is skipped.
    assert float(loss) == pytest.approx(nll([0.0, 0.6], 1), rel=1e-6)
    assert torch.isfinite(loss)


def test_info_nce_without_any_positive_is_zero_and_differentiable():
    q = unit(E1).requires_grad_(True)
    loss = info_nce(q, unit(E2), torch.tensor([[False]]), scale=1.0)
    loss.backward()
    assert loss.item() == 0.0 and q.grad is not None


def test_contrastive_loss_is_the_mean_of_both_directions_and_extras_only_join_text_to_image():
    text, image = unit(E1, E2), unit(E3, E2)
    extra = unit([-1.0, 0.0])
    positives = torch.eye(2, dtype=torch.bool)
    loss, parts = contrastive_loss(text, image, 1.0, positives, extra, torch.zeros(2, 1, dtype=torch.bool))
    # text x [image | extra]: t1 = (0.6, 0, -1), t2 = (0.8, 1, 0); image x text: i1 = (0.6, 0.8), i2 = (0, 1).
    t2i = (nll([0.6, 0.0, -1.0], 0) + nll([0.8, 1.0, 0.0], 1)) / 2
    i2t = (nll([0.6, 0.8], 0) + nll([0.0, 1.0], 1)) / 2
    assert float(parts["t2i"]) == pytest.approx(t2i, rel=1e-6)
    assert float(parts["i2t"]) == pytest.approx(i2t, rel=1e-6)
    assert float(loss) == pytest.approx((t2i + i2t) / 2, rel=1e-6)


def test_an_extra_column_marked_positive_counts_as_one():
    text, image, extra = unit(E1), unit(E2), unit(E3)
    _, parts = contrastive_loss(text, image, 1.0, torch.tensor([[True]]), extra, torch.tensor([[True]]))
    logits = [0.0, 0.6]
    assert float(parts["t2i"]) == pytest.approx(0.5 * nll(logits, 0) + 0.5 * nll(logits, 1), rel=1e-6)


def test_positive_mask_same_item_or_same_group():
    items = torch.tensor([10, 11, 12, 10])
    groups = torch.tensor([1, 1, 2, 1])
    assert positive_mask(items, items).tolist() == [
        [True, False, False, True], [False, True, False, False],
        [False, False, True, False], [True, False, False, True],
    ]
    with_groups = positive_mask(items, items, groups, groups)
    assert with_groups.tolist() == [
        [True, True, False, True], [True, True, False, True],
        [False, False, True, False], [True, True, False, True],
    ]


def test_group_positives_are_pulled_together_not_pushed_apart():
    # Two items of one product (cosine 0.6). The gradient step on text 0 moves it away from
    # image 1 when image 1 is a negative, and towards it when the group makes it a positive.
    def step_towards_image_1(groups):
        text = unit(E1, E3).requires_grad_(True)
        image = unit(E1, E3)
        items = torch.tensor([0, 1])
        mask = positive_mask(items, items, groups, groups) if groups is not None else positive_mask(items, items)
        loss, _ = contrastive_loss(text, image, 10.0, mask)
        loss.backward()
        return float(-text.grad[0] @ image[1])

    assert step_towards_image_1(None) < 0
    assert step_towards_image_1(torch.tensor([5, 5])) > 0


def test_fusion_loss_excludes_own_item_and_matches_hand_computation():
    text = unit(E1)
    cand_image, cand_text = unit(E1, E2), unit(E1, E3)
    w = torch.tensor(0.25, requires_grad=True)
    positives = torch.tensor([[True, True]])
    self_mask = torch.tensor([[True, False]])
    loss = fusion_loss(text, cand_image, cand_text, w, 1.0, positives, self_mask)
    # Only candidate 1 remains: its softmax over one column is 1, loss 0; the self column is gone.
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    fused_1 = [0.25 * 0.0 + 0.75 * 0.6, 0.25 * 1.0 + 0.75 * 0.8]
    norm = math.hypot(*fused_1)
    assert fused(cand_image, cand_text, w)[1].detach().tolist() == pytest.approx([v / norm for v in fused_1], rel=1e-6)


def test_fusion_weight_gets_a_gradient():
    text = unit(E1)
    w = torch.tensor(0.5, requires_grad=True)
    loss = fusion_loss(text, unit(E2, E1), unit(E3, E2), w, 5.0, torch.tensor([[True, False]]),
                       torch.tensor([[False, False]]))
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


# ----------------------------------------------------------------------------- precomputed targets
# The training loop builds its masks in numpy and passes SoftTargets; the losses it gets must be
# those of the mask versions bit for bit, values and gradients alike.


def random_case(seed: int, rows: int = 6, cols: int = 9, dim: int = 5):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(rows, dim, generator=g), dim=1).requires_grad_(True)
    c = torch.nn.functional.normalize(torch.randn(cols, dim, generator=g), dim=1).requires_grad_(True)
    positives = torch.rand(rows, cols, generator=g) < 0.3
    exclude = torch.rand(rows, cols, generator=g) < 0.2
    return q, c, positives, exclude


def loss_and_grads(loss, *tensors):
    grads = torch.autograd.grad(loss, tensors)
    return [loss.detach(), *grads]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("with_exclude", [False, True])
def test_info_nce_with_precomputed_targets_is_info_nce_bit_for_bit(seed, with_exclude):
    q, c, positives, exclude = random_case(seed)
    positives[0] = False  # a row without any positive is skipped by both
    exclude = exclude if with_exclude else None
    scale = torch.tensor(3.0, requires_grad=True)
    reference = loss_and_grads(info_nce(q, c, positives, scale, exclude=exclude), q, c, scale)
    mask = positives.numpy() if exclude is None else (positives & ~exclude).numpy()
    targets = SoftTargets.from_mask(mask)
    got = loss_and_grads(info_nce_targets(q, c, targets, scale, exclude=exclude), q, c, scale)
    for a, b in zip(reference, got):
        assert torch.equal(a, b)


def test_soft_targets_without_any_positive_give_zero_and_all_rows_kept_gives_no_row_index():
    q, c, _, _ = random_case(0)
    none = SoftTargets.from_mask(np.zeros((6, 9), dtype=bool))
    assert none.targets is None and none.rows is None
    loss = info_nce_targets(q, c, none, 1.0)
    assert loss.item() == 0.0
    loss.backward()
    assert q.grad is not None
    full = SoftTargets.from_mask(np.eye(6, 9, dtype=bool))
    assert full.rows is None and torch.equal(full.targets, torch.eye(6, 9))
    some = SoftTargets.from_mask(np.array([[True, True, False], [False, False, False], [False, False, True]]))
    assert some.rows.tolist() == [0, 2]
    assert some.targets.tolist() == [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]


@pytest.mark.parametrize("seed", range(4))
def test_contrastive_and_fusion_losses_with_targets_match_the_mask_versions_bit_for_bit(seed):
    g = torch.Generator().manual_seed(seed)
    unit_rows = lambda n: torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1)  # noqa: E731
    text, image, extra = unit_rows(5).requires_grad_(True), unit_rows(5).requires_grad_(True), unit_rows(3)
    positives = (torch.rand(5, 5, generator=g) < 0.3) | torch.eye(5, dtype=torch.bool)
    extra_positives = torch.rand(5, 3, generator=g) < 0.3
    scale = torch.tensor(2.0, requires_grad=True)
    ref, ref_parts = contrastive_loss(text, image, scale, positives, extra, extra_positives)
    got, parts = contrastive_loss_targets(
        text, image, scale, SoftTargets.from_mask(torch.cat([positives, extra_positives], dim=1).numpy()),
        SoftTargets.from_mask(positives.T.numpy()), extra,
    )
    assert parts.keys() == ref_parts.keys() and all(torch.equal(parts[k], ref_parts[k]) for k in parts)
    for a, b in zip(loss_and_grads(ref, text, image, scale), loss_and_grads(got, text, image, scale)):
        assert torch.equal(a, b)

    w = torch.tensor(0.4, requires_grad=True)
    cand_image, cand_text = torch.cat([image, extra[:2]]), torch.cat([text, unit_rows(2)])
    fusion_positives = torch.cat([positives, extra_positives[:, :2]], dim=1)
    self_mask = torch.eye(5, 7, dtype=torch.bool)
    ref = fusion_loss(text, cand_image, cand_text, w, scale, fusion_positives, self_mask)
    got = fusion_loss_targets(text, cand_image, cand_text, w, scale,
                              SoftTargets.from_mask((fusion_positives & ~self_mask).numpy()), self_mask)
    for a, b in zip(loss_and_grads(ref, text, image, w, scale), loss_and_grads(got, text, image, w, scale)):
        assert torch.equal(a, b)


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
