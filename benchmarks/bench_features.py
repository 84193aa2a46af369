"""End-to-end feature extraction vs the bare model forward, measured in one run.

Extraction (`extract_features` on a freshly generated dataset of images and texts,
into a temp cache) must keep the model busy: decoding, preprocessing and tokenising
happen in DataLoader workers. The reference is the bare forward on tensors made
beforehand (images preprocessed, texts tokenised) with the same batch size. The bare
forward runs before and after the extraction and the ratio uses their mean, so a
machine that gets busier or quieter during the run skews the ratio less; the CPU-time
ratio (main process + workers vs the bare forward) is steadier still on a shared machine.

What the forward leaves on the table: its FLOPs are counted by torch
(`torch.utils.flop_counter`) and its GFLOP/s printed beside a large `torch.mm` on the
same device, in fp32 and, where the forward runs under autocast (CUDA), in that dtype.
On a CPU, the machine's rate is printed twice: `torch.mm` (MKL, which takes its AVX2 path on AMD
CPUs) and oneDNN's GEMM on the same matrices, the kernel the backbone's oneDNN forward uses. On a GPU
the bare forward copies its fp32 pixels from host memory as extraction's own inputs do; the forward
alone on inputs already on the device is printed beside it.

Where the backbone's forward runtime is not eager (`Backbone.runtime`, e.g. oneDNN on a CPU), the
eager forward of the same weights runs in the same run too (before and after extraction, like the
bare forward): its items/s and GFLOP/s, the speed-up, and the largest difference of the two
L2-normalised features on the same inputs. FLOPs are counted on the eager forward (torch's counter
has no formula for oneDNN's fused linear op); both forwards do the same arithmetic.

    python benchmarks/bench_features.py --model ViT-B-32 --n 256 --batch_size 32
    python benchmarks/bench_features.py --n 16384 --batch_size 256 --image_format jpeg --image_size 800   # a GPU

It ends with one line of both ratios (images and texts vs the bare forward).
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import datasets
import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from protocol.io import read_json
from protocol.model.backbone import FORWARD_EAGER, Backbone, BackboneSpec, create_backbone
from protocol.model.extract_local import default_num_workers
from protocol.model.feature_inputs import DeviceImageFeatures, RowReader, decode_on, input_plan
from protocol.model.features import ENGINES, cache_path, extract_features

COLORS = ["black", "white", "red", "navy", "beige", "olive", "grey", "pink"]
GARMENTS = ["cardigan", "shorts", "tee", "jacket", "dress", "skirt", "jeans", "blouse"]
MATERIALS = ["denim", "leather", "cotton", "wool", "linen", "silk"]
# The bare forward's cost does not depend on pixel values or words: it runs over n items in batches
# taken from about this many distinct preprocessed ones, because preprocessing every item in one
# process takes longer than a whole extraction on a GPU, and because n preprocessed images in this
# process (10 GB at n=16384) would make each DataLoader worker's fork cost seconds, which the bare
# forward does not pay and a pipeline would not either.
BARE_DISTINCT = 1024
EXACT_ITEMS = 64  # items on which the forward runtime's features are compared with eager's
EXACT_LIMIT = 1e-5  # max abs difference of L2-normalised features a kept runtime may have


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


def drawn_rows(args: tuple[int, int, int, str]) -> list[tuple[str, bytes]]:
    """(text, image bytes) of rows [start, stop), each from its own seeded generator, so that
    the dataset is the same whichever process draws which rows."""
    start, stop, size, image_format = args
    rows = []
    for i in range(start, stop):
        rng = np.random.default_rng([0, i])
        rows.append((product_text(rng), drawn_image(rng, size, image_format)))
    return rows


def make_dataset(n: int, image_size: int, image_format: str) -> datasets.Dataset:
    chunk = 256
    spans = [(start, min(start + chunk, n), image_size, image_format) for start in range(0, n, chunk)]
    if len(spans) > 1:  # drawing and encoding large images is most of a GPU run's set-up: use every core
        with ProcessPoolExecutor(max_workers=min(len(spans), os.cpu_count() or 1)) as pool:
            rows = [row for part in pool.map(drawn_rows, spans) for row in part]
    else:
        rows = [row for span in spans for row in drawn_rows(span)]
    return datasets.Dataset.from_dict(
        {
            "item_id": [f"B{i:05d}" for i in range(n)],
            "text": [text for text, _ in rows],
            "image": [{"bytes": data, "path": None} for _, data in rows],
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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches(inputs: torch.Tensor, n: int, batch_size: int):
    """n items in batches of `inputs` (views), starting over at its end; `inputs` holds n items or a
    multiple of batch_size (see bare_inputs), so that no batch straddles the end."""
    for i in range(0, n, batch_size):
        start = i % len(inputs)
        yield inputs[start : start + min(batch_size, n - i)]


def bare_forward_seconds(embed, inputs: torch.Tensor, n: int, batch_size: int) -> tuple[float, float]:
    """(wall, cpu) seconds of the model alone over n items in batches."""
    started, cpu_started = time.perf_counter(), cpu_seconds()
    for batch in batches(inputs, n, batch_size):
        embed(batch)
    return time.perf_counter() - started, cpu_seconds() - cpu_started


def bare_pass(backbone: Backbone, pixels: torch.Tensor, tokens: torch.Tensor, n: int, batch_size: int) -> dict:
    return {
        "image": bare_forward_seconds(backbone.embed_pixels, pixels, n, batch_size),
        "text": bare_forward_seconds(backbone.embed_tokens, tokens, n, batch_size),
    }


def resident_forward_seconds(features, inputs: torch.Tensor, n: int, batch_size: int, device: torch.device) -> float:
    """Wall seconds of the forward alone over n items already on `device`, results left there."""
    inputs = inputs.to(device)
    features(inputs[:batch_size])
    synchronize(device)
    started = time.perf_counter()
    for batch in batches(inputs, n, batch_size):
        features(batch)
    synchronize(device)
    return time.perf_counter() - started


def loader_start_seconds(dataset: datasets.Dataset, backbone: Backbone, num_workers: int) -> float:
    """Seconds from a DataLoader like extraction's (texts) to its first one-item batch: the workers'
    start, which each extraction phase pays once."""
    loader = DataLoader(RowReader(dataset, "text"), batch_sampler=[[0]], num_workers=num_workers,
                        collate_fn=input_plan("text", backbone).collate, pin_memory=backbone.device.type == "cuda")
    started = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - started


def bare_inputs(dataset: datasets.Dataset, backbone: Backbone, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Preprocessed pixels and token ids of the first rows (all of them, or about BARE_DISTINCT: a
    multiple of batch_size), and the per-item seconds that work takes in one process (what the
    DataLoader workers do)."""
    distinct = min(len(dataset), batch_size * math.ceil(BARE_DISTINCT / batch_size))
    sample = dataset.select(range(distinct))
    started = time.perf_counter()
    pixels = torch.stack([backbone.preprocess(image) for batch in sample.iter(batch_size=256)
                          for image in batch["image"]])
    decoded = time.perf_counter()
    tokens = backbone.tokenizer(list(sample["text"]))
    done = time.perf_counter()
    per_item = {"image": (decoded - started) / len(sample), "text": (done - decoded) / len(sample)}
    return pixels, tokens, per_item


