"""Registry access: versions by alias, the evaluation behind a version, verdict tags, alias moves."""

from __future__ import annotations

import argparse
import sys

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pathlib import Path

from protocol.tracking.runs import REGISTERED_MODEL, resolve_input

# Which stage makes each alias, for the error a user sees when one is missing.
ALIAS_MADE_BY = {"baseline": "baseline", "candidate": "train", "champion": "scoreboard"}
EVALUATION_RUN_TAG = "evaluation.run_id"


def version_by_alias(alias: str, model: str = REGISTERED_MODEL):
    try:
        return MlflowClient().get_model_version_by_alias(model, alias)
    except MlflowException as e:
        stage = ALIAS_MADE_BY.get(alias)
        how = f"run the {stage} stage first (mlflow run . -e {stage})" if stage else "set it on a version first"
        if alias == "champion":
            how += "; only a candidate that passes the scoreboard becomes champion"
        raise LookupError(f"registered model {model!r} has no alias @{alias}: {how}") from e


def version_by_number(version: str | int, model: str = REGISTERED_MODEL):
    try:
        return MlflowClient().get_model_version(model, str(version))
    except MlflowException as e:
        raise LookupError(f"registered model {model!r} has no version {version}") from e


def resolve_version(ref: str):
    """The version a reference names: `@alias` or a version number."""
    return version_by_alias(ref[1:]) if ref.startswith("@") else version_by_number(ref)


def version_for_run(run_id: str, model: str = REGISTERED_MODEL):
    versions = MlflowClient().search_model_versions(f"name='{model}' and run_id='{run_id}'")
    if not versions:
        raise LookupError(f"run {run_id} registered no version of {model!r}")
    return max(versions, key=lambda v: int(v.version))


def evaluation_run_id(version) -> str:
    """The run holding the full evaluation of a version (tagged by baseline/evaluate)."""
    run_id = version.tags.get(EVALUATION_RUN_TAG)
    if not run_id:
        raise LookupError(
            f"version {version.version} of {version.name!r} has no full evaluation yet "
            f"(tag {EVALUATION_RUN_TAG} is missing): run `mlflow run . -e evaluate` for it"
        )
    return run_id


def version_eval_dir(version) -> Path:
    """The eval/ directory of a version's evaluation run (per-query tables, manifest, metrics), downloaded."""
    run_id = evaluation_run_id(version)
    return resolve_input(f"runs:/{run_id}/eval", f"eval of version {version.version}")


def tag_version(version, tags: dict[str, str]) -> None:
    client = MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(version.name, version.version, k, str(v))


def set_alias(alias: str, version, model: str = REGISTERED_MODEL) -> None:
    MlflowClient().set_registered_model_alias(model, alias, str(version.version))


def aliases(model: str = REGISTERED_MODEL) -> dict[str, str]:
    try:
        return dict(MlflowClient().get_registered_model(model).aliases)
    except MlflowException:
        return {}


def load_version_model(version, model: str = REGISTERED_MODEL):
    """The pyfunc model of a registered version, pinned to its number (as `mlflow models serve` loads it)."""
    import mlflow

    return mlflow.pyfunc.load_model(f"models:/{model}/{version.version}")


def main(argv: list[str] | None = None) -> int:
    """`python -m protocol.tracking.registry VERSION`: print the version number VERSION names, or one error line
    and status 1 (what `make serve` checks before `mlflow models serve`, which would answer with a traceback)."""
    parser = argparse.ArgumentParser(prog="python -m protocol.tracking.registry", allow_abbrev=False,
                                     description="check that a registered version exists (MLFLOW_TRACKING_URI)")
    parser.add_argument("version", help="@alias (e.g. @champion) or a version number")
    args = parser.parse_args(argv)
    try:
        print(resolve_version(args.version).version)
    except LookupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
