"""Observing the survivors of a killed rank (runs inside every rank of a kill test's job).

Contract (SEMANTICS.md, "Dead and stalled peers (robust)"; docs/contracts.md, "Plugin <-> runner"):

- A kill test (marker :data:`KILLS_RANK`) runs only in a job whose launcher keeps the other ranks
  alive when one dies: ``python -m conformance run`` starts each such test in a job of its own
  (MPICH's Hydra with ``-disable-auto-cleanup``, each rank under a shell that absorbs the launcher's
  failure signal) and sets :data:`ENV` to ``1`` in it. Anywhere else (a plain ``mpiexec ... pytest
  --with-mpi``, a launcher without that support) the test skips with :data:`UNAVAILABLE`: a killed
  rank there ends every rank, and the user's session with it.
- Before the kill, every rank calls :func:`prepare`: a communicator of the survivors is split off
  the suite's control plane (MPI), so the verdict never waits on the dead rank.
- Each survivor runs its backend call under :func:`observe`: in a thread, watched for the backend's
  deadline plus :data:`conformance.specs.timing.ALLOWANCE`. What it did is one of
  ``raised`` (an exception within that time: the contract's outcome; its message must name the
  dead rank where the survivor waited on it directly), ``returned`` (a result although a peer
  it needed was dead), ``late`` (raised or returned past the time), ``hung`` (still blocked: its
  stack is kept) or ``idle`` (this rank had no call in the test). A survivor that never reports
  (it died too) is ``crashed``.
- :func:`finish` gathers the observations on rank 0 (never the victim), which writes the test's
  record (outcome ``passed``, ``wrong``, ``hung`` or ``crashed``, with each rank's account); then
  every survivor leaves with ``os._exit`` and status :data:`isolation.EXIT_ISOLATED` (MPI_Finalize
  cannot complete with a dead member), and the runner resumes in a fresh job.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from conformance.harness import isolation
from conformance.records import Outcome, make_record

#: Set to ``1`` by the runner in a job whose launcher keeps survivors alive.
ENV = "CONFORMANCE_SURVIVORS"
#: Marker of a test that SIGKILLs a rank.
KILLS_RANK = "kills_rank"
MARKER_HELP = (
    f"{KILLS_RANK}: the test SIGKILLs a rank; it runs only in a job of its own that keeps the "
    "survivors alive (python -m conformance run)"
)
UNAVAILABLE = (
    "kill tests run only under `python -m conformance run`: it gives each one a job whose "
    "launcher keeps the survivors of a killed rank alive, so their outcome can be observed; "
    "under a plain mpiexec the kill would end every rank and this session"
)
#: How long rank 0 waits for the other survivors' reports past the observation time.
REPORT_GRACE = 10.0
_TAG_REPORT = 7101
_TAG_DONE = 7102


def available() -> bool:
    """Whether this job keeps the survivors of a killed rank alive (the runner said so)."""
    return os.environ.get(ENV) == "1"


def require() -> None:
    """Skip the calling test with :data:`UNAVAILABLE` unless survivors can be observed."""
    if not available():
        pytest.skip(UNAVAILABLE)


@dataclasses.dataclass
class Observation:
    """What one survivor's backend call did."""

    rank: int
    kind: str  # raised | returned | late | hung | idle | crashed
    elapsed: float = 0.0
    detail: str = ""
    stack: str = ""
    #: The call's result (kept on this rank only: ``finish`` sends the rest).
    result: Any = dataclasses.field(default=None, repr=False)


def prepare(victim: int) -> Any:
    """Collective over every rank, before the kill: the survivors' communicator (None on the
    victim, and in a world without MPI)."""
    from conformance.harness import control

    return control.current().split_without(victim)


