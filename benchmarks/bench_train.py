"""Training throughput on cached features, against a training step that runs the backbone.

Measured in one run, on the same machine state:
  - pairs/s of `protocol.training.train` (the step loop, validation excluded) with the
    default config, with fresh extra-column embeddings (bank_refresh_steps=0), with
    1 vs 2 torch threads, and with the heads' linear layers by F.linear instead of oneDNN;
  - one validation on the mini catalog;
  - a bare heads step: forward + backward + AdamW of heads of the default size on one batch
    with a minimal loss, no loop around it: the compute a step cannot avoid;
  - one "backbone step": ViT-B-32 (random init) forward over the 64 images and 64 texts of
    a batch under no_grad, plus the heads step, i.e. what each step would cost without
    the feature cache.
The bare heads step and the backbone step run on --device (default: cuda when available);
the training loop runs where `protocol.training.train` runs, on the CPU.
Prints pairs/s, the projected time of 50,000 pairs x 10 epochs (target < 60 s on 2 cores),
and the cached/backbone step ratio (target >= 100x). The CPU is shared: the load average
is printed before and after, and ratios measured in the same run are what to compare.

Data: the default data's cached features, pairs and groups (the train stage's default input
paths, or --prepared/--catalog/--cache-dir/--pairs/--groups) when they exist, otherwise synthetic features
(1,200 items, D=512) with 50,000 pairs from the real pair generator.

    .venv/bin/python benchmarks/bench_train.py [--steps 300] [--threads 1 2] [--device cuda]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import replace

import torch

from protocol.model import onednn
from protocol.training.config import TrainConfig
from protocol.training.synthetic import synthetic_training_set
from protocol.training.train import train
from protocol.training.validation import validate

PAIRS_TARGET = 50_000 * 10
BATCH = 64


STAGE_INPUTS = ("prepared", "catalog", "cache_dir", "pairs", "hard_negatives_path", "groups")


def stage_defaults() -> dict[str, str]:
    """Where the pipeline's train stage reads its inputs by default (TrainStageConfig is their one source)."""
    from protocol.tracking.stages.train import TrainStageConfig

    return {f.name: f.default for f in dataclasses.fields(TrainStageConfig) if f.name in STAGE_INPUTS}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_data(args):
    """The default data's cached features when the pipeline has produced them, else synthetic ones."""
    paths = [args.prepared, args.catalog, args.cache_dir, args.pairs]
    if all(p and os.path.exists(p) for p in paths):
        from protocol.data.group_audit import read_groups_json
        from protocol.data.hard_negatives import read_hard_negatives
        from protocol.data.pair_generator import read_pairs
        from protocol.data.processed import load_processed
        from protocol.io import read_json
        from protocol.model.features import load_features

        processed = load_processed(args.prepared)
        backbone_fp = read_json(os.path.join(args.catalog, "manifest.json"))["backbone_fingerprint"]
        features = load_features(args.cache_dir, processed.fingerprint, backbone_fp)
        pairs, _ = read_pairs(args.pairs, dataset=processed.fingerprint, backbone=backbone_fp)
        negatives = (read_hard_negatives(args.hard_negatives, dataset=processed.fingerprint, backbone=backbone_fp)[0]
                     if os.path.exists(args.hard_negatives) else None)
        groups = (read_groups_json(args.groups, dataset=processed.fingerprint) if os.path.exists(args.groups)
                  else None)
        return (features, processed.meta, pairs, negatives, groups,
                f"cached features of {args.prepared}, {len(pairs)} pairs")
    s = synthetic_training_set(n_products=600, dim=512, n_pairs=50_000, seed=0)
    return s.features, s.meta, s.pairs, s.hard_negatives, s.groups, "synthetic (no pipeline outputs found): 50,000 pairs"


def loop_pairs_per_s(cfg: TrainConfig, data) -> float:
    features, meta, pairs, negatives, groups, _ = data
    with tempfile.TemporaryDirectory() as out:
        result = train(cfg, features, meta, pairs, negatives, out, groups=groups)
    return result.history[-1]["pairs_per_s"]