def forward_flops(features, inputs: torch.Tensor, n: int, batch_size: int, shape_of) -> float:
    """FLOPs of the forward over n items of `inputs` in batches, as torch counts them. Counted once per batch
    shape (`shape_of(batch)`: a text batch runs up to its last end token only).

    nn.MultiheadAttention's inference fast path is one fused op for which the counter has no
    formula: its projections and attention would go uncounted (5.9 instead of 8.7 GFLOP per
    ViT-B-32 image). The count runs without that path; the timed forwards keep it."""
    per_shape: dict = {}
    total = 0.0
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        for batch in batches(inputs, n, batch_size):
            key = shape_of(batch)
            if key not in per_shape:
                with FlopCounterMode(display=False) as counter:
                    features(batch)
                per_shape[key] = counter.get_total_flops()
            total += per_shape[key]
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return total


def text_shape(tokens: torch.Tensor) -> tuple[int, int]:
    return len(tokens), int(tokens.argmax(dim=-1).max())


def onednn_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T by oneDNN's GEMM, as the backbone's oneDNN forward runs its linear layers."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


def matmul_gflops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5, mm=torch.mm) -> float:
    """GFLOP/s of `mm` (default `torch.mm`) of two size x size matrices on `device` (best of `repeats` blocks)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    per_block = 10 if device.type == "cuda" else 1  # one CUDA product is too short to time alone
    mm(a, b)
    synchronize(device)
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(per_block):
            mm(a, b)
        synchronize(device)
        best = min(best, (time.perf_counter() - started) / per_block)
    return 2 * size**3 / best / 1e9


def device_decode_seconds(dataset: datasets.Dataset, backbone: Backbone, batch_size: int) -> float | None:
    """Seconds per item of the device route's decode + preprocess alone (JPEGs on CUDA), in the main
    process on up to 8 batches; None where images take the PIL route in the workers."""
    plan = input_plan("image", backbone)
    if not isinstance(plan.features, DeviceImageFeatures):
        return None
    reader = RowReader(dataset, "image")
    starts = range(0, min(len(dataset), 8 * batch_size), batch_size)
    encoded = [plan.collate(reader.__getitems__(list(range(s, min(s + batch_size, len(dataset))))))[1]
               for s in starts]
    preprocess, device = plan.features.preprocess, backbone.device
    with torch.inference_mode():
        preprocess(decode_on(device, encoded[0]))  # warm-up
        synchronize(device)
        started = time.perf_counter()
        for batch in encoded:
            preprocess(decode_on(device, batch))
        synchronize(device)
    return (time.perf_counter() - started) / sum(len(b.rows) for b in encoded)


def max_feature_difference(backbone: Backbone, eager: Backbone, pixels, tokens, batch_size: int) -> dict:
    """Largest |runtime - eager| of L2-normalised features over the first EXACT_ITEMS inputs, per kind."""
    diff = {}
    for kind, inputs, method in (("image", pixels, "pixel_features"), ("text", tokens, "token_features")):
        diff[kind] = max(float((getattr(backbone, method)(b) - getattr(eager, method)(b)).abs().max())
                         for b in batches(inputs[:EXACT_ITEMS], min(EXACT_ITEMS, len(inputs)), batch_size))
    return diff


def print_flops(backbone: Backbone, pixels, tokens, n: int, batch_size: int, bare: dict, phases: dict,
                matmul_size: int, alone: bool, eager: Backbone | None = None,
                eager_bare: dict | None = None) -> dict | None:
    """The forward's GFLOP/s beside the machine's matmul rate, and with `eager` (the same weights with
    the eager forward, timed in `eager_bare`) the eager forward's; with `alone`, also the forward alone
    on inputs already on the device (its seconds per kind are returned)."""
    device = backbone.device
    counted = eager or backbone  # torch's flop counter knows eager ops only
    flops = {"image": forward_flops(counted.pixel_features, pixels, n, batch_size, len),
             "text": forward_flops(counted.token_features, tokens, n, batch_size, text_shape)}
    autocast = getattr(backbone._autocast(), "fast_dtype", None)  # what the forward computes in
    rates = {"fp32": matmul_gflops(device, torch.float32, matmul_size)}
    if autocast is not None:
        rates[str(autocast).removeprefix("torch.")] = matmul_gflops(device, autocast, matmul_size)
    onednn = (matmul_gflops(device, torch.float32, matmul_size, mm=onednn_mm)
              if device.type == "cpu" and torch.backends.mkldnn.is_available() else None)
    print(f"\nmatmul on {device} ({matmul_size}x{matmul_size}, {torch.get_num_threads()} torch threads, fp32 "
          f"matmul precision {torch.get_float32_matmul_precision()!r}): "
          + ", ".join(f"{k} torch.mm {v:,.0f} GFLOP/s" for k, v in rates.items())
          + (f", fp32 oneDNN {onednn:,.0f} GFLOP/s" if onednn else ""))
    print(f"forward runtime {backbone.runtime}")
    print(f"forward FLOPs (torch.utils.flop_counter): image {flops['image'] / n / 1e9:.4g} GFLOP/item, "
          f"text {flops['text'] / n / 1e9:.4g} GFLOP/item" + (f"; the forward runs in {autocast} autocast" if autocast
                                                                 else ""))
    reference = list(rates.items())[-1]
    resident = ({kind: resident_forward_seconds(f, x, n, batch_size, device) for kind, f, x in
                 (("image", backbone.pixel_features, pixels), ("text", backbone.token_features, tokens))}
                if alone else None)
    def of_matmul(gflops: float) -> str:
        return (f"{gflops:8,.1f} GFLOP/s = {gflops / reference[1]:.3f} of {reference[0]} torch.mm"
                + (f", {gflops / onednn:.3f} of oneDNN" if onednn else ""))

    difference = max_feature_difference(backbone, eager, pixels, tokens, batch_size) if eager else None
    for kind in ("image", "text"):
        line = (f"{kind:6} bare forward ({backbone.runtime.get('forward')}) {of_matmul(flops[kind] / bare[kind][0] / 1e9)}; "
                f"extraction {flops[kind] / phases[kind]['seconds'] / 1e9:,.1f} GFLOP/s")
        if eager:
            seconds = eager_bare[kind][0]
            line += (f"\n{'':6} eager forward {of_matmul(flops[kind] / seconds / 1e9)}, {n / seconds:,.1f} items/s; "
                     f"{backbone.runtime.get('forward')}/eager {seconds / bare[kind][0]:.2f}x; max |difference| of "
                     f"L2-normalised features over {min(EXACT_ITEMS, len(pixels))} items {difference[kind]:.1e} "
                     f"({'within' if difference[kind] <= EXACT_LIMIT else 'OVER'} {EXACT_LIMIT:g})")
        if resident:
            line += (f"; forward alone on {device} inputs {flops[kind] / resident[kind] / 1e9:,.1f} GFLOP/s "
                     f"= {flops[kind] / resident[kind] / 1e9 / reference[1]:.3f} of {reference[0]} matmul, "
                     f"{n / resident[kind]:,.0f} items/s")
        print(line)
    return resident


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
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
    parser.add_argument("--forward", default="auto", help="the backbone's forward runtime (backbone.FORWARDS); "
                        "unless eager, the eager forward of the same weights is timed beside it")
    parser.add_argument("--matmul_size", type=int, default=None,
                        help="side of the square torch.mm that gives the machine's rate (default: 2048 on a "
                             "CPU, 8192 on a GPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("protocol").setLevel(logging.INFO)

    started = time.perf_counter()
    dataset = make_dataset(args.n, args.image_size, args.image_format)  # forks: before torch starts threads
    backbone = create_backbone(BackboneSpec(args.model, args.pretrained), device=args.device, forward=args.forward)
    eager = (create_backbone(BackboneSpec(args.model, args.pretrained), device=args.device, forward=FORWARD_EAGER)
             if backbone.runtime["forward"] != FORWARD_EAGER else None)
    if args.num_workers is None:
        args.num_workers = default_num_workers(backbone.device)
    if args.matmul_size is None:
        args.matmul_size = 2048 if backbone.device.type == "cpu" else 8192
    pixels, tokens, input_cost = bare_inputs(dataset, backbone, args.batch_size)
    print(f"device {backbone.device}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load average before {os.getloadavg()}; data made in {time.perf_counter() - started:.1f}s")
    for warmed in filter(None, (backbone, eager)):  # warm-up, both paths profit from it
        warmed.embed_pixels(pixels[: args.batch_size])
        warmed.embed_tokens(tokens[: args.batch_size])

    bare_before = bare_pass(backbone, pixels, tokens, args.n, args.batch_size)
    eager_before = bare_pass(eager, pixels, tokens, args.n, args.batch_size) if eager else None
    with tempfile.TemporaryDirectory() as cache_dir:
        started, cpu_started = time.perf_counter(), cpu_seconds()
        features = extract_features(dataset, "b" * 64, backbone, cache_dir, batch_size=args.batch_size,
                                    num_workers=args.num_workers, engine=args.engine)
        end_to_end, end_to_end_cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
        phases = read_json(cache_path(cache_dir, "b" * 64, backbone.fingerprint) / "manifest.json")["last_run"]
    assert features.n_computed == args.n
    bare_after = bare_pass(backbone, pixels, tokens, args.n, args.batch_size)
    eager_after = bare_pass(eager, pixels, tokens, args.n, args.batch_size) if eager else None

    n = args.n
    bare = {k: [(bare_before[k][i] + bare_after[k][i]) / 2 for i in (0, 1)] for k in ("image", "text")}
    eager_bare = ({k: [(eager_before[k][i] + eager_after[k][i]) / 2 for i in (0, 1)] for k in ("image", "text")}
                  if eager else None)
    print(f"\n{args.model} on {backbone.device}, engine {args.engine}, n={n}, batch {args.batch_size}, "
          f"{args.num_workers} workers, {torch.get_num_threads()} torch threads, "
          f"load average after {os.getloadavg()}")
    print(f"worker-side work per item, one process: decode+preprocess {1e3 * input_cost['image']:.1f} ms, "
          f"tokenise {1e3 * input_cost['text']:.2f} ms")
    print(f"DataLoader start to its first batch, {args.num_workers} workers (each extraction phase pays it): "
          f"{loader_start_seconds(dataset, backbone, args.num_workers):.2f} s")
    on_device = device_decode_seconds(dataset, backbone, args.batch_size)
    if on_device is not None:
        print(f"device route: decode (JPEGs) + preprocess on {backbone.device} alone, main process: "
              f"{1e3 * on_device:.3f} ms/item ({1 / on_device:,.0f} items/s)")
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
    # On a CPU the bare forward is the forward alone: its inputs are where the model is.
    resident = print_flops(backbone, pixels, tokens, args.n, args.batch_size, bare, phases, args.matmul_size,
                           alone=backbone.device.type != "cpu", eager=eager, eager_bare=eager_bare)
    ratios = {kind: bare[kind][0] / phases[kind]["seconds"] for kind in ("image", "text")}
    alone = (f"; vs the forward alone on {backbone.device} inputs: image "
             f"{resident['image'] / phases['image']['seconds']:.2f} text {resident['text'] / phases['text']['seconds']:.2f}"
             if resident else "")
    speedup = (f"; {backbone.runtime['forward']} forward vs eager: image "
               f"{eager_bare['image'][0] / bare['image'][0]:.2f}x text {eager_bare['text'][0] / bare['text'][0]:.2f}x"
               if eager else "")
    print(f"ratios vs the bare forward: image {ratios['image']:.2f} text {ratios['text']:.2f} "
          f"(GPU target >= 0.8 each){alone}; extraction items/s: image {n / phases['image']['seconds']:.1f} "
          f"text {n / phases['text']['seconds']:.1f}{speedup}")


if __name__ == "__main__":
    main()
