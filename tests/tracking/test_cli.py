"""Entry points validate their own parameters: MLflow passes int/float values through unchecked."""

import pytest

from entrypoints.cli import parse_config
from protocol.tracking.stages.baseline import BaselineConfig
from protocol.tracking.stages.prepare import PrepareConfig


def test_defaults_and_typed_values():
    cfg = parse_config(PrepareConfig, ["--n_products", "12", "--val_fraction", "0.15", "--strict", "true",
                                       "--limit", ""])
    assert (cfg.n_products, cfg.val_fraction, cfg.strict, cfg.limit) == (12, 0.15, True, None)
    assert parse_config(PrepareConfig, []) == PrepareConfig()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--n_products", "many"], "parameter 'n_products' must be an integer, got 'many'"),
        (["--val_fraction", "lots"], "parameter 'val_fraction' must be a number"),
        (["--strict", "maybe"], "parameter 'strict' must be true/false"),
        (["--source", "ftp"], "parameter 'source' must be one of synthetic, table, hf"),
        (["--n_products", "0"], "parameter 'n_products' must be >= 1, got 0"),
        (["--val_fraction", "0.5", "--test_fraction", "0.5"], "must leave room for a train split"),
        (["--source", "table"], "parameter 'input' is required for source=table"),
        (["--test_quota", "-1"], "parameter 'test_quota' must be >= 0, got -1"),
        (["--quota_max_share", "1.5"], "parameter 'quota_max_share' must be in [0, 1], got 1.5"),
    ],
)
def test_bad_values_name_the_parameter(argv, message):
    with pytest.raises(SystemExit) as err:
        parse_config(PrepareConfig, argv)
    assert message in str(err.value)


def test_eval_parameters_are_checked():
    with pytest.raises(SystemExit, match="parameter 'modes' must list some of t2i, t2f, i2i"):
        parse_config(BaselineConfig, ["--modes", "t2x"])
    with pytest.raises(SystemExit, match="parameter 'fusion_weight' must be in \\[0, 1\\]"):
        parse_config(BaselineConfig, ["--fusion_weight", "2"])
