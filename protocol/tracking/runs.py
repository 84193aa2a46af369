"""How a stage opens its run: where it goes, what it is called, what it records.

A stage body runs inside `stage_run(...)`, which
- resumes the run that `mlflow run` created (MLFLOW_RUN_ID is set),
- or opens a nested child under an active parent (the pipeline),
- or starts a fresh run in the `fashion-retrieval` experiment (plain Python use),
names it after what it does (`describe_run`: `train · full · seed 42`, `pipeline · plain`),
tags `stage`, `variant` and `seed`, and yields an `MlflowLogger` bound to that run. The store
itself (URI, lock, artifact folder) is `protocol.tracking.store`'s; inputs are resolved by
`protocol.tracking.artifact_cache.resolve_input`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import mlflow
import pandas as pd
from mlflow.entities import DatasetInput, InputTag, Metric, Param
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from mlflow.tracking import MlflowClient

from protocol.training.ablation import SWITCHES, VARIANTS
from protocol.training.config import TrainConfig
from protocol.tracking.artifact_cache import resolve_input  # noqa: F401 - stages import it from here
from protocol.tracking.store import (  # noqa: F401 - tracking_uri: part of this module's interface
    EXPERIMENT_NAME, PROJECT_ROOT, check_artifacts_beside_store, prepare_store, tracking_uri,
)

log = logging.getLogger(__name__)

REGISTERED_MODEL = "fashion-retrieval-protocol"
DIGEST_CHARS = 36  # the longest dataset digest MLflow stores
DATASET_CONTEXTS = ("prepare", "training", "evaluation")


def configure() -> str:
    """Point MLflow at the tracking store, created or migrated under its lock first."""
    uri = prepare_store(tracking_uri(), experiment=None).uri
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_experiment(name: str = EXPERIMENT_NAME) -> str:
    """Id of experiment `name`, created (artifacts beside the store) when missing."""
    uri = configure()
    return prepare_store(uri, experiment=name).experiment_id


def config_params(cfg: Any) -> dict[str, str]:
    """A config dataclass as MLflow parameters (strings; None as empty)."""
    items = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return {k: "" if v is None else str(v) for k, v in items.items()}


LATEST_LINK = "latest"


def run_output_dir(output_dir: str | Path, run_id: str) -> Path:
    """`<output_dir>/<run_id>`: where one run writes its outputs, so no run overwrites another's."""
    return Path(output_dir) / run_id


def point_latest(output_dir: str | Path, run_dir: Path) -> Path:
    """Point `<output_dir>/latest` at `run_dir` (a relative symlink, swapped in one rename).

    Stage defaults read `<output_dir>/latest/...`, so stages run one by one by hand find the
    newest finished outputs, while a registered version or a cached step keeps its own run's.
    """
    link = Path(output_dir) / LATEST_LINK
    tmp = link.with_name(f".{LATEST_LINK}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, link)
    return link


class MlflowLogger:
    """`protocol.events.RunLogger` that writes to one MLflow run."""

    def __init__(self, run_id: str, output_dir: Path | None = None, *, stage: str | None = None, cfg: Any = None):
        self.run_id = run_id
        self.client = MlflowClient()
        self.output_dir = output_dir  # this run's own output directory (stage_run's output_dir/<run_id>)
        self.stage, self.cfg = stage, cfg

    def set_run_name(self, name: str) -> None:
        self.client.update_run(self.run_id, name=name)

    def name_after(self, **facts: Any) -> None:
        """Rename the run with what the stage learnt as it ran, e.g. `name_after(version="7")` -> `evaluate · v7`."""
        name, _ = describe_run(self.stage, self.cfg, **facts)
        self.set_run_name(name)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        for i in range(0, len(batch), 1000):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_params(self, params: dict[str, Any]) -> None:
        """Logs parameters not yet on the run; `mlflow run` already logged its raw values."""
        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i : i + 100])

    def log_table(self, df: pd.DataFrame, artifact_file: str) -> None:
        self.client.log_table(self.run_id, data=df, artifact_file=artifact_file)

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, fig, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_dataset(self, processed, context: str) -> None:
        """Record the processed dataset as an input of this run (the UI's Datasets column).

        The digest is the dataset fingerprint, cut to the DIGEST_CHARS MLflow stores; the
        whole fingerprint is the input's `fingerprint` tag. `context`: one of DATASET_CONTEXTS.
        """
        if context not in DATASET_CONTEXTS:
            raise ValueError(f"dataset context must be one of {DATASET_CONTEXTS}, got {context!r}")
        dataset = mlflow.data.from_pandas(processed.meta, source=str(Path(processed.path).resolve()),
                                          name="processed", digest=processed.fingerprint[:DIGEST_CHARS])
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(
            dataset._to_mlflow_entity(),
            tags=[InputTag(MLFLOW_DATASET_CONTEXT, context), InputTag("fingerprint", processed.fingerprint)],
        )])


