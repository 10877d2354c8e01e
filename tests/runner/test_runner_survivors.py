"""Kill tests and the records the runner makes: survivors observed in a job of their own, every
record attributed to its level from collection, and the robust level without deadlines."""

from __future__ import annotations

import io
import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conformance import records as records_mod
from conformance.harness import survivors
from conformance.run import launcher as launcher_mod
from conformance.run import reports, runner
from conformance.run.runner import EXIT_ISOLATED, Action, JobEnd, after_job

# -- decisions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        # The kill test's survivors wrote its record: resume, whatever the victim's signal did.
        (JobEnd(9, new=1, remaining=3, survivors=True), Action.RESUME),
        (JobEnd(EXIT_ISOLATED, new=1, remaining=3, survivors=True), Action.RESUME),
        (JobEnd(None, killed=True, new=1, remaining=3, survivors=True), Action.RESUME),
        # ... no record: the test is to blame (crashed, or hung when the runner ended it).
        (JobEnd(9, new=0, remaining=3, survivors=True), Action.BLAME),
        # An ordinary job that ran every test it had; the kill tests are left for their own jobs.
        (JobEnd(0, new=5, remaining=2, left_out=2), Action.RESUME),
        (JobEnd(1, new=5, remaining=3, left_out=2), Action.BLAME),
        (JobEnd(0, new=5, remaining=0, left_out=0), Action.DONE),
    ],
)
def test_after_a_kill_test_job(end: JobEnd, expected: Action) -> None:
    assert after_job(end)[0] is expected


def test_survivor_command_disables_auto_cleanup_and_takes_the_signal() -> None:
    mpich = launcher_mod.Launcher("/x/mpiexec", launcher_mod.MPICH)
    cmd = mpich.survivor_command(3, ["python", "-m", "pytest"])
    assert cmd[:2] == ["/x/mpiexec", "-disable-auto-cleanup"]
    assert cmd[-3:] == ["python", "-m", "pytest"]
    assert "trap : USR1" in " ".join(cmd)
    openmpi = launcher_mod.Launcher("/x/mpiexec", launcher_mod.OPENMPI)
    assert not openmpi.keeps_survivors
    with pytest.raises(launcher_mod.LauncherError, match="survivors"):
        openmpi.survivor_command(2, ["python"])


# -- the survivors' verdict ----------------------------------------------------------------------


def _obs(rank: int, kind: str, detail: str = "", elapsed: float = 1.0) -> survivors.Observation:
    return survivors.Observation(rank, kind, elapsed, detail)


def test_survivors_pass_only_when_each_raised_in_time_naming_the_dead_rank() -> None:
    named = "TimeoutError: all_sum timed out waiting for rank(s) 2"
    ok = [_obs(0, "raised", named), _obs(1, "raised", named)]
    assert survivors.judge(ok, 2, 1.25)[0] == records_mod.Outcome.PASSED
    unnamed = [_obs(0, "raised", "TimeoutError: gave up"), _obs(1, "idle")]
    assert survivors.judge(unnamed, 2, 1.25)[:2] == (records_mod.Outcome.WRONG, [0])
    assert survivors.judge(unnamed, 2, 1.25, must_name=False)[0] == records_mod.Outcome.PASSED
    returned = [_obs(0, "returned", "returned array([1.])"), _obs(1, "raised", named)]
    assert survivors.judge(returned, 2, 1.25)[:2] == (records_mod.Outcome.WRONG, [0])
    late = [_obs(0, "late", named, 4.0)]
    assert survivors.judge(late, 2, 1.25)[0] == records_mod.Outcome.WRONG
    hung = [_obs(0, "raised", named), _obs(1, "hung", "still blocked")]
    assert survivors.judge(hung, 2, 1.25)[:2] == (records_mod.Outcome.HUNG, [1])
    gone = [_obs(0, "raised", named), _obs(1, "crashed", "no report")]
    assert survivors.judge(gone, 2, 1.25)[:2] == (records_mod.Outcome.CRASHED, [1])


def test_observe_tells_raised_returned_and_hung_apart() -> None:
    def raises() -> None:
        raise TimeoutError("rank 1 is gone")

    assert survivors.observe(raises, 2.0, 0).kind == "raised"
    assert survivors.observe(lambda: 42, 2.0, 0).kind == "returned"
    blocked = survivors.observe(lambda: __import__("time").sleep(5), 0.2, 0)
    assert blocked.kind == "hung" and "sleep" in blocked.stack


