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
