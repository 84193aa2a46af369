"""`mlflow run . -e validate`: metrics and deltas of a checkpoint on a mini catalog."""

from entrypoints.cli import main
from protocol.tracking.stages.validate import ValidateConfig, run_validate

if __name__ == "__main__":
    main(ValidateConfig, run_validate)
