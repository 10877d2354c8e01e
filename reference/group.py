"""Groups of processes: ``init``, ``is_available`` and ``Group`` (rank, size, split).

SEMANTICS.md, "init / is_available" and "Group.split". The reference's only transport is MPI
(mpi4py): it answers to the backend names ``mpi`` and ``any``. The other names MLX knows (``ring``,
``nccl``, ``jaccl``) are valid but never available here, so they behave as a backend that cannot
form a group: a singleton group, or RuntimeError under ``strict=True``.

Every group owns its own communicator (the world group a duplicate of ``MPI.COMM_WORLD``), so the
reference's traffic never mixes with the caller's own MPI traffic.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from reference import deadline
from reference.agreement import HeaderExchange, agree

if TYPE_CHECKING:
    from mpi4py import MPI

VALID_BACKENDS = ("any", "mpi", "ring", "nccl", "jaccl")
_AVAILABLE_BACKENDS = ("any", "mpi")

# Variables that MPI launchers (MPICH's Hydra, Open MPI, PMIx, Slurm) set in every process.
_LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_FD")


class Group:
    """A group of processes that communicate; made by ``init()`` or ``Group.split()``."""

    _comm: MPI.Comm | None
    _rank: int
    _size: int
    _label: str
    _calls: int
    _broken: str | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Group cannot be constructed directly; use init() or Group.split()")

    @classmethod
    def _create(cls, comm: MPI.Comm | None, rank: int, size: int, label: str) -> Group:
        group = object.__new__(cls)
        group._comm = comm
        group._rank = rank
        group._size = size
        group._label = label
        group._calls = 0
        group._broken = None
        group._exchange = None
        # Messages a rank sends to itself never touch MPI: they wait here for the matching recv.
        group._to_self = collections.deque()
        # reference.p2p's state per peer: the number of the last message sent to it; the number
        # of the message whose offer a timed-out recv withdrew (0: none); recv's persistent
        # header receive and inbox per source, and send's persistent receive of offers per
        # destination (made on first use).
        group._message_numbers = [0] * size
        group._withdrawn = [0] * size
        group._arrivals = {}
        group._offers = {}
        # Sends that stalled mid-transfer: MPI may still read their arrays, so they stay alive.
        group._orphans = []
        # The shared-memory segment (reference.shm), mapped on first use; False: spans nodes.
        group._segment = None
        return group

    def rank(self) -> int:
        """This process's rank in the group, in ``[0, size())``."""
        return self._rank

    def size(self) -> int:
        """The number of processes in the group."""
        return self._size

    def split(self, color: int, key: int = -1) -> Group:
        """Split into subgroups of the ranks that pass the same ``color``.

        New ranks are ordered by ``key``, ties by the current rank; a negative key means "my
        current rank". A negative colour is an error on every rank (ValueError). Collective: every
        rank of the group must call it.
        """
        _check_int(color, "split", "color")
        _check_int(key, "split", "key")
        if self._size == 1:
            raise RuntimeError("Cannot split the distributed group further.")
        self._check_usable("split")
        error = None
        if color < 0:
            error = ValueError(f"split: color must be non-negative, got color={color}")
        agree(self, "split", None, error, (int(color), int(key)))
        headers = self._exchange.headers()
        order_key = key if key >= 0 else self._rank
        comm = self._comm.Split(int(color), int(order_key))
        members = [r for r, header in enumerate(headers) if header[7] == color]
        if len(members) > 4:
            label = f"split(color={color}) of {self._label} ({len(members)} ranks)"
        else:
            label = f"split(color={color}) of {self._label} (ranks {', '.join(map(str, members))})"
        return Group._create(comm, comm.Get_rank(), comm.Get_size(), label)

    def __repr__(self) -> str:
        return f"<reference.Group {self._label}: rank {self._rank} of {self._size}>"

    # -- internals shared by the collectives and point-to-point modules --

    def _header_exchange(self) -> HeaderExchange:
        if self._exchange is None:
            self._exchange = HeaderExchange(self._comm, self._rank, self._size)
        return self._exchange

    def _check_usable(self, op: str) -> None:
        if self._broken is not None:
            raise RuntimeError(
                f"{op}: {self._label} is unusable since an earlier call timed out "
                f"({self._broken}); make a new group"
            )

    def _next_message_number(self, dst: int) -> int:
        """Number the messages to ``dst``: a receiver names it in its offer for the payload."""
        numbers = self._message_numbers
        numbers[dst] += 1
        return numbers[dst]

    def _break(self, reason: str) -> TimeoutError:
        """Record that this group's collective state is lost, and build the TimeoutError."""
        self._broken = reason
        return TimeoutError(reason)


def _check_int(value: Any, op: str, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")


def is_available(backend: str = "any") -> bool:
    """Whether ``backend`` is built in (not whether a group can form); unknown names: False."""
    if not isinstance(backend, str):
        raise TypeError(f"is_available: backend must be a str, got {type(backend).__name__}")
    if backend not in _AVAILABLE_BACKENDS:
        return False
    return importlib.util.find_spec("mpi4py") is not None


_groups: dict[str, Group] = {}


def cached_default() -> Group | None:
    """The global group if ``init()`` already formed one: the fast path of ``group=None``."""
    return _groups.get("any")


def init(strict: bool = False, backend: str = "any") -> Group:
    """The global group of ``backend``, formed once and then returned again (cached).

    When no backend can form a group: a singleton group (rank 0, size 1), or RuntimeError if
    ``strict``. Unknown backend names raise ValueError naming the valid ones.
    """
    if not isinstance(backend, str):
        raise TypeError(f"init: backend must be a str, got {type(backend).__name__}")
    if backend not in VALID_BACKENDS:
        raise ValueError(
            "[distributed] The only valid values for backend are 'any', 'mpi', 'nccl', 'jaccl' "
            f"and 'ring' but '{backend}' was provided."
        )
    if backend in _groups:
        return _groups[backend]
    group = _mpi_world() if backend in _AVAILABLE_BACKENDS else None
    if group is None:
        if strict:
            raise RuntimeError(_strict_failure(backend))
        return Group._create(None, 0, 1, "singleton group")
    # "any" resolves to the MPI transport: both names share the one world group.
    for name in _AVAILABLE_BACKENDS:
        _groups[name] = group
    return group


def _strict_failure(backend: str) -> str:
    if backend == "any":
        return "[distributed] Couldn't initialize any backend"
    if backend == "mpi":
        return (
            "[mpi] The world has a single process. Launch with mpiexec -n N (N > 1) to "
            "initialize the mpi backend."
        )
    return f"[{backend}] The {backend} backend is not available in the reference implementation."


def _launched_by_mpi() -> bool:
    return "mpi4py.MPI" in sys.modules or any(v in os.environ for v in _LAUNCHER_VARIABLES)


def _mpi_world() -> Group | None:
    """A group over a duplicate of COMM_WORLD, or None when MPI has fewer than two processes."""
    if not _launched_by_mpi() or not is_available("mpi"):
        return None
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    if world.Get_size() < 2:
        return None
    comm, request = world.Idup()

    def missing(pending: list[int], seconds: float) -> TimeoutError:
        return TimeoutError(
            f"init timed out after {seconds:g} s: not every one of the {world.Get_size()} MPI "
            "processes called init()"
        )

    deadline.wait_all([request], missing)
    return Group._create(comm, comm.Get_rank(), comm.Get_size(), "world group")
