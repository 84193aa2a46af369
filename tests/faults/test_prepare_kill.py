"""SIGKILL a real `prepare` at several points, re-run it: the same dataset, and nothing torn that a
later stage would accept.

A killed prepare leaves `<output_dir>/latest` on the last complete output. Every run directory
is either a complete processed dataset (it verifies against its manifest) or holds neither a
manifest nor a dataset (load_processed refuses it); temp directories are hidden (`.<name>.*.tmp`)
and no stage reads them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from protocol.data.prepare import finalize, save_processed
from protocol.data.processed import DATASET_DIR, MANIFEST, load_processed
from protocol.data.synthetic import generate_catalog
from protocol.tracking.stages.prepare import PrepareConfig, run_prepare

ROOT = Path(__file__).resolve().parents[2]
# Small enough to be quick, big enough for several dataset shards and many grounding calls.
ARGS = {"n_products": "40", "image_size": "32", "seed": "3", "shard_rows": "16"}


def prepare_args(out: Path) -> list[str]:
    return [x for k, v in (ARGS | {"output_dir": str(out)}).items() for x in (f"--{k}", v)]


def run_killed(point: str, module: str, argv: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "tests.faults.kill_at", point, module, *argv], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, f"expected a SIGKILL at {point}, got {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "kill_at: SIGKILL now" in proc.stderr
    return proc


def subprocess_env(tracking_uri: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return env


def assert_nothing_torn(out: Path, fingerprint: str) -> None:
    """Every visible directory is complete and verifies to `fingerprint`, or is no dataset at all."""
    for entry in sorted(out.iterdir()):
        if entry.name.startswith("."):  # temp directories of killed runs: hidden, never read
            continue
        has_manifest, has_dataset = (entry / MANIFEST).exists(), (entry / DATASET_DIR).exists()
        if has_manifest or has_dataset:
            assert has_manifest and has_dataset, f"{entry} is torn: manifest {has_manifest}, dataset {has_dataset}"
            assert load_processed(entry, verify=True).fingerprint == fingerprint, entry
        else:
            with pytest.raises(FileNotFoundError, match="not a processed dataset"):
                load_processed(entry)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, migrated_store) -> tuple[Path, str]:
    """(an output_dir holding one uninterrupted prepare, its fingerprint); each test kills a run over a copy."""
    out = tmp_path_factory.mktemp("uninterrupted") / "prepared"
    shutil.copy(migrated_store, out.parent / "mlflow.db")
    with pytest.MonkeyPatch.context() as env:  # its run goes to a store of its own, not a test's
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{out.parent / 'mlflow.db'}")
        first = run_prepare(PrepareConfig(**{k: int(v) for k, v in ARGS.items()}, output_dir=str(out)))
    return out, first["fingerprint"]


@pytest.mark.parametrize("point", [
    "call:ground_attributes:5@protocol.data.prepare",  # during grounding
    "call:write_batch:2@protocol.data.prepare",        # during dataset writing (second shard)
    "rename:*/prepared/[0-9a-f]*[0-9a-f]",             # dataset and manifest written, before the rename
    "rename:*/prepared/latest",                        # output in place, before `latest` moves to it
])
def test_killed_prepare_leaves_nothing_torn_and_a_rerun_gives_the_same_dataset(
        point, uninterrupted, tracking_uri, tmp_path):
    out = tmp_path / "prepared"
    shutil.copytree(uninterrupted[0], out, symlinks=True)  # `latest` is a relative link: it moves along
    reference_fingerprint = uninterrupted[1]  # an uninterrupted run
    latest_before = os.readlink(out / "latest")
    assert load_processed(out / "latest", verify=True).fingerprint == reference_fingerprint

    run_killed(point, "entrypoints.prepare", prepare_args(out), subprocess_env(tracking_uri))

    assert os.readlink(out / "latest") == latest_before  # later stages still read the complete output
    assert_nothing_torn(out, reference_fingerprint)

    again = run_prepare(PrepareConfig(**{k: int(v) for k, v in ARGS.items()}, output_dir=str(out)))
    assert again["fingerprint"] == reference_fingerprint
    assert load_processed(out / "latest", verify=True).fingerprint == reference_fingerprint
    assert_nothing_torn(out, reference_fingerprint)


def test_save_processed_killed_before_its_rename_keeps_the_old_complete_output(tmp_path):
    """Writing over an existing processed directory: a kill before the swap leaves the old one whole."""
    out = tmp_path / "prepared"
    old_table = finalize(generate_catalog(n_products=12, seed=0, image_size=32, show_progress=False),
                         seed=0, show_progress=False)
    old = save_processed(old_table, out, source="old")
    script = tmp_path / "overwrite.py"
    script.write_text(
        "from protocol.data.prepare import finalize, save_processed\n"
        "from protocol.data.synthetic import generate_catalog\n"
        "raw = generate_catalog(n_products=12, seed=1, image_size=32, show_progress=False)\n"
        f"save_processed(finalize(raw, seed=1, show_progress=False), {str(out)!r}, source='new')\n")
    for point in ("rename:*/manifest.json", f"rename:{out}"):  # before the manifest, before the swap
        run_killed(point, str(script), [], {**os.environ, "PYTHONPATH": str(ROOT)})
        assert load_processed(out, verify=True).fingerprint == old["fingerprint"]
        assert json.loads((out / MANIFEST).read_text())["source"] == "old"
    new = save_processed(finalize(generate_catalog(n_products=12, seed=1, image_size=32, show_progress=False),
                                  seed=1, show_progress=False), out, source="new")
    assert load_processed(out, verify=True).fingerprint == new["fingerprint"] != old["fingerprint"]
