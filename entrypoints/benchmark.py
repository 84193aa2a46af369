"""`mlflow run . -e benchmark`: Marqo's public fashion leaderboard tasks on a model, beside the published rows."""

from entrypoints.cli import main
from protocol.tracking.stages.benchmark import BenchmarkConfig, run_benchmark

if __name__ == "__main__":
    main(BenchmarkConfig, run_benchmark)