VARIANT_FLAGS = SWITCHES  # the ablation's switches name a train run's variant too
NAME_SEPARATOR = " · "


def variant_name(cfg: Any) -> str | None:
    """The ablation variant a config trains: `plain`, `+attribute_heads`, ..., `full`; None without the flags."""
    if cfg is None or not any(hasattr(cfg, f) for f in VARIANT_FLAGS):
        return None
    # a config that sets some switches (the pipeline's) trains the others at their TrainConfig defaults
    switches = {f: bool(getattr(cfg, f, getattr(TrainConfig, f))) for f in VARIANT_FLAGS}
    named = [name for name, of_variant in VARIANTS.items() if of_variant == switches]
    return named[0] if named else "".join(f"+{f}" for f, on in switches.items() if on)


def describe_run(stage: str, cfg: Any = None, **facts: Any) -> tuple[str, dict[str, str]]:
    """(run name, filter tags) of a stage run, e.g. `train · full · seed 42`, `evaluate · v7`.

    Tags `variant` and `seed` (training stages) let the runs table filter ablation variants
    and seeds: `tags.variant = 'plain' and tags.seed = '1'`. `facts` are what the stage
    learns once it runs (the version it evaluates, the versions it compares).
    """
    parts, tags = [stage], {}
    variant = variant_name(cfg)
    if variant is not None:
        parts.append(variant)
        tags["variant"] = variant
    if stage in ("train", "ablation") and hasattr(cfg, "seed"):
        parts.append(f"seed {cfg.seed}")
        tags["seed"] = str(cfg.seed)
    if stage == "baseline" and cfg is not None:
        parts.append(f"{cfg.model} ({cfg.pretrained})")
    if stage == "prepare" and cfg is not None:
        parts.append(cfg.source if cfg.source != "synthetic" else f"synthetic {cfg.n_products} products")
    if facts.get("version"):
        parts.append(f"v{facts['version']}")
    if facts.get("baseline_version") and facts.get("candidate_version"):
        parts.append(f"v{facts['baseline_version']} vs v{facts['candidate_version']}")
    return NAME_SEPARATOR.join(parts), tags


@contextmanager
def stage_run(stage: str, cfg: Any = None, *, run_name: str | None = None,
              output_dir: str | Path | None = None) -> Iterator[MlflowLogger]:
    """Open (or resume) the run of one stage; names and tags it, logs the config as parameters.

    With `output_dir`, the logger's `output_dir` is `<output_dir>/<run_id>` (created), and
    `<output_dir>/latest` points at it once the stage has finished without an error.
    A run whose artifacts would land outside its sqlite store's artifact root is refused.
    """
    uri = configure()
    name, tags = describe_run(stage, cfg)
    name = run_name or name
    parent = mlflow.active_run()
    if parent is not None:  # children live in their parent's experiment, not in Default
        ctx = mlflow.start_run(run_name=name, nested=True, experiment_id=parent.info.experiment_id)
    elif os.environ.get("MLFLOW_RUN_ID"):
        ctx = mlflow.start_run()  # the run `mlflow run` created for this entry point
    else:
        ctx = mlflow.start_run(experiment_id=_experiment_for_new_run(), run_name=name)
    with ctx as run:
        client = MlflowClient()
        check_artifacts_beside_store(run.info.artifact_uri,
                                     client.get_experiment(run.info.experiment_id).name, uri)
        run_dir = None
        if output_dir is not None:
            run_dir = run_output_dir(output_dir, run.info.run_id)
            run_dir.mkdir(parents=True, exist_ok=True)
        logger = MlflowLogger(run.info.run_id, run_dir, stage=stage, cfg=cfg)
        if run.info.run_name != name:  # `mlflow run` names its runs at random
            logger.set_run_name(name)
        logger.set_tags({"stage": stage, **tags})
        if cfg is not None:
            logger.log_params(config_params(cfg))
        log.info("stage %s: run %s (%s)%s", stage, run.info.run_id, name,
                 f", outputs in {run_dir}" if run_dir else "")
        yield logger
        if run_dir is not None:
            point_latest(output_dir, run_dir)


def _experiment_for_new_run() -> str:
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    return ensure_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT_NAME))


def run_artifact_uri(run_id: str, artifact_path: str) -> str:
    return f"runs:/{run_id}/{artifact_path}"


def ui_links(run_id: str) -> dict[str, str]:
    """Links into the MLflow UI (it opens on its GenAI view; runs live under #/experiments/<id>/runs)."""
    run = MlflowClient().get_run(run_id)
    exp = run.info.experiment_id
    base = "http://127.0.0.1:5000/#/experiments/" + exp
    return {"runs": f"{base}/runs", "run": f"{base}/runs/{run_id}", "artifacts": f"{base}/runs/{run_id}/artifacts"}
