"""When a test job can no longer be trusted: runs inside every rank (the plugin asks after each
test) and is read by the runner outside (the exit status and the job-end mark).

Contract (``python -m conformance run --isolate=auto|always|never``; plain pytest: ``never``):

- ``always``: every test ends its job; the runner starts the next one in a fresh job.
- ``auto``: the robust tests run after every other test (so nothing they leave behind can reach a
  core test), and a test ends its job when it may have left state behind: a robust test that did
  not pass, any test marked ``leaves_state``, and every robust test (not skipped) of a backend
  that declares no cross-rank agreement checks (``Capabilities.agreement_checks`` False: a
  mismatched collective that "passes" there can still leave stray bytes in the backend's streams).
- ``never``: one job runs every test it can.
- A job ended this way exits with :data:`EXIT_ISOLATED` after recording the test; the runner
  resumes with a fresh job. A hung or crashed test ends its job anyway.
- A test that ends the job on purpose (a fault-injection test killing a rank under a launcher that
  then ends every rank) first prints :data:`JOB_END_MARK` followed by its node id and the time, so
  the runner can tell an expected job end from a crash.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

MODES: tuple[str, ...] = ("auto", "always", "never")
#: Exit status of a job that stopped after a test it could no longer be trusted past.
EXIT_ISOLATED = 7
#: Marker: the test may leave backend state behind whatever its outcome.
LEAVES_STATE = "leaves_state"
MARKER_HELP = (
    f"{LEAVES_STATE}: the test may leave backend state behind; "
    "under --isolate=auto the next test gets a fresh job"
)
#: Printed (with the node id and ``time.time()``) by a test about to end its job on purpose.
JOB_END_MARK = "conformance: this test ends the job on purpose:"
#: Outcomes after which a robust test's job is still trusted.
TRUSTED_OUTCOMES = frozenset({"passed", "skipped", "xfailed", "xpassed", "unsupported"})


class _Marked(Protocol):
    def iter_markers(self, name: str | None = None) -> Iterable[Any]: ...


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`; ValueError naming them otherwise."""
    if mode not in MODES:
        raise ValueError(f"isolation mode must be one of {list(MODES)}, not {mode!r}")
    return mode


def run_order(items: Sequence[Any], level_of: Any) -> list[Any]:
    """``items`` with the robust tests moved after the others (stable otherwise)."""
    return sorted(items, key=lambda item: level_of(item) == "robust")


def ends_job(
    mode: str,
    level: str | None,
    outcome: str | None,
    item: _Marked,
    agreement_checks: bool = True,
) -> bool:
    """Whether the job must end after a test of ``level`` that ended with ``outcome``."""
    if mode == "always":
        return True
    if mode != "auto":
        return False
    if any(True for _ in item.iter_markers(name=LEAVES_STATE)):
        return True
    if level != "robust" or outcome == "skipped":  # a skipped test moved no data
        return False
    return not agreement_checks or str(outcome) not in TRUSTED_OUTCOMES


def job_end_line(nodeid: str, when: float, **fields: str | None) -> str:
    """The line a test prints before ending its job on purpose (``fields``: level, tier, rule)."""
    extra = "".join(f" {key}={value}" for key, value in sorted(fields.items()) if value)
    return f"{JOB_END_MARK} {nodeid} at {when:.3f}{extra}"


def expected_job_end(output: str, nodeid: str) -> tuple[float, dict[str, str]] | None:
    """When a test announced ending its job on purpose in ``output``, and its fields, or None."""
    found = None
    for line in output.splitlines():
        at = line.find(JOB_END_MARK)
        if at < 0:
            continue
        rest = line[at + len(JOB_END_MARK) :].split()
        if len(rest) < 3 or rest[0] != nodeid or rest[1] != "at":
            continue
        try:
            when = float(rest[2])
        except ValueError:
            continue
        found = when, dict(part.split("=", 1) for part in rest[3:] if "=" in part)
    return found


def announced_tests(output: str) -> list[str]:
    """Node ids of the tests that announced ending their job in ``output``, in order."""
    found = []
    for line in output.splitlines():
        at = line.find(JOB_END_MARK)
        if at >= 0:
            rest = line[at + len(JOB_END_MARK) :].split()
            if rest:
                found.append(rest[0])
    return found
