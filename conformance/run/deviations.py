"""Known deviations of a backend from the spec: expected failures, loaded from TOML.

File format (``conformance/deviations/<backend>.toml``)::

    [[deviation]]
    test = "conformance/specs/test_reductions.py::test_bool_*"   # fnmatch pattern on node ids
    np = [2, 3, 4]              # optional: rank counts it applies to (default: every count)
    reason = "mpi backend aborts on bool reductions"
    upstream = "https://github.com/ml-explore/mlx/issues/NNNN"   # optional

A file with no deviations holds ``deviation = []``.

Contract:

- :func:`load` parses and validates a file (``DeviationError`` names the file and entry).
- :func:`apply` classifies records (dicts with ``nodeid``, ``np``, ``outcome``): a failure
  matching an entry becomes expected (``"deviation"`` key set to the entry's description); a
  pass matching an entry is marked ``"deviation_passed"`` (reported as an unexpected pass).
  It returns the entries that matched no collected test at any of their rank counts.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

#: Outcomes a deviation can excuse.
FAILING_OUTCOMES = frozenset({"failed", "hung", "crashed", "error"})
#: Outcomes that make an expected failure "pass unexpectedly".
PASSING_OUTCOMES = frozenset({"passed", "xpassed"})

DEVIATIONS_DIR = Path(__file__).parent.parent / "deviations"


class DeviationError(ValueError):
    """A deviations file is malformed."""


@dataclass(frozen=True)
class Deviation:
    """One expected failure: node-id pattern, rank counts (None: all), reason, upstream link."""

    test: str
    reason: str
    np: frozenset[int] | None = None
    upstream: str = ""

    def matches(self, nodeid: str, np: int) -> bool:
        """Whether this entry covers test ``nodeid`` run on ``np`` ranks."""
        if self.np is not None and np not in self.np:
            return False
        return _match(self.test, nodeid)

    def describe(self) -> str:
        """One line for reports: reason, and the upstream link when there is one."""
        return f"{self.reason} ({self.upstream})" if self.upstream else self.reason


def _match(pattern: str, nodeid: str) -> bool:
    # fnmatch reads "[...]" as a character class, but node ids carry "[param]" suffixes that
    # authors write literally; a pattern matches if it matches either way.
    if pattern == nodeid or fnmatch.fnmatchcase(nodeid, pattern):
        return True
    literal_brackets = "".join({"[": "[[]", "]": "[]]"}.get(ch, ch) for ch in pattern)
    return fnmatch.fnmatchcase(nodeid, literal_brackets)


def default_path(backend: str) -> Path:
    """Where the deviations of a backend are kept: ``conformance/deviations/<name>.toml``.

    Only the part of the backend spec before ``:`` counts (``faulty:drop`` -> ``faulty``), and
    dots become underscores so a module path makes a file name.
    """
    name = backend.split(":", 1)[0].replace(".", "_") or "reference"
    return DEVIATIONS_DIR / f"{name}.toml"


def load(path: Path | str) -> list[Deviation]:
    """Parse a deviations file; a missing file means no deviations."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise DeviationError(f"{path}: {exc}") from exc
    return parse(data, str(path))


def parse(data: Mapping[str, Any], source: str = "<deviations>") -> list[Deviation]:
    """Validate the parsed TOML of a deviations file."""
    unknown = set(data) - {"deviation"}
    if unknown:
        raise DeviationError(f"{source}: unknown top-level keys {sorted(unknown)}")
    entries = data.get("deviation", [])
    if not isinstance(entries, list):
        raise DeviationError(f"{source}: 'deviation' must be an array of tables")
    out: list[Deviation] = []
    for i, entry in enumerate(entries):
        where = f"{source}: deviation #{i + 1}"
        if not isinstance(entry, dict):
            raise DeviationError(f"{where}: must be a table")
        extra = set(entry) - {"test", "np", "reason", "upstream"}
        if extra:
            raise DeviationError(f"{where}: unknown keys {sorted(extra)}")
        test, reason = entry.get("test"), entry.get("reason")
        if not isinstance(test, str) or not test:
            raise DeviationError(f"{where}: 'test' (a node-id pattern) is required")
        if not isinstance(reason, str) or not reason:
            raise DeviationError(f"{where}: 'reason' is required")
        np_value = entry.get("np")
        nps: frozenset[int] | None = None
        if np_value is not None:
            if isinstance(np_value, int) and not isinstance(np_value, bool):
                np_value = [np_value]
            if not isinstance(np_value, list) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in np_value
            ):
                raise DeviationError(f"{where}: 'np' must be a rank count or a list of them")
            nps = frozenset(np_value)
        upstream = entry.get("upstream", "")
        if not isinstance(upstream, str):
            raise DeviationError(f"{where}: 'upstream' must be a string (a URL)")
        out.append(Deviation(test=test, reason=reason, np=nps, upstream=upstream))
    return out


def apply(
    records: Iterable[MutableMapping[str, Any]],
    deviations: Iterable[Deviation],
    collected: Mapping[int, Iterable[str]] | None = None,
) -> list[Deviation]:
    """Mark records covered by ``deviations``; return the entries that matched nothing.

    ``collected`` maps rank count -> node ids that were collected; an entry that matches none of
    them (or, without ``collected``, no record) is returned for the caller to warn about.
    """
    deviations = list(deviations)
    used: set[int] = set()
    for record in records:
        for i, deviation in enumerate(deviations):
            if not deviation.matches(record["nodeid"], int(record["np"])):
                continue
            used.add(i)
            if record["outcome"] in FAILING_OUTCOMES:
                record["deviation"] = deviation.describe()
            elif record["outcome"] in PASSING_OUTCOMES:
                record["deviation_passed"] = deviation.describe()
            break
    if collected is not None:
        for i, deviation in enumerate(deviations):
            if i in used:
                continue
            if any(
                deviation.matches(nodeid, np) for np, ids in collected.items() for nodeid in ids
            ):
                used.add(i)
    return [d for i, d in enumerate(deviations) if i not in used]
