"""The runner end to end on tiny self-made suites: real MPI jobs at 1 and 2 ranks.

Each scenario writes a test module into a temporary rootdir, runs ``conformance.run.runner.run``
on it, and checks the reports: failures with reproduction commands that reproduce, crashes and
hangs recorded with what the ranks printed, resumption past them, deviations, exit status.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from conformance.run import runner

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs mpiexec"),
]

HEADER = """
import os, re, sys, time
import pytest
from mpi4py import MPI

RANK = MPI.COMM_WORLD.Get_rank()
SIZE = MPI.COMM_WORLD.Get_size()
"""


def write_suite(tmp_path: Path, body: str) -> Path:
    suite = tmp_path / "suite"
    suite.mkdir()
    path = suite / "test_tiny.py"
    path.write_text(HEADER + textwrap.dedent(body), encoding="utf-8")
    return path


def run_suite(
    tmp_path: Path, path: Path, nps: list[int], **kw: Any
) -> tuple[int, dict[str, Any], str]:
    opts = runner.RunOptions(
        backend="reference",
        nps=nps,
        paths=[str(path)],
        rootdir=path.parent,
        report_dir=tmp_path / "reports",
        **{"timeout": 20.0, "startup_allowance": 60.0, **kw},
    )
    out = io.StringIO()
    status = runner.run(opts, stream=out)
    report = json.loads((tmp_path / "reports" / "report.json").read_text())
    return status, report, out.getvalue()


def by_test(report: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["nodeid"].split("::")[-1], r["np"]): r for r in report["records"]}


def test_failures_are_reported_with_a_command_that_reproduces_them(tmp_path: Path) -> None:
    path = write_suite(
        tmp_path,
        """
        def test_ok():
            assert SIZE >= 1

        def test_bad_on_last_rank():
            assert RANK != SIZE - 1, f"rank {RANK} disagrees"

        def test_skip():
            pytest.skip("not here")
        """,
    )
    status, report, progress = run_suite(tmp_path, path, [1, 2])
    assert status == 1
    records = by_test(report)
    assert len(records) == 6
    assert records[("test_ok", 1)]["outcome"] == "passed"
    assert records[("test_ok", 2)]["outcome"] == "passed"
    assert records[("test_skip", 2)]["outcome"] == "skipped"
    bad = records[("test_bad_on_last_rank", 2)]
    assert bad["outcome"] == "wrong"
    assert bad["failing_ranks"] == [1]
    assert "mpiexec" in bad["reproduce"] and "-n 2" in bad["reproduce"]
    assert "np=2 2/3 tests done" in progress or "np=2 3/3 tests done" in progress
    assert "WRONG" in progress
    markdown = (tmp_path / "reports" / "report.md").read_text()
    assert bad["reproduce"] in markdown
    assert (tmp_path / "reports" / "junit.xml").exists()
    # The command reproduces the failure alone: exactly one test runs, and it fails.
    # Reports carry no machine paths: the temporary directory reads <tmp>.
    command = bad["reproduce"].replace("<tmp>", tempfile.gettempdir())
    # ... from any directory (here: one that is neither the suite's nor the test file's).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = subprocess.run(
        command,
        shell=True,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 1, again.stdout + again.stderr
    assert "1 failed" in again.stdout
    assert "passed" not in again.stdout.splitlines()[-1]


def test_a_crash_is_recorded_with_rank_output_and_the_run_resumes(tmp_path: Path) -> None:
    path = write_suite(
        tmp_path,
        """
        def test_before():
            pass

        def test_crash():
            if RANK == SIZE - 1:
                print(f"rank {RANK} going down", flush=True)
                if SIZE == 1:
                    os._exit(3)  # the plugin's "hung" status: the runner must not be fooled
                # MPI_Abort may kill the launcher before it relays the rank's last output; give
                # it a moment, since this test is about the runner, not about that race.
                time.sleep(1)
                MPI.COMM_WORLD.Abort(1)  # the status of a test failure: nor by this
            time.sleep(30)  # the survivors wait; MPI ends them when the job aborts

        def test_after():
            pass
        """,
    )
    start = time.monotonic()
    status, report, progress = run_suite(tmp_path, path, [1, 2])
    assert status == 1
    records = by_test(report)
    for np in (1, 2):
        assert records[("test_before", np)]["outcome"] == "passed"
        assert records[("test_after", np)]["outcome"] == "passed"
        crash = records[("test_crash", np)]
        assert crash["outcome"] == "crashed"
        assert f"rank {np - 1} going down" in crash["rank_output"][str(np - 1)]
    assert "resuming" in progress
    assert time.monotonic() - start < 120


def test_a_hang_caught_by_the_plugin_is_recorded_and_the_run_resumes(tmp_path: Path) -> None:
    path = write_suite(
        tmp_path,
        """
        def test_hang():
            if RANK == 0:
                time.sleep(600)

        def test_after():
            pass
        """,
    )
    start = time.monotonic()
    status, report, _ = run_suite(tmp_path, path, [2], timeout=3.0)
    records = by_test(report)
    assert status == 1
    assert records[("test_hang", 2)]["outcome"] == "hung"
    assert records[("test_after", 2)]["outcome"] == "passed"
    assert time.monotonic() - start < 90


def test_the_job_watchdog_ends_a_job_the_plugin_cannot_end(tmp_path: Path) -> None:
    # A catastrophic regex holds the GIL, so no Python thread of that rank (the plugin's
    # watchdog included) runs again: only the runner can end the job.
    path = write_suite(
        tmp_path,
        """
        def test_first():
            pass

        def test_stuck():
            if RANK == 0:
                re.match(r"(a+)+$", "a" * 60 + "b")

        def test_after():
            pass
        """,
    )
    start = time.monotonic()
    status, report, _ = run_suite(tmp_path, path, [1], timeout=2.0, margin=3.0)
    records = by_test(report)
    assert status == 1
    stuck = records[("test_stuck", 1)]
    assert stuck["outcome"] == "hung"
    assert "runner ended the job" in stuck["message"]
    assert records[("test_after", 1)]["outcome"] == "passed"
    assert time.monotonic() - start < 90


def test_known_deviations_excuse_failures_and_unmatched_entries_are_warned(
    tmp_path: Path,
) -> None:
    path = write_suite(
        tmp_path,
        """
        def test_ok():
            pass

        def test_bad():
            assert False, "known"
        """,
    )
    deviations = tmp_path / "dev.toml"
    deviations.write_text(
        textwrap.dedent(
            """
            [[deviation]]
            test = "test_tiny.py::test_bad"
            expect = "wrong"
            match = "AssertionError: known"
            reason = "known bug"
            upstream = "https://example.org/1"

            [[deviation]]
            test = "test_tiny.py::test_ok"
            np = [2]
            expect = "crash"
            reason = "was broken once"
            no_upstream = "not yet filed: t"
            flaky = "crashes only sometimes"

            [[deviation]]
            test = "test_tiny.py::test_renamed"
            expect = "hang"
            reason = "stale entry"
            no_upstream = "not yet filed: t"
            """
        )
    )
    status, report, progress = run_suite(tmp_path, path, [2], deviations=deviations)
    assert status == 0, progress
    records = by_test(report)
    assert records[("test_bad", 2)]["deviation"] == "known bug (https://example.org/1)"
    assert records[("test_bad", 2)]["class"] == "expected"
    assert records[("test_ok", 2)]["class"] == "xpassed"
    assert any("test_renamed" in w for w in report["warnings"])
    assert "matched no test" in progress


def test_cli_selection_and_exit_status(tmp_path: Path) -> None:
    path = write_suite(
        tmp_path,
        """
        def test_ok():
            pass

        def test_bad():
            assert False
        """,
    )
    reports = tmp_path / "cli-reports"
    argv = ["--np", "1", "-k", "ok", "--report-dir", str(reports), "--rootdir", str(path.parent)]
    assert runner.main([*argv, "-q", str(path)]) == 0
    data = json.loads((reports / "report.json").read_text())
    assert [r["nodeid"].split("::")[-1] for r in data["records"]] == ["test_ok"]
    assert runner.main(["--np", "0", str(path)]) == 2


def test_parse_nps() -> None:
    assert runner.parse_nps("1,2,3,4") == [1, 2, 3, 4]
    assert runner.parse_nps("3,1-2,3") == [1, 2, 3]
    with pytest.raises(ValueError):
        runner.parse_nps("0")


ISOLATION_SUITE = """
DIRTY = []

