"""Training checkpoints: atomic saves, `weights_only` loads, fingerprint checks, RNG capture.

A checkpoint is a dict of plain tensors, dicts, lists, strings and numbers (so that
`torch.load(weights_only=True)` reads it): "heads" (config + state dict), "optimizer",
"scheduler", "epoch", "step", "rng", "sampler", "config", "backbone_fingerprint",
"dataset_fingerprint", "best_metric", "best_epoch", "reference_metrics", "history".
Files live in `<out_dir>/checkpoints/`: `epoch_N.pt`, `best.pt`, `final.pt`.
"""

from __future__ import annotations

import logging
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocol.io import atomic_path
from protocol.model.backbone import check_fingerprint
from protocol.training.config import OPERATIONAL_FIELDS, RESUME_OVERRIDES

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
REQUIRED_KEYS = ("heads", "backbone_fingerprint")


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR


def epoch_checkpoint(out_dir: str | Path, epoch: int) -> Path:
    return checkpoint_dir(out_dir) / f"epoch_{epoch}.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` atomically: a crash leaves the previous file, never half of a new one."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state for {path} lacks {missing}")
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    logger.info("saved checkpoint %s", path)
    return Path(path)


def load_checkpoint(path: str | Path, expected_backbone_fingerprint: str | None = None) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; check it was made with the expected backbone."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(
            f"{path} is not a readable protocol checkpoint ({' '.join(str(e).split())[:300]}); "
            "use a file written by protocol.training (epoch_N.pt, best.pt, final.pt)"
        ) from e
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path} is not a protocol checkpoint: it lacks {missing}")
    if expected_backbone_fingerprint is not None:
        check_fingerprint(expected_backbone_fingerprint, state["backbone_fingerprint"], f"checkpoint {path}")
    return state


def capture_rng_state() -> dict[str, Any]:
    """torch, numpy (global) and python `random` RNG states as weights_only-loadable values."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def check_resumable(state: dict[str, Any], path: str | Path, config: dict[str, Any], *, dataset_fingerprint: str,
                    attribute_classes: dict[str, list[str]], config_file: Path) -> None:
    """Refuse to resume from a checkpoint of another dataset, config or attribute classes.

    Operational fields (threads, logging, checkpoint cadence) may change; `lr` may too, to
    recover from a divergence, with a warning that the run no longer matches an uninterrupted one.
    """
    check_fingerprint(dataset_fingerprint, state["dataset_fingerprint"], f"the dataset of checkpoint {path}")
    saved = state["config"]
    changed = {k: (saved.get(k), v) for k, v in config.items() if k not in OPERATIONAL_FIELDS and saved.get(k) != v}
    for name in RESUME_OVERRIDES & changed.keys():
        old, new = changed.pop(name)
        logger.warning("resuming with %s=%r instead of %r: the run will not match an uninterrupted one", name, new, old)
    if changed:
        listed = ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in changed.items())
        raise ValueError(f"cannot resume from {path}: the config differs in {listed}. Resume with the checkpoint's "
                         f"config ({config_file}) or start a new run")
    if state["heads"]["config"]["attribute_classes"] != attribute_classes:
        raise ValueError(f"cannot resume from {path}: its attribute classes differ from this data's")
