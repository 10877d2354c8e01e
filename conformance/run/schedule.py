"""Which jobs of a run may run at the same time.

Contract:

- A run has two phases, one after the other (:func:`phases`): first every test that is not
  timed, then the timed ones (``conformance.harness.levels.TIMED``: they measure how late the
  backend raises after a deadline or a dead peer). The untimed tests are CPU-bound and the jobs
  of different rank counts run beside each other; the timed jobs spend their time waiting, and
  run only beside each other, so no CPU-bound job can make a backend look late.
- Within a phase each rank count's jobs run one after the other (in its own thread: the jobs are
  processes), and the rank counts run at the same time while the ranks in flight stay within
  a :class:`RankBudget`. A job that alone exceeds the budget runs when nothing else does, so a
  budget of 1 runs one job at a time (the rank counts in order).
- :func:`run_all` runs one function per rank count, largest first, and re-raises in the caller
  the first exception a thread raised (after every thread ended). An interrupt (SIGINT/SIGTERM
  ends every job and raises in the main thread) does not cut the wait short: the threads end
  once their jobs have, and the interrupt is raised again afterwards.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

#: Ranks in flight per core by default: enough for the default run's rank counts 1..4 to run all
#: at once on 2 cores. Their jobs spend much of their time waiting on each other's messages:
#: measured on 2 cores (load 5-7 from other work), all four at once took 94 s, 6 ranks at once
#: (4 beside 1 or 2, then 3) 171 s, and the 4-rank job alone took about as long either way.
RANKS_PER_CORE = 5


def default_budget(cores: int) -> int:
    """The default rank budget on a machine with ``cores`` cores."""
    return RANKS_PER_CORE * max(1, cores)


def phases(collected: Sequence[str], info: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """``collected`` split into the run's phases, in order (empty ones left out): the tests not
    marked timed in the collection ``info``, then the timed ones; each in collected order."""
    timed = [nodeid for nodeid in collected if info.get(nodeid, {}).get("timed")]
    untimed = [nodeid for nodeid in collected if not info.get(nodeid, {}).get("timed")]
    return [phase for phase in (untimed, timed) if phase]


class RankBudget:
    """At most ``limit`` ranks in flight; a job larger than the limit runs alone."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the rank budget must be at least 1, not {limit}")
        self.limit = limit
        self._used = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def ranks(self, count: int) -> Iterator[None]:
        """Hold ``count`` ranks of the budget for the duration of the block."""
        with self._changed:
            self._changed.wait_for(lambda: self._used == 0 or self._used + count <= self.limit)
            self._used += count
        try:
            yield
        finally:
            with self._changed:
                self._used -= count
                self._changed.notify_all()


def run_all(work: Mapping[int, Callable[[], None]]) -> None:
    """Run ``work[np]()`` for every rank count at once, each in a thread of its own (largest
    first), and wait for all of them; the first exception of a thread is raised here."""
    errors: list[BaseException] = []
    ended: list[threading.Event] = []

    def guarded(function: Callable[[], None], end: threading.Event) -> None:
        try:
            function()
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)
        finally:
            end.set()

    for np in sorted(work, reverse=True):
        ended.append(threading.Event())
        thread = threading.Thread(target=guarded, args=(work[np], ended[-1]), daemon=True)
        thread.start()
    # Polled flags, not Thread.join: an exception raised inside join (the interrupt) can leave
    # the thread reported as ended while it runs on (CPython before 3.13).
    interrupted: BaseException | None = None
    while not all(end.is_set() for end in ended):
        try:
            next(end for end in ended if not end.is_set()).wait(0.2)
        except KeyboardInterrupt as exc:  # the interrupt has ended every job already
            interrupted = interrupted or exc
    if interrupted is not None:
        raise interrupted
    if errors:
        raise errors[0]
