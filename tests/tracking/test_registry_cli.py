"""`python -m protocol.tracking.registry VERSION`: what `make serve` asks before `mlflow models serve`."""

from __future__ import annotations

import os
import subprocess
import sys

from mlflow.tracking import MlflowClient

from protocol.tracking import registry
from protocol.tracking.runs import REGISTERED_MODEL
from tests.conftest import ROOT


def test_a_missing_version_is_one_error_line_naming_the_stage_and_a_registered_one_prints_its_number(
        tracking_uri, capsys):
    proc = subprocess.run([sys.executable, "-m", "protocol.tracking.registry", "@champion"], cwd=ROOT,
                          env=os.environ | {"MLFLOW_TRACKING_URI": tracking_uri}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: registered model {REGISTERED_MODEL!r} has no alias @champion: run the scoreboard stage first "
        "(mlflow run . -e scoreboard); only a candidate that passes the scoreboard becomes champion")

    client = MlflowClient()
    client.create_registered_model(REGISTERED_MODEL)
    version = client.create_model_version(REGISTERED_MODEL, "file:///nowhere", None)
    registry.set_alias("champion", version)
    assert registry.main(["@champion"]) == 0 and capsys.readouterr().out.strip() == str(version.version)
    assert registry.main(["7"]) == 1
    assert capsys.readouterr().err.strip() == f"error: registered model {REGISTERED_MODEL!r} has no version 7"
