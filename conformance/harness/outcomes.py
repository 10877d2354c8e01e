"""Collective outcomes: turning every rank's report of one test phase into one verdict.

After each phase (setup, call, teardown) the ranks exchange their local outcomes and all adopt the
combined one, so they agree on whether to run the next phase and a failure anywhere fails the test
everywhere. Rules (``combine``):

- any rank failed -> failed, naming the failing ranks, each one's traceback shown once; the failure
  is ``wrong`` (a wrong result: every failing rank raised an AssertionError, which the collective
  helpers' failures are) or ``error`` (some rank raised anything else);
- every rank skipped -> skipped; only some skipped -> failed (a skip must be collective, or the
  ranks that go on block in the data plane);
- any rank xfailed -> xfailed; any rank xpassed -> xpassed; else passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from conformance.records import Outcome

PASSED, FAILED, SKIPPED, XFAILED, XPASSED = "passed", "failed", "skipped", "xfailed", "xpassed"


@dataclass(frozen=True)
class RankOutcome:
    """One rank's outcome of one phase, as exchanged over the control plane."""

    outcome: str
    message: str = ""
    longrepr: str = ""
    duration: float = 0.0
    wasxfail: str = ""
    # The ranks a collective failure blames (collective_assert names the ranks where the condition
    # was false, though it fails everywhere); None: this rank itself.
    blamed: tuple[int, ...] | None = None
    # For a failure: "wrong" (an AssertionError) or "error" (any other exception).
    failure: str = ""


@dataclass(frozen=True)
class Verdict:
    """The outcome all ranks adopt for one phase."""

    outcome: str
    failing_ranks: list[int] = field(default_factory=list)
    message: str = ""
    longrepr: str = ""
    duration: float = 0.0
    wasxfail: str = ""
    failure: str = ""  # "wrong" or "error" when the outcome is failed


@dataclass(frozen=True)
class CrashLocation:
    """Where the failure is reported (pytest's short summary reads ``reprcrash.message``)."""

    path: str
    lineno: int
    message: str


class CollectiveRepr:
    """A failure representation combining the ranks' tracebacks, for pytest's reporters."""

    def __init__(self, text: str, crash: CrashLocation) -> None:
        self.text = text
        self.reprcrash = crash

    def toterminal(self, tw: Any) -> None:
        for line in self.text.splitlines():
            tw.line(line)

    def __str__(self) -> str:
        return self.text


def local_outcome(report: pytest.TestReport, error: BaseException | None = None) -> RankOutcome:
    """This rank's outcome of one phase, from pytest's report and the exception it caught (an
    exception with a ``failing_ranks`` attribute blames those ranks rather than this one)."""
    wasxfail = getattr(report, "wasxfail", None)
    if wasxfail is not None:
        outcome = XFAILED if report.skipped else XPASSED if report.passed else FAILED
    else:
        outcome = report.outcome
    return RankOutcome(
        outcome=outcome,
        message=_one_line(report),
        longrepr=report.longreprtext if outcome == FAILED else "",
        duration=float(report.duration),
        wasxfail=wasxfail or "",
        blamed=_blamed(error) if outcome == FAILED else None,
        failure=_failure_kind(error) if outcome == FAILED else "",
    )


def _failure_kind(error: BaseException | None) -> str:
    """An assertion means the backend's result was wrong; anything else is an error it raised
    (a skip on some ranks, a desync or a harness failure included)."""
    return Outcome.WRONG.value if isinstance(error, AssertionError) else Outcome.ERROR.value


def _blamed(error: BaseException | None) -> tuple[int, ...] | None:
    ranks = getattr(error, "failing_ranks", None)
    if not isinstance(ranks, (list, tuple)) or not ranks:
        return None
    return tuple(int(rank) for rank in ranks)


def _one_line(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])  # a skip: (path, lineno, reason)
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message).strip().partition("\n")[0]
    lines = str(longrepr).strip().splitlines()
    return lines[-1] if lines else ""


def combine(outcomes: list[RankOutcome]) -> Verdict:
    """The verdict every rank adopts, given each rank's outcome (index = rank)."""
    size = len(outcomes)
    duration = max((o.duration for o in outcomes), default=0.0)
    kinds = [o.outcome for o in outcomes]
    failed = [rank for rank, kind in enumerate(kinds) if kind == FAILED]
    if failed:
        blamed = sorted({r for rank in failed for r in (outcomes[rank].blamed or (rank,))})
        wrong = all(outcomes[rank].failure == Outcome.WRONG.value for rank in failed)
        return Verdict(
            FAILED,
            blamed,
            _failure_message(outcomes, failed, blamed),
            _failure_text(outcomes, failed, blamed),
            duration,
            failure=Outcome.WRONG.value if wrong else Outcome.ERROR.value,
        )
    skipped = [rank for rank, kind in enumerate(kinds) if kind == SKIPPED]
    if skipped and len(skipped) == size:
        return Verdict(SKIPPED, [], outcomes[0].message, "", duration)
    if skipped:
        ran = [rank for rank in range(size) if rank not in skipped]
        reason = outcomes[skipped[0]].message
        message = (
            f"skipped on ranks {skipped} but not on ranks {ran} ({reason}); "
            "a skip must happen on every rank"
        )
        return Verdict(FAILED, skipped, message, message, duration, failure=Outcome.ERROR.value)
    for kind in (XFAILED, XPASSED):
        marked = [o for o in outcomes if o.outcome == kind]
        if marked:
            return Verdict(kind, [], marked[0].message, "", duration, marked[0].wasxfail)
    return Verdict(PASSED, [], "", "", duration)


