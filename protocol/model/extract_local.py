"""The local extraction engine: one process runs the model, DataLoader workers feed it.

The workers read rows in batches that never straddle a shard and decode, preprocess or
tokenise them (`feature_inputs.input_plan`), while the main process runs the model under
`torch.inference_mode`. Each shard is written as soon as its last batch is embedded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import datasets
import torch
from torch.utils.data import DataLoader

from protocol.model.backbone import Backbone
from protocol.model.feature_cache import Shard, ShardWriter
from protocol.model.feature_inputs import RowReader, input_plan

log = logging.getLogger(__name__)

PREFETCH_BATCHES = 4  # per worker; decoded batches are small next to the model's memory
CORES_PER_CPU_WORKER = 8  # on a CPU, a decoding worker per this many cores; see default_num_workers


def default_num_workers(device: torch.device) -> int:
    """DataLoader workers when the caller does not say.

    On a CPU the workers and the model's threads share the cores, and decoding and
    preprocessing a product photo costs a few percent of what the model spends on it.
    A worker then only pays where the model's threads no longer scale: one per
    CORES_PER_CPU_WORKER cores, none below that (decoding in the main process). Measured
    with benchmarks/bench_features.py on 2 cores (ViT-B-32, 224 px images, three rounds,
    ratio to the bare forward): 0 workers 1.13 (images) and 1.35 (texts) on average, 1 worker
    1.00 and 0.91, 2 workers 0.94 and 0.76 (README, "Feature extraction"). With the oneDNN
    forward (backbone.FORWARD_ONEDNN, twice as fast, so decoding weighs twice as much), n=256,
    two rounds each: 0 workers 1.01 and 0.94 (images), 1.06 and 1.05 (texts); 1 worker 0.86
    and 0.86, 0.84 and 0.86: still none. The model keeps torch's default thread count, which is
    the cores this process may use (a DataLoader worker runs with one thread). On a GPU the
    model runs elsewhere and decoding bounds the pipeline: every core but the one that
    feeds the device.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        return max(1, cores - 1)
    return cores // CORES_PER_CPU_WORKER


def embed_shards_local(
    dataset: datasets.Dataset,
    kind: str,
    shards: list[Shard],
    backbone: Backbone,
    root: Path,
    shard_size: int,
    batch_size: int,
    num_workers: int,
) -> None:
    """Embed `kind` for these shards, writing each shard as soon as it is full."""
    plan = input_plan(kind, backbone)
    # Batches never straddle a shard, so a shard is complete after its last batch.
    batches = [list(s.rows[i : i + batch_size]) for s in shards for i in range(0, len(s.rows), batch_size)]
    loader = DataLoader(
        RowReader(dataset, kind),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=plan.collate,
        pin_memory=backbone.device.type == "cuda",
        prefetch_factor=PREFETCH_BATCHES if num_workers > 0 else None,
        persistent_workers=False,
    )
    writer = ShardWriter(root, kind, shards, shard_size, desc=f"{kind} features")
    try:
        for rows, inputs in loader:
            writer.add(rows, plan.features(inputs))
    finally:
        writer.bar.close()
    writer.close()
