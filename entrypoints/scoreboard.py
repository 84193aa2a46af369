"""`mlflow run . -e scoreboard`: baseline vs candidate on the locked targets; promotes the champion."""

from entrypoints.cli import main
from protocol.tracking.stages.scoreboard import ScoreboardConfig, run_scoreboard

if __name__ == "__main__":
    main(ScoreboardConfig, run_scoreboard)
