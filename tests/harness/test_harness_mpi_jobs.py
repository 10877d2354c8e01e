"""The harness under real MPI jobs (``mpiexec -n 2`` and ``-n 3``): rank-dependent failures become
one collective outcome, the job stays in step, a hang ends the job with status 3."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from .jobs import SCENARIOS, Job, run_job

RANKS = "tests/harness/scenarios/scenario_ranks.py"


@pytest.fixture(scope="module", params=[2, 3], ids=lambda n: f"np{n}")
def ranks_job(request, tmp_path_factory) -> tuple[int, Job, object]:
    # One job per rank count runs every scenario; the tests below read its results.
    n = request.param
    tmp = tmp_path_factory.mktemp(f"ranks{n}")
    job = run_job(
        tmp,
        n,
        RANKS,
        "--backend",
        "fake_adapter",
        f"--junitxml={tmp / 'junit.xml'}",
        env={"CONFORMANCE_SEED": "7"},
    )
    return n, job, tmp


def test_scenarios_exist():
    assert (SCENARIOS / "scenario_ranks.py").exists()


def test_job_fails_and_records_every_test(ranks_job):
    n, job, _ = ranks_job
    assert job.returncode == 1, job.output[-3000:]
    assert len(job.records) == 20
    assert {r["world_size"] for r in job.records.values()} == {n}
    assert {r["seed"] for r in job.records.values()} == {7}
    assert {r["backend"] for r in job.records.values()} == {"fake_adapter"}
    assert {r["level"] for r in job.records.values()} == {"core"}
    assert {r["area"] for r in job.records.values()} == {"scenario_ranks"}


def test_failing_rank_fails_everywhere_and_is_named(ranks_job):
    n, job, _ = ranks_job
    record = job.record("test_fails_on_last_rank")
    assert record["outcome"] == "wrong"  # an assertion failed
    assert record["failing_ranks"] == [n - 1]
    assert f"failed on ranks [{n - 1}] of {n}" in record["message"]
    assert "the last rank fails" in record["longrepr"]


def test_raising_rank_traceback_is_shown(ranks_job):
    _, job, _ = ranks_job
    record = job.record("test_raises_on_rank_1")
    assert (record["outcome"], record["failing_ranks"]) == ("error", [1])  # raised, not asserted
    assert "rank 1" in record["longrepr"] and "boom on rank 1" in record["longrepr"]


def test_collective_assert_names_the_false_ranks(ranks_job):
    n, job, _ = ranks_job
    record = job.record("test_collective_assert_names_ranks")
    odd = [rank for rank in range(n) if rank % 2]
    assert record["outcome"] == "wrong"
    assert record["failing_ranks"] == odd
    assert f"collective assertion failed on ranks {odd} of {n}" in record["message"]


def test_collective_raises_names_the_rank_that_returned(ranks_job):
    _, job, _ = ranks_job
    record = job.record("test_collective_raises_not_raised_on_rank_0")
    assert record["failing_ranks"] == [0]
    assert "rank 0: returned normally" in record["longrepr"]
    assert job.record("test_collective_raises_everywhere")["outcome"] == "passed"


def test_skip_on_one_rank_is_a_failure_not_a_deadlock(ranks_job):
    _, job, _ = ranks_job
    record = job.record("test_skip_on_rank_1_only")
    assert (record["outcome"], record["failing_ranks"]) == ("error", [1])
    assert "a skip must happen on every rank" in record["message"]
    assert job.record("test_skip_everywhere")["outcome"] == "skipped"


def test_setup_error_on_one_rank_skips_the_body_everywhere(ranks_job):
    _, job, _ = ranks_job
    record = job.record("test_setup_error_on_rank_1")
    assert (record["outcome"], record["failing_ranks"]) == ("error", [1])
    assert "fixture fails on rank 1" in record["message"]


def test_helper_called_by_one_rank_is_a_desync_and_the_job_recovers(ranks_job):
    n, job, _ = ranks_job
    record = job.record("test_helper_on_rank_0_only")
    assert record["outcome"] == "error"
    assert record["failing_ranks"] == list(range(1, n))
    assert "CollectiveDesync" in record["message"]
    for name in ("test_in_step_after_desync", "test_in_step_lockstep_all_sum"):
        assert job.record(name)["outcome"] == "passed", job.record(name)["longrepr"]
    assert job.record("test_in_step_at_the_end")["outcome"] == "passed"


def test_divergent_draws_are_reported_as_such(ranks_job):
    n, job, _ = ranks_job
    record = job.record("test_divergent_draws")
    assert record["outcome"] == "error"
    assert record["failing_ranks"] == list(range(1, n))
    assert "divergent draws" in record["message"]
    inner = job.record("test_divergent_inner_draw")
    assert inner["outcome"] == "error" and inner["failing_ranks"] == list(range(1, n))
    assert "divergent draws" in inner["message"] and "lockstep inner draw" in inner["longrepr"]


def test_lockstep_failure_on_one_rank_shrinks_in_step(ranks_job):
    _, job, _ = ranks_job
    record = job.record("test_lockstep_fails_on_rank_1")
    assert (record["outcome"], record["failing_ranks"]) == ("wrong", [1])
    assert "fails on rank 1" in record["longrepr"]
    # Every rank shrank to the same failing example.
    n = ranks_job[0]
    shown = {int(seed) for seed in re.findall(r"seed=(\d+)", record["longrepr"])}
    logged = [
        set(map(int, re.findall(r"seed=(\d+)", (job.log_dir / f"rank{rank}.log").read_text())))
        for rank in range(n)
    ]
    assert len(shown) == 1 and shown.pop() % 7 == 3
    assert all(seeds == logged[0] for seeds in logged)


def test_unsupported_op_must_raise_everywhere(ranks_job):
    n, job, _ = ranks_job
    # Raised as the manifest names for the declared-unsupported feature.
    assert job.record("test_unsupported_op_raises")["outcome"] == "unsupported"
    assert job.record("test_unsupported_op_raises")["unsupported"] == ["sum_scatter"]
    record = job.record("test_unsupported_op_does_not_raise")
    assert (record["outcome"], record["failing_ranks"]) == ("wrong", list(range(n)))
    assert "returned normally" in record["longrepr"]
    assert job.record("test_unsupported_dtype_is_declared")["outcome"] == "passed"


def test_mpi_marker_min_size_and_xfail(ranks_job):
    n, job, _ = ranks_job
    assert job.record("test_needs_64_ranks")["outcome"] == "skipped"
    record = job.record("test_xfail_on_rank_0")  # strict xfail passes on ranks 1.. -> failure
    assert (record["outcome"], record["failing_ranks"]) == ("error", list(range(1, n)))


def test_only_rank_0_writes_the_terminal(ranks_job):
    n, job, _ = ranks_job
    assert job.output.count("test session starts") == 1
    assert "conformance backend: fake_adapter (fake-adapter 9.9.9)" in job.output
    assert f"world size {n}, MPI MPICH" in job.output
    assert "CONFORMANCE_SEED=7" in job.output
    assert job.output.count("boom on rank 1") >= 1


def test_every_rank_keeps_a_log(ranks_job):
    n, job, _ = ranks_job
    for rank in range(n):
        log = (job.log_dir / f"rank{rank}.log").read_text()
        assert f"rank {rank}]" in log and "test_raises_on_rank_1 call" in log
    # The other ranks' terminal output went to their logs.
    assert "test session starts" in (job.log_dir / "rank1.log").read_text()
    assert "boom on rank 1" in (job.log_dir / "rank1.log").read_text()


def test_junit_from_rank_0_only(ranks_job):
    _, _, tmp = ranks_job
    suite = ET.parse(tmp / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    assert int(suite.get("tests")) == 20
    assert int(suite.get("failures")) == 11 and int(suite.get("errors")) == 1


def test_hanging_rank_ends_the_job_with_status_3_and_all_stacks(tmp_path):
    job = run_job(
        tmp_path,
        2,
        "tests/harness/scenarios/scenario_hang.py",
        "--backend",
        "fake_hanging",
        "--conformance-timeout",
        "3",
    )
    assert job.returncode == 3, job.output[-3000:]
    assert job.record("test_before")["outcome"] == "passed"
    record = job.record("test_hangs_on_rank_1")
    assert record["outcome"] == "hung"
    assert (record["level"], record["area"]) == ("core", "scenario_hang")
    assert sorted(record["stacks"]) == ["0", "1"]
    assert "fake_hanging.py" in record["stacks"]["1"] and "time.sleep" in record["stacks"]["1"]
    assert "hung: no progress within 3 s" in job.output
    assert not any(nodeid.endswith("test_never_reached") for nodeid in job.records)
    for rank in (0, 1):
        assert "watchdog: deadline passed" in (job.log_dir / f"rank{rank}.log").read_text()


def test_ranks_that_collect_different_tests_end_the_job(tmp_path):
    job = run_job(tmp_path, 2, "tests/harness/scenarios/scenario_collection.py")
    assert job.returncode == 4, job.output[-3000:]
    assert "the ranks collected different tests" in job.output
    assert "rank 0: 1 tests" in job.output and "rank 1: 2 tests" in job.output
    assert job.records == {}


def test_hang_during_collection_is_recorded_as_such(tmp_path):
    job = run_job(
        tmp_path,
        2,
        "tests/harness/scenarios/scenario_collection_hang.py",
        "--conformance-timeout",
        "2",
    )
    assert job.returncode == 3, job.output[-3000:]
    record = job.records["collection"]
    assert record["outcome"] == "hung" and record["failing_ranks"] == [1]
    assert "scenario_collection_hang.py" in record["stacks"]["1"]
    assert "waiting at control exchange" in record["stacks"]["0"]
