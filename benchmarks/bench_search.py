"""Benchmark: exact chunked top-k, faiss IndexFlatIP and the approximate IVF index, in one run.

    .venv/bin/python benchmarks/bench_search.py                  # 1,000 queries x 1,000,000 x 512
    .venv/bin/python benchmarks/bench_search.py --n_catalog 200000 --n_queries 20000
    .venv/bin/python benchmarks/bench_search.py --sweep          # where `auto` should switch to IVF

Embeddings are clustered like CLIP features, not uniform noise (on uniform noise no index
beats a scan): catalog rows lie near a 48-dimensional manifold of clusters of products
with 2 views each, plus isotropic noise and a shared mean direction; queries are
"text-like": a product's direction with more spread and another modality's mean, so they
sit apart from the catalog cloud as CLIP text queries do (the modality gap). Printed
statistics (mean pairwise cosine ~0.36, nearest-neighbour cosine ~0.84) let you compare
with real features.

The exact reference is the bare product `queries @ catalog.T` computed in the same catalog
chunks as `topk` (the full [Q x N] float32 product would be 4 GB on top of the 2 GB
catalog), so the ratio is what the top-k selection adds to the unavoidable matmul.
IVF times are split into build (k-means + add), recall check (exact search of the
sampled queries + nprobe calibration) and search; its recall@10 is measured against the
exact results of every query, beside the sampled estimate it reports. Peak memory is the
process RSS sampled every 2 ms during each phase (psutil), plus getrusage's lifetime
high-water mark. Times are the best of --repeats runs, phases interleaved so that load
from other processes hits both sides alike.

--sweep times exact vs IVF on evaluation-shaped work (queries = 0.3 x catalog, as a 20%
test split searched against a 70% catalog) at several catalog sizes: the measurement
behind `protocol.retrieval.search.APPROX_MIN_CATALOG`.
"""

from __future__ import annotations

import argparse
import os
import resource
import threading
import time
from contextlib import contextmanager

import numpy as np
import psutil

from protocol.retrieval.ann import recall_vs_exact
from protocol.retrieval.search import APPROX_MIN_CATALOG, choose_backend, default_chunk_size, topk

GB = 2**30
LATENT_DIM = 48
ITEMS_PER_CLUSTER = 1000
VIEWS_PER_PRODUCT = 2


