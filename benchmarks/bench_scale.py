"""Scale benchmark: how each stage's time and memory grow with the catalog.

    .venv/bin/python benchmarks/bench_scale.py --n 100000            # runs 10,000 too
    .venv/bin/python benchmarks/bench_scale.py --n 2000 --small 200

Synthetic items (`prepare source=synthetic`, small images) go through
prepare -> baseline -> groups -> mine -> pairs -> train (1 epoch) -> evaluate with the
tiny backbone (`protocol-tiny`), once at N items and once at a smaller size. Each stage
runs as its own process (`python -m entrypoints.<stage>`, the command MLproject runs),
against a fresh sqlite store per size in the work directory, so its peak RSS is its own:
the peak is the larger of the process's own high-water mark (`os.wait4`) and the summed
RSS of its process tree (DataLoader workers included) sampled every 50 ms.

Per stage it prints seconds and peak RSS at both sizes and the growth exponent
log(t_N / t_small) / log(N / n_small) over the item counts prepare actually made (1 =
linear). Every process pays a fixed start-up (imports); `net exp` is the exponent after
subtracting it (measured once, as a process importing the same libraries), which shows
growth that the start-up hides at small N; it is left out (`-`) for a stage whose small
run is within NET_MIN_SECONDS of that start-up, where the difference is noise (light
stages import less than the measured libraries). `lin 10N s` extrapolates each stage to
10 x N along the line through its two points: a floor for the next size, since work
that grows faster than N (exact search of Q x N scores) is still small at N. The targets (issue 13) are at N = 100,000:
every exponent <= 1.2, peak RSS < 4 GB, and the N run under 30 minutes on 2 cores.

The last line is `scale: n=<N> total_s=<seconds of the stages at N> peak_rss_gb=<max over
the stages at N> max_exponent=<max raw exponent>`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
GB = 2**30
STAGES = ("prepare", "baseline", "groups", "mine", "pairs", "train", "evaluate")
TINY_MODEL = "protocol-tiny"
ITEMS_PER_PRODUCT = 2.0  # the synthetic catalog's mean views per product (1-3, weights 0.3/0.4/0.3)
STARTUP_IMPORTS = "import torch, open_clip, datasets, mlflow, pandas, protocol.tracking.runs"
NET_MIN_SECONDS = 1.0  # below this much work past the start-up, a net exponent is noise


@dataclass
class StageResult:
    stage: str
    seconds: float
    peak_rss: int  # bytes


class TreeRss:
    """Peak summed RSS of a process and its descendants, sampled by a background thread."""

    def __init__(self, pid: int, interval_s: float = 0.05):
        self.peak, self._pid, self._interval = 0, pid, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        try:
            root = psutil.Process(self._pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            total = 0
            try:
                for proc in [root, *root.children(recursive=True)]:
                    try:
                        total += proc.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, total)
            self._stop.wait(self._interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def stage_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_process(argv: list[str], env: dict[str, str], cwd: Path, log_path: Path, timeout_s: float) -> tuple[float, int]:
    """Run one process to completion: (seconds, peak RSS bytes). A failure names the log to read."""
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        meter = TreeRss(proc.pid)
        deadline = start + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        seconds = time.perf_counter() - start
        tree_peak = meter.stop()
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"{' '.join(argv[1:3])} failed (exit {proc.returncode}, {seconds:.0f} s); "
                         f"log {log_path}:\n" + "\n".join(tail))
    return seconds, max(tree_peak, usage.ru_maxrss * 1024)


def stage_argv(stage: str, work: Path, n_products: int, args) -> list[str]:
    """The stage's command line: every input is the previous stage's `latest` output in `work`."""
    out = work / "outputs"
    prepared = str(out / "prepared" / "latest")
    catalog = str(out / "baseline" / "latest" / "catalog")
    cache = str(out / "feature_cache")
    hard_negatives = str(out / "mine" / "latest" / "hard_negatives.parquet")
    params = {
        "prepare": {"source": "synthetic", "n_products": n_products, "image_size": args.image_size,
                    "output_dir": out / "prepared"},
        "baseline": {"prepared": prepared, "model": TINY_MODEL, "pretrained": "none", "cache_dir": cache,
                     "num_workers": args.num_workers, "output_dir": out / "baseline"},
        "groups": {"prepared": prepared, "output_dir": out / "groups"},
        "mine": {"catalog": catalog, "output_dir": out / "mine"},
        "pairs": {"prepared": prepared, "groups": out / "groups" / "latest" / "groups.json",
                  "hard_negatives": hard_negatives, "n_pairs": max(1, round(args.pairs_per_item * 2 * n_products)),
                  "output_dir": out / "pairs"},
        "train": {"prepared": prepared, "catalog": catalog, "pairs": pairs_path(work),
                  "hard_negatives_path": hard_negatives, "cache_dir": cache, "epochs": 1, "output_dir": out / "train"},
        "evaluate": {"prepared": prepared, "checkpoint": out / "train" / "latest" / "checkpoints" / "best.pt",
                     "baseline_catalog": catalog, "cache_dir": cache, "output_dir": out / "evaluate"},
    }[stage]
    argv = [sys.executable, "-m", f"entrypoints.{stage}"]
    for name, value in params.items():
        argv += [f"--{name}", str(value)]
    return argv


def pairs_path(work: Path) -> Path:
    """pairs.parquet of the latest pairs run (the stage writes it under pairs/ or at the top)."""
    latest = work / "outputs" / "pairs" / "latest"
    return next((p for p in (latest / "pairs" / "pairs.parquet", latest / "pairs.parquet") if p.exists()),
                latest / "pairs" / "pairs.parquet")


def run_size(n_items: int, work: Path, args) -> tuple[int, list[StageResult]]:
    """(items prepare made, one StageResult per stage) for a catalog of about `n_items` items."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    env = stage_env(work)
    n_products = max(1, round(n_items / ITEMS_PER_PRODUCT))
    # migrate the store before timing, so no stage is charged for it
    run_process([sys.executable, "-c", "from protocol.tracking.runs import ensure_experiment; ensure_experiment()"],
                env, work, work / "logs" / "store.log", args.timeout)
    results = []
    for stage in STAGES:
        print(f"[n~{n_items}] {stage} ...", flush=True)
        result = StageResult(stage, *run_process(stage_argv(stage, work, n_products, args), env, work,
                                                 work / "logs" / f"{stage}.log", args.timeout))
        print(f"[n~{n_items}] {stage}: {result.seconds:.1f} s, peak RSS {result.peak_rss / GB:.2f} GB", flush=True)
        results.append(result)
    manifest = json.loads((work / "outputs" / "prepared" / "latest" / "manifest.json").read_text())
    return int(manifest["n_items"]), results


