"""Known deviations of a backend from the spec, loaded from TOML (runs in the runner, outside
every job).

File format (``conformance/deviations/<backend>.toml``)::

    [[deviation]]
    tests = [                                   # exact node ids (or `test = "..."` for one)
      "conformance/specs/test_all_max_all_min.py::test_values[all_max-bool]",
      "conformance/specs/test_size_sweep.py::test_collective_dtypes_large[all_max]",
    ]
    np = [2, 3, 4]              # optional: rank counts it applies to (default: every count)
    expect = "wrong"            # the outcome it excuses: wrong, error, hang or crash (or a list)
    match = "bool"             # the findings it excuses (a regex, searched in each one)
    reason = "bool reductions return each rank's own input"
    upstream = "https://github.com/ml-explore/mlx/issues/NNNN"   # or no_upstream = "why none"
    flaky = "why it sometimes passes"          # optional: a pass is reported, not a failure
    releases = ["0.29.4..0.32.4", "0.26.5"]    # optional: backend versions it applies to
                                               # (exact, or an inclusive range A..B; default all)

    [[deviation]]
    feature = "all_max[complex64]"   # a core feature the backend declares unsupported
    reason = "..."
    no_upstream = "not yet filed: ..."

A file with no deviations holds ``deviation = []``.

Contract:

- :func:`load` parses and validates a file (``DeviationError`` names the file and entry). Test ids
  are exact: no wildcard, so an entry excuses only the cases its reason is about.
- An entry excuses only what it names. A failed test reports its findings (one per case that
  went wrong: ``records.findings_of``; a spec test that loops over dtypes, layouts or counts
  names the dtype, op and count in each). ``match`` is a regular expression searched in each
  finding: the record is excused only when every finding matches it, so a second defect in the
  same test (another dtype, another op) fails the run and is listed. ``match`` is required when
  ``expect`` names ``wrong`` or ``error`` (``hang`` and ``crash`` leave no findings to name).
- :func:`apply` marks records (``nodeid``, ``np``, ``outcome``): a record whose outcome is one the
  entry expects and whose findings all match gets ``"deviation"`` (the entry's description) and
  no longer fails the run; any other bad outcome, or a finding the entry does not name, stays a
  failure (a deviation that expects a wrong result never excuses a hang) and is listed in the
  problems. A passing record gets ``"deviation_passed"``: unless the entry is ``flaky``, that
  fails the run (strict: fix the entry when the backend is fixed). Entries whose tests were
  selected but have no record, or whose tests were not collected in a full run, are reported as
  stale.
- :func:`excused_features` maps feature ids to the entries that excuse them.
- :func:`expected_hangs` names the tests an entry expects to hang at a rank count.
- :func:`for_release` keeps the entries that apply to one backend version (``releases``); an
  entry without ``releases`` applies to every version. So one file can describe several
  releases of a backend exactly (``python -m conformance matrix``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance.records import BAD_OUTCOMES, GOOD_OUTCOMES, Outcome, findings_of, outcome_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

#: What an entry's ``expect`` names -> the record outcome it matches.
EXPECTATIONS: dict[str, Outcome] = {
    "wrong": Outcome.WRONG,
    "error": Outcome.ERROR,
    "hang": Outcome.HUNG,
    "crash": Outcome.CRASHED,
}
#: Outcomes a deviation can excuse.
FAILING_OUTCOMES = frozenset(o.value for o in BAD_OUTCOMES)
#: Outcomes that make an expected failure "pass unexpectedly".
PASSING_OUTCOMES = frozenset(o.value for o in GOOD_OUTCOMES)
_WILDCARDS = ("*", "?")
#: How far a run reached (``apply``'s ``scope``).
SCOPES = ("all", "files", "selected")
_KEYS = {
    "test",
    "tests",
    "feature",
    "np",
    "expect",
    "match",
    "reason",
    "upstream",
    "no_upstream",
    "flaky",
    "releases",
}
#: Outcomes whose failures carry findings an entry must name (``match``).
NAMED_OUTCOMES = frozenset({Outcome.WRONG.value, Outcome.ERROR.value})

DEVIATIONS_DIR = Path(__file__).parent.parent / "deviations"


class DeviationError(ValueError):
    """A deviations file is malformed."""


@dataclass(frozen=True)
class Deviation:
    """One known deviation: exact test ids, the outcomes expected of them and the findings they
    excuse (``match``), or one declared feature; the reason, and the upstream link or why there
    is none."""

    reason: str
    tests: tuple[str, ...] = ()
    feature: str = ""
    expect: frozenset[str] = frozenset()
    match: str = ""
    np: frozenset[int] | None = None
    upstream: str = ""
    no_upstream: str = ""
    flaky: str = ""
    #: Versions (exact, or inclusive ranges ``A..B``) the entry applies to; None: every version.
    releases: tuple[str, ...] | None = None

    def applies_to(self, version: str | None) -> bool:
        """Whether the entry is about backend ``version`` (unknown versions: every entry)."""
        if self.releases is None or version is None:
            return True
        return any(_in_release(version, spec) for spec in self.releases)

    @property
    def label(self) -> str:
        """How reports name the entry: its feature, or its (first) test id."""
        if self.feature:
            return f"feature {self.feature}"
        more = f" (+{len(self.tests) - 1} more)" if len(self.tests) > 1 else ""
        return f"{self.tests[0]}{more}"

    def covers(self, nodeid: str, np: int) -> bool:
        """Whether this entry is about test ``nodeid`` run on ``np`` ranks."""
        return nodeid in self.tests and (self.np is None or np in self.np)

    def expects(self, outcome: str) -> bool:
        return outcome in self.expect

    def unnamed(self, record: Mapping[str, Any]) -> list[str]:
        """The findings of a failed ``record`` this entry does not name (all of them match
        ``match``, or there is no ``match``: an empty list)."""
        if not self.match:
            return []
        pattern = re.compile(self.match)
        found = findings_of(record) or ["(the failure reported no message)"]
        return [f for f in found if not pattern.search(f)]

    def describe(self) -> str:
        """One line for reports: reason, and the upstream link or why there is none."""
        link = self.upstream or f"no upstream issue: {self.no_upstream}"
        return f"{self.reason} ({link})"


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
    out = []
    for i, entry in enumerate(entries):
        where = f"{source}: deviation #{i + 1}"
        if not isinstance(entry, dict):
            raise DeviationError(f"{where}: must be a table")
        out.append(_entry(entry, where))
    return out


def _text(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key, "")
    if not isinstance(value, str):
        raise DeviationError(f"{where}: {key!r} must be a string")
    return value.strip()


def _entry(entry: Mapping[str, Any], where: str) -> Deviation:
    extra = set(entry) - _KEYS
    if extra:
        raise DeviationError(f"{where}: unknown keys {sorted(extra)}")
    reason = _text(entry, "reason", where)
    if not reason:
        raise DeviationError(f"{where}: 'reason' is required")
    upstream, no_upstream = _text(entry, "upstream", where), _text(entry, "no_upstream", where)
    if bool(upstream) == bool(no_upstream):
        raise DeviationError(
            f"{where}: give exactly one of 'upstream' (a link to the upstream issue) or "
            "'no_upstream' (why there is none)"
        )
    if upstream and not upstream.startswith(("https://", "http://")):
        raise DeviationError(f"{where}: 'upstream' must be a URL, not {upstream!r}")
    feature = _text(entry, "feature", where)
    common = {
        "reason": reason,
        "upstream": upstream,
        "no_upstream": no_upstream,
        "releases": _releases(entry, where),
    }
    if feature:
        stray = set(entry) & {"test", "tests", "np", "expect", "match", "flaky"}
        if stray:
            raise DeviationError(f"{where}: a 'feature' entry takes no {sorted(stray)}")
        return Deviation(feature=feature, **common)
    expect = _expect(entry, where)
    return Deviation(
        tests=_tests(entry, where),
        expect=expect,
        match=_match(entry, expect, where),
        np=_nps(entry, where),
        flaky=_text(entry, "flaky", where),
        **common,
    )


def _tests(entry: Mapping[str, Any], where: str) -> tuple[str, ...]:
    if ("test" in entry) == ("tests" in entry):
        raise DeviationError(
            f"{where}: give 'test' (one node id) or 'tests' (a list), or 'feature'"
        )
    value = entry.get("tests", [entry.get("test")])
    if not isinstance(value, list) or not value:
        raise DeviationError(f"{where}: 'tests' must be a non-empty list of node ids")
    for nodeid in value:
        if not isinstance(nodeid, str) or "::" not in nodeid:
            raise DeviationError(f"{where}: {nodeid!r} is not a test node id (file.py::test)")
        if any(mark in nodeid for mark in _WILDCARDS):
            raise DeviationError(
                f"{where}: {nodeid!r} has a wildcard; list the exact test ids the reason is about"
            )
    if len(set(value)) != len(value):
        raise DeviationError(f"{where}: a test id is listed twice")
    return tuple(value)


def _version_key(version: str) -> tuple[int, ...] | None:
    parts = version.strip().split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def _in_release(version: str, spec: str) -> bool:
    low, sep, high = spec.partition("..")
    if not sep:
        return version.strip() == spec.strip()
    key = _version_key(version)
    if key is None:
        return False
    return (not low or _version_key(low) <= key) and (not high or key <= _version_key(high))


def _valid_release(spec: Any) -> bool:
    if not isinstance(spec, str):
        return False
    low, sep, high = spec.partition("..")
    if not sep:
        return _version_key(spec) is not None
    ends = [e for e in (low, high) if e]
    return bool(ends) and all(_version_key(e) is not None for e in ends)


def _releases(entry: Mapping[str, Any], where: str) -> tuple[str, ...] | None:
    value = entry.get("releases")
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise DeviationError(f"{where}: 'releases' must be a non-empty list of versions")
    for spec in value:
        if not _valid_release(spec):
            raise DeviationError(
                f"{where}: {spec!r} in 'releases' is not a version (0.30.1) or a range "
                "(0.29.4..0.32.4, open ends allowed: ..0.29.3)"
            )
    return tuple(value)


def for_release(deviations: Iterable[Deviation], version: str | None) -> list[Deviation]:
    """The entries that apply to backend ``version`` (all of them when it is unknown)."""
    return [d for d in deviations if d.applies_to(version)]


def _expect(entry: Mapping[str, Any], where: str) -> frozenset[str]:
    value = entry.get("expect")
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(n in EXPECTATIONS for n in names):
        raise DeviationError(
            f"{where}: 'expect' must be one of {sorted(EXPECTATIONS)} (or a list of them), "
            f"not {value!r}"
        )
    return frozenset(EXPECTATIONS[n].value for n in names)


def _match(entry: Mapping[str, Any], expect: frozenset[str], where: str) -> str:
    pattern = entry.get("match", "")
    if not isinstance(pattern, str):
        raise DeviationError(f"{where}: 'match' must be a string (a regular expression)")
    if not pattern.strip():
        if expect & NAMED_OUTCOMES:
            raise DeviationError(
                f"{where}: 'match' is required when 'expect' names wrong or error: a regular "
                "expression every finding it excuses matches (name the dtype, op or message), "
                "so another failure of the same test is not excused with it"
            )
        return ""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise DeviationError(f"{where}: 'match' is not a regular expression: {exc}") from exc
    return pattern


def _nps(entry: Mapping[str, Any], where: str) -> frozenset[int] | None:
    value = entry.get("np")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value
    ):
        raise DeviationError(f"{where}: 'np' must be a rank count or a list of them")
    return frozenset(value)


@dataclass
class Applied:
    """What applying the deviations found beyond the marked records."""

    #: (entry, nodeid, np) of strict entries whose test passed: each fails the run.
    strict_passes: list[tuple[Deviation, str, int]] = field(default_factory=list)
    #: (entry, nodeid, np, outcome) of bad outcomes the entry does not expect (still failures).
    other_outcomes: list[tuple[Deviation, str, int, str]] = field(default_factory=list)
    #: (entry, nodeid, np, findings) of expected outcomes with findings the entry does not name
    #: (still failures).
    unnamed: list[tuple[Deviation, str, int, list[str]]] = field(default_factory=list)
    #: Entries about tests that were selected (or, in a full run, should exist) but never ran.
    stale: list[Deviation] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Lines that make the run fail."""
        lines = [
            f"deviation entry {entry.label} expects {'/'.join(sorted(entry.expect))} but "
            f'{nodeid} passed at np={np}: remove the entry, or mark it flaky = "why"'
            for entry, nodeid, np in self.strict_passes
        ]
        for entry, nodeid, np, found in self.unnamed:
            shown = "; ".join(found[:5]) + (
                f"; ... ({len(found) - 5} more)" if len(found) > 5 else ""
            )
            lines.append(
                f"{nodeid} at np={np}: deviation entry {entry.label} excuses findings matching "
                f"/{entry.match}/, not {len(found)} other finding(s) of the same test: {shown}"
            )
        return lines

    def warnings(self) -> list[str]:
        """Lines reported without failing the run."""
        lines = [
            f"deviation entry {entry.label} expects {'/'.join(sorted(entry.expect))}, but "
            f"{nodeid} ended {outcome} at np={np}: not excused"
            for entry, nodeid, np, outcome in self.other_outcomes
        ]
        lines += [
            f"deviation entry {entry.label} (np {sorted(entry.np) if entry.np else 'any'}) "
            "matched no test that ran"
            for entry in self.stale
        ]
        return lines