def observe(call: Callable[[], Any], limit: float, rank: int) -> Observation:
    """Run ``call`` in a thread and report what it did within ``limit`` seconds."""
    box: dict[str, Any] = {}

    def run() -> None:
        start = time.monotonic()
        try:
            box["result"] = call()
        except BaseException as exc:  # any exception is the observation
            box["error"] = exc
        box["elapsed"] = time.monotonic() - start

    thread = threading.Thread(target=run, name="survivor-call", daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        frame = sys._current_frames().get(thread.ident or -1)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
        waited = time.monotonic() - start
        return Observation(rank, "hung", waited, f"still blocked after {waited:.2f} s", stack)
    elapsed = float(box["elapsed"])
    error = box.get("error")
    if error is not None:
        text = f"{type(error).__name__}: {error}"
        kind = "raised" if elapsed <= limit else "late"
        return Observation(rank, kind, elapsed, text)
    kind = "returned" if elapsed <= limit else "late"
    result = box.get("result")
    return Observation(rank, kind, elapsed, f"returned {_short(result)}", result=result)


def idle(rank: int) -> Observation:
    """The observation of a survivor with no call in the test."""
    return Observation(rank, "idle")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def judge(
    observations: list[Observation],
    victim: int,
    limit: float,
    accept_result: bool = False,
    must_name: bool = True,
) -> tuple[Outcome, list[int], str]:
    """The test's outcome, the ranks at fault and the message, from every survivor's account.

    ``accept_result``: a result returned in time is acceptable (the victim may have contributed
    before it died); the caller checks that result itself. ``must_name``: an error must name the
    dead rank (where each survivor waited on it directly; in the middle of a collective a
    survivor may wait on a live peer that waits on the dead one).
    """
    lines, hung, wrong, crashed = [], [], [], []
    for obs in sorted(observations, key=lambda o: o.rank):
        where = f"rank {obs.rank}"
        if obs.kind == "idle":
            lines.append(f"{where}: no call in this test")
        elif obs.kind == "crashed":
            crashed.append(obs.rank)
            lines.append(f"{where}: never reported (it died too): {obs.detail}")
        elif obs.kind == "hung":
            hung.append(obs.rank)
            lines.append(f"{where}: blocked past the deadline + allowance ({limit:g} s)")
        elif obs.kind == "late":
            wrong.append(obs.rank)
            lines.append(
                f"{where}: ended only after {obs.elapsed:.2f} s ({limit:g} s allowed): {obs.detail}"
            )
        elif obs.kind == "returned" and not accept_result:
            wrong.append(obs.rank)
            lines.append(f"{where}: {obs.detail} with rank {victim} dead (expected an error)")
        elif obs.kind == "raised" and must_name and not re.search(rf"\b{victim}\b", obs.detail):
            wrong.append(obs.rank)
            lines.append(f"{where}: the error does not name the dead rank {victim}: {obs.detail}")
        else:
            lines.append(f"{where}: {obs.detail} after {obs.elapsed:.2f} s")
    message = f"rank {victim} SIGKILLed; survivors: " + "; ".join(lines)
    if hung:
        return Outcome.HUNG, hung, message
    if crashed:
        return Outcome.CRASHED, crashed, message
    if wrong:
        return Outcome.WRONG, wrong, message
    return Outcome.PASSED, [], message


def finish(
    config: pytest.Config,
    item: pytest.Item,
    comm: Any,
    mine: Observation,
    victim: int,
    limit: float,
    accept_result: bool = False,
    must_name: bool = True,
) -> None:
    """Gather the survivors' observations on rank 0, which records the test; then end this rank
    (never returns). ``comm`` is :func:`prepare`'s communicator (rank 0 of it is world rank 0)."""
    mine = dataclasses.replace(mine, result=None)
    try:
        if comm.Get_rank() == 0:
            observations = _collect(comm, mine, limit + REPORT_GRACE)
            outcome, ranks, message = judge(observations, victim, limit, accept_result, must_name)
            _write(config, item, outcome, ranks, message, observations, limit)
            for peer in range(1, comm.Get_size()):
                comm.isend(None, dest=peer, tag=_TAG_DONE)
        else:
            comm.isend(pickle.dumps(mine), dest=0, tag=_TAG_REPORT)
            _wait(comm.irecv(source=0, tag=_TAG_DONE), limit + 2 * REPORT_GRACE)
        # Let the last messages leave before the process goes.
        time.sleep(0.2)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(isolation.EXIT_ISOLATED)


def _wait(request: Any, seconds: float) -> Any:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        done, value = request.test()
        if done:
            return value
        time.sleep(0.005)
    return None


def _collect(comm: Any, mine: Observation, seconds: float) -> list[Observation]:
    peers = range(1, comm.Get_size())
    requests = {peer: comm.irecv(source=peer, tag=_TAG_REPORT) for peer in peers}
    found = [mine]
    end = time.monotonic() + seconds
    while requests and time.monotonic() < end:
        for peer, request in list(requests.items()):
            done, value = request.test()
            if done:
                found.append(pickle.loads(value))
                del requests[peer]
        time.sleep(0.005)
    for peer in requests:
        # Survivor ranks are the world ranks other than the victim, in order: sub rank r is world
        # rank r as long as the victim is the last rank.
        found.append(Observation(peer, "crashed", detail=f"no report within {seconds:g} s"))
    return found


def _write(
    config: pytest.Config,
    item: pytest.Item,
    outcome: Outcome,
    ranks: list[int],
    message: str,
    observations: list[Observation],
    limit: float,
) -> None:
    from conformance.harness.plugin import HARNESS

    harness = config.stash[HARNESS]
    stacks = {str(o.rank): o.stack for o in observations if o.stack}
    harness.log.write(f"{item.nodeid}: survivors observed: {outcome}: {message}")
    if harness.results is None:
        return
    failure = {} if outcome == Outcome.PASSED else {"phase": "call", "failing_ranks": ranks}
    record = make_record(
        item.nodeid,
        outcome,
        **failure,
        message=message,
        longrepr="\n\n".join(f"rank {r}:\n{s}" for r, s in sorted(stacks.items())),
        duration=max((o.elapsed for o in observations), default=limit),
        stacks=stacks,
        **harness.item_fields(item),
    )
    harness.results.write(record)
