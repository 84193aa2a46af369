"""`mlflow run . -e ablation`: every training variant with each seed, on cached features; ablation.json + .md."""

from entrypoints.cli import main
from protocol.tracking.stages.ablation import AblationConfig, run_ablation

if __name__ == "__main__":
    main(AblationConfig, run_ablation)