@pytest.mark.robust
def test_robust_fails_and_leaves_state():
    DIRTY.append(os.getpid())
    assert False, "left state behind"

@pytest.mark.robust
def test_robust_needs_a_clean_job():
    assert not DIRTY, f"state left by an earlier test in pid {DIRTY}"

@pytest.mark.core
def test_core_after():
    assert not DIRTY
"""


@pytest.mark.parametrize(("isolate", "clean_passes"), [("auto", True), ("never", False)])
def test_a_failed_robust_test_gets_the_next_test_a_fresh_job(
    tmp_path: Path, isolate: str, clean_passes: bool
) -> None:
    path = write_suite(tmp_path, ISOLATION_SUITE)
    status, report, _ = run_suite(tmp_path, path, [2], isolate=isolate)
    assert status == 1
    records = by_test(report)
    assert records[("test_robust_fails_and_leaves_state", 2)]["outcome"] == "wrong"
    clean = records[("test_robust_needs_a_clean_job", 2)]["outcome"]
    assert (clean == "passed") is clean_passes
    # auto runs the robust tests last, so the core test never shares a job with them.
    assert (records[("test_core_after", 2)]["outcome"] == "passed") is clean_passes
    jobs = sorted((tmp_path / "reports" / "np2").glob("attempt*.out"))
    assert len(jobs) == (2 if isolate == "auto" else 1)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_every_job_and_still_writes_the_report(tmp_path: Path, sig: int) -> None:
    path = write_suite(
        tmp_path,
        """
        def test_quick():
            pass

        def test_slow():
            time.sleep(120)
        """,
    )
    reports = tmp_path / "reports"
    cmd = [sys.executable, "-m", "conformance", "run", "--np", "2", "--timeout", "200"]
    cmd += ["--rootdir", str(path.parent), "--report-dir", str(reports), str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    results = reports / "np2" / "results.jsonl"
    deadline = time.monotonic() + 240
    while '::test_quick"' not in (results.read_text() if results.exists() else ""):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    assert _processes_mentioning(str(results)), "the job should be running"
    sent = time.monotonic()
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == 128 + sig, output
    assert took < 10, f"the runner took {took:.1f} s to stop"
    assert _processes_mentioning(str(results)) == [], "a process of the job survived"
    report = json.loads((reports / "report.json").read_text())
    outcomes = {r["nodeid"].split("::")[-1]: r["outcome"] for r in report["records"]}
    assert outcomes.get("test_quick") == "passed"
    assert any("interrupted" in p for p in report["problems"]), report["problems"]


def test_an_expected_hang_costs_its_short_deadline_and_a_fixed_one_passes(tmp_path: Path) -> None:
    """A test a deviations entry expects to hang runs under --hang-deadline, not the per-test
    deadline: the known hang is recorded (excused) within seconds, a test that no longer hangs
    passes (and the strict entry fails the run), and the resumed job names exactly the tests
    left, whose time the report splits into phases."""
    path = write_suite(
        tmp_path,
        """
        def test_hang():
            time.sleep(600)

        def test_fixed():
            pass

        def test_after():
            pass
        """,
    )
    deviations = tmp_path / "dev.toml"
    deviations.write_text(
        textwrap.dedent(
            """
            [[deviation]]
            tests = ["test_tiny.py::test_hang", "test_tiny.py::test_fixed"]
            np = [2]
            expect = "hang"
            reason = "hangs on mismatched calls"
            no_upstream = "not yet filed: t"
            """
        )
    )
    start = time.monotonic()
    status, report, progress = run_suite(
        tmp_path, path, [2], timeout=120.0, hang_deadline=2.0, deviations=deviations
    )
    elapsed = time.monotonic() - start
    records = by_test(report)
    hung = records[("test_hang", 2)]
    assert hung["outcome"] == "hung" and hung["class"] == "expected", hung
    assert "no progress within 2 s (the short deadline" in hung["message"]
    assert records[("test_fixed", 2)]["class"] == "xpassed"
    assert records[("test_after", 2)]["outcome"] == "passed"
    assert status == 1, progress  # the entry's test_fixed passed: strict
    assert elapsed < 60, f"{elapsed:.0f} s: the known hang waited out more than its deadline"
    assert any("ran under a deadline of 2 s" in note for note in report["notes"]), report["notes"]
    remaining = (tmp_path / "reports" / "np2" / "remaining-2.txt").read_text().split()
    assert remaining == ["test_tiny.py::test_fixed", "test_tiny.py::test_after"]
    jobs = report["jobs"]
    assert [(j["attempt"], j["ran"]) for j in jobs] == [(1, 1), (2, 2)], jobs
    for job in jobs:
        assert job["start"] > 0 and job["collection"] >= 0 and job["tests"] >= 0, job
    assert jobs[0]["tests"] >= 2.0, "the hang took its 2 s deadline inside the tests phase"


def test_rank_counts_run_side_by_side_and_timed_tests_only_after_the_rest(tmp_path: Path) -> None:
    """The untimed tests of every rank count run at the same time (budget permitting); a test
    marked ``timed`` starts only after every untimed job of every rank count has ended."""
    spans = tmp_path / "spans"
    spans.mkdir()
    path = write_suite(
        tmp_path,
        f"""
        SPANS = {str(spans)!r}

        def _span(name, seconds):
            start = time.time()
            time.sleep(seconds)
            with open(os.path.join(SPANS, f"{{name}}-np{{SIZE}}-r{{RANK}}"), "w") as f:
                f.write(f"{{start}} {{time.time()}}")

        def test_untimed():
            _span("untimed", 1.5)

        @pytest.mark.timed
        def test_timed():
            _span("timed", 0.2)
        """,
    )
    status, report, _ = run_suite(tmp_path, path, [1, 2], max_ranks=4)
    assert status == 0, report["problems"]
    windows = {p.name: tuple(map(float, p.read_text().split())) for p in spans.iterdir()}
    untimed = [w for name, w in windows.items() if name.startswith("untimed")]
    timed = [w for name, w in windows.items() if name.startswith("timed")]
    assert len(untimed) == 3 and len(timed) == 3, sorted(windows)
    assert max(end for _, end in untimed) <= min(start for start, _ in timed), windows
    np1 = windows["untimed-np1-r0"]
    np2 = windows["untimed-np2-r0"]
    assert np1[0] < np2[1] and np2[0] < np1[1], f"np 1 and np 2 did not overlap: {windows}"
