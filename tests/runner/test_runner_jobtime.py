"""Where a job's time went (conformance.run.jobtime): the phases split at the session header's
stamps and the results file's last write, from what the job appended."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conformance.run import jobtime


def _append(path: Path, *entries: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for entry in entries:
            f.write(json.dumps(entry) + "\n")


def test_phases_split_at_the_header_stamps_and_the_last_write(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    _append(results, {"kind": "session", "started_at": 1.0, "collected_at": 2.0})
    _append(results, {"kind": "test", "nodeid": "a"})  # an earlier job's lines
    offset = jobtime.results_size(results)
    _append(
        results,
        {"kind": "session", "started_at": 102.0, "collected_at": 105.0},
        {"kind": "test", "nodeid": "b"},
        {"kind": "test", "nodeid": "c"},
    )
    os.utime(results, (111.0, 111.0))  # the last record was written at 111
    t = jobtime.measure(2, 3, results, offset, launched_at=100.0, ended_at=112.5)
    assert (t.np, t.attempt, t.ran) == (2, 3, 2)
    assert (t.start, t.collection, t.tests, t.teardown) == pytest.approx((2.0, 3.0, 6.0, 1.5))
    assert t.total == pytest.approx(12.5)


def test_a_job_that_died_before_collection_is_all_start(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    t = jobtime.measure(4, 1, results, 0, launched_at=10.0, ended_at=14.0)
    assert (t.start, t.collection, t.tests, t.teardown, t.ran) == (4.0, 0.0, 0.0, 0.0, 0)


def test_report_rows_and_totals() -> None:
    jobs = [jobtime.JobTiming(1, 1, 1.0, 2.0, 30.0, 0.5, 300), jobtime.JobTiming(2, 2, 1.5, 0.5)]
    lines = jobtime.markdown(jobs)
    assert lines[-1] == "| all | 2 | | 300 | 2.5 | 2.5 | 30.0 | 0.5 | 35.5 |"
    assert jobtime.terminal_line(jobs) == (
        "2 jobs: start 2 s, collection 2 s, tests 30 s, teardown 0 s"
    )
    assert jobtime.markdown([]) == []


def test_rows_in_launch_order_with_the_offset_from_the_first_launch() -> None:
    jobs = [
        jobtime.JobTiming(4, 1, 1.0, 1.0, 10.0, 1.0, 300, launched_at=1000.0),
        jobtime.JobTiming(2, 2, 1.0, 1.0, 1.0, 1.0, 4, launched_at=1012.5),
        jobtime.JobTiming(2, 1, 1.0, 1.0, 5.0, 1.0, 300, launched_at=1000.2),
    ]
    rows = [line for line in jobtime.markdown(jobs) if line.startswith("| ") and "np" not in line]
    assert [row.split(" | ")[:3] for row in rows[:3]] == [
        ["| 4", "1", "0.0"],
        ["| 2", "1", "0.2"],
        ["| 2", "2", "12.5"],
    ]
