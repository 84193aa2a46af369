"""Backbone text features of prompts (the class-name queries), cached beside the item features.

The prompts depend on the dataset (its label vocabulary) and the prompt templates, the
features on the backbone, so they live in the item features' cache directory for that
(dataset, backbone), as one parquet file recording both fingerprints and every prompt.
`cached_prompt_features` embeds them when the file is missing or holds other prompts (the
templates changed); `load_prompt_features` only reads, so stages after `baseline` never call
a backbone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from protocol.model.backbone import Backbone
from protocol.model.feature_cache import cache_path
from protocol.provenance import provenance, read_parquet, write_parquet

log = logging.getLogger(__name__)

PROMPT_FEATURES_FILE = "prompt_features.parquet"
FEATURES = "features"
MADE_BY = "the baseline stage with this backbone and prepared dataset (it embeds the class-name prompts)"


def prompt_features_path(cache_dir: str | Path, dataset_fingerprint: str, backbone_fingerprint: str) -> Path:
    return cache_path(cache_dir, dataset_fingerprint, backbone_fingerprint) / PROMPT_FEATURES_FILE


def cached_prompt_features(prompts: pd.DataFrame, backbone: Backbone, cache_dir: str | Path,
                           dataset_fingerprint: str) -> np.ndarray:
    """[len(prompts), D] L2-normalised text features of `prompts["prompt"]`, embedded once per cache."""
    path = prompt_features_path(cache_dir, dataset_fingerprint, backbone.fingerprint)
    if path.is_file():
        try:
            return load_prompt_features(prompts, cache_dir, dataset_fingerprint, backbone.fingerprint)
        except ValueError as e:
            log.info("prompt features: embedding again (%s)", e)
    texts = prompts["prompt"].astype(str).tolist()
    features = backbone.encode_texts(texts) if texts else np.zeros((0, backbone.embed_dim), np.float32)
    table = prompts.reset_index(drop=True).copy()
    table[FEATURES] = list(features.astype(np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(table, path, provenance(dataset_fingerprint, backbone.fingerprint))
    log.info("prompt features: %d prompts embedded into %s", len(texts), path)
    return features


def load_prompt_features(prompts: pd.DataFrame, cache_dir: str | Path, dataset_fingerprint: str,
                         backbone_fingerprint: str) -> np.ndarray:
    """The cached features of exactly these prompts, in their order; never calls a backbone.

    FileNotFoundError when nothing is cached; ValueError when the cache holds other prompts.
    """
    path = prompt_features_path(cache_dir, dataset_fingerprint, backbone_fingerprint)
    table, _ = read_parquet(path, "cached prompt features", dataset=dataset_fingerprint,
                            backbone=backbone_fingerprint, made_by=MADE_BY)
    cached = table.set_index("prompt")[FEATURES]
    cached = cached[~cached.index.duplicated()]  # two attributes may phrase a value alike
    missing = sorted(set(prompts["prompt"]) - set(cached.index))
    if missing:
        raise ValueError(f"{path} holds no features for {len(missing)} prompt(s), e.g. {missing[:3]} (the prompt "
                         f"templates or the label vocabulary changed): re-run {MADE_BY}")
    rows = cached.loc[prompts["prompt"].tolist()]
    return np.stack(rows.to_numpy()).astype(np.float32) if len(rows) else np.zeros((0, 0), np.float32)