class PeakRss:
    """Max RSS of this process while a phase runs, sampled by a background thread."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self._proc = psutil.Process(os.getpid())

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval_s)

    @contextmanager
    def phase(self):
        self.peak, self._stop = self._proc.memory_info().rss, threading.Event()
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def clustered_embeddings(n_catalog: int, n_queries: int, dim: int, rng: np.random.Generator,
                         chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(catalog [n_catalog, dim], text-like queries [n_queries, dim]) of L2-normalised float32 rows."""
    basis = np.linalg.qr(rng.standard_normal((dim, LATENT_DIM)))[0].T.astype(np.float32)
    n_clusters = max(2, n_catalog // ITEMS_PER_CLUSTER)
    centres = rng.standard_normal((n_clusters, LATENT_DIM), dtype=np.float32)
    n_products = max(1, n_catalog // VIEWS_PER_PRODUCT)
    products = centres[rng.integers(0, n_clusters, n_products)]
    products += 0.6 * rng.standard_normal(products.shape, dtype=np.float32)
    noise_scale = 0.6 * (LATENT_DIM / dim) ** 0.5

    def modality_mean() -> np.ndarray:
        mean = rng.standard_normal(dim, dtype=np.float32)
        return mean * (LATENT_DIM**0.5 / np.linalg.norm(mean))

    def rows(n: int, spread: float, mean: np.ndarray) -> np.ndarray:
        out = np.empty((n, dim), dtype=np.float32)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            z = products[rng.integers(0, n_products, m)] + spread * rng.standard_normal((m, LATENT_DIM), dtype=np.float32)
            x = z @ basis + noise_scale * rng.standard_normal((m, dim), dtype=np.float32) + mean
            out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return rows(n_catalog, 0.3, modality_mean()), rows(n_queries, 0.6, modality_mean())


def describe(catalog: np.ndarray, queries: np.ndarray, rng: np.random.Generator) -> str:
    sample = catalog[rng.choice(len(catalog), min(2000, len(catalog)), replace=False)]
    pairwise = (sample @ sample.T)[np.triu_indices(len(sample), 1)].mean()
    probe = rng.choice(len(catalog), min(300, len(catalog)), replace=False)
    neighbour, _ = topk(catalog[probe], catalog, 1, exclude=probe)
    text, _ = topk(queries[:300], catalog, 10)
    return (f"mean pairwise cosine {pairwise:.2f}, image nearest-neighbour cosine {neighbour[:, 0].mean():.2f}, "
            f"text query top-1/top-10 cosine {text[:, 0].mean():.2f}/{text[:, 9].mean():.2f}")


def chunked_matmul(queries: np.ndarray, catalog: np.ndarray, chunk_size: int) -> float:
    """The reference: the same score blocks as topk, with no selection. Returns a checksum."""
    total = 0.0
    for start in range(0, len(catalog), chunk_size):
        block = queries @ catalog[start : start + chunk_size].T
        total += float(block[0, 0])  # touch the result so the work cannot be skipped
    return total


def timed(fn, meter: PeakRss):
    with meter.phase():
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
    return seconds, meter.peak, result


def ivf_line(report: dict) -> str:
    return (f"nlist={report['nlist']} nprobe={report['nprobe']}: build {report['build_seconds']:.2f} s, "
            f"recall check {report['recall_seconds']:.2f} s, search {report['search_seconds']:.2f} s; "
            f"sampled recall@10 {report['recall10_vs_exact']:.3f} (n={report['n_recall_queries']})")


def run_single(args) -> None:
    rng = np.random.default_rng(0)
    catalog, queries = clustered_embeddings(args.n_catalog, args.n_queries, args.dim, rng)
    print(describe(catalog, queries, rng))
    chunk = args.chunk_size or default_chunk_size(args.n_queries)
    meter = PeakRss()
    base_rss = psutil.Process().memory_info().rss
    print(f"catalog {catalog.shape} float32 = {catalog.nbytes / GB:.2f} GB; queries {queries.shape}; "
          f"chunk {chunk} rows; RSS with data {base_rss / GB:.2f} GB")

    mm_times, tk_times, mm_peak, tk_peak = [], [], 0, 0
    for _ in range(args.repeats):
        s, peak, _ = timed(lambda: chunked_matmul(queries, catalog, chunk), meter)
        mm_times.append(s)
        mm_peak = max(mm_peak, peak)
        s, peak, (scores, indices) = timed(lambda: topk(queries, catalog, args.k, chunk_size=chunk), meter)
        tk_times.append(s)
        tk_peak = max(tk_peak, peak)
    mm, tk = min(mm_times), min(tk_times)
    print(f"bare chunked matmul: {mm:7.2f} s  peak RSS {mm_peak / GB:.2f} GB  (runs: {', '.join(f'{t:.2f}' for t in mm_times)})")
    print(f"topk exact k={args.k}:    {tk:7.2f} s  peak RSS {tk_peak / GB:.2f} GB  (runs: {', '.join(f'{t:.2f}' for t in tk_times)})")
    print(f"ratio topk / matmul: {tk / mm:.2f}x  (target <= 1.5x);  topk extra RSS over data: {(tk_peak - base_rss) / GB:.2f} GB")

    if args.full_matmul:
        s, peak, _ = timed(lambda: float((queries @ catalog.T)[0, 0]), meter)
        print(f"full unchunked matmul: {s:7.2f} s  peak RSS {peak / GB:.2f} GB;  topk / full = {tk / s:.2f}x")

    if not args.skip_faiss:
        s, peak, (_, f_indices) = timed(lambda: topk(queries, catalog, args.k, backend="faiss"), meter)
        print(f"faiss IndexFlatIP (add + search): {s:.2f} s (ratio to topk exact {s / tk:.2f}x); "
              f"peak RSS {peak / GB:.2f} GB (holds a copy); indices equal to exact: {(f_indices == indices).mean():.4f}")

    report: dict = {}
    s, peak, (a_scores, a_indices) = timed(lambda: topk(queries, catalog, args.k, backend="ivf", report=report), meter)
    full_recall = recall_vs_exact(a_scores, a_indices, scores, indices)
    print(f"IVF-Flat total {s:.2f} s = {s / tk:.2f}x exact ({ivf_line(report)}); "
          f"recall@10 over all {len(queries)} queries {full_recall:.3f}; peak RSS {peak / GB:.2f} GB, "
          f"extra over data {(peak - base_rss) / GB:.2f} GB (the index holds a float32 copy)")
    print(f"IVF search alone / exact: {report['search_seconds'] / tk:.3f}x; "
          f"break-even at ~{report['build_seconds'] + report['recall_seconds']:.1f} s of exact search "
          f"= ~{(report['build_seconds'] + report['recall_seconds']) / (tk / len(queries)):.0f} queries")
    backend, reason = choose_backend(len(queries), len(catalog))
    print(f"auto would use: {backend} ({reason})")


def run_sweep(args) -> None:
    print(f"evaluation-shaped work: queries = {args.query_ratio} x catalog; dim {args.dim}; k {args.k}")
    print(f"{'catalog':>9} {'queries':>8} {'exact s':>8} {'ivf s':>7} {'exact/ivf':>9} {'recall@10':>9}  ivf detail")
    for n in args.sweep_sizes:
        rng = np.random.default_rng(n)
        catalog, queries = clustered_embeddings(n, max(1, int(args.query_ratio * n)), args.dim, rng)
        t0 = time.perf_counter()
        scores, indices = topk(queries, catalog, args.k)
        exact_s = time.perf_counter() - t0
        report: dict = {}
        t0 = time.perf_counter()
        a_scores, a_indices = topk(queries, catalog, args.k, backend="ivf", report=report)
        ivf_s = time.perf_counter() - t0
        recall = recall_vs_exact(a_scores, a_indices, scores, indices)
        print(f"{n:>9} {len(queries):>8} {exact_s:>8.2f} {ivf_s:>7.2f} {exact_s / ivf_s:>8.2f}x {recall:>9.3f}  "
              f"{ivf_line(report)}", flush=True)
    print(f"APPROX_MIN_CATALOG = {APPROX_MIN_CATALOG}: auto uses IVF from there (when there are enough queries)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--n_catalog", type=int, default=1_000_000)
    parser.add_argument("--n_queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--chunk_size", type=int, default=None, help="catalog rows per block (default: from the memory budget)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--full_matmul", action="store_true", help="also time the unchunked [Q x N] product")
    parser.add_argument("--skip_faiss", action="store_true", help="skip faiss IndexFlatIP")
    parser.add_argument("--sweep", action="store_true", help="exact vs IVF at --sweep_sizes with queries = --query_ratio x N")
    parser.add_argument("--sweep_sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000, 200_000])
    parser.add_argument("--query_ratio", type=float, default=0.3)
    args = parser.parse_args()

    print(f"load before start: {os.getloadavg()} on {os.cpu_count()} cpus")
    if args.sweep:
        run_sweep(args)
    else:
        run_single(args)
    print(f"lifetime peak RSS (getrusage maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")
    print(f"load at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
