"""Units of the harness in one process: outcome combination, collective helpers, strategies,
lockstep, the watchdog."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance import records
from conformance.backend import Capabilities, load_backend
from conformance.harness import collective, control, outcomes
from conformance.harness.collective import (
    CollectiveFailure,
    collective_assert,
    collective_raises,
    expect_unsupported,
)
from conformance.harness.lockstep import LockstepFailure, canonical, lockstep
from conformance.harness.outcomes import RankOutcome, combine
from conformance.harness.watchdog import EXIT_HUNG, Watchdog
from conformance.strategies import (
    dtype_names,
    rank_array,
    shapes,
    value_bound,
    world_arrays,
)

PASS = RankOutcome("passed")
FAIL = RankOutcome("failed", "AssertionError: x", "traceback text", failure="wrong")
RAISED = RankOutcome("failed", "RuntimeError: y", "traceback text", failure="error")
SKIP = RankOutcome("skipped", "Skipped: why")


class TestCombine:
    def test_all_pass(self):
        assert combine([PASS, PASS]).outcome == "passed"

    def test_one_failure_fails_all_and_names_it(self):
        verdict = combine([PASS, FAIL, PASS])
        assert (verdict.outcome, verdict.failing_ranks) == ("failed", [1])
        assert verdict.message == "failed on ranks [1] of 3: AssertionError: x"
        assert "rank 1" in verdict.longrepr and "traceback text" in verdict.longrepr

    def test_identical_failures_are_shown_once(self):
        verdict = combine([FAIL, FAIL])
        assert verdict.longrepr.count("traceback text") == 1
        assert "ranks [0, 1] (same error" in verdict.longrepr

    def test_blame_replaces_the_raising_ranks(self):
        blaming = RankOutcome("failed", "CollectiveFailure: y", "tb", blamed=(2,))
        verdict = combine([blaming, blaming, blaming])
        assert verdict.failing_ranks == [2]
        assert verdict.message.startswith("failed on ranks [2] of 3 (raised on ranks [0, 1, 2])")

    def test_skips(self):
        assert combine([SKIP, SKIP]).outcome == "skipped"
        partial = combine([PASS, SKIP])
        assert (partial.outcome, partial.failing_ranks) == ("failed", [1])
        assert "a skip must happen on every rank" in partial.message

    def test_xfail(self):
        xfailed = RankOutcome("xfailed", wasxfail="known")
        xpassed = RankOutcome("xpassed", wasxfail="known")
        assert combine([xfailed, xpassed]).outcome == "xfailed"
        assert combine([xpassed, xpassed]).outcome == "xpassed"

    def test_duration_is_the_slowest_rank(self):
        assert (
            combine(
                [RankOutcome("passed", duration=1.0), RankOutcome("passed", duration=3.0)]
            ).duration
            == 3.0
        )

    def test_summary_of_phases(self):
        ok = combine([PASS])
        bad = combine([FAIL])
        assert outcomes.summarize({"setup": bad, "teardown": ok})["outcome"] == "error"
        assert outcomes.summarize({"setup": ok, "call": ok, "teardown": bad})["outcome"] == "error"
        summary = outcomes.summarize({"setup": ok, "call": bad, "teardown": bad})
        assert summary["outcome"] == "wrong" and summary["failing_ranks"] == [0]

    def test_a_failed_call_is_wrong_only_when_every_failing_rank_asserted(self):
        assert combine([FAIL, FAIL]).failure == "wrong"
        assert combine([FAIL, RAISED]).failure == "error"
        assert combine([PASS, RAISED]).failure == "error"
        assert combine([PASS, SKIP]).failure == "error"  # a one-sided skip is the suite's error
        ok = combine([PASS])
        raised = {"setup": ok, "call": combine([RAISED]), "teardown": ok}
        assert outcomes.summarize(raised)["outcome"] == "error"

    def test_local_failure_kind_follows_the_exception(self):
        assert outcomes._failure_kind(CollectiveFailure("m", [0])) == "wrong"
        assert outcomes._failure_kind(LockstepFailure("m", [0])) == "wrong"
        assert outcomes._failure_kind(AttributeError("no attribute")) == "error"
        assert outcomes._failure_kind(None) == "error"


class TestHelpers:
    """Every rank behaves the same here, so these hold in a world of any size."""

    def test_collective_assert(self):
        size = control.current().size
        collective_assert(True, "fine")
        with pytest.raises(CollectiveFailure, match=rf"failed on ranks \[0.*\] of {size}") as info:
            collective_assert(False, "nope")
        assert info.value.failing_ranks == list(range(size))
        assert "nope" in str(info.value)

    def test_collective_raises_context_and_call(self):
        with collective_raises(ValueError, match="bad") as info:
            raise ValueError("bad input")
        assert isinstance(info.value, ValueError)
        collective_raises(ZeroDivisionError, lambda: 1 / 0)
        with pytest.raises(CollectiveFailure, match="rank 0: returned normally"):
            collective_raises(ValueError, lambda: None)
        with pytest.raises(CollectiveFailure, match="rank 0: raised TypeError"):
            with collective_raises(ValueError):
                raise TypeError("other")
        with pytest.raises(CollectiveFailure, match="does not match"):
            collective_raises(ValueError, int, "x", match="^never$")

    def test_expect_unsupported(self):
        backend = load_backend("fake_adapter")
        x = np.zeros(2, dtype=np.float32)
        collective.begin_test()
        assert expect_unsupported(backend, "sum_scatter", backend.sum_scatter, x)
        assert not expect_unsupported(backend, "all_sum", backend.all_sum, x)
        assert expect_unsupported(
            backend,
            "all_sum",
            lambda: (_ for _ in ()).throw(TypeError("complex64 is not supported")),
            for_dtype="complex64",
        )
        assert collective.declared_checks() == ["sum_scatter", "all_sum[complex64]"]
        collective.begin_test()
        assert collective.declared_checks() == []
        with pytest.raises(CollectiveFailure, match="returned normally"):
            expect_unsupported(
                backend.capabilities, "all_sum", backend.all_sum, x, for_dtype="complex64"
            )

        def times_out() -> None:
            raise TimeoutError("peer never came")

        with pytest.raises(CollectiveFailure, match="raised TimeoutError"):
            expect_unsupported(Capabilities(split=False), "split", times_out)

    def test_expect_unsupported_wants_the_error_the_manifest_names(self):
        """Any exception no longer does: the type and message pattern come from the manifest."""
        no_split = Capabilities(split=False)

        def missing_attribute() -> None:
            raise AttributeError("'Group' object has no attribute 'split'")

        with pytest.raises(CollectiveFailure, match="raised AttributeError"):
            expect_unsupported(no_split, "split", missing_attribute)

        def unrelated() -> None:
            raise RuntimeError("connection reset")

        with pytest.raises(CollectiveFailure, match="does not match"):
            expect_unsupported(no_split, "split", unrelated)
        no_complex = Capabilities(dtypes={"all_max": frozenset({"float32"})})

        def vague() -> None:
            raise TypeError("unsupported type")

        with pytest.raises(CollectiveFailure, match="does not match"):
            expect_unsupported(no_complex, "all_max", vague, for_dtype="complex64")


class TestRecords:
    def test_one_constructor_validates_outcome_and_fields(self):
        record = records.make_record("m.py::t", records.Outcome.WRONG, world_size=2, tier="basic")
        assert (record["schema"], record["kind"], record["outcome"]) == (2, "test", "wrong")
        assert record["failing_ranks"] == [] and record["message"] == ""
        with pytest.raises(ValueError):
            records.make_record("m.py::t", "failed")
        with pytest.raises(ValueError, match="unknown record fields"):
            records.make_record("m.py::t", "passed", colour="red")

    def test_reader_skips_torn_lines_upgrades_schema_1_and_finds_the_header(self, tmp_path):
        path = tmp_path / "results.jsonl"
        results = records.ResultsFile(path)
        results.write(records.make_session(backend="reference", world_size=2))
        results.write(records.make_record("m.py::a", "unsupported", unsupported=["split"]))
        with open(path, "a", encoding="utf-8") as stream:
            stream.write('{"nodeid": "m.py::old", "outcome": "failed"}\n{"nodeid": "m.py::to')
        got = records.read_records(path)
        assert [(r["nodeid"], r["outcome"], r["schema"]) for r in got] == [
            ("m.py::a", "unsupported", 2),
            ("m.py::old", "wrong", 1),
        ]
        assert records.read_session(path)["backend"] == "reference"
        assert records.read_records(tmp_path / "absent.jsonl") == []
        with pytest.raises(ValueError):
            results.write({"kind": "test", "nodeid": "x", "outcome": "bogus"})

    def test_bad_and_good_outcomes(self):
        names = {o.value for o in records.Outcome}
        assert {o.value for o in records.BAD_OUTCOMES} == {"wrong", "error", "hung", "crashed"}
        assert {o.value for o in records.GOOD_OUTCOMES} == {"passed", "unsupported", "xpassed"}
        assert {"skipped", "xfailed"} <= names


class TestStrategies:
    def test_rank_array_is_deterministic_and_rank_dependent(self):
        a = rank_array(5, 0, (4, 3), "int32", world_size=4)
        assert np.array_equal(a, rank_array(5, 0, (4, 3), "int32", world_size=4))
        assert not np.array_equal(a, rank_array(5, 1, (4, 3), "int32", world_size=4))
        assert a.dtype == np.int32 and a.shape == (4, 3)

    @pytest.mark.parametrize("dtype", ["int8", "uint8", "float16", "bfloat16", "complex64", "bool"])
    def test_sums_over_the_world_stay_exact(self, dtype):
        arrays = world_arrays(9, 8, (64,), dtype)
        total = np.sum([a.astype(np.complex128) for a in arrays], axis=0)
        assert np.all(np.abs(total) <= 8 * value_bound(dtype, 8) * 2)
        in_dtype = arrays[0].copy()
        for other in arrays[1:]:
            in_dtype = in_dtype + other if dtype != "bool" else in_dtype | other
        if dtype != "bool":
            assert np.array_equal(in_dtype.astype(np.complex128), total)

    @given(shape=shapes(first_axis_multiple_of=3, max_side=9))
    def test_first_axis_multiple(self, shape):
        assert len(shape) >= 1 and shape[0] % 3 == 0

    @given(shape=shapes())
    def test_shapes_include_0d_and_bounded(self, shape):
        assert len(shape) <= 3 and all(0 <= n <= 4 for n in shape)

    @given(st.data())
    def test_dtype_names_follow_capabilities(self, data):
        caps = Capabilities(dtypes={"all_sum": frozenset({"int8", "float32"})})
        assert data.draw(dtype_names(op="all_sum", capabilities=caps)) in {"int8", "float32"}

    def test_dtype_names_rejects_unknown(self):
        with pytest.raises(ValueError, match="unknown dtype names"):
            dtype_names(include=["float128"])


class TestLockstep:
    def test_canonical_ignores_identity_of_fixtures(self):
        assert canonical(object()) == canonical(object())
        assert canonical(np.arange(3)) != canonical(np.arange(1, 4))
        assert canonical({"shape": (2, 3)}) == canonical({"shape": (2, 3)})

    def test_failure_is_a_lockstep_failure_with_the_traceback(self):
        @given(n=st.integers(0, 100))
        @lockstep
        def check(n):
            assert n < 50, f"{n} too big"

        with pytest.raises(LockstepFailure, match=r"example failed on ranks \[0.*\]") as info:
            check()
        assert "too big" in str(info.value)

    def test_passing_examples_pass(self):
        seen = []

        @given(n=st.integers(0, 100))
        @lockstep
        def check(n):
            seen.append(n)

        check()
        assert len(seen) > 1


class TestWatchdog:
    def _dog(self, tmp_path, hung: list, ended: list, timeout: float = 0.3) -> Watchdog:
        return Watchdog(
            rank=0,
            size=1,
            timeout=timeout,
            stack_dir=tmp_path / "stacks",
            on_hang=lambda label, stacks: hung.append((label, stacks)),
            describe_state=lambda: "state for the test",
            grace=1.0,
            end_job=ended.append,
        )

    def test_deadline_dumps_stacks_and_ends_the_job(self, tmp_path):
        hung, ended = [], []
        dog = self._dog(tmp_path, hung, ended)
        try:
            dog.arm("test-label")
            deadline = time.monotonic() + 10
            while not ended and time.monotonic() < deadline:
                time.sleep(0.05)  # this frame must appear in the dump
        finally:
            dog.stop()
        assert ended == [EXIT_HUNG]
        ((label, stacks),) = hung
        assert label == "test-label" and list(stacks) == [0]
        assert "state for the test" in stacks[0]
        assert "test_deadline_dumps_stacks_and_ends_the_job" in stacks[0]
        assert (tmp_path / "stacks" / "done").exists()

    def test_heartbeat_on_arm_and_pet(self, tmp_path):
        beat = tmp_path / "heartbeat"
        dog = Watchdog(
            rank=0,
            size=1,
            timeout=30,
            stack_dir=tmp_path,
            on_hang=lambda label, stacks: None,
            heartbeat=beat,
        )
        try:
            dog.arm("first")
            assert beat.read_text().split()[1] == "first"
            first = beat.read_text()
            time.sleep(1.1)
            dog.pet()
            assert beat.read_text() != first
        finally:
            dog.stop()

    def test_disarm_and_pet_keep_it_quiet(self, tmp_path):
        hung, ended = [], []
        dog = self._dog(tmp_path, hung, ended, timeout=0.4)
        try:
            dog.arm("petted")
            for _ in range(6):
                time.sleep(0.2)
                dog.pet()
            dog.disarm()
            time.sleep(0.6)
        finally:
            dog.stop()
        assert (hung, ended) == ([], [])
        assert dog._thread not in threading.enumerate()

    def test_a_short_deadline_stays_short_when_petted(self, tmp_path):
        """A deadline armed shorter than the default (an expected hang's) is what pet()
        restarts, and the hang message names it."""
        hung, ended = [], []
        dog = self._dog(tmp_path, hung, ended, timeout=30.0)
        start = time.monotonic()
        try:
            dog.arm("short", 0.3)
            dog.pet()
            while not ended and time.monotonic() - start < 10:
                time.sleep(0.05)
        finally:
            dog.stop()
        assert ended == [EXIT_HUNG] and time.monotonic() - start < 10
        ((label, stacks),) = hung
        assert label == "short" and "no progress within 0.3 s" in stacks[0]


class TestDeclaredCapabilities:
    def test_only_the_manifests_optional_features_are_optional(self):
        from conformance.specs.manifest import declared_unsupported

        ring = Capabilities(
            p2p_topology="neighbours", split=False, sum_scatter=False, send_to_self=False
        )
        found = declared_unsupported(ring)
        assert [(d.feature, d.optional) for d in found] == [
            ("sum_scatter", True),
            ("Group.split", True),
            ("send:neighbours", True),
            ("send:self", True),
        ]
        assert found[0].error_types == ("RuntimeError",) and "sum_scatter" in found[0].error_match
        no_complex = Capabilities(dtypes={"all_max": frozenset({"float32", "int32"})})
        features = {d.feature: d for d in declared_unsupported(no_complex)}
        assert not features["all_max[complex64]"].optional
        assert "every data op takes all 14" in features["all_max[complex64]"].rule
        assert features["all_max[complex64]"].error_match == "(?i)complex64"
        assert "all_min[float32]" in features  # no dtypes listed for all_min: none supported
        no_op = Capabilities(ops=frozenset({"init", "Group", "all_sum"}))
        away = {d.feature for d in declared_unsupported(no_op) if not d.optional}
        assert {"all_max", "send", "recv"} <= away and "sum_scatter" not in away
