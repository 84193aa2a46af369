"""Benchmark: exact chunked top-k vs a bare matrix product and faiss IndexFlatIP, in one run.

    .venv/bin/python benchmarks/bench_search.py                  # 1,000 queries x 1,000,000 x 512
    .venv/bin/python benchmarks/bench_search.py --n_catalog 200000

The reference is the bare product `queries @ catalog.T` computed in the same catalog
chunks as `topk` (the full [Q x N] float32 product would be 4 GB on top of the 2 GB
catalog), so the ratio is what the top-k selection adds to the unavoidable matmul.
Pass --full_matmul to also time one unchunked product when memory allows.
Peak memory is the process RSS sampled every 2 ms during each phase (psutil), plus the
lifetime high-water mark from getrusage. Times are the best of --repeats runs, with
phases interleaved so that load from other processes hits both sides alike.
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

from protocol.retrieval.search import default_chunk_size, topk

GB = 2**30


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


def random_unit_rows(n: int, dim: int, rng: np.random.Generator, chunk: int = 65536) -> np.ndarray:
    """[n, dim] float32 L2-normalised rows, generated in chunks so only the result is big."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(block)] = block
    return out


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
    parser.add_argument("--skip_faiss", action="store_true")
    args = parser.parse_args()

    print(f"load before start: {os.getloadavg()} on {os.cpu_count()} cpus")
    rng = np.random.default_rng(0)
    catalog = random_unit_rows(args.n_catalog, args.dim, rng)
    queries = random_unit_rows(args.n_queries, args.dim, rng)
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
        import faiss

        def faiss_add():
            index = faiss.IndexFlatIP(args.dim)
            index.add(catalog)
            return index

        add_s, add_peak, index = timed(faiss_add, meter)
        search_s, search_peak, (f_scores, f_indices) = timed(lambda: index.search(queries, args.k), meter)
        agree = float((f_indices == indices).mean())
        print(f"faiss IndexFlatIP: add {add_s:.2f} s, search {search_s:.2f} s (ratio to matmul {search_s / mm:.2f}x, "
              f"to topk {search_s / tk:.2f}x); peak RSS {max(add_peak, search_peak) / GB:.2f} GB (holds a copy); "
              f"indices equal to exact: {agree:.4f}")
        del index
    print(f"lifetime peak RSS (getrusage maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")
    print(f"load at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