def bare_heads_step_seconds(cfg: TrainConfig, dim: int, steps: int, device: torch.device) -> float:
    """Forward + backward + AdamW of heads of cfg's size on one batch, with a minimal loss and no loop
    around it: the compute a training step cannot avoid (best of 3 blocks of `steps`)."""
    from protocol.model.protocol_model import HeadsConfig, ProtocolHeads

    torch.manual_seed(0)
    sizes = (("material", 6), ("neckline", 4), ("pattern", 4), ("sleeve", 3))
    classes = {a: [str(i) for i in range(n)] for a, n in sizes}
    heads = ProtocolHeads(HeadsConfig(in_dim=dim, out_dim=dim, head=cfg.head, hidden_dim=cfg.hidden_dim,
                                      dropout=cfg.dropout, attribute_classes=classes)).train().to(device)
    optimizer = torch.optim.AdamW([p for p in heads.parameters() if p.requires_grad], lr=cfg.lr, fused=True)
    image, text = torch.randn(BATCH, dim, device=device), torch.randn(BATCH, dim, device=device)

    def step():
        image_emb, logits = heads.forward_image(image)
        loss = (heads.forward_text(text) @ image_emb.T).logsumexp(dim=1).mean()
        loss = loss + sum(v.logsumexp(dim=1).mean() for v in logits.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(10):
        step()
    synchronize(device)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        times.append((time.perf_counter() - started) / steps)
    return min(times)


def backbone_step_seconds(repeats: int, device: torch.device) -> float:
    """ViT-B-32 forward on 64 images + 64 texts (no_grad): the per-step cost without a feature cache."""
    from protocol.model.backbone import BackboneSpec, create_backbone

    backbone = create_backbone(BackboneSpec("ViT-B-32", "none", 0), device=str(device))
    pixels = torch.randn(BATCH, 3, 224, 224)
    tokens = backbone.tokenizer([f"a blue cotton crew neck tee number {i}" for i in range(BATCH)])
    # warm-up at the measured shapes: a GPU picks its kernels per shape on first use
    backbone.embed_pixels(pixels if device.type == "cuda" else pixels[:2])
    backbone.embed_tokens(tokens if device.type == "cuda" else tokens[:2])
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        backbone.embed_pixels(pixels)
        backbone.embed_tokens(tokens)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--steps", type=int, default=300, help="steps per measured run")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backbone-repeats", type=int, default=2)
    parser.add_argument("--device", default=None,
                        help="where the bare heads step and the backbone step run (default: cuda when available, "
                             "else cpu); the training loop runs on the CPU")
    try:
        defaults = stage_defaults()
    except ImportError as e:  # a machine without the pipeline's dependencies has none of its outputs either
        print(f"no pipeline defaults ({e}): synthetic data")
        defaults = dict.fromkeys(STAGE_INPUTS)
    parser.add_argument("--prepared", default=defaults["prepared"], help="processed dataset dir")
    parser.add_argument("--catalog", default=defaults["catalog"], help="baseline catalog (names the backbone)")
    parser.add_argument("--cache-dir", default=defaults["cache_dir"], help="feature cache directory")
    parser.add_argument("--pairs", default=defaults["pairs"], help="pairs.parquet")
    parser.add_argument("--hard-negatives", default=defaults["hard_negatives_path"], help="hard_negatives.parquet")
    parser.add_argument("--groups", default=defaults["groups"], help="groups.json")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    logging.basicConfig(level=logging.WARNING)
    print(f"load average before: {os.getloadavg()}; bare heads and backbone steps on {device}")

    data = load_data(args)
    features, meta = data[0], data[1]
    print(f"data: {data[5]}; {len(meta)} items, D={features.image.shape[1]}")
    base = TrainConfig(epochs=1, steps_per_epoch=args.steps, batch_size=BATCH, num_threads=args.threads[0])
    loop_pairs_per_s(replace(base, steps_per_epoch=max(1, args.steps // 3)), data)  # warm-up, not timed: the
    # first training in a process pays for first-use costs, which put whichever row came first ~10% low
    results = {}
    for threads in args.threads:  # thread count: cost of OpenMP on a shared CPU vs gain on an idle one
        results[f"default, {threads} thread(s)"] = loop_pairs_per_s(replace(base, num_threads=threads), data)
    eager_name = f"F.linear (no oneDNN), {args.threads[0]} thread(s)"
    with onednn.eager_linear():  # the heads' linear layers by F.linear (MKL) instead of oneDNN
        results[eager_name] = loop_pairs_per_s(base, data)
    results[f"fresh extras (bank_refresh_steps=0), {args.threads[0]} thread(s)"] = loop_pairs_per_s(
        replace(base, bank_refresh_steps=0), data)
    results[f"plain InfoNCE ablation, {args.threads[0]} thread(s)"] = loop_pairs_per_s(
        replace(base, attribute_heads=False, balanced_sampling=False, hard_negatives=False, graded_pairs=False), data)
    results[f"default + image_to_text_negatives, {args.threads[0]} thread(s)"] = loop_pairs_per_s(
        replace(base, image_to_text_negatives=True), data)
    results[f"default with batch_size=256, {args.threads[0]} thread(s)"] = loop_pairs_per_s(
        replace(base, batch_size=4 * BATCH, steps_per_epoch=max(1, args.steps // 4)), data)

    from protocol.model.protocol_model import ProtocolHeads

    torch.set_num_threads(args.threads[0])
    heads = ProtocolHeads.identity(features.image.shape[1])
    started = time.perf_counter()
    validate(heads, features, meta, max_catalog=base.val_max_catalog, max_queries=base.val_max_queries)
    validation_s = time.perf_counter() - started
    bare_s = bare_heads_step_seconds(base, features.image.shape[1], max(20, args.steps // 3), device)
    bare_cpu_s = (bare_heads_step_seconds(base, features.image.shape[1], max(20, args.steps // 3), torch.device("cpu"))
                  if device.type != "cpu" else bare_s)

    backbone_s = backbone_step_seconds(args.backbone_repeats, device)
    defaults = {k: v for k, v in results.items() if k.startswith("default,")}  # the shipped config, batch 64
    best_name = max(defaults, key=defaults.get)
    best = defaults[best_name]
    heads_step_s = BATCH / best
    print(f"\n{'configuration':<55} {'pairs/s':>9} {'ms/step':>8} {'50k x 10 epochs':>16}")
    for name, pairs_per_s in results.items():
        batch = 4 * BATCH if "batch_size=256" in name else BATCH
        print(f"{name:<55} {pairs_per_s:>9.0f} {batch / pairs_per_s * 1e3:>8.1f} {PAIRS_TARGET / pairs_per_s:>14.0f} s")
    print(f"\nbest: {best_name}: {best:.0f} pairs/s, {heads_step_s * 1e3:.1f} ms/step; "
          f"projected 50,000 pairs x 10 epochs: {PAIRS_TARGET / best:.0f} s (target < 60 s)")
    loop_s = BATCH / results[f"default, {args.threads[0]} thread(s)"]
    print(f"bare heads step (forward + backward + AdamW, minimal loss, no loop; cpu, {args.threads[0]} thread(s)): "
          f"{bare_cpu_s * 1e3:.2f} ms/step; the training step with the same threads: {loop_s * 1e3:.1f} ms/step")
    if device.type != "cpu":
        print(f"bare heads step on {device}: {bare_s * 1e3:.2f} ms/step ({BATCH / bare_s:,.0f} pairs/s), "
              f"{bare_cpu_s / bare_s:.1f}x the CPU's")
    print(f"heads' linear layers through oneDNN vs F.linear, {args.threads[0]} thread(s): "
          f"{results[f'default, {args.threads[0]} thread(s)'] / results[eager_name]:.2f}x the pairs/s")
    print(f"validation on the mini catalog: {validation_s:.2f} s")
    where = device if device.type != "cpu" else f"cpu, {torch.get_num_threads()} thread(s)"
    print(f"backbone step (ViT-B-32 fwd, 64 images + 64 texts, {where}): "
          f"{backbone_s * 1e3:.1f} ms + heads step -> ratio {(backbone_s + heads_step_s) / heads_step_s:.0f}x "
          "(target >= 100x)")
    if device.type != "cpu":
        print(f"on {device}: backbone step {backbone_s * 1e3:.1f} ms vs bare heads step {bare_s * 1e3:.2f} ms -> "
              f"ratio {(backbone_s + bare_s) / bare_s:.0f}x")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
