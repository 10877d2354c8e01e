"""The results file: the contract between the plugin (inside rank 0 of a job) and everything that
reads a run's results outside it (runner, reports, deviations, selftest).

One JSON object per line. The first line a session writes is its header (``kind = "session"``:
the backend, its version, its declared capabilities, the world size); then one ``kind = "test"``
record per finished test. Every line carries ``schema`` (:data:`SCHEMA_VERSION`).

A test record (:class:`TestRecord`) is built by :func:`make_record` only and read back by
:func:`read_records` only; the header by :func:`make_session` / :func:`read_session`.
Outcomes are :class:`Outcome` values (a ``str`` enum, so a record compares and serialises as
plain strings).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any, TypedDict

#: Version of the line format; a reader accepts this and version 1 (no ``schema`` field).
SCHEMA_VERSION = 2


class Outcome(str, Enum):
    """What happened to one test (on one rank count), agreed by every rank."""

    PASSED = "passed"
    #: An assertion failed in the test's call: the backend gave a wrong result.
    WRONG = "wrong"
    #: Any other exception in the call, or setup/teardown failed: the backend raised.
    ERROR = "error"
    #: The test checked only features the backend declares unsupported, and each raised as the
    #: manifest names (type and message, on every rank, within the deadline).
    UNSUPPORTED = "unsupported"
    SKIPPED = "skipped"
    XFAILED = "xfailed"
    XPASSED = "xpassed"
    #: No progress within the deadline (``stacks`` holds every rank's stack when the plugin saw it).
    HUNG = "hung"
    #: The job ended during the test (``crash`` names the rank and signal when known).
    CRASHED = "crashed"

    def __str__(self) -> str:
        return self.value


#: Outcomes that make a run fail unless a deviation expects them.
BAD_OUTCOMES = frozenset({Outcome.WRONG, Outcome.ERROR, Outcome.HUNG, Outcome.CRASHED})
#: Outcomes in which the test's rule held.
GOOD_OUTCOMES = frozenset({Outcome.PASSED, Outcome.UNSUPPORTED, Outcome.XPASSED})
#: Schema-1 names read as their schema-2 outcome.
_LEGACY = {"failed": Outcome.WRONG}

#: How a failure message marks each finding of a spec test (``conformance.specs.calls.settle``
#: writes one line per finding): readers outside the job (deviations) split a failure into its
#: findings by this tag, so an entry can excuse some findings of a test and not others.
FINDING_TAG = "[finding]"
#: How many findings one failure lists; past it one more finding line says how many were left out
#: (a finding no deviation names, so a failure that long is never excused whole).
MAX_FINDINGS = 200
_FINDING_LINE = re.compile(re.escape(FINDING_TAG) + r" (.*)")
# pytest's lines of an exception's text in a traceback ("E   text").
_ERROR_LINE = re.compile(r"^E {2,}(.*)$", re.MULTILINE)


def format_findings(found: list[str]) -> str:
    """The tagged lines of ``found`` (at most :data:`MAX_FINDINGS`, then one line naming how
    many more there were), each finding's own line breaks folded so one line is one finding."""
    shown = [" ".join(str(f).split()) for f in found[:MAX_FINDINGS]]
    if len(found) > MAX_FINDINGS:
        shown.append(f"{len(found) - MAX_FINDINGS} more findings not shown")
    return "".join(f"\n{FINDING_TAG} {line}" for line in shown)


def findings_of(record: Mapping[str, Any]) -> list[str]:
    """The findings a failed test record reports, each once, in order: its tagged finding lines
    (from ``longrepr``, which holds every rank's full failure text, else ``message``). A failure
    with no tagged line is one finding: the text of the exceptions in its traceback (pytest's
    ``E`` lines, never the test's source), else its message."""
    seen: dict[str, None] = {}
    for field_name in ("longrepr", "message"):
        for match in _FINDING_LINE.finditer(str(record.get(field_name) or "")):
            seen.setdefault(match[1].strip(), None)
        if seen:
            return list(seen)
    raised = _ERROR_LINE.findall(str(record.get("longrepr") or ""))
    text = "\n".join(line.rstrip() for line in raised).strip()
    text = text or str(record.get("message") or "").strip()
    return [text] if text else []


