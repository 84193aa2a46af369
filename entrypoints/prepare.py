"""`mlflow run . -e prepare`: make the processed dataset."""

from entrypoints.cli import main
from protocol.tracking.stages.prepare import PrepareConfig, run_prepare

if __name__ == "__main__":
    main(PrepareConfig, run_prepare)
