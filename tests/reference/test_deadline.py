"""Deadlines: the timeout setting and waiting on MPI requests (reference.deadline)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from mpi4py import MPI

import reference
from reference import deadline

SHORT = 0.2


@pytest.fixture
def self_comm():
    """A private duplicate of COMM_SELF, so stray messages cannot reach any other test."""
    dup = MPI.COMM_SELF.Dup()
    yield dup
    dup.Free()


def test_set_timeout_returns_the_previous_value_and_get_timeout_reads_it():
    """set_timeout stores a float and hands back the value it replaced."""
    start = reference.get_timeout()
    assert reference.set_timeout(2.5) == start
    assert reference.get_timeout() == 2.5
    assert reference.set_timeout(7) == 2.5
    assert reference.get_timeout() == 7.0 and type(reference.get_timeout()) is float
    reference.set_timeout(start)


@pytest.mark.parametrize("bad", [0, -1, 0.0, -0.5, math.inf, math.nan], ids=repr)
def test_set_timeout_rejects_non_positive_or_non_finite(bad):
    """Zero, negative, infinite and NaN deadlines are a ValueError and change nothing."""
    before = reference.get_timeout()
    with pytest.raises(ValueError, match="positive"):
        reference.set_timeout(bad)
    assert reference.get_timeout() == before


SCRIPT = """
import importlib, json, os, sys
import reference.deadline as deadline
results = {}
for value in json.loads(sys.argv[1]):
    if value is None:
        os.environ.pop("REFERENCE_TIMEOUT", None)
    else:
        os.environ["REFERENCE_TIMEOUT"] = value
    try:
        importlib.reload(deadline)
        results[str(value)] = ["ok", deadline.get_timeout()]
    except Exception as error:
        results[str(value)] = [type(error).__name__, str(error)]
print(json.dumps(results))
"""


def test_reference_timeout_environment_variable_is_parsed_at_import():
    """REFERENCE_TIMEOUT sets the initial deadline; unset means 300 s; junk fails the import."""
    values = [None, "2.5", "17", " 4 ", "1e-3", "abc", "", "0", "-3", "inf", "nan"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "HYDRA", "MPI"))}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(values)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results["None"] == ["ok", 300.0]
    assert results["2.5"] == ["ok", 2.5]
    assert results["17"] == ["ok", 17.0]
    assert results[" 4 "] == ["ok", 4.0]
    assert results["1e-3"] == ["ok", 0.001]
    for junk in ("abc", "", "0", "-3", "inf", "nan"):
        kind, message = results[junk]
        assert kind == "ValueError", (junk, results[junk])
        assert "REFERENCE_TIMEOUT" in message


def test_wait_all_returns_when_everything_completes(self_comm):
    """Requests that complete in time: wait_all returns and never calls on_timeout."""
    data = np.arange(5, dtype=np.int64)
    out = np.zeros(5, np.int64)
    requests = [self_comm.Irecv(out, 0, 3), self_comm.Isend(data, 0, 3)]

    def fail(pending, seconds):
        raise AssertionError("on_timeout called")

    deadline.wait_all(requests, fail)
    assert out.tolist() == data.tolist()


def test_wait_all_raises_the_callers_error_with_pending_indices_and_cancels(self_comm):
    """At the deadline wait_all raises on_timeout(pending, seconds) and cancels what is pending.

    The cancelled receive's buffer is never written, even when a matching message comes later.
    """
    reference.set_timeout(SHORT)
    data = np.arange(4, dtype=np.int32)
    done_buffer = np.zeros(4, np.int32)
    never_buffer = np.full(4, -7, np.int32)
    requests = [
        self_comm.Isend(data, 0, 1),
        self_comm.Irecv(never_buffer, 0, 99),  # nothing is ever sent with tag 99 in time
        self_comm.Irecv(done_buffer, 0, 1),
    ]
    seen = []

    class Late(Exception):
        pass

    def on_timeout(pending, seconds):
        seen.append((list(pending), seconds))
        return Late("late")

    start = time.monotonic()
    with pytest.raises(Late):
        deadline.wait_all(requests, on_timeout)
    elapsed = time.monotonic() - start
    assert seen == [([1], SHORT)]
    assert SHORT * 0.9 <= elapsed < SHORT + 5
    status = MPI.Status()
    requests[1].Wait(status)
    assert status.Is_cancelled()
    assert done_buffer.tolist() == data.tolist()
    # A message sent afterwards goes to a new receive, not into the cancelled one's buffer.
    late = np.array([9, 8, 7, 6], np.int32)
    fresh = np.zeros(4, np.int32)
    self_comm.Sendrecv(late, 0, 99, fresh, 0, 99)
    assert fresh.tolist() == late.tolist()
    assert never_buffer.tolist() == [-7] * 4


def test_wait_or_cancel_cancels_an_unmatched_receive_and_raises(self_comm):
    """At the deadline an unmatched receive is cancelled (its buffer is never written, a later
    message goes to the next receive) and on_timeout(seconds) is raised."""
    reference.set_timeout(SHORT)
    never_buffer = np.full(3, -5, np.int64)
    request = self_comm.Irecv(never_buffer, 0, 98)

    class Late(Exception):
        pass

    seen = []
    start = time.monotonic()
    with pytest.raises(Late):
        deadline.wait_or_cancel(request, lambda seconds: seen.append(seconds) or Late())
    assert SHORT * 0.9 <= time.monotonic() - start < SHORT + 5
    assert seen == [SHORT]
    late, fresh = np.array([1, 2, 3], np.int64), np.zeros(3, np.int64)
    self_comm.Sendrecv(late, 0, 98, fresh, 0, 98)
    assert fresh.tolist() == [1, 2, 3]
    assert never_buffer.tolist() == [-5] * 3


def test_wait_or_cancel_delivers_a_receive_matched_before_the_deadline(self_comm):
    """A receive whose message is there completes without on_timeout being called."""
    out = np.zeros(2, np.int64)
    send = self_comm.Isend(np.array([4, 5], np.int64), 0, 97)
    request = self_comm.Irecv(out, 0, 97)

    def fail(seconds):
        raise AssertionError("on_timeout called")

    deadline.wait_or_cancel(request, fail)
    send.Wait()
    assert out.tolist() == [4, 5]


def test_poll_returns_the_first_value_that_is_not_none():
    """poll keeps probing until the probe returns something, and returns that."""
    calls = []

    def probe():
        calls.append(None)
        return "found" if len(calls) == 500 else None

    assert deadline.poll(probe, lambda seconds: AssertionError("timed out")) == "found"
    assert len(calls) == 500
    assert deadline.poll(lambda: 0, lambda seconds: AssertionError("timed out")) == 0


def test_poll_times_out_with_the_callers_error():
    """A probe that never finds anything: poll raises on_timeout(seconds) after the deadline."""
    reference.set_timeout(SHORT)
    seen = []

    def on_timeout(seconds):
        seen.append(seconds)
        return TimeoutError("nothing")

    start = time.monotonic()
    with pytest.raises(TimeoutError, match="nothing"):
        deadline.poll(lambda: None, on_timeout)
    elapsed = time.monotonic() - start
    assert seen == [SHORT]
    assert SHORT * 0.9 <= elapsed < SHORT + 5
