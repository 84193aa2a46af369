"""`mlflow run . -e evaluate`: full evaluation of a candidate on cached features, with galleries and a report."""

from entrypoints.cli import main
from protocol.tracking.stages.evaluate import EvaluateConfig, run_evaluate

if __name__ == "__main__":
    main(EvaluateConfig, run_evaluate)
