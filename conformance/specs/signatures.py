"""The parameters of an API callable, from ``inspect`` or, for compiled functions, its docstring.

MLX's functions are nanobind builtins: ``inspect.signature`` may fail on them, but their docstring
starts with the signature (``all_sum(x: ..., *, group: ... = None, stream: ... = None) -> array``).
Both are turned into the manifest's form: ``[(name, kind, default-or-None), ...]``.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

Param = tuple[str, str, str | None]

_KINDS = {
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional_or_keyword",
    inspect.Parameter.KEYWORD_ONLY: "keyword_only",
    inspect.Parameter.POSITIONAL_ONLY: "positional_only",
    inspect.Parameter.VAR_POSITIONAL: "var_positional",
    inspect.Parameter.VAR_KEYWORD: "var_keyword",
}


def _normalise_default(text: str) -> str:
    """Defaults compare as Python literals: ``"any"`` and ``'any'`` are the same default."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return repr(text[1:-1])
    return text


def parameters(obj: Any) -> list[Param] | None:
    """``obj``'s parameters (``self`` dropped), or None when neither source tells them."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return _from_doc(getattr(obj, "__doc__", None) or "", getattr(obj, "__name__", ""))
    params = []
    for p in signature.parameters.values():
        if p.name == "self":
            continue
        default = None if p.default is inspect.Parameter.empty else repr(p.default)
        params.append((p.name, _KINDS[p.kind], default))
    return params


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if "".join(current).strip():
        parts.append("".join(current))
    return [p.strip() for p in parts]


def _from_doc(doc: str, name: str) -> list[Param] | None:
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    match = re.match(rf"^{re.escape(name)}\((.*)\)(\s*->.*)?$", first) if name else None
    if match is None:
        return None
    params: list[Param] = []
    kind = "positional_or_keyword"
    for part in _split_top_level(match.group(1)):
        if part == "*":
            kind = "keyword_only"
            continue
        if part == "/":
            params = [(n, "positional_only", d) for n, _, d in params]
            continue
        head, _, default = part.partition("=")
        pname = head.split(":")[0].strip()
        if pname == "self":
            continue
        params.append((pname, kind, _normalise_default(default) if default else None))
    return params


def expected(entry: dict[str, Any]) -> list[Param]:
    """The manifest entry's parameters in the same form."""
    return [
        (p["name"], p["kind"], _normalise_default(p["default"]) if "default" in p else None)
        for p in entry["params"]
    ]


def optional_names(entry: dict[str, Any]) -> set[str]:
    """Parameters the manifest marks ``optional``: a backend may have them or not."""
    return {p["name"] for p in entry["params"] if p.get("optional")}


def difference(got: list[Param], entry: dict[str, Any]) -> str | None:
    """How ``got`` departs from the manifest entry, or None. Optional parameters may be absent;
    when present they must match too."""
    optional = optional_names(entry)
    present = {name for name, _, _ in got}
    want = [p for p in expected(entry) if p[0] not in optional or p[0] in present]
    if got == want:
        return None
    return f"parameters are {got}, manifest says {want}"
