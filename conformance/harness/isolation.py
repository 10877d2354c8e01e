"""When a test job can no longer be trusted: runs inside every rank (the plugin asks after each
test) and is read by the runner outside (the exit status and the job-end mark).

Contract (``python -m conformance run --isolate=auto|always|never``; plain pytest: ``never``):

- ``always``: every test ends its job; the runner starts the next one in a fresh job.
- ``auto``: the robust tests run after every other test (so nothing they leave behind can reach a
  core test), and a test ends its job when it may have left state behind: a robust test that did
  not pass and any test marked ``leaves_state``. A backend that declares no cross-rank agreement
  checks (``Capabilities.agreement_checks`` False) can be left with stray bytes in its streams by
  any robust test that moved data, passed or not; after each such test (not skipped) every rank
  runs :func:`check_group` on the world group, and the job ends unless every link of the group
  carried a fresh message intact on every rank within :data:`CHECK_DEADLINE` seconds (a blocked
  link ends the job at the deadline, with status :data:`EXIT_ISOLATED`).
- ``never``: one job runs every test it can.
- A job ended this way exits with :data:`EXIT_ISOLATED` after recording the test; the runner
  resumes with a fresh job. A hung or crashed test ends its job anyway, and so does a kill test
  (its survivors leave with this status, ``conformance.harness.survivors``).
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np

MODES: tuple[str, ...] = ("auto", "always", "never")
#: Exit status of a job that stopped after a test it could no longer be trusted past.
EXIT_ISOLATED = 7
#: Marker: the test may leave backend state behind whatever its outcome.
LEAVES_STATE = "leaves_state"
MARKER_HELP = (
    f"{LEAVES_STATE}: the test may leave backend state behind; "
    "under --isolate=auto the next test gets a fresh job"
)
#: Outcomes after which a robust test's job is still trusted.
TRUSTED_OUTCOMES = frozenset({"passed", "skipped", "xfailed", "xpassed", "unsupported"})
#: What :func:`after_test` decides: the job goes on, goes on only if :func:`check_group` finds
#: the group clean, or ends.
KEEP, CHECK, END = "keep", "check", "end"
#: Seconds :func:`check_group` may take before the job is ended (a link left blocked). Its few
#: calls on a handful of bytes take milliseconds on a working group.
CHECK_DEADLINE = 5.0


class _Marked(Protocol):
    def iter_markers(self, name: str | None = None) -> Iterable[Any]: ...


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`; ValueError naming them otherwise."""
    if mode not in MODES:
        raise ValueError(f"isolation mode must be one of {list(MODES)}, not {mode!r}")
    return mode


def run_order(items: Sequence[Any], level_of: Any) -> list[Any]:
    """``items`` with the robust tests moved after the others (stable otherwise)."""
    return sorted(items, key=lambda item: level_of(item) == "robust")


def after_test(
    mode: str,
    level: str | None,
    outcome: str | None,
    item: _Marked,
    agreement_checks: bool = True,
) -> str:
    """:data:`KEEP`, :data:`CHECK` or :data:`END`: what the job needs after a test of ``level``
    that ended with ``outcome`` (a hung or crashed test has ended its job already)."""
    if mode == "always":
        return END
    if mode != "auto":
        return KEEP
    if any(True for _ in item.iter_markers(name=LEAVES_STATE)):
        return END
    if level != "robust" or outcome == "skipped":  # a skipped test moved no data
        return KEEP
    if not agreement_checks:
        return CHECK
    return KEEP if str(outcome) in TRUSTED_OUTCOMES else END


def ends_job(
    mode: str,
    level: str | None,
    outcome: str | None,
    item: _Marked,
    agreement_checks: bool = True,
) -> bool:
    """Whether the job must end after a test of ``level`` that ended with ``outcome`` when the
    group is not checked (:func:`after_test` says :data:`CHECK`: it ends)."""
    return after_test(mode, level, outcome, item, agreement_checks) != KEEP


def check_token(nodeid: str) -> int:
    """A number no test sends: derived from the node id of the test just run (the same on every
    rank), below 2**40 so that sums of a few ranks' values stay exact in int64."""
    return int.from_bytes(hashlib.sha256(nodeid.encode()).digest()[:5], "little") | 1


def _values(token: int, rank: int, n: int) -> np.ndarray:
    # Distinct per rank and position, none zero: stray bytes read in their place cannot match.
    return (np.int64(token) + np.int64(rank + 1) * 7919 + np.arange(n, dtype=np.int64)).astype(
        np.int64
    )


def check_group(backend: Any, group: Any, token: int) -> list[str]:
    """Findings (empty: clean) from sending fresh values over every link of ``group``.

    Collective: every rank of ``group`` calls it at the same time, after a test that may have
    left bytes in the backend's streams or a link blocked. One ``all_sum`` and one
    ``all_gather`` (each ring link in the direction those use), then, where the backend
    declares send and recv, a message to the right neighbour and, above two ranks, one to the
    left (neighbours are reachable in either ``p2p_topology``), each checked on arrival. Stray
    bytes ahead of a message are read in its place, so the values differ; a link that never
    delivers blocks the caller (bound it with :func:`deadline`). Raises nothing: an exception
    of a call is a finding.
    """
    rank, size = group.rank(), group.size()
    n = 2 * size  # at least one element per rank: the ring's regular path, not its small one
    mine = _values(token, rank, n)
    everyone = [_values(token, r, n) for r in range(size)]
    findings: list[str] = []

    def run(what: str, expected: np.ndarray | None, call: Callable[[], Any]) -> None:
        try:
            out = call()
            backend.evaluate(out)
            got = None if expected is None else np.asarray(backend.to_numpy(out))
        except Exception as exc:  # the group's state is what is checked; any error is a finding
            findings.append(f"{what} raised {type(exc).__name__}: {exc}")
            return
        if got is not None and (got.shape != expected.shape or not np.array_equal(got, expected)):
            findings.append(f"{what} returned other values than were sent")

    run(
        "all_sum",
        np.sum(everyone, axis=0),
        lambda: backend.all_sum(backend.asarray(mine), group=group),
    )
    run(
        "all_gather",
        np.concatenate(everyone),
        lambda: backend.all_gather(backend.asarray(mine), group=group),
    )
    capabilities = backend.capabilities
    if size < 2 or not (capabilities.supports("send") and capabilities.supports("recv")):
        return findings
    int64 = backend.dtype("int64")
    right, left = (rank + 1) % size, (rank - 1) % size
    steps = [(right, left)] if size == 2 else [(right, left), (left, right)]
    for dst, src in steps:
        # Even ranks send first, odd ranks receive first: no cycle of senders waiting on each
        # other even where a send waits for its receiver.
        send = functools.partial(backend.send, backend.asarray(mine), dst, group=group)
        recv = functools.partial(backend.recv, (n,), int64, src, group=group)
        expected = _values(token, src, n)
        if rank % 2 == 0:
            run(f"send to {dst}", None, send)
            run(f"recv from {src}", expected, recv)
        else:
            run(f"recv from {src}", expected, recv)
            run(f"send to {dst}", None, send)
    return findings


@contextmanager
def deadline(seconds: float, on_expiry: Callable[[], None]) -> Iterator[None]:
    """Run the block; call ``on_expiry`` from a watcher thread if it has not finished within
    ``seconds`` (``on_expiry`` must end the process: the block may be stuck in native code).
    Also bounds the MLX adapter's ring formation."""
    done = threading.Event()

    def watch() -> None:
        if not done.wait(seconds):
            on_expiry()

    thread = threading.Thread(target=watch, name="conformance-deadline", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
