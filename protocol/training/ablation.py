"""The ablation: which of the training's parts earns its place, with several seeds and intervals.

Variants (each part is switched on alone over `plain`, so each row shows what that one part
adds to the plain adapter, and `full` has them all):

  plain                InfoNCE only: every switch below off
  +attribute_heads     plain + the attribute classifiers on the image embeddings (a training loss only)
  +attribute_scoring   plain + the attribute heads, their predictions also in text -> image ranking
                       (late fusion, weight fitted on validation)
  +balanced_sampling   plain + anchors drawn towards weak classes, rare materials, known necklines
  +hard_negatives      plain + negative pairs (mined, attribute-targeted, easy) as extra columns
  +graded_pairs        plain + graded soft targets per pair type, contradictions down-weighted
  +image_side_pairs    plain + partners (and negatives, where drawn) train the image head too
  +neutral_compatible  plain + same-category columns compatible with the anchor left out of its softmax
  full                 all on (the shipped `train` configuration)

plain still has its pairs.parquet partners, every positive at full weight (multi-positive
InfoNCE). One at a time rather than cumulative, so each row shows what that one part adds.
The names are those `protocol.tracking.runs.variant_name` gives a `train` run with the same
switches, so an ablation child and a hand-made train run of the
same configuration carry the same `variant` tag.

Every variant starts from the same base TrainConfig (the caller's), with its switches and
the seed set; everything else (pairs, negatives, features, queries) is shared. The summary
(`summarize`) is the ablation.json document of issue 10: per variant and locked target, the
mean, sample standard deviation and per-seed values in points, and `full_minus_plain`: per
test query, full's value averaged over seeds minus plain's, with the scoreboard's own
paired bootstrap interval (`protocol.scoreboard.paired_bootstrap`, its evidence settings).

Library code: no MLflow.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from protocol.io import atomic_path, write_json
from protocol.training.config import TrainConfig

SWITCHES = ("attribute_heads", "attribute_scoring", "balanced_sampling", "hard_negatives", "graded_pairs",
            "image_side_pairs", "neutral_compatible")
# One variant per switch: plain with that switch on (and what it needs: scoring by the attribute
# heads needs the heads), so each row shows what one part adds to plain InfoNCE.
ONE_AT_A_TIME = SWITCHES
NEEDS = {"attribute_scoring": ("attribute_heads",)}
VARIANTS: dict[str, dict[str, bool]] = {
    "plain": dict.fromkeys(SWITCHES, False),
    **{f"+{switch}": {s: s == switch or s in NEEDS.get(switch, ()) for s in SWITCHES} for switch in ONE_AT_A_TIME},
    "full": dict.fromkeys(SWITCHES, True),
}
DEFAULT_VARIANTS = tuple(VARIANTS)
BASELINE_VARIANT, FULL_VARIANT = "plain", "full"
# Set by each variant, never by the caller's base config: the seed comes from the seeds list.
VARIANT_FIELDS = ("seed", *SWITCHES)
JSON_FILE, MARKDOWN_FILE = "ablation.json", "ablation.md"
HELD_OUT = "held_out"  # ablation.json key of the held-out view's document
HELD_OUT_VIEW = "held-out view: the test split is the catalog, nothing in it was trained on"


def parse_variants(text: str) -> tuple[str, ...]:
    """"plain, full" -> ("plain", "full"); an unknown, repeated or empty list is an error naming the valid ones."""
    names = tuple(part.strip() for part in str(text).split(",") if part.strip())
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names or len(set(names)) != len(names):
        problem = f"unknown variant(s) {unknown}" if unknown else "each variant at most once, at least one"
        raise ValueError(f"parameter 'variants': {problem} in {text!r}; the variants are {', '.join(VARIANTS)}")
    return names


def parse_seeds(text: str) -> tuple[int, ...]:
    """"0,1,2" -> (0, 1, 2); refuses an empty list, repeats and non-integers, naming the parameter."""
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    try:
        seeds = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"parameter 'seeds' must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"parameter 'seeds' must name at least one seed, each once, got {text!r}")
    return seeds


def variant_config(base: TrainConfig, variant: str, seed: int) -> TrainConfig:
    """`base` with the variant's switches and the seed."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown ablation variant {variant!r}; the variants are {', '.join(VARIANTS)}")
    return dataclasses.replace(base, seed=seed, **VARIANTS[variant])


def longest_first(variants: Sequence[str]) -> list[str]:
    """`variants` in the order to train them: more switches on first (full takes ~2x plain's time per epoch),
    so that the last jobs on a pool of workers are short ones and no core idles long at the end."""
    return sorted(variants, key=lambda v: -sum(VARIANTS[v].values()))


def variant_slug(variant: str) -> str:
    """The variant as a path or metric-key part: `+hard_negatives` -> `hard_negatives`."""
    return variant.lstrip("+")


@dataclass
class VariantRun:
    """One trained and evaluated variant and seed."""

    variant: str
    seed: int
    metrics: dict[str, float]  # target metric -> fraction (NaN when no query is behind it)
    per_query: dict[str, pd.Series]  # target metric -> per-query fractions, indexed by query id
    # the same in the held-out view: the query split is the catalog (no item the heads trained on,
    # each query's own item included), so a gain that lives only on trained items shows as label recall
    held_out: "VariantRun | None" = None


