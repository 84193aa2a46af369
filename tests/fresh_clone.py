"""A fresh clone of the project in a temp folder, with `.venv` pointing at the venv that runs the tests.

What a user has after `git clone` + `make setup`: the tracked files (and, while developing, the
files git would track), no store, no outputs, and a shell that has NOT activated .venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_fresh_clone(dst: Path) -> Path:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    (dst / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return dst


def user_shell_env(clone: Path) -> dict:
    """A user's shell: no activated venv, no MLflow or protocol variables, no PYTHONPATH."""
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "PROTOCOL_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    env["MPLBACKEND"] = "Agg"
    return env
