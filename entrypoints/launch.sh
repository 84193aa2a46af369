#!/usr/bin/env bash
# What every MLproject entry point runs: `python -m entrypoints.<entry> <args>` with the project's
# Python, however `mlflow run` was started. `mlflow run --env-manager local` runs the command with
# bash in the project directory and the caller's environment, so a bare `python` would be whatever
# PATH finds (often one without mlflow, when .venv/bin/mlflow was called without activating .venv).
# Order: the active virtualenv ($VIRTUAL_ENV), else this project's .venv, else `python` on PATH.
set -euo pipefail
project="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${VIRTUAL_ENV:-}" && -x "${VIRTUAL_ENV}/bin/python" ]]; then
  python="${VIRTUAL_ENV}/bin/python"
elif [[ -x "${project}/.venv/bin/python" ]]; then
  python="${project}/.venv/bin/python"
else
  python="python"
fi
entry="$1"
shift
cd "${project}"
exec "${python}" -m "entrypoints.${entry}" "$@"
