"""`mlflow run . -e pipeline`: every stage as child runs of one parent run; unchanged steps are reused."""

from entrypoints.cli import main
from protocol.tracking.stages.pipeline import PipelineConfig, run_pipeline

if __name__ == "__main__":
    main(PipelineConfig, run_pipeline)