def summarize(runs: Sequence[VariantRun], metrics: Sequence[str], *, resamples: int, seed: int,
              confidence: float) -> dict[str, Any]:
    """The ablation.json document (points); see the module docstring.

    A figure no query is behind (e.g. no test query is a cardigan) is null, with n 0; the
    standard deviation of a single seed is null too (no spread was measured).
    """
    from protocol.scoreboard import paired_bootstrap, points

    by_variant: dict[str, list[VariantRun]] = {}
    for run in runs:
        by_variant.setdefault(run.variant, []).append(run)
    variants: dict[str, dict[str, Any]] = {}
    for variant, of_variant in by_variant.items():
        of_variant = sorted(of_variant, key=lambda r: r.seed)
        variants[variant] = {}
        for metric in metrics:
            values = [points(r.metrics[metric]) for r in of_variant if math.isfinite(r.metrics[metric])]
            variants[variant][metric] = {
                "mean": float(np.mean(values)) if values else None,
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                "per_seed": values,
                "seeds": [r.seed for r in of_variant if math.isfinite(r.metrics[metric])],
                "n_queries": max(len(r.per_query[metric]) for r in of_variant),
            }
    doc: dict[str, Any] = {"variants": variants, "full_minus_plain": {}, "metrics": list(metrics),
                           "seeds": sorted({r.seed for r in runs}), "confidence": confidence, "resamples": resamples}
    if BASELINE_VARIANT not in by_variant or FULL_VARIANT not in by_variant:
        return doc
    for metric in metrics:
        plain = _mean_over_seeds(by_variant[BASELINE_VARIANT], metric)
        full = _mean_over_seeds(by_variant[FULL_VARIANT], metric)
        ids = plain.index.intersection(full.index)
        if len(ids) == 0:
            doc["full_minus_plain"][metric] = {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
            continue
        interval = paired_bootstrap(plain.loc[ids].to_numpy(), full.loc[ids].to_numpy(), resamples=resamples,
                                    seed=seed, confidence=confidence)
        doc["full_minus_plain"][metric] = {"mean": interval.mean_points, "ci_low": interval.ci_low_points,
                                           "ci_high": interval.ci_high_points, "n": interval.n}
    return doc


def _mean_over_seeds(runs: Sequence[VariantRun], metric: str) -> pd.Series:
    """Per query: its value averaged over the seeds (the queries every seed scored)."""
    return pd.concat([r.per_query[metric].rename(r.seed) for r in runs], axis=1, join="inner").mean(axis=1)


def summarize_views(runs: Sequence[VariantRun], metrics: Sequence[str], **evidence) -> dict[str, Any]:
    """`summarize` of the default view, with the held-out view's own document under "held_out"."""
    doc = summarize(runs, metrics, **evidence)
    held_out = [r.held_out for r in runs if r.held_out is not None]
    if held_out:
        doc[HELD_OUT] = summarize(held_out, metrics, **evidence)
    return doc


def format_markdown(doc: dict[str, Any], targets: Sequence[tuple[str, str]],
                    view: str = "test split; catalog: the catalog splits") -> str:
    """One row per variant, one column per target (mean ± std over seeds, points), then full − plain;
    then the same for the held-out view when the document has it.

    targets: (name, metric) in scoreboard order.
    """
    def cell(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    seeds = ", ".join(map(str, doc["seeds"]))
    lines = [f"# Ablation ({view}; points, mean ± std over seeds {seeds})", "",
             "| variant | " + " | ".join(f"{name} ({metric})" for name, metric in targets) + " |",
             "|---|" + "---|" * len(targets)]
    for variant, by_metric in doc["variants"].items():
        cells = [f"{cell(by_metric[m]['mean'], '.2f')} ± {cell(by_metric[m]['std'], '.2f')}" for _, m in targets]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    if doc["full_minus_plain"]:
        cells = []
        for _, metric in targets:
            d = doc["full_minus_plain"][metric]
            cells.append(f"{cell(d['mean'], '+.2f')} [{cell(d['ci_low'], '+.2f')}, {cell(d['ci_high'], '+.2f')}] "
                         f"(n={d['n']})")
        pct = round(100 * doc["confidence"])
        lines += ["", f"full − plain per test query, averaged over seeds, with its {pct}% paired bootstrap "
                      f"interval ({doc['resamples']} resamples):", "",
                  "| | " + " | ".join(name for name, _ in targets) + " |", "|---|" + "---|" * len(targets),
                  "| full − plain | " + " | ".join(cells) + " |"]
    n = {m: max(doc["variants"][v][m]["n_queries"] for v in doc["variants"]) for _, m in targets}
    lines += ["", "Test queries behind each target: " + ", ".join(f"{name} {n[m]}" for name, m in targets) + "."]
    markdown = "\n".join(lines) + "\n"
    if HELD_OUT in doc:
        markdown += "\n" + format_markdown(doc[HELD_OUT], targets, view=HELD_OUT_VIEW)
    return markdown


def write_ablation(doc: dict[str, Any], markdown: str, out_dir: str | Path) -> tuple[Path, Path]:
    """ablation.json and ablation.md into `out_dir`, each written atomically."""
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / JSON_FILE, doc)
    with atomic_path(out_dir / MARKDOWN_FILE) as tmp:
        tmp.write_text(markdown)
    return json_path, out_dir / MARKDOWN_FILE
