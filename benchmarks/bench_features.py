"""End-to-end feature extraction vs the bare model forward, measured in one run.

Extraction (`extract_features` on a freshly generated dataset of images and texts,
into a temp cache) must keep the model busy: decoding, preprocessing and tokenising
happen in DataLoader workers. The reference is the bare forward on tensors made
beforehand (images preprocessed, texts tokenised) with the same batch size. The bare
forward runs before and after the extraction and the ratio uses their mean, so a
machine that gets busier or quieter during the run skews the ratio less; the CPU-time
ratio (main process + workers vs the bare forward) is steadier still on a shared machine.

    python benchmarks/bench_features.py --model ViT-B-32 --n 256 --batch_size 32
    python benchmarks/bench_features.py --n 4096 --batch_size 256 --image_format jpeg --image_size 800   # a GPU

It ends with one line of both ratios (images and texts vs the bare forward).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import tempfile
import time

import datasets
import numpy as np
import torch
from PIL import Image, ImageDraw

from protocol.io import read_json
from protocol.model.backbone import Backbone, BackboneSpec, create_backbone
from protocol.model.extract_local import default_num_workers
from protocol.model.features import ENGINES, cache_path, extract_features

COLORS = ["black", "white", "red", "navy", "beige", "olive", "grey", "pink"]
GARMENTS = ["cardigan", "shorts", "tee", "jacket", "dress", "skirt", "jeans", "blouse"]
MATERIALS = ["denim", "leather", "cotton", "wool", "linen", "silk"]


def drawn_image(rng: np.random.Generator, size: int, image_format: str) -> bytes:
    """A product-photo-sized image: a light background with a few coloured shapes."""
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
        x1, y1 = (int(v) for v in rng.integers(size // 2, size, 2))
        draw.rectangle((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    out = io.BytesIO()
    image.save(out, image_format.upper())
    return out.getvalue()


def product_text(rng: np.random.Generator) -> str:
    color, garment, material = rng.choice(COLORS), rng.choice(GARMENTS), rng.choice(MATERIALS)
    return (
        f"{color} {material} {garment}. A relaxed {garment} in soft {material} with a clean finish, "
        f"easy to wear every day; pairs well with our {rng.choice(GARMENTS)}. Machine washable."
    )


def make_dataset(n: int, image_size: int, image_format: str, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    return datasets.Dataset.from_dict(
        {
            "item_id": [f"B{i:05d}" for i in range(n)],
            "text": [product_text(rng) for _ in range(n)],
            "image": [{"bytes": drawn_image(rng, image_size, image_format), "path": None} for _ in range(n)],
        },
        features=datasets.Features(
            {"item_id": datasets.Value("string"), "text": datasets.Value("string"), "image": datasets.Image()}
        ),
    )


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the DataLoader workers).
    Steadier than wall time on a shared machine, where other jobs take cores away."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def bare_forward_seconds(embed, inputs: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """(wall, cpu) seconds of the model alone over `inputs` in batches."""
    started, cpu_started = time.perf_counter(), cpu_seconds()
    for i in range(0, len(inputs), batch_size):
        embed(inputs[i : i + batch_size])
    return time.perf_counter() - started, cpu_seconds() - cpu_started


def bare_pass(backbone: Backbone, pixels: torch.Tensor, tokens: torch.Tensor, batch_size: int) -> dict:
    return {
        "image": bare_forward_seconds(backbone.embed_pixels, pixels, batch_size),
        "text": bare_forward_seconds(backbone.embed_tokens, tokens, batch_size),
    }


def bare_inputs(dataset: datasets.Dataset, backbone: Backbone) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Preprocessed pixels and token ids for every row, and the per-item seconds that
    work takes in one process (what the DataLoader workers do during extraction)."""
    started = time.perf_counter()
    pixels = torch.stack([backbone.preprocess(image) for image in dataset["image"]])
    decoded = time.perf_counter()
    tokens = backbone.tokenizer(list(dataset["text"]))
    done = time.perf_counter()
    per_item = {"image": (decoded - started) / len(dataset), "text": (done - decoded) / len(dataset)}
    return pixels, tokens, per_item


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=None,
                        help="DataLoader workers (default: extract_local.default_num_workers)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--engine", default="local", choices=ENGINES)
    parser.add_argument("--image_size", type=int, default=256, help="side of the generated images")
    parser.add_argument("--image_format", default="png", choices=("png", "jpeg"),
                        help="png like the embedded synthetic catalog; jpeg like real product photos "
                             "(on CUDA, JPEGs are decoded on the device)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("protocol").setLevel(logging.INFO)

    backbone = create_backbone(BackboneSpec(args.model, args.pretrained), device=args.device)
    if args.num_workers is None:
        args.num_workers = default_num_workers(backbone.device)
    dataset = make_dataset(args.n, args.image_size, args.image_format)
    pixels, tokens, input_cost = bare_inputs(dataset, backbone)
    print(f"device {backbone.device}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load average before {os.getloadavg()}")
    backbone.embed_pixels(pixels[: args.batch_size])  # warm-up, both paths profit from it
    backbone.embed_tokens(tokens[: args.batch_size])

    bare_before = bare_pass(backbone, pixels, tokens, args.batch_size)
    with tempfile.TemporaryDirectory() as cache_dir:
        started, cpu_started = time.perf_counter(), cpu_seconds()
        features = extract_features(dataset, "b" * 64, backbone, cache_dir, batch_size=args.batch_size,
                                    num_workers=args.num_workers, engine=args.engine)
        end_to_end, end_to_end_cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
        phases = read_json(cache_path(cache_dir, "b" * 64, backbone.fingerprint) / "manifest.json")["last_run"]
    assert features.n_computed == args.n
    bare_after = bare_pass(backbone, pixels, tokens, args.batch_size)

    n = args.n
    bare = {k: [(bare_before[k][i] + bare_after[k][i]) / 2 for i in (0, 1)] for k in ("image", "text")}
    print(f"\n{args.model} on {backbone.device}, engine {args.engine}, n={n}, batch {args.batch_size}, "
          f"{args.num_workers} workers, {torch.get_num_threads()} torch threads, "
          f"load average after {os.getloadavg()}")
    print(f"worker-side work per item, one process: decode+preprocess {1e3 * input_cost['image']:.1f} ms, "
          f"tokenise {1e3 * input_cost['text']:.2f} ms")
    print(f"{'':6} {'bare items/s (before, after)':>30} {'extraction items/s':>19} {'ratio':>6}")
    for kind in ("image", "text"):
        extraction = phases[kind]["seconds"]
        print(f"{kind:6} {n / bare[kind][0]:10.1f} ({n / bare_before[kind][0]:6.1f}, {n / bare_after[kind][0]:6.1f})"
              f" {n / extraction:19.1f} {bare[kind][0] / extraction:6.2f}")
    bare_wall = bare["image"][0] + bare["text"][0]
    bare_cpu = bare["image"][1] + bare["text"][1]
    print(f"end to end (both phases, validation, cache writes, consolidation): wall {end_to_end:.1f}s vs bare "
          f"{bare_wall:.1f}s -> ratio {bare_wall / end_to_end:.2f} (target >= 0.9)")
    print(f"CPU time (main + workers): {end_to_end_cpu:.1f}s vs bare {bare_cpu:.1f}s -> ratio {bare_cpu / end_to_end_cpu:.2f}")
    ratios = {kind: bare[kind][0] / phases[kind]["seconds"] for kind in ("image", "text")}
    print(f"ratios vs the bare forward: image {ratios['image']:.2f} text {ratios['text']:.2f} "
          f"(GPU target >= 0.8 each); extraction items/s: image {n / phases['image']['seconds']:.1f} "
          f"text {n / phases['text']['seconds']:.1f}")

if __name__ == "__main__":
    main()
