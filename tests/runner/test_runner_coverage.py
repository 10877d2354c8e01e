"""Rule coverage: a level reads PASS only when each of its rules held at each rank count where it
applies (conformance/run/coverage.py, RunSummary.level_verdict)."""

from __future__ import annotations

from conformance.run import coverage, reports

LEVELS = {"all_sum/values": "core", "all_sum/sizes": "core", "send/values": "core"}


def rec(rule: str, np: int, outcome: str = "passed", **extra) -> dict:
    return {"nodeid": f"t.py::{rule}", "np": np, "outcome": outcome, "rule": rule, **extra}


def test_statuses_held_excused_not_applicable_and_not_covered() -> None:
    records = [
        rec("all_sum/values", 1),
        rec("all_sum/values", 2, "unsupported"),
        rec("all_sum/sizes", 1, "skipped"),
        rec("all_sum/sizes", 2, "wrong", deviation="known"),
        rec("send/values", 1, "skipped"),
        rec("send/values", 2, "skipped"),
        rec("send/values", 2, "xfailed"),
    ]
    table = coverage.rule_coverage(records, [1, 2, 3], levels=LEVELS)
    assert table["all_sum/values"] == {1: "held", 2: "held", 3: "not covered"}
    assert table["all_sum/sizes"] == {1: "n/a", 2: "excused", 3: "not covered"}
    assert table["send/values"] == {1: "n/a", 2: "not covered", 3: "not covered"}


def test_a_partial_run_shows_only_the_rules_it_cited() -> None:
    table = coverage.rule_coverage([rec("all_sum/values", 2)], [2], complete=False, levels=LEVELS)
    assert table == {"all_sum/values": {2: "held"}}


def _summary(records: list[dict], complete: bool = False) -> reports.RunSummary:
    for r in records:
        r.setdefault("level", "core")
    return reports.RunSummary(backend="b", nps=[2, 3], records=records, complete=complete)


def test_a_rule_that_did_not_hold_at_one_rank_count_is_a_gap() -> None:
    # Passed at 2 ranks, failed (xfail) at 3: core cannot read PASS.
    gap = _summary(
        [
            rec("all_sum/values", 2),
            rec("all_sum/values", 3, "xfailed"),
            rec("all_sum/sizes", 2),
            rec("all_sum/sizes", 3),
        ]
    )
    word, _ = gap.level_verdict("core")
    assert word == "NOT COVERED"
    assert gap.coverage_gaps("core") == [("all_sum/values", [3])]
    assert gap.verdict() == "NOT COVERED"
    text = reports.markdown(gap)
    assert "## Rule coverage" in text and "`all_sum/values` at np=3" in text
    # Skipped at 3 ranks (the spec's own decision): n/a there, and core passes.
    ok = _summary([rec("all_sum/values", 2), rec("all_sum/values", 3, "skipped")])
    assert ok.level_verdict("core")[0] == "PASS"


def test_a_complete_run_needs_every_manifest_rule_of_the_level() -> None:
    only_one = _summary([rec("all_sum/values", 2), rec("all_sum/values", 3)], complete=True)
    word, _ = only_one.level_verdict("core")
    assert word == "NOT COVERED"
    assert (
        len(only_one.coverage_gaps("core"))
        == len([r for r, lv in coverage.manifest_levels().items() if lv == "core"]) - 1
    )


def test_the_skip_inside_ops_pattern_cannot_read_pass() -> None:
    """What a backend that skipped past 1024 elements left before the guard made such skips
    errors: one small passing test, the size sweep skipped at one rank count and run at another."""
    records = [
        rec("all_sum/values", 2),
        rec("all_sum/values", 3),
        rec("all_sum/sizes", 2, "skipped"),
        rec("all_sum/sizes", 3, "xfailed"),
    ]
    assert _summary(records).level_verdict("core")[0] == "NOT COVERED"
