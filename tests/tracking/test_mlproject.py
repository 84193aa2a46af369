"""MLproject must agree with the config dataclasses: same parameters, same defaults, every one passed."""

import dataclasses
import importlib
import re
from pathlib import Path

import pytest
import yaml

from entrypoints.cli import parse_config

ROOT = Path(__file__).resolve().parents[2]
MLPROJECT = yaml.safe_load((ROOT / "MLproject").read_text())


def stage_config(entry: str):
    module = importlib.import_module(f"entrypoints.{entry}")
    configs = [v for v in vars(module).values() if dataclasses.is_dataclass(v) and isinstance(v, type)]
    assert len(configs) == 1, f"entrypoints/{entry}.py should import exactly one config dataclass"
    return configs[0]


@pytest.mark.parametrize("entry", sorted(MLPROJECT["entry_points"]))
def test_entry_point_matches_its_config(entry):
    spec = MLPROJECT["entry_points"][entry]
    config_cls = stage_config(entry)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    params = spec.get("parameters", {})
    assert set(params) == fields, f"{entry}: MLproject parameters differ from {config_cls.__name__} fields"
    assert set(re.findall(r"\{(\w+)\}", spec["command"])) == fields, f"{entry}: command must pass every parameter"
    # MLproject defaults, parsed the way the entry point parses them, equal the dataclass defaults
    argv = [x for name, p in params.items() for x in (f"--{name}", str(p["default"]))]
    assert parse_config(config_cls, argv) == config_cls(), f"{entry}: MLproject defaults differ from the dataclass"
    assert (ROOT / "entrypoints" / f"{entry}.py").exists()
