"""Reports from fake records: classification, Markdown matrix, JSON records, JUnit XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from conformance.run import reports


def rec(nodeid: str, np: int, outcome: str, **extra: Any) -> dict[str, Any]:
    area = nodeid.split("::")[0].rsplit("test_", 1)[-1].removesuffix(".py")
    base = {
        "nodeid": nodeid,
        "np": np,
        "outcome": outcome,
        "failing_ranks": [],
        "message": "",
        "longrepr": "",
        "duration": 0.5,
        "level": "core",
        "area": area,
        "seed": 7,
        "reproduce": f"cd /x && mpiexec -n {np} python -m pytest {nodeid}",
    }
    base.update(extra)
    return base


def summary(records: list[dict[str, Any]], **kw: Any) -> reports.RunSummary:
    return reports.RunSummary(backend="fake", nps=[1, 2], records=records, total_per_np=3, **kw)


def test_classify_covers_every_outcome() -> None:
    assert reports.classify(rec("a", 1, "passed")) == "passed"
    assert reports.classify(rec("a", 1, "failed")) == "failed"
    assert reports.classify(rec("a", 1, "error")) == "failed"
    assert reports.classify(rec("a", 1, "hung")) == "hung"
    assert reports.classify(rec("a", 1, "crashed")) == "hung"
    assert reports.classify(rec("a", 1, "xfailed")) == "expected"
    assert reports.classify(rec("a", 1, "failed", deviation="bug")) == "expected"
    assert reports.classify(rec("a", 1, "xpassed")) == "xpassed"
    assert reports.classify(rec("a", 1, "passed", deviation_passed="bug")) == "xpassed"
    assert reports.classify(rec("a", 1, "skipped")) == "skipped"


def test_verdict_fails_only_on_unexpected_bad_outcomes_or_problems() -> None:
    fine = [rec("s/test_x.py::a", 1, "passed"), rec("s/test_x.py::b", 2, "xfailed")]
    assert summary(fine).ok
    excused = [*fine, rec("s/test_x.py::c", 2, "hung", deviation="known")]
    assert summary(excused).ok
    assert not summary([*fine, rec("s/test_x.py::c", 2, "crashed")]).ok
    assert not summary(fine, problems=["np=3: no tests ran"]).ok


def test_markdown_matrix_separates_levels_and_counts_per_rank_count() -> None:
    records = [
        rec("s/test_all_sum.py::a", 1, "passed"),
        rec("s/test_all_sum.py::a", 2, "failed", failing_ranks=[1], message="boom on 1"),
        rec("s/test_all_sum.py::b", 2, "passed"),
        rec("s/test_p2p.py::c", 2, "hung", level="robust"),
        rec("s/test_p2p.py::d", 1, "skipped", level="impl_defined"),
    ]
    text = reports.markdown(summary(records))
    assert "— FAIL" in text
    core = text.split("## core")[1].split("##")[0]
    assert "| all_sum | 1/1 | 1/2 F1 |" in core
    robust = text.split("## robust")[1].split("##")[0]
    assert "| p2p |  | 0/1 H1 |" in robust
    assert "## impl-defined" in text
    failures = text.split("## Failures")[1]
    assert "Failing ranks: 1" in failures
    assert "boom on 1" in failures
    assert "mpiexec -n 2 python -m pytest s/test_all_sum.py::a" in failures
    assert "s/test_p2p.py::c" in failures
    assert "s/test_all_sum.py::b" not in failures


def test_markdown_lists_unexpected_passes_and_observed_deviations() -> None:
    records = [
        rec("s/test_a.py::x", 1, "passed", deviation_passed="bug 1 (https://u/1)"),
        rec("s/test_a.py::y", 2, "failed", deviation="bug 2"),
    ]
    text = reports.markdown(summary(records, warnings=["deviation entry matches no test: 'z'"]))
    assert "— PASS" in text
    assert "## Unexpected passes" in text and "bug 1 (https://u/1)" in text
    assert "## Known deviations observed" in text and "bug 2" in text
    assert "matches no test" in text
    assert "## Failures" not in text


def test_json_has_one_record_per_test_and_rank_count(tmp_path: Path) -> None:
    records = [
        rec("s/test_a.py::x", 1, "passed"),
        rec("s/test_a.py::x", 2, "failed", failing_ranks=[0, 1], message="m"),
    ]
    paths = reports.write_all(summary(records), tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert {p.name for p in paths} == {"report.md", "report.json", "junit.xml"}
    assert data["ok"] is False
    assert data["totals"]["passed"] == 1 and data["totals"]["failed"] == 1
    by_np = {r["np"]: r for r in data["records"]}
    assert by_np[2]["failing_ranks"] == [0, 1]
    assert by_np[2]["seed"] == 7
    assert by_np[2]["reproduce"].startswith("cd /x && mpiexec -n 2")
    assert by_np[1]["class"] == "passed"


def test_junit_has_a_suite_per_rank_count_with_failures_errors_skips(tmp_path: Path) -> None:
    records = [
        rec("s/test_a.py::x", 1, "passed"),
        rec("s/test_a.py::x", 2, "failed", message="bad value\nmore"),
        rec("s/test_a.py::y", 2, "crashed", output="segfault"),
        rec("s/test_a.py::z", 2, "skipped", message="needs 3 ranks"),
    ]
    reports.write_all(summary(records), tmp_path)
    root = ET.parse(tmp_path / "junit.xml").getroot()
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"fake np=1", "fake np=2"}
    two = suites["fake np=2"]
    assert (two.get("tests"), two.get("failures"), two.get("errors"), two.get("skipped")) == (
        "3",
        "1",
        "1",
        "1",
    )
    failure = two.find("testcase[@name='x']/failure")
    assert failure is not None and failure.get("message") == "bad value"
    assert "Reproduce: cd /x && mpiexec -n 2" in (failure.text or "")
    error = two.find("testcase[@name='y']/error")
    assert error is not None and error.get("type") == "crashed"
    assert two.find("testcase[@name='y']/system-out").text == "segfault"
    assert two.find("testcase[@name='z']/skipped") is not None
