"""What the library reports while it works, without importing MLflow.

Library functions take a `RunLogger`; `protocol.tracking.runs.MlflowLogger` sends
everything to MLflow, `NullLogger` (the default) drops it, so the library runs and
is tested alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class RunLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_table(self, df: Any, artifact_file: str) -> None: ...
    def log_figure(self, fig: Any, artifact_file: str) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_dict(self, obj: Any, artifact_file: str) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...


class NullLogger:
    """Accepts every call and keeps nothing."""

    def log_metrics(self, metrics, step=None):
        pass

    def log_params(self, params):
        pass

    def log_table(self, df, artifact_file):
        pass

    def log_figure(self, fig, artifact_file):
        pass

    def log_artifact(self, path, artifact_path=None):
        pass

    def log_dict(self, obj, artifact_file):
        pass

    def set_tags(self, tags):
        pass


class RecordingLogger:
    """Keeps every call, in order, so that another process's logger can `replay` them.

    For work done in a worker process (the ablation's parallel trainings): the worker logs
    into a RecordingLogger, and the parent, which owns the MLflow run, replays the calls into
    it. Everything recorded must pickle (metrics, params, tags, paths, DataFrames).
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def log_metrics(self, metrics, step=None):
        self.calls.append(("log_metrics", (dict(metrics), step)))

    def log_params(self, params):
        self.calls.append(("log_params", (dict(params),)))

    def log_table(self, df, artifact_file):
        self.calls.append(("log_table", (df, artifact_file)))

    def log_figure(self, fig, artifact_file):
        self.calls.append(("log_figure", (fig, artifact_file)))

    def log_artifact(self, path, artifact_path=None):
        self.calls.append(("log_artifact", (str(path), artifact_path)))

    def log_dict(self, obj, artifact_file):
        self.calls.append(("log_dict", (obj, artifact_file)))

    def set_tags(self, tags):
        self.calls.append(("set_tags", (dict(tags),)))

    @property
    def metrics(self) -> list[tuple[int | None, dict]]:
        """(step, metrics) of each log_metrics call, in order."""
        return [(args[1], args[0]) for method, args in self.calls if method == "log_metrics"]

    @property
    def tables(self) -> dict[str, Any]:
        """artifact file -> the table logged there."""
        return {args[1]: args[0] for method, args in self.calls if method == "log_table"}

    @property
    def artifacts(self) -> list[tuple[str, str | None]]:
        """(path, artifact_path) of each log_artifact call, in order."""
        return [args for method, args in self.calls if method == "log_artifact"]

    def replay(self, logger: RunLogger) -> None:
        """Make every recorded call on `logger`, in the order they were recorded."""
        for method, args in self.calls:
            getattr(logger, method)(*args)
