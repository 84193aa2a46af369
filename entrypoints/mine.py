"""`mlflow run . -e mine`."""

from entrypoints.cli import main
from protocol.tracking.stages.supervision import MineConfig, run_mine

if __name__ == "__main__":
    main(MineConfig, run_mine)
