"""Where a run's time went: each MPI job's start, collection, tests and teardown.

Contract:

- The plugin stamps its session header with ``started_at`` (the harness configured: the
  interpreter started, pytest and the plugin imported, MPI initialised) and ``collected_at``
  (every rank collected the same tests and the backend is loaded), both ``time.time()`` on
  rank 0.
- The runner notes where the results file ended and the wall-clock time when it launches a job;
  after the job, :func:`measure` reads what the job appended and splits the job's wall time into
  ``start`` (launch to configured: ``mpiexec``, interpreters, imports, MPI), ``collection``
  (with loading the backend),
  ``tests`` (collected to the last record written: the results file's modification time) and
  ``teardown`` (last record to the job's end: session end, log gathering, MPI finalisation,
  the launcher's exit; none for a job that recorded no test: the test that ended it ran to its
  end). A job that wrote no header (it died before collection) counts wholly as ``start``.
- :func:`markdown` and :func:`terminal_line` show the per-job figures and their totals.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PHASES = ("start", "collection", "tests", "teardown")


@dataclasses.dataclass
class JobTiming:
    """The phases of one job, in seconds of wall time."""

    np: int
    attempt: int
    start: float = 0.0
    collection: float = 0.0
    tests: float = 0.0
    teardown: float = 0.0
    #: Tests the job recorded.
    ran: int = 0
    #: When it was launched (``time.time()``): jobs of different rank counts overlap.
    launched_at: float = 0.0

    @property
    def total(self) -> float:
        return self.start + self.collection + self.tests + self.teardown

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in vars(self).items()}


def results_size(path: Path) -> int:
    """Bytes in the results file now (0 when missing): the offset a job's lines start at."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def measure(
    np: int, attempt: int, results: Path, offset: int, launched_at: float, ended_at: float
) -> JobTiming:
    """The phases of the job launched at ``launched_at`` (``time.time()``) that ended at
    ``ended_at`` and appended to ``results`` from byte ``offset``."""
    timing = JobTiming(np, attempt, launched_at=launched_at)
    header: dict[str, Any] = {}
    try:
        with open(results, "rb") as f:
            f.seek(offset)
            appended = f.read().decode("utf-8", errors="replace")
        last_write = os.stat(results).st_mtime
    except OSError:
        appended, last_write = "", launched_at
    for line in appended.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn last line (a job killed mid-write)
        if entry.get("kind") == "session" and not header:
            header = entry
        elif entry.get("kind") == "test":
            timing.ran += 1
    started, collected = header.get("started_at"), header.get("collected_at")
    if not isinstance(started, (int, float)) or not isinstance(collected, (int, float)):
        timing.start = max(0.0, ended_at - launched_at)
        return timing

    # Clamp into [launch, end]: rank 0's clock and the runner's are the same host's here, but
    # a job on another host may disagree by a little.
    def at(t: float) -> float:
        return min(max(t, launched_at), ended_at)

    started, collected = at(started), at(collected)
    # No record: the test that ended the job (a kill, a crash the runner records) ran to the end.
    last = at(last_write) if timing.ran else ended_at
    timing.start = started - launched_at
    timing.collection = max(0.0, collected - started)
    timing.tests = max(0.0, last - collected)
    timing.teardown = max(0.0, ended_at - last)
    return timing


def totals(timings: Sequence[JobTiming]) -> dict[str, float]:
    """Seconds per phase over ``timings``."""
    return {phase: sum(getattr(t, phase) for t in timings) for phase in PHASES}


def markdown(timings: Sequence[JobTiming]) -> list[str]:
    """The report's "Where the time went" section: one row per job, then the totals."""
    if not timings:
        return []
    lines = [
        "",
        "## Where the time went",
        "",
        "Per MPI job: when it was launched (seconds after the first job), start (launch to the "
        "plugin configured: `mpiexec`, interpreters, imports, MPI), collection (and loading the "
        "backend), tests (to the last record), teardown (to the job's end), seconds. Jobs of "
        "different rank counts run side by side (`--max-ranks`), so the totals add up to more "
        "than the run's wall time.",
        "",
        "| np | job | launched | tests run | start | collection | tests | teardown | total |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    first = min(t.launched_at for t in timings)
    for t in sorted(timings, key=lambda t: (t.launched_at, t.np, t.attempt)):
        lines.append(
            f"| {t.np} | {t.attempt} | {t.launched_at - first:.1f} | {t.ran} | {t.start:.1f} "
            f"| {t.collection:.1f} | {t.tests:.1f} | {t.teardown:.1f} | {t.total:.1f} |"
        )
    sums = totals(timings)
    lines.append(
        f"| all | {len(timings)} | | {sum(t.ran for t in timings)} | {sums['start']:.1f} "
        f"| {sums['collection']:.1f} | {sums['tests']:.1f} | {sums['teardown']:.1f} "
        f"| {sum(sums.values()):.1f} |"
    )
    return lines


def terminal_line(timings: Sequence[JobTiming]) -> str:
    """One line: jobs and seconds per phase."""
    sums = totals(timings)
    return f"{len(timings)} jobs: " + ", ".join(f"{p} {sums[p]:.0f} s" for p in PHASES)
