"""`mlflow run . -e train`: heads on cached features; checkpoints, validation, the @candidate model."""

from entrypoints.cli import main
from protocol.tracking.stages.train import TrainStageConfig, run_train

if __name__ == "__main__":
    main(TrainStageConfig, run_train)
