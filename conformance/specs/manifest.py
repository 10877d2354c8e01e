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

from conformance.harness.levels import LEVELS

MANIFEST_PATH = Path(__file__).with_name("manifest.toml")
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


# -- declared capabilities ------------------------------------------------------------------------


@dataclass(frozen=True)
class Declared:
    """One feature a backend declares unsupported.

    ``feature`` is its id: an ``[optional]`` key of the manifest (``sum_scatter``,
    ``Group.split``, ``send:neighbours``, ``send:self``), an op name, or ``op[dtype]``.
    ``optional`` says whether the manifest allows declaring it away; ``rule`` quotes the rule
    that allows it or forbids it (with its SEMANTICS.md section)."""

    feature: str
    optional: bool
    rule: str
    error_types: tuple[str, ...]
    error_match: str


def _error(table: dict[str, Any], name: str) -> tuple[tuple[str, ...], str]:
    types = tuple(t for t in str(table.get("type", "Exception")).split("|") if t)
    return types, str(table.get("match", "")).replace("{name}", name)


def _quote(table: dict[str, Any]) -> str:
    return f'SEMANTICS.md, {table["section"]}: "{table["text"]}"'


def _optional(data: dict[str, Any], feature: str) -> Declared:
    table = data["optional"][feature]
    types, match = _error(table["error"], feature)
    return Declared(feature, True, _quote(table), types, match)


def _core(data: dict[str, Any], kind: str, feature: str, name: str) -> Declared:
    types, match = _error(data["core_features"]["error"], name)
    return Declared(feature, False, _quote(data["core_features"][kind]), types, match)


def declared_unsupported(capabilities: Any, data: dict[str, Any] | None = None) -> list[Declared]:
    """Every feature ``capabilities`` (a ``conformance.backend.Capabilities``) declares
    unsupported, optional ones first, in a stable order."""
    from conformance.backend import API_NAMES, DATA_OPS, DTYPE_NAMES

    data = data if data is not None else load()
    found: list[Declared] = []
    if not capabilities.supports("sum_scatter"):
        found.append(_optional(data, "sum_scatter"))
    if not capabilities.split:
        found.append(_optional(data, "Group.split"))
    if capabilities.p2p_topology == "neighbours":
        found.append(_optional(data, "send:neighbours"))
    if not capabilities.send_to_self:
        found.append(_optional(data, "send:self"))
    for op in API_NAMES:
        if op != "sum_scatter" and op not in capabilities.ops:
            found.append(_core(data, "op", op, op))
    for op in DATA_OPS:
        if not capabilities.supports(op):
            continue
        for dtype in DTYPE_NAMES:
            if not capabilities.supports(op, dtype):
                found.append(_core(data, "dtype", f"{op}[{dtype}]", dtype))
    return found


def unsupported_error(
    op: str, dtype: str | None = None, data: dict[str, Any] | None = None
) -> tuple[tuple[str, ...], str]:
    """(exception type names, message regex) a backend must raise for ``op`` (on ``dtype``)
    declared unsupported: the ``[optional]`` entry's error for an optional feature, else the
    ``[core_features]`` error."""
    data = data if data is not None else load()
    feature = {"split": "Group.split"}.get(op, op)
    if dtype is None and feature in data["optional"]:
        return _error(data["optional"][feature]["error"], feature)
    return _error(data["core_features"]["error"], dtype or op)