def exponent(t_small: float, t_large: float, n_small: int, n_large: int) -> float:
    return math.log(max(t_large, 1e-3) / max(t_small, 1e-3)) / math.log(n_large / n_small)


def startup_seconds(work: Path, args) -> float:
    """Seconds a stage process spends importing its libraries: the fixed cost in every stage's time."""
    argv = [sys.executable, "-c", STARTUP_IMPORTS]
    runs = [run_process(argv, stage_env(work), work, work / "startup.log", args.timeout)[0] for _ in range(2)]
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--n", type=int, required=True, help="items in the large run")
    parser.add_argument("--small", type=int, default=None, help="items in the small run (default N/10)")
    parser.add_argument("--image_size", type=int, default=32, help="synthetic image size in pixels")
    parser.add_argument("--pairs_per_item", type=float, default=5.0, help="n_pairs of the pairs stage per item")
    parser.add_argument("--num_workers", type=int, default=2, help="baseline's DataLoader workers")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds any one stage may take")
    parser.add_argument("--work_dir", default=None, help="where stores and outputs go (default: a temp dir, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    small = args.small or max(1, args.n // 10)
    if not 1 <= small < args.n:
        parser.error(f"--small ({small}) must be at least 1 and below --n ({args.n})")

    root = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_scale_"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"work dir {root}; load {os.getloadavg()} on {os.cpu_count()} cpus", flush=True)
    wall = time.perf_counter()
    try:
        startup = startup_seconds(root, args)
        print(f"process start-up (imports): {startup:.1f} s", flush=True)
        n_small, small_results = run_size(small, root / f"n{small}", args)
        n_large, large_results = run_size(args.n, root / f"n{args.n}", args)
    finally:
        if not (args.keep or args.work_dir):
            shutil.rmtree(root, ignore_errors=True)
    wall = time.perf_counter() - wall

    print(f"\nitems: {n_small} (small) and {n_large} (large); exponent = log(t_large/t_small) / log({n_large}/{n_small})")
    print(f"{'stage':<10} {'small s':>8} {'large s':>8} {'exp':>6} {'net exp':>7} {'lin 10N s':>9} "
          f"{'small GB':>8} {'large GB':>8}")
    rows = []
    for s, l in zip(small_results, large_results):
        raw = exponent(s.seconds, l.seconds, n_small, n_large)
        net = (exponent(s.seconds - startup, l.seconds - startup, n_small, n_large)
               if s.seconds - startup >= NET_MIN_SECONDS else None)
        linear_10n = l.seconds + max(0.0, l.seconds - s.seconds) * (9 * n_large) / (n_large - n_small)
        rows.append({"stage": s.stage, "small": asdict(s), "large": asdict(l), "exponent": raw, "net_exponent": net,
                     "linear_10n_s": linear_10n})
        print(f"{s.stage:<10} {s.seconds:>8.1f} {l.seconds:>8.1f} {raw:>6.2f} {'-' if net is None else f'{net:.2f}':>7} "
              f"{linear_10n:>9.0f} {s.peak_rss / GB:>8.2f} {l.peak_rss / GB:>8.2f}")
    total = sum(r.seconds for r in large_results)
    peak = max(r.peak_rss for r in large_results) / GB
    max_exp = max(r["exponent"] for r in rows)
    print(f"whole benchmark (both sizes): {wall:.0f} s; stages at N: {total:.0f} s; "
          f"linear floor at 10 x N: {sum(r['linear_10n_s'] for r in rows):.0f} s; load {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"n": args.n, "n_items": n_large, "n_small_items": n_small,
                                               "startup_s": startup, "stages": rows, "total_s": total,
                                               "peak_rss_gb": peak, "max_exponent": max_exp}, indent=2))
    print(f"scale: n={args.n} total_s={total:.1f} peak_rss_gb={peak:.3f} max_exponent={max_exp:.3f}")


if __name__ == "__main__":
    main()
