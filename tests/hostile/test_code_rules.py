"""Rules every module keeps, checked on the source itself (ast), so a new module cannot slip past them:
no argparse prefix matching, checkpoints loaded with weights_only=True, YAML read with safe_load."""

from __future__ import annotations

import ast
import functools
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def parsed_files() -> tuple[tuple[str, ast.AST], ...]:
    return tuple((str(path.relative_to(ROOT)), ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
                 for path in python_files())


def python_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def calls(attribute: str) -> list[tuple[str, ast.Call]]:
    """Every call of `<something>.<attribute>(...)` or `<attribute>(...)` in the project's Python files."""
    found = []
    for where, tree in parsed_files():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if name == attribute:
                    found.append((f"{where}:{node.lineno}", node))
    return found


def keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else kw.value
    return None


def test_every_argument_parser_refuses_abbreviations():
    parsers = calls("ArgumentParser")
    assert len(parsers) >= 5  # the stage CLI, store, artifact cache, the benchmarks
    assert [where for where, call in parsers if keyword(call, "allow_abbrev") is not False] == []


def test_the_rule_check_sees_a_parser_without_it():
    tree = ast.parse("import argparse\nargparse.ArgumentParser(description='x')\n"
                     "argparse.ArgumentParser(allow_abbrev=False)\n")
    found = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, "attr", None) == "ArgumentParser"]
    assert [keyword(call, "allow_abbrev") for call in found] == [None, False]


def test_every_torch_load_is_weights_only():
    loads = [(where, call) for where, call in calls("load")
             if isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", None) == "torch"]
    assert loads  # the checkpoint reader at least
    assert [where for where, call in loads if keyword(call, "weights_only") is not True] == []


@pytest.mark.parametrize("unsafe", ["load", "unsafe_load", "full_load", "load_all"])
def test_yaml_is_only_read_with_safe_load(unsafe):
    used = [where for where, call in calls(unsafe)
            if isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", None) == "yaml"]
    assert used == []
