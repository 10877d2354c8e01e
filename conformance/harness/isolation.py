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
  resumes with a fresh job. A hung or crashed test ends its job anyway, and so does a kill test
  (its survivors leave with this status, ``conformance.harness.survivors``).
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