def apply(
    records: Iterable[MutableMapping[str, Any]],
    deviations: Iterable[Deviation],
    collected: Mapping[int, Iterable[str]] | None = None,
    *,
    scope: str = "all",
) -> Applied:
    """Mark records covered by ``deviations`` (see the module contract).

    ``collected`` maps rank count -> the node ids selected for it. An entry none of whose tests
    has a record at any of its rank counts is stale when one of its tests was selected, or when
    none of its tests exists and ``scope`` says the entry was in reach: ``"all"`` (a full run),
    ``"files"`` (paths were given: entries about the selected files), ``"selected"`` (-k/-m:
    only entries whose tests were selected).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
    entries = [d for d in deviations if d.tests]
    applied = Applied()
    used: set[int] = set()
    for record in records:
        nodeid, np = record["nodeid"], int(record["np"])
        for i, entry in enumerate(entries):
            if entry.covers(nodeid, np):
                used.add(i)
                _mark(record, entry, applied)
                break
    selected = {(np, nodeid) for np, ids in (collected or {}).items() for nodeid in ids}
    everything = {nodeid for _, nodeid in selected}
    files = {nodeid.split("::", 1)[0] for nodeid in everything}
    for i, entry in enumerate(entries):
        if i in used:
            continue
        chosen = any(entry.covers(nodeid, np) for np, nodeid in selected)
        missing = not (set(entry.tests) & everything)
        in_reach = scope == "all" or (
            scope == "files" and any(t.split("::", 1)[0] in files for t in entry.tests)
        )
        if chosen or (missing and in_reach):
            applied.stale.append(entry)
    return applied


def _mark(record: MutableMapping[str, Any], entry: Deviation, applied: Applied) -> None:
    outcome = outcome_of(record)
    value = outcome.value if outcome is not None else str(record.get("outcome"))
    if entry.expects(value):
        unnamed = entry.unnamed(record)
        if unnamed:
            applied.unnamed.append((entry, record["nodeid"], int(record["np"]), unnamed))
        else:
            record["deviation"] = entry.describe()
    elif value in PASSING_OUTCOMES:
        record["deviation_passed"] = entry.describe()
        if not entry.flaky:
            applied.strict_passes.append((entry, record["nodeid"], int(record["np"])))
    elif value in FAILING_OUTCOMES:
        applied.other_outcomes.append((entry, record["nodeid"], int(record["np"]), value))


def excused_features(deviations: Iterable[Deviation]) -> dict[str, Deviation]:
    """Feature id -> the entry that excuses declaring that core feature unsupported."""
    return {d.feature: d for d in deviations if d.feature}


def expected_hangs(deviations: Iterable[Deviation], np: int) -> list[str]:
    """Node ids an entry expects to hang on ``np`` ranks (``expect`` includes ``hang``), in file
    order, each once: the runner gives them a short deadline of their own."""
    found: dict[str, None] = {}
    for entry in deviations:
        if entry.expects(Outcome.HUNG.value):
            found.update((t, None) for t in entry.tests if entry.covers(t, np))
    return list(found)
