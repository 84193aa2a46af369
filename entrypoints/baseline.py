"""`mlflow run . -e baseline`: zero-shot catalog, evaluation and the @baseline model."""

from entrypoints.cli import main
from protocol.tracking.stages.baseline import BaselineConfig, run_baseline

if __name__ == "__main__":
    main(BaselineConfig, run_baseline)