class TestRecord(TypedDict, total=False):
    """One test's result. The plugin writes the first group; the runner adds the second."""

    schema: int
    kind: str
    nodeid: str
    outcome: str
    phase: str  # setup, call or teardown: the phase that failed (failures only)
    failing_ranks: list[int]
    message: str
    longrepr: str
    duration: float | None
    level: str | None
    tier: str | None
    area: str | None
    rule: str | None  # "op/rule-id" of the test's spec mark: the manifest holds its text
    seed: int | None
    world_size: int
    backend: str
    stacks: dict[str, str]
    unsupported: list[str]
    crash: dict[str, int | None]
    # -- added outside the job --
    np: int
    order: int
    reproduce: str
    output: str
    rank_output: dict[str, str]
    rank_logs: dict[str, str]
    source: str
    deviation: str
    deviation_passed: str


class SessionRecord(TypedDict, total=False):
    """The header a session writes before its first test."""

    schema: int
    kind: str
    backend: str
    backend_name: str
    backend_version: str
    capabilities: dict[str, Any]
    declared: list[dict[str, Any]]
    load_error: str
    world_size: int
    # When rank 0's harness was configured and when every rank had collected (``time.time()``):
    # how the runner splits a job's time (``conformance.run.jobtime``).
    started_at: float
    collected_at: float


_FIELDS = frozenset(TestRecord.__annotations__)
_REQUIRED = ("nodeid", "outcome")


def make_record(nodeid: str, outcome: Outcome | str, **fields: Any) -> TestRecord:
    """The one constructor of a test record; raises ValueError on an unknown outcome or field."""
    unknown = set(fields) - _FIELDS
    if unknown:
        raise ValueError(f"unknown record fields {sorted(unknown)}; known: {sorted(_FIELDS)}")
    record: dict[str, Any] = {"failing_ranks": [], "message": "", "longrepr": ""}
    record.update(fields)
    record.update(schema=SCHEMA_VERSION, kind="test", nodeid=nodeid, outcome=Outcome(outcome).value)
    return record  # type: ignore[return-value]


def make_session(**fields: Any) -> SessionRecord:
    """The session header (fields of :class:`SessionRecord`)."""
    unknown = set(fields) - set(SessionRecord.__annotations__)
    if unknown:
        raise ValueError(f"unknown session fields {sorted(unknown)}")
    return {**fields, "schema": SCHEMA_VERSION, "kind": "session"}  # type: ignore[typeddict-item]


def outcome_of(record: TestRecord | dict[str, Any]) -> Outcome | None:
    """The record's outcome as an :class:`Outcome` (None when missing or unknown)."""
    value = record.get("outcome")
    if value in _LEGACY:
        return _LEGACY[str(value)]
    try:
        return Outcome(value)
    except ValueError:
        return None


class ResultsFile:
    """Appends records to one file; each line is flushed and synced when written, so a job that
    is killed right after a test still leaves that test's record."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the watchdog thread writes the hung record

    def write(self, record: TestRecord | SessionRecord) -> None:
        """Append one record (a JSON object on one line)."""
        if record.get("kind") == "test" and outcome_of(record) is None:
            raise ValueError(f"record outcome {record.get('outcome')!r} is not an Outcome")
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as stream:
            stream.write(line)
            stream.flush()
            os.fsync(stream.fileno())


def _lines(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    # A torn last line (a job killed mid-write) is skipped.
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            value = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def read_records(path: str | os.PathLike[str]) -> list[TestRecord]:
    """The test records of a results file, in order (a missing file has none). Schema-1 records
    are upgraded (``failed`` reads as ``wrong``)."""
    records: list[TestRecord] = []
    for value in _lines(path):
        if value.get("kind", "test") != "test" or "nodeid" not in value:
            continue
        outcome = outcome_of(value)
        if outcome is not None:
            value["outcome"] = outcome.value
        value.setdefault("schema", 1)
        records.append(value)  # type: ignore[arg-type]
    return records


def read_session(path: str | os.PathLike[str]) -> SessionRecord | None:
    """The last session header of a results file (a resumed rank count has one per job)."""
    headers = [v for v in _lines(path) if v.get("kind") == "session"]
    return headers[-1] if headers else None  # type: ignore[return-value]
