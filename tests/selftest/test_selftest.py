"""Tests of the selftest machinery: the fault registry, verdicts, the table and the exit status.

The end-to-end tests launch real MPI jobs (one fault that is no fault, one real fault) at two
ranks; the rest runs in this process.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import reference
from conformance import records
from conformance.adapters import faulty
from conformance.backend import BackendLoadError, load_backend
from conformance.run import runner, selftest

# Every fault issue 7 lists, mapped to the backend that implements it.
ISSUE_FAULTS = {
    "all_sum drops one rank's contribution": "all_sum_drops_last_rank",
    "all_sum wrong for one dtype: int8 saturating": "int8_sum_saturates",
    "all_sum wrong for one dtype: float16 accumulated in the wrong type": "float16_sum_as_bfloat16",
    "all_max returns min for one dtype": "all_max_is_min_for_int16",
    "complex max compares by magnitude": "complex_max_by_magnitude",
    "all_gather permutes rank order": "all_gather_rotated",
    "all_gather returns only the local block at size > 2": "all_gather_local_above_2",
    "sum_scatter returns the wrong rank's slice": "sum_scatter_next_slice",
    "recv returns data from the wrong source": "recv_any_source",
    "recv_like ignores dtype": "recv_like_ignores_dtype",
    "send returns None": "send_returns_none",
    "split orders by colour, not key": "split_orders_by_colour",
    "split ignores negative key": "split_negative_key_literal",
    "rank() off by one in subgroups": "subgroup_rank_off_by_one",
    "init(strict=True) returns a singleton instead of raising": "strict_init_singleton",
    "init caches nothing": "init_not_cached",
    "a collective that hangs on one rank": "hang_all_min",
    "an op that raises on one rank only": "all_max_raises_on_last_rank",
    "bool all_sum as integer addition": "bool_sum_as_integer",
    "a 0-d all_gather returning 0-d at size > 1": "all_gather_0d_stays_0d",
}

# Every fault kind issue 11 lists, mapped to the subtle backend that implements it.
ISSUE11_FAULTS = {
    "chunked all_sum leaving the tail unreduced on large arrays": "all_sum_ring_tail_unreduced",
    "large all_gather with two ranks' blocks swapped": "all_gather_swaps_blocks_large",
    "all_min broadcasting one rank's input, large arrays only": "all_min_broadcasts_root_large",
    "large sum_scatter returning the local slice unreduced": "sum_scatter_local_large",
    "half-precision sums wrong on large arrays": "bfloat16_sum_through_float16_large",
    "float64 reduced as float32": "float64_sum_in_float32",
    "all_gather reading a non-C-contiguous input in storage order": (
        "all_gather_reads_storage_order"
    ),
    "an input modified by the call": "all_sum_in_place_large",
    "a stale result after many calls on one group": "stale_result_after_wrap",
    "a subgroup collective running on another subgroup of the same size": "subgroup_cache_by_size",
    "NaN/-0.0 max/min depending on which rank holds it": "float_extreme_c_style",
    "send/recv truncating large payloads": "send_truncates_large",
    "integer sums saturating only from 8 elements": "small_int_sum_saturates_vectorized",
    "a few per cent of all_sum calls deadlock at 3+ ranks": "all_sum_deadlocks_sometimes",
}

# Every fault kind issue 24 lists (items 1-4, 8), and the ones of those kinds no spec was written
# around, mapped to their backends.
ISSUE24_FAULTS = {
    "a result pool handing out an array an earlier call returned": "result_pool_ignores_holders",
    "all_sum/sum_scatter writing the reduction into the input": "reduce_into_input_large",
    "float results rounded to bfloat16 from 256 KiB": "float_results_bfloat16_large",
    "last element wrong for 1-, 2- and 8-byte dtypes": "last_element_wrong_odd_widths",
    "+inf + -inf giving +inf": "inf_plus_minus_inf_is_inf",
    "recv_like canonicalising NaN payloads, subnormals, -0.0": "recv_like_canonicalises",
    "an all_gather returning a stale result after 512 calls": "all_gather_stale_after_512",
    "(unseen) recv results pooled by byte size": "recv_pool_by_bytes",
    "(unseen) 2-byte sums moving whole 8-byte words": "half_width_sum_word_tail",
    "(unseen) NaN meeting inf giving inf": "nan_meets_inf_gives_inf",
    "(unseen) float64 max/min through float32 above 200,000 elements": (
        "float64_extremes_through_float32_large"
    ),
}

# Every fault kind issue 23 lists (robust verdicts: deadlines and dead peers).
ISSUE23_FAULTS = {
    "a deadline three times the one set": "deadline_tripled",
    "survivors of a dead peer blocking far past the deadline": "survivors_block",
}

# Faults of issue 24's verdicts: a skip inside ops, a second defect next to a deviation entry,
# leaks that only the soak's resource sampling sees.
ISSUE24_VERDICT_FAULTS = {
    "an adapter that calls pytest.skip() inside its ops past 1024 elements": "skips_past_1024",
    "MLX mpi's bool defect plus a float64 layout bug": "bool_extremes_and_strided_float64",
    "a backend that keeps every result alive": "keeps_results_alive",
    "a descriptor opened per call and never closed": "leaks_a_descriptor_per_gather",
}

SPECS = Path(runner.default_paths()[0])


# -- the registry --------------------------------------------------------------------------------


def test_registry_covers_every_fault_of_the_issues():
    listed = {
        **ISSUE_FAULTS,
        **ISSUE11_FAULTS,
        **ISSUE23_FAULTS,
        **ISSUE24_FAULTS,
        **ISSUE24_VERDICT_FAULTS,
    }
    missing = {text: name for text, name in listed.items() if name not in faulty.FAULTS}
    assert not missing
    assert set(faulty.FAULTS) == set(listed.values()), "a fault no issue lists?"


def test_hang_faults_are_the_deadline_ended_ones():
    hangs = {name for name, fault in faulty.FAULTS.items() if fault.hangs}
    assert hangs == {"hang_all_min", "all_sum_deadlocks_sometimes"}


@pytest.mark.parametrize("name", sorted(faulty.FAULTS))
def test_every_fault_is_described_and_loads(name):
    fault = faulty.FAULTS[name]
    assert fault.fault and fault.rule and fault.specs
    assert fault.min_np >= 2
    for module in fault.specs:
        assert (SPECS / module).is_file(), f"{name} names a missing spec module {module}"
    backend = load_backend(f"faulty:{name}")
    assert backend.name == f"faulty:{name}"
    assert fault.fault in backend.api.__doc__ and fault.rule in backend.api.__doc__
    assert backend.capabilities.timeouts  # the robust deadline specs apply, as to the reference
    # Each fault replaces at least one API name or the deadline setter; the rest is the
    # reference's.
    replaced = [a for a in faulty.API_NAMES if getattr(backend.api, a) is not getattr(reference, a)]
    if backend._set_timeout is not reference.set_timeout:
        replaced.append("set_timeout")
    assert replaced, f"{name} changes nothing"


def test_deadline_tripled_sets_three_times_the_deadline_and_restores_what_it_was_given():
    backend = load_backend("faulty:deadline_tripled")
    before = reference.set_timeout(10.0)
    try:
        assert backend.set_timeout(1.0) == pytest.approx(10.0 / 3)
        assert reference.set_timeout(10.0) == pytest.approx(3.0)
    finally:
        reference.set_timeout(before)


def test_unknown_fault_is_a_load_error_naming_the_known_ones():
    with pytest.raises(BackendLoadError, match="all_sum_drops_last_rank"):
        load_backend("faulty:no_such_fault")


def test_control_is_the_reference():
    backend = load_backend("faulty:none")
    assert all(getattr(backend.api, a) is getattr(reference, a) for a in faulty.API_NAMES)
    assert "none" not in faulty.FAULTS  # never run by default


def test_strict_init_fault_shows_in_a_world_of_one():
    # Needs no peers: init(strict=True) of an unavailable backend.
    good, bad = load_backend("reference"), load_backend("faulty:strict_init_singleton")
    with pytest.raises(RuntimeError):
        good.init(strict=True, backend="ring")
    group = bad.init(strict=True, backend="ring")
    assert (group.rank(), group.size()) == (0, 1)


def test_faults_keep_size_one_groups_intact():
    # Below min_np (and in any singleton group) a fault must not change anything: the suite's
    # size-1 specs would otherwise blame the wrong rule.
    x = np.arange(6, dtype=np.int8).reshape(3, 2)
    for name in faulty.FAULTS:
        if name == "strict_init_singleton":
            continue
        backend = load_backend(f"faulty:{name}")
        group = backend.init(backend="ring")  # unavailable: a singleton group
        for op in ("all_sum", "all_max", "all_gather", "sum_scatter"):
            got = getattr(backend, op)(x, group=group)
            np.testing.assert_array_equal(got, x, err_msg=f"{name} {op}")


# -- verdicts ----------------------------------------------------------------------------------


def _record(nodeid, outcome, message="", **fields):
    return {
        "nodeid": f"conformance/specs/{nodeid}",
        "outcome": outcome,
        "message": message,
        **fields,
    }


@pytest.mark.parametrize("outcome", ["failed", "wrong"])
def test_judge_failure_in_call_catches(outcome):
    records = [_record("test_a.py::t1", "passed"), _record("test_a.py::t2[x]", outcome, "boom")]
    status, tests, detail = selftest.judge(records, 1, False)
    assert (status, tests) == (selftest.CAUGHT, ["test_a.py::t2[x]"])
    assert "boom" in detail and "in call" in detail


@pytest.mark.parametrize("field", selftest.PHASE_FIELDS)
def test_judge_error_raised_in_call_catches(field):
    records = [_record("test_a.py::t", "error", "ValueError: x", **{field: "call"})]
    assert selftest.judge(records, 1, False)[0] == selftest.CAUGHT


@pytest.mark.parametrize("phase", [None, "setup", "teardown"])
def test_judge_error_outside_the_call_is_not_a_catch(phase):
    fields = {"phase": phase} if phase else {}
    records = [_record("test_a.py::t1", "passed"), _record("test_a.py::t2", "error", **fields)]
    status, tests, detail = selftest.judge(records, 1, False)
    assert (status, tests) == (selftest.MISSED, [])
    assert "outside the call" in detail


@pytest.mark.parametrize("outcome", ["hung", "crashed"])
def test_judge_broken_run_is_inconclusive(outcome):
    records = [_record("test_a.py::t1", "passed"), _record("test_a.py::t2", outcome)]
    status, tests, detail = selftest.judge(records, 3, False)
    assert (status, tests) == (selftest.INCONCLUSIVE, [])
    assert f"{outcome} in test_a.py::t2" in detail


def test_judge_dead_or_killed_job_is_inconclusive():
    assert selftest.judge([_record("test_a.py::t", "passed")], 134, False)[0] == (
        selftest.INCONCLUSIVE
    )
    assert selftest.judge([], None, True)[0] == selftest.INCONCLUSIVE


def test_judge_call_failure_wins_over_a_broken_run():
    records = [_record("test_a.py::t1", "hung"), _record("test_a.py::t2", "wrong", "bad")]
    assert selftest.judge(records, 137, True)[:2] == (selftest.CAUGHT, ["test_a.py::t2"])


def test_judge_all_passed_is_missed():
    records = [_record("test_a.py::t1", "passed"), _record("test_a.py::t2", "skipped")]
    status, tests, detail = selftest.judge(records, 0, False)
    assert (status, tests) == (selftest.MISSED, [])
    assert "2 tests ran" in detail


def test_judge_hang_fault_needs_the_backends_timeout():
    late = _record("test_a.py::t", "wrong", "all_min raised TimeoutError: all_min timed out")
    other = _record("test_a.py::u", "wrong", "result differs at [0]")
    assert selftest.judge([late], 1, False, hangs=True)[:2] == (
        selftest.CAUGHT,
        ["test_a.py::t"],
    )
    status, _, detail = selftest.judge([other], 1, False, hangs=True)
    assert status == selftest.INCONCLUSIVE and "TimeoutError" in detail
    watchdog = _record("test_a.py::t", "hung", "no progress within 60 s")
    assert selftest.judge([watchdog], 3, False, hangs=True)[0] == selftest.INCONCLUSIVE


def test_judge_backend_that_does_not_load_is_a_problem_not_a_catch():
    records = [_record("test_a.py::t", "error", "BackendLoadError: cannot import")]
    assert selftest.judge(records, 1, False)[0] == selftest.PROBLEM


def test_judge_job_that_could_not_run_is_a_problem():
    assert selftest.judge([], 4, False)[0] == selftest.PROBLEM


def test_read_records_tolerates_a_missing_file_and_a_torn_line(tmp_path):
    path = tmp_path / "results.jsonl"
    assert selftest.read_records(path) == []
    good = json.dumps({"nodeid": "a.py::t", "outcome": "passed"})
    path.write_text(good + "\n" + good[:10], encoding="utf-8")
    assert [r["nodeid"] for r in selftest.read_records(path)] == ["a.py::t"]


# -- table and exit status ---------------------------------------------------------------------


def _result(name, *attempts):
    result = selftest.FaultResult(name, f"{name} is broken", "some rule")
    for a in attempts:
        result.attempts[a.np] = a
    return result


CAUGHT2 = selftest.Attempt(2, selftest.CAUGHT, ["test_a.py::t[x]"], 1.5, started=0.0, ended=1.5)
# Ran while CAUGHT2 did (2 jobs at once): the fault's wall time is less than its jobs' time.
CAUGHT3 = selftest.Attempt(
    3, selftest.CAUGHT, ["test_a.py::t[x]", "test_b.py::u"], 2.0, started=0.5, ended=2.5
)
MISSED3 = selftest.Attempt(
    3, selftest.MISSED, [], 4.0, "12 tests ran, none failed", started=1.0, ended=5.0
)
HUNG3 = selftest.Attempt(3, selftest.INCONCLUSIVE, [], 9.0, "hung in test_a.py::t")
PROBLEM2 = selftest.Attempt(2, selftest.PROBLEM, [], 1.0, "the backend did not load")
NA2 = selftest.Attempt(2, selftest.NOT_SHOWN, detail="shows only with 3+ ranks")


def test_verdicts():
    assert _result("f", CAUGHT2, CAUGHT3).verdict == "yes"
    assert _result("f", CAUGHT2, MISSED3).verdict == "no"
    assert _result("f", NA2, CAUGHT3).verdict == "yes"
    assert _result("f", NA2).verdict == "n/a"
    assert _result("f", CAUGHT2, HUNG3).verdict == "inconclusive"
    assert _result("f", PROBLEM2, HUNG3).verdict == "problem"
    assert _result("f", PROBLEM2, MISSED3).verdict == "no"
    assert _result("f", CAUGHT2, CAUGHT3).duration == pytest.approx(3.5)
    assert _result("f", CAUGHT2, CAUGHT3).wall == pytest.approx(2.5)
    assert _result("f", NA2).wall == 0.0


def test_table_lists_status_per_rank_count_and_catching_tests():
    results = [_result("good_fault", CAUGHT2, CAUGHT3), _result("sneaky", NA2, MISSED3)]
    lines = selftest.format_table(results, [2, 3]).splitlines()
    header = ["fault", "np=2", "np=3", "caught", "wall", "job", "time", "caught", "by"]
    assert lines[0].split() == header
    good, sneaky = lines[1].split(None, 6), lines[2].split(None, 6)
    assert good[:6] == ["good_fault", "caught", "caught", "yes", "2.5s", "3.5s"]
    assert good[6] == "test_a.py::t[x]; test_b.py::u"  # each test once
    assert sneaky[:6] == ["sneaky", "n/a", "missed", "no", "4.0s", "4.0s"]
    assert "np=3: 12 tests ran, none failed" in sneaky[6]
    # Columns line up: every row starts its verdict where the header's does.
    column = lines[0].index("caught ")
    assert all(line[column:].split()[0] in ("caught", "yes", "no") for line in lines)


def test_markdown_table_has_a_row_per_fault():
    md = selftest.markdown_table([_result("a", CAUGHT2), _result("b", MISSED3)], [2, 3])
    rows = md.splitlines()
    assert len(rows) == 4 and rows[1].startswith("|---")
    assert "`test_a.py::t[x]`" in rows[2] and "| no |" in rows[3]


def test_exit_status():
    passed, failed = selftest.ReferenceResult(0), selftest.ReferenceResult(1)
    skipped = selftest.ReferenceResult(None)
    good = [_result("a", CAUGHT2, CAUGHT3), _result("b", NA2)]
    assert selftest.exit_status(passed, good) == 0
    assert selftest.exit_status(skipped, good) == 0
    assert selftest.exit_status(failed, good) == 1
    assert selftest.exit_status(passed, [*good, _result("c", CAUGHT2, MISSED3)]) == 1
    assert selftest.exit_status(passed, [*good, _result("c", CAUGHT2, HUNG3)]) == 1
    assert selftest.exit_status(passed, [*good, _result("c", PROBLEM2)]) == 1


def test_summary_line_names_each_kind():
    line = selftest.summary_line(
        [_result("a", CAUGHT2), _result("b", HUNG3), _result("c", MISSED3)]
    )
    assert line.startswith("1 of 3 caught in a call phase")
    assert "NOT caught: c" in line and "inconclusive: b" in line
    assert selftest.summary_line([_result("a", CAUGHT2)]).startswith("every fault caught")


def test_fault_jobs_get_a_backend_deadline_below_the_harness_one():
    opts = selftest.SelftestOptions(timeout=40)
    seconds = float(selftest.fault_environment(opts)["REFERENCE_TIMEOUT"])
    assert 0 < seconds < opts.timeout
    # A hang fault costs the backend deadline once per rank count: seconds, not half a minute.
    assert seconds <= selftest.BACKEND_DEADLINE_MAX
    short = selftest.SelftestOptions(timeout=8)
    assert float(selftest.fault_environment(short)["REFERENCE_TIMEOUT"]) == 4


def test_select_and_usage_errors(capsys):
    assert [f.name for f in selftest.select([])] == list(faulty.FAULTS)
    assert [f.name for f in selftest.select(["none", "none"])] == ["none"]
    with pytest.raises(ValueError, match="unknown fault"):
        selftest.select(["bogus"])
    assert selftest.main(["--fault", "bogus", "--skip-reference"]) == 2
    assert selftest.main(["--np", "0"]) == 2
    assert selftest.main(["--list"]) == 0
    assert "all_sum_drops_last_rank" in capsys.readouterr().out


# -- end to end (MPI) --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs mpiexec")
def test_a_fault_that_is_no_fault_is_reported_missed(tmp_path):
    out = io.StringIO()
    opts = selftest.SelftestOptions(
        nps=[2],
        faults=["none", "send_returns_none"],
        timeout=60,
        report_dir=tmp_path,
        reference=False,
    )
    assert selftest.selftest(opts, stream=out) == 1
    text = out.getvalue()
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert rows["none"][1:3] == ["missed", "no"], text
    assert rows["send_returns_none"][1:3] == ["caught", "yes"], text
    assert "test_send_recv.py::" in rows["send_returns_none"][5], text  # after wall, job time
    assert "1 fault(s) NOT caught: none" in text  # the control is a miss, never a catch
    report = json.loads((tmp_path / "selftest.json").read_text())
    assert report["ok"] is False
    assert {f["name"]: f["caught"] for f in report["faults"]} == {
        "none": "no",
        "send_returns_none": "yes",
    }
    assert (tmp_path / "selftest.md").read_text().count("\n|") == 4  # header, rule, 2 faults


def test_fault_jobs_resume_only_past_tests_that_do_not_count(tmp_path):
    def job(returncode, killed=False):
        return runner.JobOutcome(returncode, killed, tmp_path / "out", tmp_path, 1.0)

    setup_error = [_record("test_a.py::t1", "passed"), _record("test_a.py::t2", "error")]
    hung = [_record("test_a.py::t1", "hung")]
    assert selftest._resumable(setup_error, job(1))
    assert selftest._resumable(hung, job(3))
    assert not selftest._resumable(hung, job(None, killed=True))  # no record to skip it by
    assert not selftest._resumable(setup_error, job(0))  # the session ran to its end
    assert not selftest._resumable([_record("test_a.py::t", "wrong")], job(1))
    assert not selftest._resumable([], job(134))


def test_fault_job_launcher_adds_the_backend_deadline():
    class Plain:
        flavor = "mpich"

        def environment(self, np, base=None):
            return {"BASE": "1", "NP": str(np)}

    wrapped = selftest._WithEnvironment(Plain(), {"REFERENCE_TIMEOUT": "30"})
    assert wrapped.environment(2) == {"BASE": "1", "NP": "2", "REFERENCE_TIMEOUT": "30"}
    assert wrapped.flavor == "mpich"


def test_judge_classifies_every_outcome_the_records_define():
    # A new outcome in conformance.records must get a decision here: does it catch a fault?
    not_failures = {"passed", "skipped", "xfailed", "xpassed", "unsupported"}
    classified = (
        selftest.CALL_FAILURES | selftest.MAYBE_CALL_FAILURES | selftest.BROKEN_RUN | not_failures
    )
    assert {o.value for o in records.Outcome} <= classified