# -- the robust level needs deadlines ------------------------------------------------------------


def _session(timeouts: bool) -> records_mod.SessionRecord:
    return records_mod.make_session(
        backend="fake",
        backend_name="fake",
        backend_version="1",
        capabilities={"ops": ["all_sum"], "split": True, "timeouts": timeouts},
        declared=[],
        world_size=2,
    )


def _robust_pass(np: int) -> dict[str, Any]:
    record = dict(
        records_mod.make_record("t.py::robust", "passed", level="robust", tier="basic", area="t")
    )
    record["np"] = np
    return record


@pytest.mark.parametrize("timeouts", [True, False])
def test_no_robust_pass_without_deadlines(timeouts: bool) -> None:
    summary = reports.RunSummary(
        backend="fake",
        nps=[2],
        records=[_robust_pass(2)],
        total_per_np=1,
        sessions={2: _session(timeouts)},
    )
    word = summary.level_verdict("robust")[0]
    assert word == ("PASS" if timeouts else reports.UNTESTED)
    said = "\n".join(reports.headline(summary)) + reports.terminal_summary(summary)
    assert ("set_timeout" in said) is not timeouts
    assert summary.verdict() == ("PASS" if timeouts else reports.UNTESTED)


# -- end to end ----------------------------------------------------------------------------------

SUITE = """
import os, signal, time
import pytest
from mpi4py import MPI
from conformance.harness import survivors

RANK = MPI.COMM_WORLD.Get_rank()
SIZE = MPI.COMM_WORLD.Get_size()
pytestmark = pytest.mark.robust


def test_plain():
    pass


def test_crash():
    if RANK == SIZE - 1:
        time.sleep(1)
        MPI.COMM_WORLD.Abort(1)
    time.sleep(30)


@pytest.mark.kills_rank
@pytest.mark.parametrize("blocks", [False, True])
def test_kill(request, blocks):
    survivors.require()
    victim = SIZE - 1
    comm = survivors.prepare(victim)
    if RANK == victim:
        os.kill(os.getpid(), signal.SIGKILL)

    def survivor_call():
        if blocks:
            time.sleep(60)
        raise TimeoutError(f"peer rank {victim} is gone")

    mine = survivors.observe(survivor_call, 2.0, RANK)
    survivors.finish(request.config, request.node, comm, mine, victim, 2.0)
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs mpiexec")
def test_kill_tests_observe_survivors_and_every_record_has_its_level(tmp_path: Path) -> None:
    launcher = launcher_mod.find_launcher(None)
    if not launcher.keeps_survivors:
        pytest.skip(f"a {launcher.flavor} launcher cannot keep survivors")
    suite = tmp_path / "suite"
    suite.mkdir()
    path = suite / "test_tiny.py"
    path.write_text(textwrap.dedent(SUITE), encoding="utf-8")
    opts = runner.RunOptions(
        backend="reference",
        nps=[2],
        paths=[str(path)],
        rootdir=suite,
        report_dir=tmp_path / "reports",
        timeout=20.0,
        startup_allowance=60.0,
    )
    status = runner.run(opts, stream=io.StringIO())
    report = json.loads((tmp_path / "reports" / "report.json").read_text())
    outcomes = {r["nodeid"].split("::")[-1]: r for r in report["records"]}
    assert status == 1
    assert outcomes["test_plain"]["outcome"] == "passed"
    assert outcomes["test_crash"]["outcome"] == "crashed"
    assert outcomes["test_kill[False]"]["outcome"] == "passed"
    assert "peer rank 1 is gone" in outcomes["test_kill[False]"]["message"]
    reproduce = outcomes["test_kill[False]"]["reproduce"]
    assert "CONFORMANCE_SURVIVORS=1" in reproduce and "-disable-auto-cleanup" in reproduce
    assert "-disable-auto-cleanup" not in outcomes["test_plain"]["reproduce"]
    assert outcomes["test_kill[True]"]["outcome"] == "hung"
    assert "sleep" in outcomes["test_kill[True]"]["stacks"]["0"]
    # The runner's crashed record carries its level like the plugin's: no level line can read
    # PASS under a FAIL headline.
    for record in report["records"]:
        assert (record["level"], record["tier"], record["area"]) == ("robust", "basic", "tiny")
    assert report["verdict"] == "FAIL"
    assert report["levels"]["robust"]["verdict"] == "FAIL"
