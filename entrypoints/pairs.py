"""`mlflow run . -e pairs`."""

from entrypoints.cli import main
from protocol.tracking.stages.supervision import PairsConfig, run_pairs

if __name__ == "__main__":
    main(PairsConfig, run_pairs)
