"""What a step draws and learns from: pair types in the file's mix, graded targets, negatives both ways."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from protocol.data.pair_generator import PairMix, generate_pairs
from protocol.model.losses import IGNORE_INDEX
from protocol.model.protocol_model import ATTRIBUTE_HEADS, HeadsConfig, ProtocolHeads
from protocol.model.sampler import BalancedBatchSampler
from protocol.training.batches import UNIFORM_RELEVANCE, AttributeIndicators, EmbeddingBank, Relevance, StepPlanner, draw_epoch
from protocol.training.config import TrainConfig
from protocol.training.data import (
    NEGATIVE_TYPES, PARTNER_TYPES, Csr, TypedPool, build_training_data, confident_group_codes,
)
from protocol.training.synthetic import synthetic_training_set

BATCH, STEPS = 32, 40


def training_data(s, pairs=None, **kwargs):
    return build_training_data(s.features, s.meta, s.pairs if pairs is None else pairs, s.hard_negatives, s.groups,
                               attribute_heads=True, min_group_confidence=0.5, category_head=True, **kwargs)


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_training_set(n_products=200, dim=16, n_pairs=4000, seed=3)


@pytest.fixture(scope="module")
def data(synthetic):
    return training_data(synthetic)


def epoch_draws(s, training, epochs=4, n_negatives=2, balanced=True):
    """The draws of several epochs of the real sampler, fitted as the trainer fits them."""
    config = dataclasses.replace(TrainConfig().sampler_config(), balanced=balanced)
    sampler = BalancedBatchSampler(s.meta, training.train_rows, BATCH, STEPS, config, seed=5)
    training.partners.fit(sampler.rows, sampler.probs)
    training.negatives.fit(sampler.rows, sampler.probs)
    anchors = np.concatenate([sampler.epoch_batches(e) for e in range(epochs)])
    return anchors, draw_epoch(anchors, training, 1, n_negatives, np.random.default_rng(0))


def drawn_shares(draws, training) -> tuple[dict, dict]:
    return (draws.shares(training.partners.types, draws.partner_types),
            draws.shares(training.negatives.types, draws.negative_types))


def file_mix(pairs: pd.DataFrame, types) -> dict[str, float]:
    counts = pairs["pair_type"].value_counts()
    total = sum(counts.get(t, 0) for t in types)
    return {t: counts.get(t, 0) / total for t in types}


# A mix this catalog's anchors can carry: strong_attribute pairs exist for ~15% of its anchors,
# so the default 25% of positives cannot be met (see the next test).
REACHABLE_MIX = PairMix(strong_group=0.25, strong_attribute=0.05, medium=0.2, weak=0.15, hard_mined=0.15,
                        hard_attribute=0.1, easy=0.1)


@pytest.fixture(scope="module")
def reachable(synthetic):
    pairs, _ = generate_pairs(synthetic.meta, synthetic.groups, synthetic.hard_negatives, mix=REACHABLE_MIX,
                              n_pairs=4000, seed=3)
    return pairs, training_data(synthetic, pairs)


@pytest.mark.parametrize("balanced", [True, False])
def test_drawn_partners_and_negatives_arrive_in_the_files_mix_within_two_points(synthetic, reachable, balanced):
    pairs, training = reachable
    _, draws = epoch_draws(synthetic, training, balanced=balanced)
    partners, negatives = drawn_shares(draws, training)
    for got, want in ((partners, file_mix(pairs, PARTNER_TYPES)), (negatives, file_mix(pairs, NEGATIVE_TYPES))):
        assert got.keys() == want.keys()
        for t in want:
            assert abs(got[t] - want[t]) <= 0.02, (t, got, want)


def test_a_type_on_too_few_anchors_gets_what_they_can_carry_and_is_reported(synthetic, data, caplog):
    with caplog.at_level("WARNING", logger="protocol.training.data"):
        _, draws = epoch_draws(synthetic, data)
    partners, _ = drawn_shares(draws, data)
    want = file_mix(synthetic.pairs, PARTNER_TYPES)
    covered = data.partners.available(data.train_rows)[:, PARTNER_TYPES.index("strong_attribute")].mean()
    assert covered < want["strong_attribute"]  # the balanced anchors cannot all carry one
    assert partners["strong_attribute"] < want["strong_attribute"] - 0.05
    assert "pair type strong_attribute:" in caplog.text and "of the file" in caplog.text
    assert partners["strong_attribute"] > 0.5 * covered  # its anchors draw it whenever they can


def test_changing_the_mix_changes_what_training_sees(synthetic):
    heavy_weak = PairMix(strong_group=0.05, strong_attribute=0.05, medium=0.10, weak=0.45, hard_mined=0.10,
                         hard_attribute=0.05, easy=0.20)
    pairs, _ = generate_pairs(synthetic.meta, synthetic.groups, synthetic.hard_negatives, mix=heavy_weak,
                              n_pairs=4000, seed=3)
    default_partners, default_negatives = drawn_shares(epoch_draws(synthetic, training_data(synthetic))[1],
                                                       training_data(synthetic))
    other = training_data(synthetic, pairs)
    partners, negatives = drawn_shares(epoch_draws(synthetic, other)[1], other)
    assert partners["weak"] > default_partners["weak"] + 0.3
    assert negatives["easy"] > default_negatives["easy"] + 0.2


def test_partner_draws_do_not_depend_on_the_number_of_negatives(synthetic, data):
    anchors, _ = epoch_draws(synthetic, data, epochs=1)
    with_negatives = draw_epoch(anchors, data, 1, 2, np.random.default_rng([4, 1, 1]))
    without = draw_epoch(anchors, data, 1, 0, np.random.default_rng([4, 1, 1]))
    assert np.array_equal(with_negatives.partners, without.partners) and without.negatives.shape[1] == 0
    other_seed = draw_epoch(anchors, data, 1, 2, np.random.default_rng([5, 1, 1]))
    assert not np.array_equal(other_seed.partners, with_negatives.partners)


def test_type_choice_is_fitted_to_the_anchor_distribution_by_hand():
    # Anchors 0 and 1 have pairs of both types, anchor 2 only of type b. Target a:b = 1:1 with
    # anchors drawn evenly: anchor 2 always takes b (1/3 of draws), so anchors 0 and 1 must take
    # a with probability 3/4 for an even split: (2/3 * 3/4 = 1/2).
    a = Csr.from_edges(np.array([0, 1]), np.array([3, 3]), 4)
    b = Csr.from_edges(np.array([0, 1, 2]), np.array([3, 3, 3]), 4)
    pool = TypedPool(("a", "b"), (a, b), np.array([0.5, 0.5]))
    shares = pool.fit(np.arange(3), np.full(3, 1 / 3))
    assert shares == pytest.approx({"a": 0.5, "b": 0.5}, abs=1e-6)
    assert pool.choice[:3, 0] == pytest.approx([0.75, 0.75, 0.0], abs=1e-6)
    assert pool.choice[3].tolist() == [0.0, 0.0]  # row 3 anchors nothing
    other, kind = pool.draw(np.array([0, 0, 2, 3]), np.array([[0.1, 0.5], [0.9, 0.5], [0.1, 0.5], [0.5, 0.5]]))
    assert kind.tolist() == [0, 1, 1, -1] and other.tolist() == [3, 3, 3, -1]


def test_a_type_no_anchor_has_leaves_its_share_to_the_others():
    a = Csr.from_edges(np.array([0]), np.array([1]), 2)
    empty = Csr.from_edges(np.zeros(0, np.int64), np.zeros(0, np.int64), 2)
    pool = TypedPool(("a", "b"), (a, empty), np.array([0.5, 0.5]))
    assert pool.fit(np.array([0]), np.array([1.0])) == pytest.approx({"a": 1.0, "b": 0.0})


def test_repeated_pairs_are_drawn_as_often_as_the_file_lists_them():
    csr = Csr.from_edges(np.array([0, 0, 0, 0]), np.array([1, 1, 1, 2]), 3)  # 0-1 listed three times
    picks = csr.pick(np.zeros(4000, np.int64), np.random.default_rng(0).random(4000))
    assert np.mean(picks == 1) == pytest.approx(0.75, abs=0.03)


def plan_of(training, relevance, anchors, partners, partner_types, negatives=(), negative_types=(),
            group_positives=False):
    planner = StepPlanner(training, relevance=relevance, group_positives=group_positives, fusion=True,
                          text_negatives=False)
    return planner.plan(np.asarray(anchors), np.asarray(partners), np.asarray(partner_types),
                        np.asarray(negatives, dtype=np.int64), np.asarray(negative_types, dtype=np.int64))


def test_a_contradicting_positive_is_down_weighted_in_the_targets(synthetic, data):
    neckline = ATTRIBUTE_HEADS.index("neckline")
    codes, train = data.attribute_codes, data.train_rows

    def contradictions(r, anchor):
        return int(((codes[r] >= 0) & (codes[anchor] >= 0) & (codes[r] != codes[anchor])).sum())

    anchor = next(r for r in train if (codes[r] >= 0).all())
    agree = next(r for r in train if r != anchor and contradictions(r, anchor) == 0)
    contra = next(r for r in train if codes[r][neckline] >= 0 and codes[r][neckline] != codes[anchor][neckline])
    k = contradictions(contra, anchor)
    medium = PARTNER_TYPES.index("medium")
    relevance = Relevance()
    plan = plan_of(data, relevance, [anchor, anchor], [agree, contra], [medium, medium])
    # columns: the two anchors (the same item), then the two partners
    assert plan.weights[0, 2] == pytest.approx(relevance.medium)
    assert k >= 1 and plan.weights[1, 3] == pytest.approx(relevance.medium * relevance.contradiction_factor)
    assert plan.weights[0, 0] == 1.0  # the item's own image weighs most
    target = plan.targets.targets.numpy()
    assert target[1, 3] < target[0, 2] < target[0, 0]
    uniform = plan_of(data, UNIFORM_RELEVANCE, [anchor, anchor], [agree, contra], [medium, medium])
    assert uniform.weights[0, 2] == uniform.weights[1, 3] == 1.0  # plain InfoNCE: every positive alike


def test_items_contradict_when_they_know_an_attribute_both_and_disagree_on_it():
    codes = np.array([[0, -1, 2],    # a: attributes 0 and 2 known
                      [0, 1, -1],    # b: agrees with a on attribute 0, the only one both know
                      [1, 1, 2],     # c: disagrees with a and b on attribute 0
                      [-1, -1, -1]])  # d: knows nothing, contradicts nothing
    indicators = AttributeIndicators.from_codes(codes)
    assert indicators.known.tolist() == [[1, 0, 1], [1, 1, 0], [1, 1, 1], [0, 0, 0]]
    assert indicators.values.shape == (4, 2 + 2 + 3)  # one column per value of each attribute
    rows = np.arange(4)
    assert indicators.contradicts(rows, rows).astype(int).tolist() == [
        [0, 0, 1, 0], [0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
    assert indicators.contradicts(rows[:1], rows[[2, 3, 2]]).tolist() == [[True, False, True]]
    assert AttributeIndicators.from_codes(np.zeros((0, 4), dtype=np.int64)).values.shape == (0, 0)


def test_a_same_product_image_that_contradicts_the_anchor_is_down_weighted_too(data):
    codes, groups, train = data.attribute_codes, data.groups, data.train_rows
    pairs = [(a, b) for a in train for b in train if a < b and groups[a] == groups[b]]
    assert pairs, "the synthetic catalog has products with two views"
    relevance = Relevance()
    for a, b in pairs[:50]:
        plan = plan_of(data, relevance, [a, b], [-1, -1], [-1, -1], group_positives=True)
        contradicts = ((codes[a] >= 0) & (codes[b] >= 0) & (codes[a] != codes[b])).any()
        expected = relevance.strong_group * (relevance.contradiction_factor if contradicts else 1.0)
        assert plan.weights[0, 1] == pytest.approx(expected) and plan.weights[0, 0] == 1.0


def test_a_partner_weighs_the_same_on_every_column_that_shows_it(data):
    a, b, c = data.train_rows[:3]
    weak = PARTNER_TYPES.index("weak")
    plan = plan_of(data, Relevance(contradiction_factor=1.0), [a, b], [c, -1], [weak, -1], negatives=[c],
                   negative_types=[0])
    # columns: a, b, the partner c, then c again as b's negative: a's targets weigh c at both
    assert plan.weights[0, 2] == plan.weights[0, 3] == pytest.approx(Relevance().weak)
    assert plan.weights[1, 3] == 0.0  # for b, c is a negative


def test_graded_relevance_follows_the_pair_type(data):
    rows = data.train_rows[:len(PARTNER_TYPES) * 2]
    anchors, partners = rows[: len(PARTNER_TYPES)], rows[len(PARTNER_TYPES):]
    plan = plan_of(data, Relevance(contradiction_factor=1.0), anchors, partners, np.arange(len(PARTNER_TYPES)))
    n = len(anchors)
    got = [plan.weights[i, n + i] for i in range(n)]
    assert got == pytest.approx([getattr(Relevance(), t) for t in PARTNER_TYPES])


def test_image_to_text_negatives_put_the_extra_items_texts_on_the_image_side(synthetic, data):
    anchors, draws = epoch_draws(synthetic, data, epochs=1)
    step = (anchors[0], draws.partners[0], draws.partner_types[0], draws.negatives[0], draws.negative_types[0])
    both = StepPlanner(data, relevance=Relevance(), group_positives=True, fusion=False, text_negatives=True).plan(*step)
    one = StepPlanner(data, relevance=Relevance(), group_positives=True, fusion=False, text_negatives=False).plan(*step)
    n_columns = BATCH + len(both.extra_rows)
    assert both.i2t_targets.targets.shape[1] == n_columns and torch.equal(both.i2t_targets.targets,
                                                                            both.targets.targets)
    assert one.i2t_targets.targets.shape[1] == BATCH  # the batch's texts only
    assert one.targets.targets.shape[1] == n_columns  # the negatives' images stay text -> image columns


def test_easy_and_hard_negatives_join_a_steps_columns(synthetic, data):
    anchors, draws = epoch_draws(synthetic, data)
    planner = StepPlanner(data, relevance=Relevance(), group_positives=True, fusion=False, text_negatives=True)
    seen = set()
    for i in range(8):
        plan = planner.plan(anchors[i], draws.partners[i], draws.partner_types[i], draws.negatives[i],
                            draws.negative_types[i])
        seen |= {NEGATIVE_TYPES[t] for t in plan.negative_types}
        n_drawn = int((draws.negatives[i] >= 0).sum())
        assert len(plan.extra_rows) == plan.n_partners + n_drawn == plan.targets.targets.shape[1] - BATCH
        assert np.array_equal(plan.extra_rows[plan.n_partners:].numpy(), draws.negatives[i][draws.negatives[i] >= 0])
        # a negative weighs 0 in its anchor's targets, unless the pair types overlap and it is
        # also the item the anchor drew as its partner (one item, one weight per row)
        n_negatives = draws.negatives.shape[1] // BATCH
        drawn = draws.negatives[i] >= 0
        owners = np.repeat(np.arange(BATCH), n_negatives)[drawn]
        own_partner = draws.partners[i][owners] == draws.negatives[i][drawn]
        weights = plan.weights[owners, BATCH + plan.n_partners + np.arange(n_drawn)]
        assert (weights[~own_partner] == 0).all() and (~own_partner).sum() > 0.9 * n_drawn
    assert seen == set(NEGATIVE_TYPES)


def test_group_positives_only_from_groups_above_min_confidence():
    meta = pd.DataFrame({"item_id": ["a", "b", "c", "d", "e"]})
    groups = pd.DataFrame({"item_id": ["a", "b", "c", "d", "e"], "group_id": ["G1", "G1", "G2", "G2", ""],
                           "confidence": [0.9, 0.9, 0.4, 0.4, 0.0]})
    codes = confident_group_codes(meta, groups, min_confidence=0.5)
    assert codes[0] == codes[1]  # a confident group
    assert len({codes[2], codes[3], codes[4], codes[0]}) == 4  # the others are alone
    assert len(set(confident_group_codes(meta, groups, min_confidence=0.3)[:4])) == 2
    assert len(set(confident_group_codes(meta, None, min_confidence=0.5))) == 5
    with pytest.raises(ValueError, match="confidence"):
        confident_group_codes(meta, groups.drop(columns="confidence"), 0.5)


def test_pairs_of_an_unknown_type_or_the_wrong_label_are_refused(synthetic):
    bad = synthetic.pairs.copy()
    bad.loc[0, "pair_type"] = "sideways"
    with pytest.raises(ValueError, match="unknown type"):
        training_data(synthetic, bad)
    flipped = synthetic.pairs.copy()
    row = int(np.flatnonzero(flipped["pair_type"] == "medium")[0])
    flipped.loc[row, "label"] = 0
    with pytest.raises(ValueError, match=f"row {row}: pair_type 'medium' with label 0"):
        training_data(synthetic, flipped)


def test_bank_takes_the_embeddings_of_the_extra_rows(synthetic, data):
    heads = ProtocolHeads(HeadsConfig(in_dim=16, out_dim=16, hidden_dim=8))
    torch.nn.init.normal_(heads.image_head.residual[-1].weight)
    bank = EmbeddingBank(data, refresh_every=5)
    bank.refresh(heads)
    planner = StepPlanner(data, relevance=Relevance(), group_positives=True, fusion=True, text_negatives=False,
                          bank=bank)
    anchors, draws = epoch_draws(synthetic, data, epochs=1)
    plan = planner.plan(anchors[0], draws.partners[0], draws.partner_types[0], draws.negatives[0],
                        draws.negative_types[0])
    image, text = bank.take(plan.bank_extra)
    rows = plan.extra_rows.numpy()
    expected_image, expected_text = heads.embed_numpy(data.image[rows].numpy(), data.text[rows].numpy())
    assert np.array_equal(image.numpy(), expected_image) and np.array_equal(text.numpy(), expected_text)
    for name, labels in data.labels.items():
        assert torch.equal(plan.labels[name], labels[plan.anchors])
        assert plan.known[name] == int((labels[plan.anchors] != IGNORE_INDEX).sum())


def test_a_same_category_column_that_contradicts_nothing_is_left_out_not_pushed_away(data):
    codes, categories, train = data.attribute_codes, data.category_codes, data.train_rows

    def contradicts(r, anchor):
        return bool(((codes[r] >= 0) & (codes[anchor] >= 0) & (codes[r] != codes[anchor])).any())

    anchor = next(r for r in train if categories[r] >= 0 and (codes[r] >= 0).sum() >= 2)
    same = [r for r in train if r != anchor and categories[r] == categories[anchor]]
    compatible = next(r for r in same if not contradicts(r, anchor))
    clashing = next(r for r in same if contradicts(r, anchor))
    other = next(r for r in train if categories[r] >= 0 and categories[r] != categories[anchor])
    planner = StepPlanner(data, relevance=Relevance(), group_positives=False, fusion=False, text_negatives=False,
                          neutral_compatible=True)
    negatives = np.array([compatible, clashing, other])
    plan = planner.plan(np.array([anchor, other]), np.array([-1, -1]), np.array([-1, -1]), negatives,
                        np.zeros(3, dtype=np.int64))
    # columns: anchor, other (the batch), then the three negatives
    assert plan.neutral[0].tolist() == [False, False, True, False, False]  # only the compatible one
    assert plan.weights[0, 2] == 0.0 and plan.i2t_neutral.shape == (2, 2)
    assert not plan.neutral[0, 0]  # its own image stays the positive
    off = StepPlanner(data, relevance=Relevance(), group_positives=False, fusion=False, text_negatives=False)
    assert off.plan(np.array([anchor, other]), np.array([-1, -1]), np.array([-1, -1]), negatives,
                    np.zeros(3, dtype=np.int64)).neutral is None  # neutral_compatible off: every column a negative


def test_trousers_learn_none_for_the_neckline_head_they_have_no_neckline_for():
    from protocol.training.data import NONE_CLASS, attribute_head_labels

    meta = pd.DataFrame({"category1": ["bottoms", "tops", "bottoms", "Bottoms"], "material": "denim",
                         "category2": ["shorts", "tees", "skirts", "trousers"],
                         "pattern": "unknown", "neckline": ["unknown", "unknown", "crew", "unknown"],
                         "sleeve": "unknown"})
    labels = attribute_head_labels(meta)
    assert labels["neckline"].tolist() == [NONE_CLASS, "unknown", "crew", NONE_CLASS]  # a said value stands
    assert labels["sleeve"].tolist() == [NONE_CLASS, "unknown", NONE_CLASS, NONE_CLASS]
    assert labels["material"].tolist() == ["denim"] * 4  # every garment has a material


def test_the_category_head_learns_category2_but_not_where_the_graphic_policy_keeps_it_out():
    from protocol.training.data import attribute_classes, attribute_head_labels

    meta = pd.DataFrame({"category1": "tops", "category2": ["tees", "graphic", "unknown", "shirts"],
                         "material": "cotton", "pattern": "solid", "neckline": "crew", "sleeve": "short"})
    labels = attribute_head_labels(meta)
    assert labels["category"].tolist() == ["tees", "unknown", "unknown", "shirts"]
    assert attribute_classes(labels)["category"] == ["shirts", "tees"]
    assert "category" not in attribute_classes(labels, ("material", "neckline"))
    assert "category" not in attribute_classes(labels.assign(category=["tees", "unknown", "unknown", "tees"]))
