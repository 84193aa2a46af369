"""MLproject must agree with the config dataclasses: same parameters, same defaults, every one passed."""

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from entrypoints.cli import parse_config
from entrypoints.mlproject import ENTRY_POINTS, config_of, render

ROOT = Path(__file__).resolve().parents[2]
MLPROJECT = yaml.safe_load((ROOT / "MLproject").read_text())


def test_mlproject_is_generated_from_the_configs():
    assert (ROOT / "MLproject").read_text() == render(), "regenerate: python -m entrypoints.mlproject > MLproject"
    assert set(MLPROJECT["entry_points"]) == set(ENTRY_POINTS)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_point_defaults_parse_back_to_the_config(entry):
    spec = MLPROJECT["entry_points"][entry]
    config_cls = config_of(entry)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    assert set(spec["parameters"]) == fields
    assert set(re.findall(r"\{(\w+)\}", spec["command"])) == fields, f"{entry}: command must pass every parameter"
    # what `mlflow run` passes by default, parsed the way the entry point parses it, is the dataclass default
    argv = [x for name, p in spec["parameters"].items() for x in (f"--{name}", str(p["default"]))]
    assert parse_config(config_cls, argv) == config_cls()