def _headline(failed: list[int], blamed: list[int], size: int) -> str:
    text = f"failed on ranks {blamed} of {size}"
    if blamed != failed:
        text += f" (raised on ranks {failed})"
    return text


def _failure_message(outcomes: list[RankOutcome], failed: list[int], blamed: list[int]) -> str:
    first = outcomes[failed[0]].message
    if len(outcomes) == 1:
        return first
    return f"{_headline(failed, blamed, len(outcomes))}: {first}"


def _failure_text(outcomes: list[RankOutcome], failed: list[int], blamed: list[int]) -> str:
    size = len(outcomes)
    if size == 1:
        return outcomes[0].longrepr
    # A collective failure raises the same error on every rank: show its traceback once, for the
    # first of the ranks that share its message.
    groups: dict[str, list[int]] = {}
    for rank in failed:
        groups.setdefault(outcomes[rank].message, []).append(rank)
    sections = [_headline(failed, blamed, size)]
    for ranks in groups.values():
        shown = (
            f"rank {ranks[0]}"
            if len(ranks) == 1
            else f"ranks {ranks} (same error; rank {ranks[0]} shown)"
        )
        sections.append(f"{'-' * 30} {shown} {'-' * 30}")
        sections.append(outcomes[ranks[0]].longrepr.rstrip() or outcomes[ranks[0]].message)
    return "\n".join(sections)


def apply(report: pytest.TestReport, verdict: Verdict, size: int) -> None:
    """Make this rank's report show the collective verdict."""
    report.duration = verdict.duration
    if hasattr(report, "wasxfail") and verdict.outcome not in (XFAILED, XPASSED):
        del report.wasxfail
    if verdict.outcome == FAILED:
        report.outcome = "failed"
        if size > 1 or not report.failed:
            path, lineno = _location(report)
            report.longrepr = CollectiveRepr(
                verdict.longrepr, CrashLocation(path, lineno, verdict.message)
            )
    elif verdict.outcome == SKIPPED:
        report.outcome = "skipped"
        if not isinstance(report.longrepr, tuple):
            path, lineno = _location(report)
            report.longrepr = (path, lineno, verdict.message)
    elif verdict.outcome == XFAILED:
        report.outcome = "skipped"
        report.wasxfail = verdict.wasxfail
    elif verdict.outcome == XPASSED:
        report.outcome = "passed"
        report.wasxfail = verdict.wasxfail
    else:
        report.outcome = "passed"


def _location(report: pytest.TestReport) -> tuple[str, int]:
    path, lineno, _ = report.location
    return str(path), (lineno or 0) + 1


def summarize(verdicts: dict[str, Verdict]) -> dict[str, Any]:
    """The results-file fields of one test from its phases' verdicts: outcome (a failed call is
    ``wrong`` or ``error`` by what was raised; a setup or teardown failure is ``error``), the
    failing phase (``phase``: setup, call or teardown, only when one failed), failing ranks,
    message, longrepr, duration."""
    setup, call, teardown = (verdicts.get(when) for when in ("setup", "call", "teardown"))
    outcome: str
    phase: str | None = None  # the phase that failed, when one did
    if setup is not None and setup.outcome == FAILED:
        outcome, phase = Outcome.ERROR.value, "setup"
    elif call is None:
        outcome = setup.outcome if setup is not None else Outcome.ERROR.value
    elif call.outcome == FAILED:
        outcome, phase = call.failure or Outcome.ERROR.value, "call"
    elif teardown is not None and teardown.outcome == FAILED:
        outcome, phase = Outcome.ERROR.value, "teardown"
    else:
        outcome = call.outcome
    failing = sorted({rank for v in verdicts.values() for rank in v.failing_ranks})
    failed = [v for v in verdicts.values() if v.outcome == FAILED]
    message = (
        failed[0].message
        if failed
        else next((v.message for v in verdicts.values() if v.message), "")
    )
    return {
        "outcome": outcome,
        "failing_ranks": failing,
        "message": message,
        "longrepr": "\n\n".join(v.longrepr for v in failed),
        "duration": sum(v.duration for v in verdicts.values()),
        **({"phase": phase} if phase else {}),
    }
