"""The ablation's library side: variants, seeds and the ablation.json summary (no training here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from protocol.scoreboard import load_targets, paired_bootstrap
from protocol.tracking.runs import variant_name
from protocol.training import ablation
from protocol.training.ablation import DEFAULT_VARIANTS, VARIANTS, VariantRun, parse_seeds, parse_variants, summarize, variant_config
from protocol.training.config import TrainConfig

TARGET = load_targets().targets[0].metric
EVIDENCE = dict(resamples=2000, seed=0, confidence=0.95)


def test_each_variant_switches_on_one_part_over_plain_and_is_named_as_a_train_run_would_be():
    assert list(DEFAULT_VARIANTS) == ["plain", "+attribute_heads", "+attribute_scoring", "+balanced_sampling",
                                      "+hard_negatives", "+graded_pairs", "+image_side_pairs",
                                      "+neutral_compatible", "full"]
    assert list(VARIANTS) == list(DEFAULT_VARIANTS)
    base = TrainConfig(lr=3e-4)
    for variant in VARIANTS:
        cfg = variant_config(base, variant, 2)
        assert (cfg.seed, cfg.lr) == (2, 3e-4)
        assert variant_name(cfg) == variant  # the `variant` tag of a train run with these switches
    on = {v: [s for s in ablation.SWITCHES if VARIANTS[v][s]] for v in VARIANTS}
    assert on["plain"] == [] and on["full"] == list(ablation.SWITCHES)
    assert all(on[f"+{s}"] == [s] for s in ablation.SWITCHES if s != "attribute_scoring")
    assert on["+attribute_scoring"] == ["attribute_heads", "attribute_scoring"]  # scoring needs the heads
    with pytest.raises(ValueError, match="unknown ablation variant 'half'; the variants are plain, "):
        variant_config(base, "half", 0)


def test_variants_train_longest_first_full_before_the_one_part_variants_before_plain():
    order = ablation.longest_first(["plain", "+hard_negatives", "full", "+attribute_scoring", "+graded_pairs"])
    assert order == ["full", "+attribute_scoring", "+hard_negatives", "+graded_pairs", "plain"]


@pytest.mark.parametrize("text", ["plain,half", "", "full,full"])
def test_a_bad_variant_list_names_the_valid_variants(text):
    assert parse_variants(" plain, full") == ("plain", "full")
    with pytest.raises(ValueError, match=r"parameter 'variants'.*the variants are plain, \+attribute_heads, "
                                         r"\+attribute_scoring, \+balanced_sampling, \+hard_negatives, \+graded_pairs, "
                                         r"\+image_side_pairs, \+neutral_compatible, full"):
        parse_variants(text)


@pytest.mark.parametrize("text", ["", "0,0", "0,a"])
def test_seeds_must_be_distinct_integers(text):
    assert parse_seeds("0, 1,2") == (0, 1, 2)
    with pytest.raises(ValueError, match="parameter 'seeds'"):
        parse_seeds(text)


def _runs(values: dict[tuple[str, int], np.ndarray], ids: list[str]) -> list[VariantRun]:
    return [VariantRun(variant, seed, {TARGET: float(v.mean()) if len(v) else float("nan")},
                       {TARGET: pd.Series(v, index=ids[: len(v)], dtype=float)})
            for (variant, seed), v in values.items()]


def test_summary_is_in_points_with_full_minus_plain_paired_per_query_over_the_seed_means():
    rng = np.random.default_rng(0)
    ids = [f"q{i}" for i in range(40)]
    values = {(v, s): rng.random(40) + (0.2 if v == "full" else 0.0) for v in ("plain", "full") for s in (0, 1, 2)}
    doc = summarize(_runs(values, ids), [TARGET], **EVIDENCE)
    plain = doc["variants"]["plain"][TARGET]
    per_seed = [100 * values[("plain", s)].mean() for s in (0, 1, 2)]
    assert plain["per_seed"] == pytest.approx(per_seed) and plain["seeds"] == [0, 1, 2]
    assert plain["mean"] == pytest.approx(np.mean(per_seed)) and plain["std"] == pytest.approx(np.std(per_seed, ddof=1))
    diff = doc["full_minus_plain"][TARGET]
    seed_mean = {v: np.mean([values[(v, s)] for s in (0, 1, 2)], axis=0) for v in ("plain", "full")}
    expected = paired_bootstrap(seed_mean["plain"], seed_mean["full"], **EVIDENCE)
    assert (diff["mean"], diff["ci_low"], diff["ci_high"], diff["n"]) == pytest.approx(
        (expected.mean_points, expected.ci_low_points, expected.ci_high_points, 40))
    assert diff["mean"] == pytest.approx(doc["variants"]["full"][TARGET]["mean"] - plain["mean"])
    assert diff["ci_low"] < diff["mean"] < diff["ci_high"] and diff["ci_low"] > 0  # +20 points, clearly above 0
    markdown = ablation.format_markdown(doc, [("neckline", TARGET)])
    assert f"| plain | {plain['mean']:.2f} ± {plain['std']:.2f} |" in markdown
    assert f"{diff['mean']:+.2f} [{diff['ci_low']:+.2f}, {diff['ci_high']:+.2f}] (n=40)" in markdown


def test_a_target_without_queries_or_a_single_seed_is_null_not_a_number():
    ids = ["a", "b", "c"]
    doc = summarize(_runs({("plain", 0): np.array([]), ("full", 0): np.array([])}, ids), [TARGET], **EVIDENCE)
    assert doc["variants"]["plain"][TARGET] == {"mean": None, "std": None, "per_seed": [], "seeds": [],
                                                "n_queries": 0}
    assert doc["full_minus_plain"][TARGET] == {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    single = summarize(_runs({("full", 0): np.ones(3)}, ids), [TARGET], **EVIDENCE)
    assert single["variants"]["full"][TARGET]["std"] is None and single["full_minus_plain"] == {}
    assert "| full | 100.00 ± - |" in ablation.format_markdown(single, [("neckline", TARGET)])


def test_the_held_out_view_gets_its_own_summary_and_table_and_only_when_measured():
    import dataclasses

    rng = np.random.default_rng(1)
    ids = [f"q{i}" for i in range(30)]
    # on trained items full recalls labels (+30 points); held out, the gain is gone
    default = _runs({(v, s): rng.random(30) * 0.5 + (0.3 if v == "full" else 0.0) for v in ("plain", "full")
                     for s in (0, 1)}, ids)
    held = _runs({(v, s): rng.random(30) * 0.5 for v in ("plain", "full") for s in (0, 1)}, ids)
    runs = [dataclasses.replace(r, held_out=h) for r, h in zip(default, held)]
    doc = ablation.summarize_views(runs, [TARGET], **EVIDENCE)
    assert doc["full_minus_plain"][TARGET]["ci_low"] > 0
    held_diff = doc[ablation.HELD_OUT]["full_minus_plain"][TARGET]
    assert held_diff["ci_low"] < 0 < held_diff["ci_high"] and held_diff["n"] == 30
    markdown = ablation.format_markdown(doc, [("neckline", TARGET)])
    assert markdown.count("| full − plain |") == 2 and ablation.HELD_OUT_VIEW in markdown
    assert ablation.HELD_OUT not in ablation.summarize_views(default, [TARGET], **EVIDENCE)  # not measured: absent


def test_the_held_out_view_evaluates_on_the_query_split_as_the_catalog():
    from protocol.retrieval.evaluation import EvalConfigMixin
    from protocol.training.ablation_jobs import held_out_view

    view = held_out_view(EvalConfigMixin(catalog_splits="train,val", query_split="test"))
    assert (view.catalog_splits, view.query_split) == ("test", "test")
