"""`mlflow run . -e groups`."""

from entrypoints.cli import main
from protocol.tracking.stages.supervision import GroupsConfig, run_groups

if __name__ == "__main__":
    main(GroupsConfig, run_groups)
