"""The control plane: the suite's own channel between ranks, apart from the backend's data plane.

It is a duplicate of ``MPI.COMM_WORLD`` (mpi4py), so a broken backend cannot corrupt the suite's
bookkeeping and the suite's messages cannot satisfy a backend's pending receive. Every exchange
carries a label; when the ranks arrive at different exchanges (one rank in ``collective_assert``,
another already agreeing on the test's outcome) the exchange raises ``Desync`` instead of mixing
the two up. Waits poll with short sleeps rather than block in MPI, so waiting ranks leave the CPU
to the others (small machines run several ranks per core) and the watchdog can report where each
rank waits.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Hashable
from typing import Any

import numpy as np

try:
    from mpi4py import MPI
except ImportError:  # single-process runs work without MPI
    MPI = None  # type: ignore[assignment]

Label = tuple[Hashable, ...]

# Most exchanges (outcomes of passing tests, helper verdicts) fit one slot of this many bytes.
_SLOT = 1024
_HEADER = 8
_POLL_START = 0.0002
#: Seconds an exchange yields the core between polls before it starts sleeping.
_SPIN_SECONDS = 0.005
_POLL_MAX = 0.002


class Desync(Exception):
    """The ranks reached different control exchanges; ``labels[r]`` is where rank r was."""

    def __init__(self, labels: list[Label], values: list[Any]) -> None:
        self.labels = labels
        self.values = values
        where = "; ".join(f"rank {r}: {_show(label)}" for r, label in enumerate(labels))
        super().__init__(f"ranks reached different control exchanges ({where})")


def _show(label: Label) -> str:
    return " ".join(str(part) for part in label)


class ControlPlane:
    """Collective exchanges of small Python objects between all ranks of the job."""

    def __init__(self, comm: Any = None) -> None:
        self._comm = comm
        self.rank: int = comm.Get_rank() if comm is not None else 0
        self.size: int = comm.Get_size() if comm is not None else 1
        # Where this rank is blocked, if anywhere: read by the watchdog to tell waiting ranks
        # apart from ranks stuck in test code.
        self.waiting_at: Label | None = None
        self.test_id: str = ""
        self._seq = 0
        self.desynced = False

    @classmethod
    def from_world(cls) -> ControlPlane:
        """A control plane on a fresh duplicate of COMM_WORLD (size 1 without mpi4py)."""
        if MPI is None:
            return cls(None)
        return cls(MPI.COMM_WORLD.Dup())

    def close(self) -> None:
        """Free the duplicate communicator."""
        if self._comm is not None and MPI is not None and not MPI.Is_finalized():
            self._comm.Free()
        self._comm = None

    def split_without(self, excluded: int) -> Any:
        """Collective: a communicator of every rank but ``excluded`` (None on that rank and
        without MPI), ranked as here. A kill test makes it before the kill, so the survivors'
        verdict never waits on the dead rank (``conformance.harness.survivors``)."""
        if self._comm is None or MPI is None:
            return None
        color = MPI.UNDEFINED if self.rank == excluded else 0
        comm = self._comm.Split(color, self.rank)
        return None if comm == MPI.COMM_NULL else comm

    # -- per-test helper labels --------------------------------------------------------------
    def begin_test(self, test_id: str) -> None:
        """Start numbering the helper exchanges of a new test."""
        self.test_id = test_id
        self._seq = 0
        self.desynced = False

    def next_label(self, kind: str) -> Label:
        """A label for the next helper exchange of the current test: every rank calling the same
        helpers in the same order gets the same labels."""
        self._seq += 1
        return ("helper", self.test_id, self._seq, kind)

    # -- exchanges ---------------------------------------------------------------------------
    def allgather(self, label: Label, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order. Raises Desync if the labels differ."""
        if self.size == 1:
            return [value]
        pairs = self._allgather_raw((label, value))
        labels = [pair[0] for pair in pairs]
        values = [pair[1] for pair in pairs]
        if any(other != label for other in labels):
            raise Desync(labels, values)
        return values

    def allgather_any(self, label: Label, value: Any) -> list[tuple[Label, Any]]:
        """Every rank's (label, value) without requiring the labels to agree."""
        if self.size == 1:
            return [(label, value)]
        return self._allgather_raw((label, value))

    def bcast(self, label: Label, value: Any = None, root: int = 0) -> Any:
        """Root's ``value`` on every rank."""
        return self.allgather(label, value if self.rank == root else None)[root]

    def barrier(self, label: Label) -> None:
        """Wait until every rank reaches the exchange ``label``."""
        self.allgather(label, None)

    def _allgather_raw(self, obj: Any) -> list[Any]:
        comm = self._comm
        assert comm is not None
        self.waiting_at = obj[0]
        try:
            return [pickle.loads(blob) for blob in self._allgather_bytes(pickle.dumps(obj))]
        finally:
            self.waiting_at = None

    def _allgather_bytes(self, payload: bytes) -> list[bytes]:
        """One nonblocking round of fixed-size slots (length + payload); a second round with the
        exact sizes only when some rank's payload does not fit (long tracebacks)."""
        comm = self._comm
        slot = np.zeros(_HEADER + _SLOT, dtype=np.uint8)
        slot[:_HEADER] = np.frombuffer(np.int64(len(payload)).tobytes(), dtype=np.uint8)
        if len(payload) <= _SLOT:
            slot[_HEADER : _HEADER + len(payload)] = np.frombuffer(payload, dtype=np.uint8)
        slots = np.empty((self.size, _HEADER + _SLOT), dtype=np.uint8)
        self._wait(comm.Iallgather(slot, slots))
        lengths = [int(n) for n in slots[:, :_HEADER].copy().view(np.int64).ravel()]
        if max(lengths) <= _SLOT:
            return [slots[r, _HEADER : _HEADER + n].tobytes() for r, n in enumerate(lengths)]
        # Every rank sees the same lengths, so every rank takes this second round.
        whole = np.empty(sum(lengths), dtype=np.uint8)
        mine = np.frombuffer(payload, dtype=np.uint8)
        self._wait(comm.Iallgatherv(mine, [whole, lengths]))
        offsets = np.cumsum([0, *lengths])
        return [whole[offsets[r] : offsets[r + 1]].tobytes() for r in range(self.size)]

    @staticmethod
    def _wait(request: Any) -> None:
        # Yield first: a peer that is runnable (ranks outnumber cores) gets the core at once and
        # the exchange completes within a scheduler slice; sleeping from the first poll cost each
        # exchange milliseconds, thousands of times a job. Then sleep, so a long wait (a peer
        # still in a test) does not keep a core.
        spin_until = time.monotonic() + _SPIN_SECONDS
        while not request.Test():
            if time.monotonic() > spin_until:
                break
            os.sched_yield()
        else:
            return
        delay = _POLL_START
        while not request.Test():
            time.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)


_current: ControlPlane | None = None


def current() -> ControlPlane:
    """The control plane of the running suite (created on first use outside pytest)."""
    global _current
    if _current is None:
        _current = ControlPlane.from_world()
    return _current


def active() -> ControlPlane | None:
    """The current control plane if one is installed, without creating one."""
    return _current


def set_current(plane: ControlPlane | None) -> ControlPlane | None:
    """Install ``plane`` as the current control plane; returns the previous one."""
    global _current
    previous, _current = _current, plane
    return previous
