"""Turn a stage config dataclass into a command line: every entry point is `main(Config, run)`.

MLflow passes `float`/`int` parameters through unchecked, so parsing here is where a
wrong value becomes a clear error that names the parameter.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import sys
import types
import typing
from typing import Any, Callable, get_type_hints

from protocol.io import InputError

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


def _base_type(tp: Any) -> tuple[type, bool]:
    """(scalar type, optional?) of a field annotation such as `int | None`."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return inner[0], len(inner) < len(args)
    return tp, False


def parse_value(name: str, raw: str, tp: Any) -> Any:
    base, optional = _base_type(tp)
    if optional and raw.strip().lower() in ("", "none", "null"):
        return None
    try:
        if base is bool:
            low = raw.strip().lower()
            if low in TRUE:
                return True
            if low in FALSE:
                return False
            raise ValueError
        if base is int:
            return int(raw)
        if base is float:
            return float(raw)
        return base(raw)
    except ValueError:
        kind = {bool: "true/false", int: "an integer", float: "a number"}.get(base, base.__name__)
        raise SystemExit(f"error: parameter {name!r} must be {kind}, got {raw!r}") from None


def build_parser(config_cls: type, description: str | None = None) -> argparse.ArgumentParser:
    # No prefix matching: `-P epoch=1` must not quietly become `--epochs 1` while MLflow records `epoch`.
    parser = argparse.ArgumentParser(description=description or config_cls.__doc__, allow_abbrev=False)
    hints = get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        choices = f.metadata.get("choices")
        help_text = f.metadata.get("help", "")
        parser.add_argument(
            f"--{f.name}",
            dest=f.name,
            default=None,
            metavar=hints[f.name].__name__ if isinstance(hints[f.name], type) else "VALUE",
            help=f"{help_text} (default: {default!r}{'; one of ' + ', '.join(choices) if choices else ''})",
        )
    return parser


def parse_config(config_cls: type, argv: list[str] | None = None) -> Any:
    """Parse argv into `config_cls`; the dataclass's own `__post_init__` checks ranges."""
    parsed, unknown = build_parser(config_cls).parse_known_args(argv)
    if unknown:
        raise SystemExit(f"error: {_unknown_message(config_cls, unknown)}")
    args = vars(parsed)
    hints = get_type_hints(config_cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(config_cls):
        raw = args[f.name]
        if raw is None:
            continue
        value = parse_value(f.name, raw, hints[f.name])
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise SystemExit(f"error: parameter {f.name!r} must be one of {', '.join(choices)}, got {raw!r}")
        values[f.name] = value
    try:
        return config_cls(**values)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: {e}") from None


def _unknown_message(config_cls: type, unknown: list[str]) -> str:
    names = [f.name for f in dataclasses.fields(config_cls)]
    options = [u for u in unknown if u.startswith("-")]
    if not options:
        return f"unexpected argument(s) {unknown}: every parameter is given as --name value (-P name=value)"
    name = options[0].lstrip("-").split("=", 1)[0]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown parameter {name!r}; {hint}parameters: {', '.join(names)}"


def main(config_cls: type, run: Callable[[Any], Any], argv: list[str] | None = None) -> Any:
    """Parse, run; bad input (protocol.io.InputError) ends as one `error: ...` line and exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_config(config_cls, sys.argv[1:] if argv is None else argv)
    try:
        return run(cfg)
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
