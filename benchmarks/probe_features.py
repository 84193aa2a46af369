"""How much of each attribute the frozen backbone features carry: the ceiling under trained heads.

Heads trained on cached features can only rank by what those features hold. This fits probes on
the train split's cached features and scores them on the test split, per attribute, for the
image and the text side, against the majority class of the train split:
  - a linear probe (logistic regression): what a linear attribute head can read;
  - an MLP probe with one hidden layer of the heads' width: what the projection heads can read.
Only rows whose attribute is known (grounded from text) count. Each accuracy comes with its n and
a 95% Wilson interval. If the image-side probe is no better than the majority class, no training
of the heads can make text -> image retrieval rank that attribute (see docs/ARCHITECTURE.md,
"Training defaults, and the evidence behind them").

A second table asks the same of each value a locked target names (the scoreboard's weak classes
and rare materials: cardigans, shorts, denim, leather): a class-balanced one-vs-rest linear probe
on the image features, fitted on the train split, ranks the test split's known rows. Its ROC AUC
(95% Hanley-McNeil interval) says whether the features separate the value at all; its precision
at 10 (95% Wilson interval) is what a supervised ranking of that value reaches, the ceiling a
class query's precision@10 meets with these features.

Data: the train stage's default inputs (or --prepared/--catalog/--cache-dir).

    .venv/bin/python benchmarks/probe_features.py [--attributes category2,neckline,...]
"""

from __future__ import annotations

import argparse
import math
import os

import numpy as np

ATTRIBUTES = ("category2", "material", "pattern", "neckline", "sleeve")
Z95 = 1.959964
TOP_K = 10  # the locked targets' cutoff (precision@10)


def wilson(correct: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (fractions)."""
    if n == 0:
        return math.nan, math.nan
    p = correct / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n**2)) / (1 + Z95**2 / n)
    return centre - half, centre + half


def standardise(x: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    mean, std = x[fit_rows].mean(axis=0), x[fit_rows].std(axis=0) + 1e-6
    return (x - mean) / std


def auc_interval(auc: float, n_pos: int, n_neg: int) -> tuple[float, float]:
    """95% interval of a ROC AUC from Hanley & McNeil's (1982) standard error."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg)
    half = Z95 * math.sqrt(max(var, 0.0))
    return max(auc - half, 0.0), min(auc + half, 1.0)


def one_vs_rest(x: np.ndarray, is_value: np.ndarray, fit: np.ndarray, score: np.ndarray) -> tuple[float, int]:
    """ROC AUC and hits in the top TOP_K of a class-balanced linear probe for one value, ranked over `score`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    probe = LogisticRegression(max_iter=2000, C=1.0, class_weight="balanced").fit(x[fit], is_value[fit])
    scores, truth = probe.decision_function(x[score]), is_value[score]
    return float(roc_auc_score(truth, scores)), int(truth[np.argsort(-scores, kind="stable")[:TOP_K]].sum())


def print_focus_table(image: np.ndarray, meta, train: np.ndarray, test: np.ndarray) -> None:
    from protocol.retrieval.metrics import attribute_column, known_values
    from protocol.scoreboard.spec import focus_classes

    print("\nlocked targets' values, image side: one-vs-rest linear probe ranking the known test rows")
    print(f"{'value':10s} {'attribute':9s} {'pos train':>9s} {'pos test':>8s} {'n test':>6s}  "
          f"{'ROC AUC [95% CI]':>22s}  {f'precision@{TOP_K} [95% CI]':>26s}")
    for attribute, values in focus_classes().items():
        column = meta[attribute_column(attribute)].to_numpy(dtype=object)
        known = known_values(column, attribute)
        fit, score = train & known, test & known
        for value in values:
            is_value = column == value
            if not (is_value & fit).any() or not (is_value & score).any():
                print(f"{value:10s} {attribute:9s} skipped: no {value} row on train or on test")
                continue
            auc, hits = one_vs_rest(image, is_value, fit, score)
            n_pos = int((is_value & score).sum())
            auc_low, auc_high = auc_interval(auc, n_pos, int(score.sum()) - n_pos)
            p_low, p_high = wilson(hits, TOP_K)
            print(f"{value:10s} {attribute:9s} {int((is_value & fit).sum()):9d} {n_pos:8d} {int(score.sum()):6d}  "
                  f"{auc:.3f} [{auc_low:.3f}, {auc_high:.3f}]      {hits / TOP_K:.2f} [{p_low:.2f}, {p_high:.2f}]")


def probes(hidden: int, seed: int) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    return {"linear": LogisticRegression(max_iter=2000, C=1.0),
            "mlp": MLPClassifier((hidden,), alpha=1e-2, max_iter=400, early_stopping=True, random_state=seed)}


def main() -> None:
    from bench_train import stage_defaults  # this folder is on sys.path when the script runs

    from protocol.data.processed import load_processed
    from protocol.io import read_json
    from protocol.model.features import load_features
    from protocol.model.protocol_model import HeadsConfig

    defaults = stage_defaults()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--prepared", default=defaults["prepared"], help="processed dataset dir")
    parser.add_argument("--catalog", default=defaults["catalog"], help="baseline catalog (names the backbone)")
    parser.add_argument("--cache-dir", default=defaults["cache_dir"], help="feature cache directory")
    parser.add_argument("--attributes", default=",".join(ATTRIBUTES), help="meta columns to probe")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in (args.prepared, args.catalog, args.cache_dir):
        if not os.path.exists(path):
            raise SystemExit(f"{path} does not exist: run the pipeline first (make demo), or pass its outputs")

    processed = load_processed(args.prepared)
    backbone_fp = read_json(os.path.join(args.catalog, "manifest.json"))["backbone_fingerprint"]
    features = load_features(args.cache_dir, processed.fingerprint, backbone_fp)
    meta = processed.meta
    train, test = (meta["split"] == "train").to_numpy(), (meta["split"] == "test").to_numpy()
    sides = {"image": standardise(features.image, train), "text": standardise(features.text, train)}
    print(f"data: {args.prepared}: {train.sum()} train and {test.sum()} test items, D={features.image.shape[1]}")
    print(f"{'attribute':10s} {'side':5s} {'n train':>7s} {'n test':>6s} {'majority':>8s}  "
          f"{'linear probe [95% CI]':>24s}  {'MLP probe [95% CI]':>24s}")
    for attribute in [a.strip() for a in args.attributes.split(",") if a.strip()]:
        values = meta[attribute].astype(str).to_numpy()
        known = values != "unknown"
        fit, score = train & known, test & known
        if len(set(values[fit])) < 2 or not score.any():
            print(f"{attribute:10s} skipped: fewer than 2 known classes on train or no known test row")
            continue
        classes, counts = np.unique(values[fit], return_counts=True)
        majority = float(np.mean(values[score] == classes[counts.argmax()]))
        for side, x in sides.items():
            cells = []
            for probe in probes(HeadsConfig.hidden_dim, args.seed).values():
                correct = int((probe.fit(x[fit], values[fit]).predict(x[score]) == values[score]).sum())
                low, high = wilson(correct, int(score.sum()))
                cells.append(f"{correct / score.sum():.3f} [{low:.3f}, {high:.3f}]")
            print(f"{attribute:10s} {side:5s} {fit.sum():7d} {score.sum():6d} {majority:8.3f}  "
                  f"{cells[0]:>24s}  {cells[1]:>24s}")
    print_focus_table(sides["image"], meta, train, test)


if __name__ == "__main__":
    main()
