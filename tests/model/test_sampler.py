"""BalancedBatchSampler on hand-made metadata: achieved mix vs targets, caps, determinism, resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from protocol.model.sampler import BalancedBatchSampler, SamplerConfig, batch_mix

NO_CAP = SamplerConfig(dominant_cap=1.0)


def make_meta(counts: dict[tuple[str, str, str], int], extra_val: int = 5) -> pd.DataFrame:
    """Rows per (category2, material, neckline), all train, plus a few val rows."""
    rows = []
    for (category, material, neckline), n in counts.items():
        rows += [{"category2": category, "material": material, "neckline": neckline, "split": "train"}] * n
    rows += [{"category2": "cardigans", "material": "denim", "neckline": "v-neck", "split": "val"}] * extra_val
    meta = pd.DataFrame(rows)
    meta["item_id"] = [f"i{i}" for i in range(len(meta))]
    return meta


MIXED = make_meta({
    ("jeans", "wool", "unknown"): 100,
    ("cardigans", "wool", "unknown"): 10,
    ("shorts", "polyester", "unknown"): 10,
    ("jeans", "denim", "unknown"): 10,
    ("jackets", "leather", "crew"): 10,
    ("jeans", "polyester", "crew"): 20,
    ("graphic", "polyester", "unknown"): 20,
})


def train_rows(meta: pd.DataFrame) -> np.ndarray:
    return np.flatnonzero(meta["split"] == "train")


def test_targets_follow_the_weight_factors():
    sampler = BalancedBatchSampler(MIXED, train_rows(MIXED), 32, 10, NO_CAP, seed=0)
    # Weights by hand: weak category x3, rare material x3, known neckline x2.
    weights = {"plain": 100 * 1 + 20 * 1, "cardigans": 10 * 3, "shorts": 10 * 3, "denim": 10 * 3,
               "leather": 10 * 3 * 2, "neckline": 20 * 2}
    total = sum(weights.values())
    targets = sampler.target_shares()
    assert targets["category2=cardigans"] == pytest.approx(30 / total)
    assert targets["category2=shorts"] == pytest.approx(30 / total)
    assert targets["material=denim"] == pytest.approx(30 / total)
    assert targets["material=leather"] == pytest.approx(60 / total)
    assert targets["neckline=known"] == pytest.approx((60 + 40) / total)


def test_achieved_mix_matches_targets_over_many_batches():
    sampler = BalancedBatchSampler(MIXED, train_rows(MIXED), 32, 400, NO_CAP, seed=1)
    table = sampler.mix_table(sampler.epoch_batches(0)).set_index("group")
    assert np.allclose(table["achieved_share"], table["target_share"], atol=0.01)
    natural = batch_mix(MIXED, train_rows(MIXED), NO_CAP)
    # 3x weight among items whose weights sum to 310 instead of 180: share x 3 * 180 / 310.
    for group in ("category2=cardigans", "category2=shorts", "material=denim"):
        assert natural[group] == pytest.approx(10 / 180)
        assert table.loc[group, "achieved_share"] == pytest.approx(3 * 180 / 310 * natural[group], abs=0.01)


def test_graphic_is_never_a_weak_category():
    sampler = BalancedBatchSampler(MIXED, train_rows(MIXED), 32, 50, NO_CAP, seed=0)
    graphic_rows = np.flatnonzero(MIXED["category2"] == "graphic")
    plain_rows = np.flatnonzero((MIXED["category2"] == "jeans") & (MIXED["material"] == "wool"))
    # A graphic polyester item without neckline weighs the same as a plain item.
    assert sampler.probs[graphic_rows[0]] == pytest.approx(sampler.probs[plain_rows[0]])
    with pytest.raises(ValueError, match="graphic"):
        SamplerConfig(weak_categories=("cardigans", "graphic"))
    meta = MIXED.assign(category2=MIXED["category2"].replace({"cardigans": "graphic"}))
    assert batch_mix(meta, train_rows(meta))["category2=cardigans"] == 0.0


DOMINANT = make_meta({
    ("tees", "cotton", "crew"): 120,
    ("tees", "polyester", "unknown"): 60,
    ("jeans", "cotton", "unknown"): 60,
    ("cardigans", "wool", "v-neck"): 20,
    ("shorts", "denim", "unknown"): 20,
    ("jackets", "leather", "unknown"): 20,
})


def test_dominant_groups_are_capped_in_every_batch():
    batch = 40
    sampler = BalancedBatchSampler(DOMINANT, train_rows(DOMINANT), batch, 200, SamplerConfig(), seed=3)
    batches = sampler.epoch_batches(0)
    tees = (DOMINANT["category2"].to_numpy() == "tees")[batches].sum(axis=1)
    cotton = (DOMINANT["material"].to_numpy() == "cotton")[batches].sum(axis=1)
    cap = int(0.3 * batch)
    assert tees.max() <= cap and cotton.max() <= cap
    # Naturally tees are 60% of the anchors: the cap binds, and lands close to it on average.
    assert batch_mix(DOMINANT, train_rows(DOMINANT))["category2=tees"] == pytest.approx(0.6)
    assert tees.mean() / batch > 0.25
    table = sampler.mix_table(batches).set_index("group")
    assert table.loc["category2=tees", "target_share"] <= 0.3 + 1e-9
    assert table.loc["material=cotton", "target_share"] <= 0.3 + 1e-9
    assert bool(table.loc["category2=tees", "capped"]) and not bool(table.loc["material=denim", "capped"])


def test_same_seed_same_batches_and_other_seed_other_batches():
    a = BalancedBatchSampler(DOMINANT, train_rows(DOMINANT), 16, 20, seed=7)
    b = BalancedBatchSampler(DOMINANT, train_rows(DOMINANT), 16, 20, seed=7)
    c = BalancedBatchSampler(DOMINANT, train_rows(DOMINANT), 16, 20, seed=8)
    assert np.array_equal(a.epoch_batches(2), b.epoch_batches(2))
    assert not np.array_equal(a.epoch_batches(2), c.epoch_batches(2))
    assert not np.array_equal(a.epoch_batches(2), a.epoch_batches(3))


def test_state_round_trip_resumes_exactly_mid_epoch():
    rows = train_rows(DOMINANT)
    reference = BalancedBatchSampler(DOMINANT, rows, 16, 10, seed=5)
    uninterrupted = [b for _ in range(2) for b in reference]  # two full epochs

    first = BalancedBatchSampler(DOMINANT, rows, 16, 10, seed=5)
    seen = []
    for batch in first:
        seen.append(batch)
        if len(seen) == 14 - 10:  # stop inside epoch 0
            break
    state = first.state_dict()
    assert state == {"epoch": 0, "position": 4, "seed": 5}
    resumed = BalancedBatchSampler(DOMINANT, rows, 16, 10, seed=5)
    resumed.load_state_dict(state)
    seen += list(resumed) + list(resumed)
    assert len(seen) == len(uninterrupted)
    assert all(np.array_equal(x, y) for x, y in zip(seen, uninterrupted))
    assert resumed.state_dict() == {"epoch": 2, "position": 0, "seed": 5}
    with pytest.raises(ValueError, match="seed"):
        BalancedBatchSampler(DOMINANT, rows, 16, 10, seed=6).load_state_dict(state)


def test_unbalanced_epochs_use_every_anchor_once():
    rows = train_rows(DOMINANT)  # 300 anchors
    sampler = BalancedBatchSampler(DOMINANT, rows, 30, 10, SamplerConfig(balanced=False), seed=0)
    batches = sampler.epoch_batches(0)
    assert sorted(batches.ravel().tolist()) == rows.tolist()
    assert sampler.target_shares()["category2=tees"] == pytest.approx(0.6)  # the natural share, uncapped


def test_batch_mix_counts_shares_of_the_given_rows():
    rows = np.array([0, 120, 180, 240, 260, 280])  # tee cotton crew, tee poly, jeans cotton, cardigan, shorts, jacket
    mix = batch_mix(DOMINANT, rows)
    assert mix["category2=tees"] == pytest.approx(2 / 6)
    assert mix["material=cotton"] == pytest.approx(2 / 6)
    assert mix["neckline=known"] == pytest.approx(2 / 6)
    assert mix["material=denim"] == pytest.approx(1 / 6)


def test_only_the_given_rows_are_sampled_and_bad_input_is_named():
    rows = train_rows(DOMINANT)
    batches = BalancedBatchSampler(DOMINANT, rows, 16, 30, seed=0).epoch_batches(0)
    assert set(batches.ravel()) <= set(rows)
    with pytest.raises(ValueError, match="neckline"):
        BalancedBatchSampler(DOMINANT.drop(columns=["neckline"]), rows, 16, 3)
    with pytest.raises(ValueError, match="dominant_cap"):
        SamplerConfig(dominant_cap=0.0)
    with pytest.raises(ValueError, match="train split is empty"):
        BalancedBatchSampler(DOMINANT, np.array([], dtype=int), 16, 3)
