"""A feature extraction in a process of its own, for the tests that kill one or run two at once.

    python -m tests.model.extraction_job --paths paths.json --cache DIR [--engine ray] [--ray_cpus 2]

Images are files (some may be named pipes: an extraction blocks on one, like on a stalled
network file, until the test writes the image into it). The job prints one JSON line with
its `n_computed` when it finishes.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import datasets
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
DATASET_FP = "d" * 64
FEATURES = datasets.Features(
    {"item_id": datasets.Value("string"), "text": datasets.Value("string"), "image": datasets.Image()}
)


def drawn_png(i: int) -> bytes:
    image = Image.new("RGB", (64, 64), (37 * i % 256, 90, 255 - 11 * i % 256))
    ImageDraw.Draw(image).rectangle((i % 30, 10, 40 + i % 20, 50), fill=(250, 23 * i % 256, 10))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def texts(n: int) -> list[str]:
    return [f"item {i}: a {['denim', 'leather', 'cotton'][i % 3]} {['cardigan', 'shorts'][i % 2]}" for i in range(n)]


def png_dataset(n: int = 40) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"item_id": [f"P{i:03d}" for i in range(n)], "text": texts(n),
         "image": [{"bytes": drawn_png(i), "path": None} for i in range(n)]},
        features=FEATURES,
    )


def path_dataset(image_paths: list[str]) -> datasets.Dataset:
    """Images referenced by file path (the job process builds the same dataset)."""
    n = len(image_paths)
    return datasets.Dataset.from_dict(
        {"item_id": [f"P{i:03d}" for i in range(n)], "text": texts(n), "image": image_paths}, features=FEATURES
    )


def image_files(directory: Path, n: int, pipes: tuple[int, ...] = ()) -> list[str]:
    """n PNG files; the rows in `pipes` are named pipes instead (see `unblock`)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = directory / f"{i}.png"
        if i in pipes:
            os.mkfifo(path)
        else:
            path.write_bytes(drawn_png(i))
        paths.append(str(path))
    return paths


def unblock(path: str, row: int) -> None:
    """Feed the reader blocked on the pipe its image (the open waits for that reader), then
    make the pipe a plain file."""
    with open(path, "wb") as f:
        f.write(drawn_png(row))
    unpipe(path, row)


def unpipe(path: str, row: int) -> None:
    """Make a named pipe that no one reads any more a plain image file."""
    os.unlink(path)
    Path(path).write_bytes(drawn_png(row))


class Job:
    """One extraction process (its own session, so a kill takes its workers and Ray with it)."""

    def __init__(self, paths: list[str], cache: Path, log_path: Path, **options):
        paths_file = log_path.with_suffix(".paths.json")
        paths_file.write_text(json.dumps(paths))
        cmd = [sys.executable, "-m", "tests.model.extraction_job", "--paths", str(paths_file), "--cache", str(cache)]
        for key, value in options.items():
            cmd += [f"--{key}", str(value)]
        self.log_path = log_path
        self._log = open(log_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text()

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"the extraction ended before {what}:\n{self.output()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen in {timeout}s:\n{self.output()[-4000:]}")
            time.sleep(0.005)

    def kill(self) -> None:
        """SIGKILL the whole session: the job, its DataLoader workers, a Ray instance it started."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._log.close()

    def result(self, timeout: float = 240) -> dict:
        try:
            code = self.proc.wait(timeout)
        finally:
            self.kill()
        assert code == 0, f"extraction failed ({code}):\n{self.output()[-4000:]}"
        return json.loads(self.output().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--paths", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--engine", default="local")
    parser.add_argument("--shard_size", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--ray_cpus", type=int, default=0, help="start a local Ray instance with this many CPUs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from protocol.model.backbone import BackboneSpec, create_backbone
    from protocol.model.features import extract_features

    if args.ray_cpus:
        import ray

        ray.init(num_cpus=args.ray_cpus, include_dashboard=False)
    features = extract_features(path_dataset(json.loads(Path(args.paths).read_text())), DATASET_FP,
                                create_backbone(BackboneSpec("protocol-tiny", seed=0), "cpu"), args.cache,
                                batch_size=args.batch_size, num_workers=args.num_workers,
                                shard_size=args.shard_size, engine=args.engine)
    print(json.dumps({"n_computed": features.n_computed}), flush=True)


if __name__ == "__main__":
    main()
