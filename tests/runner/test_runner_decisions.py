"""The runner's decision after a job ends (``runner.after_job``), case by case, and the
isolation rule the plugin applies after each test (``harness.isolation.ends_job``)."""

from __future__ import annotations

import pytest

from conformance.harness import isolation
from conformance.run.runner import EXIT_HUNG, EXIT_ISOLATED, Action, JobEnd, after_job

CASES = [
    # status, killed, new, remaining, hung, hung_outside -> action
    (JobEnd(0, new=5), Action.DONE),
    (JobEnd(1, new=5), Action.DONE),
    (JobEnd(5, new=0, remaining=3), Action.GIVE_UP),  # collected nothing
    (JobEnd(2, new=0, remaining=3), Action.GIVE_UP),  # usage error: a relaunch ends the same
    (JobEnd(4, new=0, remaining=3), Action.GIVE_UP),  # ranks collected different tests
    (JobEnd(2, new=1, remaining=3), Action.BLAME),  # stopped mid-run for no stated reason
    (JobEnd(EXIT_HUNG, new=1, remaining=3, hung=True), Action.RESUME),
    (JobEnd(EXIT_HUNG, new=1, remaining=0, hung=True), Action.DONE),
    (JobEnd(EXIT_HUNG, new=1, remaining=3, hung=True, hung_outside=True), Action.GIVE_UP),
    (JobEnd(EXIT_HUNG, new=0, remaining=3), Action.BLAME),  # status 3 without a hung record
    (JobEnd(EXIT_ISOLATED, new=1, remaining=3), Action.RESUME),
    (JobEnd(EXIT_ISOLATED, new=1, remaining=0), Action.DONE),
    (JobEnd(EXIT_ISOLATED, new=0, remaining=3), Action.BLAME),  # 7 from a crash, not the plugin
    (JobEnd(None, killed=True, new=0, remaining=3), Action.BLAME),
    (JobEnd(0, killed=True, new=2, remaining=0), Action.DONE),
    (JobEnd(0, new=2, remaining=3), Action.BLAME),  # MPI_Abort can exit 0
    (JobEnd(-9, new=0, remaining=3), Action.BLAME),
    (JobEnd(1, new=0, remaining=0), Action.DONE),
]


@pytest.mark.parametrize(("end", "expected"), CASES)
def test_after_job(end: JobEnd, expected: Action) -> None:
    action, reason = after_job(end)
    assert action is expected, (end, reason)
    assert reason


class _Item:
    def __init__(self, *marks: str) -> None:
        self.marks = marks

    def iter_markers(self, name: str | None = None) -> list[str]:
        return [m for m in self.marks if name is None or m == name]


@pytest.mark.parametrize(
    ("mode", "level", "outcome", "marks", "checks", "ends"),
    [
        ("never", "robust", "wrong", (), True, False),
        ("always", "core", "passed", (), True, True),
        ("auto", "core", "wrong", (), True, False),  # a core failure leaves nothing behind
        ("auto", "robust", "passed", (), True, False),
        ("auto", "robust", "wrong", (), True, True),
        ("auto", "robust", "error", (), True, True),
        ("auto", "robust", "skipped", (), True, False),
        ("auto", "robust", "unsupported", (), True, False),
        ("auto", "robust", "passed", (), False, True),  # no cross-rank checks: stray bytes
        ("auto", "robust", "skipped", (), False, False),  # skipped: no data moved
        ("auto", "core", "passed", ("leaves_state",), True, True),
        ("auto", None, None, (), True, False),
    ],
)
def test_ends_job(mode, level, outcome, marks, checks, ends) -> None:
    assert isolation.ends_job(mode, level, outcome, _Item(*marks), checks) is ends


def test_robust_tests_run_last_in_order() -> None:
    items = ["c1", "r1", "c2", "r2", "i1"]
    levels = {"c1": "core", "c2": "core", "r1": "robust", "r2": "robust", "i1": "impl_defined"}
    assert isolation.run_order(items, levels.get) == ["c1", "c2", "i1", "r1", "r2"]


def test_unknown_mode_is_named() -> None:
    with pytest.raises(ValueError, match="auto"):
        isolation.check_mode("sometimes")
