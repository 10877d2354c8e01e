"""Reading manifest.toml and finding which spec tests cite which of its rules.

``load()`` gives the parsed manifest; ``spec_citations()`` walks the spec modules' test functions
(without running pytest) and returns every ``spec(op, rule=...)`` mark with the test's level, so
test_manifest.py can check both directions: every rule has a test, every citation a rule.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

MANIFEST_PATH = Path(__file__).with_name("manifest.toml")
LEVELS = ("core", "robust", "impl_defined")
PARAM_KINDS = ("positional_or_keyword", "keyword_only", "positional_only")


def load() -> dict[str, Any]:
    with MANIFEST_PATH.open("rb") as f:
        return tomllib.load(f)


def rules(manifest: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(op, rule id) -> the rule's table."""
    return {
        (op, rule["id"]): rule for op, entry in manifest["ops"].items() for rule in entry["rules"]
    }


@dataclass(frozen=True)
class Citation:
    module: str
    test: str
    op: str
    rule: str
    level: str | None  # the test's (or parameter's) level marker, None when missing or several


def _marks(obj: Any) -> list[Any]:
    marks = getattr(obj, "pytestmark", [])
    return list(marks) if isinstance(marks, list) else [marks]


def _levels(marks: list[Any]) -> set[str]:
    return {m.name for m in marks if m.name in LEVELS}


def _parameter_marks(function_marks: list[Any]) -> Iterator[list[Any]]:
    """The marks of each parametrize value (``pytest.param(..., marks=...)``)."""
    for mark in function_marks:
        if mark.name != "parametrize" or len(mark.args) < 2:
            continue
        for value in mark.args[1]:
            marks = getattr(value, "marks", None)
            if marks:
                yield list(marks)


def spec_citations() -> list[Citation]:
    """Every spec mark on every ``test_*`` function of the ``conformance.specs`` modules."""
    import conformance.specs as package

    found: list[Citation] = []
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("test_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        module_levels = _levels(_marks(module))
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if not name.startswith("test_") or function.__module__ != module.__name__:
                continue
            marks = _marks(function)
            levels = module_levels | _levels(marks)
            groups = [marks, *_parameter_marks(marks)]
            for group in groups:
                group_levels = levels | _levels(group) if group is not marks else levels
                level = next(iter(group_levels)) if len(group_levels) == 1 else None
                for mark in group:
                    if mark.name == "spec" and mark.args:
                        rule = str(mark.kwargs.get("rule", ""))
                        found.append(Citation(info.name, name, str(mark.args[0]), rule, level))
    return found
