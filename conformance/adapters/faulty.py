"""Deliberately faulty backends: the reference with ONE realistic fault each.

``load_backend("faulty:<name>")`` calls ``make_backend(name)``. Each fault is a thin wrapper over
``reference`` that breaks exactly one rule of SEMANTICS.md, the way a real transport gets it wrong
(a wrong MPI datatype, a cached value that is not, an off-by-one in a member list). The suite must
fail on every one of them: ``python -m conformance selftest`` checks that it does.

Every fault is described by a ``Fault`` in ``FAULTS``: what is wrong, the rule it breaks, the spec
modules expected to catch it (the selftest runs only those), and the smallest world size at which
the fault shows at all (below it the backend behaves like the reference).

Faults stay collective-safe where a real bug would: every rank makes the same calls, so a wrong
result never leaves a peer waiting. The exceptions are the point of their faults (``hangs``: one
rank waits for a completion that never comes), and even they keep the backend's deadline, as the
contract's robust rule asks: the call ends with TimeoutError on every rank, so a spec that wanted
a result fails in its call phase (the selftest runs fault jobs with a backend deadline shorter than
the harness's). A hang that no deadline ends tests the harness's watchdog, not the spec.

Most faults of the second half are *subtle*: wrong only above a size, for one layout, for some
values, on some groups or after some number of calls, the way real transports break (chunking,
algorithm switches, caches, SIMD paths). Their thresholds are this module's own; no spec was
tuned to them.

``CONTROLS`` holds backends that are *not* faulty (``none``: the reference itself); they are not
run by default and exist so the selftest's own tests can check that a fault that is no fault is
reported as not caught.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

import reference
from conformance.backend import API_NAMES, Backend
from reference import deadline as _deadline
from reference import group as _group_mod
from reference import p2p as _p2p
from reference.collectives import resolve_group
from reference.dtypes import as_array


@dataclass(frozen=True)
class Fault:
    """One faulty backend: what it gets wrong and where the suite should notice.

    ``specs`` are spec module file names under ``conformance/specs`` (the selftest runs only
    those against the fault); ``min_np`` is the smallest world size at which the fault shows.
    ``build`` returns the API overrides (name -> callable) applied over the reference.
    """

    name: str
    fault: str
    rule: str
    specs: tuple[str, ...]
    build: Callable[[], dict[str, Any]]
    min_np: int = 2
    #: The fault is a hang (a peer that never comes): it counts as caught only when a test's
    #: call failed with the backend's TimeoutError, i.e. the deadline ended it and a spec noticed.
    hangs: bool = False
    #: Opt-in tiers the spec modules need to catch the fault (``CONFORMANCE_TIERS`` of its jobs).
    tiers: tuple[str, ...] = ()

    def active_at(self, np_: int) -> bool:
        """Whether the fault shows with ``np_`` ranks (below ``min_np`` it is the reference)."""
        return np_ >= self.min_np


FAULTS: dict[str, Fault] = {}
CONTROLS: dict[str, Fault] = {}


def _fault(
    name: str,
    fault: str,
    rule: str,
    specs: tuple[str, ...],
    min_np: int = 2,
    control: bool = False,
    hangs: bool = False,
    tiers: tuple[str, ...] = (),
):
    """Register the decorated builder as the faulty backend ``name`` (its docstring is set from
    the fault and the rule it breaks, so ``help()`` on the backend says what is wrong)."""

    def register(build: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        build.__doc__ = f"faulty:{name}: {fault}. Breaks SEMANTICS.md, {rule}."
        table = CONTROLS if control else FAULTS
        table[name] = Fault(name, fault, rule, specs, build, min_np, hangs, tiers)
        return build

    return register


def make_backend(name: str) -> Backend:
    """The faulty backend ``name`` (a key of ``FAULTS`` or ``CONTROLS``) as a Backend.

    Raises ValueError naming the known faults for an unknown name.
    """
    fault = FAULTS.get(name) or CONTROLS.get(name)
    if fault is None:
        raise ValueError(f"unknown fault {name!r}; known faults: {', '.join(sorted(FAULTS))}")
    api: dict[str, Any] = {attr: getattr(reference, attr) for attr in API_NAMES}
    api.update(fault.build())
    api["__doc__"] = fault.build.__doc__
    # A fault may replace the deadline setter too (key "set_timeout" of its overrides).
    set_timeout = api.pop("set_timeout", reference.set_timeout)
    return Backend(
        f"faulty:{name}",
        _Api(api),
        version=f"{reference.__version__}+faulty.{name}",
        set_timeout=set_timeout,
    )


class _Api:
    """A plain namespace of API callables (what ``Backend`` delegates to)."""

    def __init__(self, attrs: dict[str, Any]) -> None:
        self.__dict__.update(attrs)


# -- helpers -----------------------------------------------------------------------------------


def _size_rank(group: Any, op: str) -> tuple[int, int]:
    g = resolve_group(group, op)
    return g.size(), g.rank()


def _gather_rows(x: np.ndarray, group: Any) -> np.ndarray:
    """Every rank's ``x`` stacked on a new axis 0 (through the reference's all_gather)."""
    return reference.all_gather(np.array(x, order="C")[None], group=group)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _never_completes(op: str) -> None:
    """Wait for a completion that never comes, until the backend's deadline (TimeoutError)."""

    def gave_up(seconds: float) -> TimeoutError:
        return TimeoutError(f"{op} timed out after {seconds:g} s waiting for its own completion")

    _deadline.poll(lambda: None, gave_up)


def _adopt(group: reference.Group, cls: type) -> reference.Group:
    # The reference's functions accept any reference.Group, so a fault that changes a Group
    # method re-classes the reference's own object instead of wrapping it.
    group.__class__ = cls
    return group


# -- reductions --------------------------------------------------------------------------------


@_fault(
    "all_sum_drops_last_rank",
    "all_sum leaves out the last rank's contribution (a ring that stops one hop early)",
    "Reductions: element-wise sum over the group",
    ("test_all_sum.py",),
)
def _all_sum_drops_last_rank() -> dict[str, Any]:
    def all_sum(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        size, rank = _size_rank(group, "all_sum")
        array = as_array(x, "all_sum")
        if size > 1 and rank == size - 1:
            array = np.zeros_like(array)
        return reference.all_sum(array, group=group, stream=stream)

    return {"all_sum": all_sum}


@_fault(
    "int8_sum_saturates",
    "all_sum of int8 saturates at -128/127 instead of wrapping around",
    "Reductions: integers wrap around on overflow (int8 127+127 = -2)",
    ("test_all_sum.py",),
)
def _int8_sum_saturates() -> dict[str, Any]:
    def all_sum(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        array = as_array(x, "all_sum")
        if array.dtype != np.int8 or _size_rank(group, "all_sum")[0] == 1:
            return reference.all_sum(array, group=group, stream=stream)
        # Accumulated in a wider type, then clipped on the way back: the classic saturating cast.
        wide = reference.all_sum(array.astype(np.int64), group=group, stream=stream)
        return np.clip(wide, -128, 127).astype(np.int8)

    return {"all_sum": all_sum}


@_fault(
    "float16_sum_as_bfloat16",
    "all_sum of float16 reduces the raw bits as bfloat16 (a 2-byte MPI user op picked by size)",
    "Reductions: output dtype equals the input's; float sums within the float16 tolerance",
    ("test_all_sum.py",),
)
def _float16_sum_as_bfloat16() -> dict[str, Any]:
    def all_sum(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        array = as_array(x, "all_sum")
        if array.dtype != np.float16 or _size_rank(group, "all_sum")[0] == 1:
            return reference.all_sum(array, group=group, stream=stream)
        bits = np.array(array, order="C").view(ml_dtypes.bfloat16)
        with np.errstate(all="ignore"):
            out = reference.all_sum(bits, group=group, stream=stream)
        return out.view(np.float16)

    return {"all_sum": all_sum}


@_fault(
    "bool_sum_as_integer",
    "all_sum of bool adds the bytes as uint8 (True + True is the byte 2, not True)",
    "Reductions: bool all_sum is logical OR; bool results are exact",
    ("test_all_sum.py",),
)
def _bool_sum_as_integer() -> dict[str, Any]:
    def all_sum(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        array = as_array(x, "all_sum")
        if array.dtype != np.bool_ or _size_rank(group, "all_sum")[0] == 1:
            return reference.all_sum(array, group=group, stream=stream)
        # bool mapped to MPI_UINT8_T with MPI_SUM: the bytes add up (and wrap at 256 ranks).
        counts = reference.all_sum(np.array(array, order="C").view(np.uint8), group=group)
        return counts.view(np.bool_)

    return {"all_sum": all_sum}


@_fault(
    "all_max_is_min_for_int16",
    "all_max of int16 returns the minimum (a copy-pasted entry of the op table)",
    "Reductions: element-wise maximum over the group",
    ("test_all_max_all_min.py",),
)
def _all_max_is_min_for_int16() -> dict[str, Any]:
    def all_max(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        array = as_array(x, "all_max")
        op = reference.all_min if array.dtype == np.int16 else reference.all_max
        return op(array, group=group, stream=stream)

    return {"all_max": all_max}


@_fault(
    "complex_max_by_magnitude",
    "all_max of complex64 picks the element of largest magnitude, not lexicographic order",
    "Reductions: complex64 max/min compare lexicographically (real part, then imaginary)",
    ("test_all_max_all_min.py",),
)
def _complex_max_by_magnitude() -> dict[str, Any]:
    def all_max(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        array = as_array(x, "all_max")
        if array.dtype != np.complex64 or _size_rank(group, "all_max")[0] == 1:
            return reference.all_max(array, group=group, stream=stream)
        rows = _gather_rows(array, group)
        best = np.argmax(np.abs(rows), axis=0)
        return np.take_along_axis(rows, best[None], axis=0)[0]

    return {"all_max": all_max}


@_fault(
    "hang_all_min",
    "all_min blocks on the last rank, waiting for a completion that never comes, until the "
    "backend's deadline ends the call with TimeoutError on every rank",
    "Hangs (robust): a blocking operation ends, by result or by TimeoutError",
    ("test_all_max_all_min.py",),
    hangs=True,
)
def _hang_all_min() -> dict[str, Any]:
    def all_min(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        size, rank = _size_rank(group, "all_min")
        if size > 1 and rank == size - 1:
            _never_completes("all_min")
        return reference.all_min(x, group=group, stream=stream)

    return {"all_min": all_min}


@_fault(
    "all_max_raises_on_last_rank",
    "all_max raises RuntimeError on the last rank only, after the data moved",
    "Reductions: every rank gets the same result",
    ("test_all_max_all_min.py",),
)
def _all_max_raises_on_last_rank() -> dict[str, Any]:
    def all_max(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        size, rank = _size_rank(group, "all_max")
        out = reference.all_max(x, group=group, stream=stream)
        if size > 1 and rank == size - 1:
            raise RuntimeError("all_max: could not unpack the reduced buffer")
        return out

    return {"all_max": all_max}


# -- all_gather and sum_scatter ----------------------------------------------------------------


@_fault(
    "all_gather_rotated",
    "all_gather puts blocks in ring order starting at the caller's own block",
    "all_gather: blocks in rank order; every rank gets the same result",
    ("test_all_gather.py",),
)
def _all_gather_rotated() -> dict[str, Any]:
    def all_gather(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        size, rank = _size_rank(group, "all_gather")
        out = reference.all_gather(x, group=group, stream=stream)
        if size == 1 or out.shape[0] == 0:
            return out
        return np.roll(out, -rank * (out.shape[0] // size), axis=0)

    return {"all_gather": all_gather}


@_fault(
    "all_gather_local_above_2",
    "all_gather returns only the caller's block when the group has more than 2 ranks",
    "all_gather: output axis 0 is the input's times N, blocks of every rank",
    ("test_all_gather.py",),
    min_np=3,
)
def _all_gather_local_above_2() -> dict[str, Any]:
    def all_gather(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        if _size_rank(group, "all_gather")[0] > 2:
            return np.array(as_array(x, "all_gather"), copy=True)
        return reference.all_gather(x, group=group, stream=stream)

    return {"all_gather": all_gather}


@_fault(
    "all_gather_0d_stays_0d",
    "all_gather of a 0-d input returns a 0-d array (the size-1 shortcut taken at any size)",
    "all_gather: a 0-d input gives shape (N,) when N > 1",
    ("test_all_gather.py",),
)
def _all_gather_0d_stays_0d() -> dict[str, Any]:
    def all_gather(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        array = as_array(x, "all_gather")
        if array.ndim == 0:
            return np.array(array, copy=True)
        return reference.all_gather(array, group=group, stream=stream)

    return {"all_gather": all_gather}


@_fault(
    "sum_scatter_next_slice",
    "sum_scatter gives rank r the slice of rank r+1 (mod N)",
    "sum_scatter: output = all_sum(x)[r*c:(r+1)*c] on rank r",
    ("test_sum_scatter.py",),
)
def _sum_scatter_next_slice() -> dict[str, Any]:
    def sum_scatter(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        size, rank = _size_rank(group, "sum_scatter")
        # The reference validates and agrees first, so shape errors stay what they should be.
        mine = reference.sum_scatter(x, group=group, stream=stream)
        if size == 1:
            return mine
        total = reference.all_sum(x, group=group)
        rows = mine.shape[0]
        other = (rank + 1) % size
        return np.ascontiguousarray(total[other * rows : (other + 1) * rows])

    return {"sum_scatter": sum_scatter}


# -- point to point ----------------------------------------------------------------------------


@_fault(
    "recv_any_source",
    "recv takes the pending message of whichever sender (MPI_ANY_SOURCE, which also matches a "
    "message the rank sent itself), not the one of src",
    "send / recv: recv(shape, dtype, src) returns what src sent",
    ("test_send_recv.py",),
)
def _recv_any_source() -> dict[str, Any]:
    def recv(shape: Any, dtype: Any, src: int, *, group: Any = None, stream: Any = None) -> Any:
        g = resolve_group(group, "recv")
        size, rank = g.size(), g.rank()
        if size > 1 and _is_int(src) and 0 <= src < size and src != rank:
            # Let every message already on its way land, then take the highest-numbered sender
            # that has one pending: which sender wins depends on timing, never on src. With two
            # ranks the only other sender there can be is the rank itself.
            time.sleep(0.02)
            comm = g._comm

            def pending() -> int | None:
                for sender in range(size - 1, -1, -1):
                    if sender == rank and g._to_self:
                        return sender
                    if sender != rank and comm.Iprobe(sender, _p2p.TAG_HEADER):
                        return sender
                return None

            def nothing(seconds: float) -> TimeoutError:
                return TimeoutError(f"recv from rank {src} timed out after {seconds:g} s")

            src = int(_deadline.poll(pending, nothing))
        return reference.recv(shape, dtype, src, group=group, stream=stream)

    def recv_like(x: Any, src: int, *, group: Any = None, stream: Any = None) -> Any:
        like = as_array(x, "recv_like")
        return recv(like.shape, like.dtype, src, group=group, stream=stream)

    return {"recv": recv, "recv_like": recv_like}


@_fault(
    "recv_like_ignores_dtype",
    "recv_like returns the received values in float64 (buffer allocated with the default dtype)",
    "send / recv: recv_like(x, src) is recv(x.shape, x.dtype, src)",
    ("test_send_recv.py",),
)
def _recv_like_ignores_dtype() -> dict[str, Any]:
    def recv_like(x: Any, src: int, *, group: Any = None, stream: Any = None) -> Any:
        got = reference.recv_like(x, src, group=group, stream=stream)
        out = np.empty(got.shape)  # the default dtype: float64
        with np.errstate(all="ignore"):
            out[...] = got.real if got.dtype.kind == "c" else got
        return out

    return {"recv_like": recv_like}


@_fault(
    "send_returns_none",
    "send returns None instead of an array equal to x",
    "send / recv: send returns an array equal to x",
    ("test_send_recv.py",),
)
def _send_returns_none() -> dict[str, Any]:
    def send(x: Any, dst: int, *, group: Any = None, stream: Any = None) -> None:
        reference.send(x, dst, group=group, stream=stream)
        return None

    return {"send": send}


# -- groups ------------------------------------------------------------------------------------


def _world_of(cls: type) -> Callable[..., Any]:
    """An init() whose world group (and hence every split of it) has class ``cls``."""

    def init(strict: bool = False, backend: str = "any") -> Any:
        group = reference.init(strict=strict, backend=backend)
        if group.size() > 1 and not isinstance(group, cls):
            _adopt(group, cls)
        return group

    return init


class _KeyIsColourGroup(reference.Group):
    """split passes the colour where the key belongs (``MPI_Comm_split(comm, color, color)``)."""

    def split(self, color: int, key: int = -1) -> reference.Group:
        sub = reference.Group.split(self, color, color)
        return _adopt(sub, type(self)) if sub.size() > 1 else sub


@_fault(
    "split_orders_by_colour",
    "Group.split orders the new ranks by colour (i.e. by old rank), ignoring key",
    "Group.split: new ranks are ordered by key, ties by old rank",
    ("test_split.py",),
)
def _split_orders_by_colour() -> dict[str, Any]:
    return {"init": _world_of(_KeyIsColourGroup)}


class _LiteralKeyGroup(reference.Group):
    """split orders by the key as given: a negative key sorts first instead of meaning the
    current rank (MPI_Comm_split handed the key unchanged)."""

    def split(self, color: int, key: int = -1) -> reference.Group:
        if not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (color, key)
        ):
            return reference.Group.split(self, color, key)  # the reference's TypeError
        # Every rank's key, so that a non-negative key reproducing the literal order can be
        # handed to the reference (which would reinterpret a negative one).
        keys = reference.all_gather(np.array([key], np.int64), group=self)
        order = sorted(range(self.size()), key=lambda r: (int(keys[r]), r))
        sub = reference.Group.split(self, color, order.index(self.rank()))
        return _adopt(sub, type(self)) if sub.size() > 1 else sub


@_fault(
    "split_negative_key_literal",
    "Group.split sorts a negative key as a number instead of using the current rank",
    "Group.split: a negative key means use my current rank",
    ("test_split.py",),
)
def _split_negative_key_literal() -> dict[str, Any]:
    return {"init": _world_of(_LiteralKeyGroup)}


class _SplittingGroup(reference.Group):
    """The world group: correct itself, but its subgroups count ranks from 1."""

    def split(self, color: int, key: int = -1) -> reference.Group:
        sub = reference.Group.split(self, color, key)
        return _adopt(sub, _OneBasedGroup) if sub.size() > 1 else sub


class _OneBasedGroup(_SplittingGroup):
    def rank(self) -> int:
        # The member list is searched 1-based: the classic off-by-one.
        return self._rank + 1


@_fault(
    "subgroup_rank_off_by_one",
    "Group.rank() of a subgroup made by split is one too high (1-based)",
    "Group.split: collectives and p2p on a subgroup use subgroup ranks",
    ("test_split.py",),
)
def _subgroup_rank_off_by_one() -> dict[str, Any]:
    return {"init": _world_of(_SplittingGroup)}


@_fault(
    "strict_init_singleton",
    "init(strict=True) returns a singleton group when no backend can form one, instead of raising",
    "init: strict=True and no backend can form a group: RuntimeError",
    ("test_init.py",),
)
def _strict_init_singleton() -> dict[str, Any]:
    def init(strict: bool = False, backend: str = "any") -> Any:
        try:
            return reference.init(strict=strict, backend=backend)
        except RuntimeError:
            return reference.init(strict=False, backend=backend)

    return {"init": init}


@_fault(
    "init_not_cached",
    "init() forms a new world (a new communicator) on every call; group=None uses yet another",
    "init: calling init() again returns the same (cached) group",
    ("test_init.py", "test_all_sum.py"),
)
def _init_not_cached() -> dict[str, Any]:
    def init(strict: bool = False, backend: str = "any") -> Any:
        if backend in ("any", "mpi"):
            world = _group_mod._mpi_world()
            if world is not None:
                return world
        return reference.init(strict=strict, backend=backend)

    return {"init": init}


# -- subtle faults: sizes ----------------------------------------------------------------------
# Each shows only past a size of its own, the way chunked, pipelined or algorithm-switching
# transports break. The threshold is the fault's, not any spec's.


def _only_rank0(array: np.ndarray, group: Any) -> np.ndarray:
    """Rank 0's ``array`` on every rank (an all_sum where the others add zeros: exact)."""
    rank = resolve_group(group, "all_sum").rank()
    mine = np.array(array, order="C") if rank == 0 else np.zeros_like(array, order="C")
    return reference.all_sum(mine, group=group)


#: all_sum switches to a pipelined ring above this many elements ...
_RING_ELEMENTS = 96 * 1024
#: ... whose last segment is reduced in whole vectors of this many elements only.
_RING_VECTOR = 48


@_fault(
    "all_sum_ring_tail_unreduced",
    f"all_sum above {_RING_ELEMENTS} elements leaves the last (count mod {_RING_VECTOR}) "
    "elements as the caller's own input (a pipelined ring reduces whole vectors only)",
    "Reductions: element-wise sum over the group, every element",
    ("test_size_sweep.py",),
)
def _all_sum_ring_tail_unreduced() -> dict[str, Any]:
    def all_sum(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        out = reference.all_sum(x, group=group, stream=stream)
        tail = out.size % _RING_VECTOR
        if out.size <= _RING_ELEMENTS or tail == 0 or _size_rank(group, "all_sum")[0] == 1:
            return out
        out.reshape(-1)[-tail:] = as_array(x, "all_sum").reshape(-1)[-tail:]
        return out

    return {"all_sum": all_sum}


#: all_gather switches to a bandwidth-optimal schedule from this many bytes per block.
_GATHER_BYTES = 3 * 2**19


@_fault(
    "all_gather_swaps_blocks_large",
    f"all_gather of blocks of {_GATHER_BYTES} bytes or more puts rank 1's block where rank 0's "
    "belongs and vice versa (a recursive-doubling schedule with a wrong partner table)",
    "all_gather: blocks in rank order",
    ("test_size_sweep.py",),
)
def _all_gather_swaps_blocks_large() -> dict[str, Any]:
    def all_gather(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        out = reference.all_gather(x, group=group, stream=stream)
        size = _size_rank(group, "all_gather")[0]
        block = out.shape[0] // size if out.ndim else 0
        if size == 1 or block == 0 or out.nbytes // size < _GATHER_BYTES:
            return out
        first, second = out[:block].copy(), out[block : 2 * block].copy()
        out[:block], out[block : 2 * block] = second, first
        return out

    return {"all_gather": all_gather}


#: all_min takes a tree path from this many elements on.
_TREE_ELEMENTS = 40_000


@_fault(
    "all_min_broadcasts_root_large",
    f"all_min of {_TREE_ELEMENTS} elements or more returns rank 0's input on every rank "
    "(the tree's reduce step skipped, only its broadcast done)",
    "Reductions: element-wise minimum over the group",
    ("test_size_sweep.py",),
)
def _all_min_broadcasts_root_large() -> dict[str, Any]:
    def all_min(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        out = reference.all_min(x, group=group, stream=stream)  # validates, agrees on shapes
        if out.size < _TREE_ELEMENTS or _size_rank(group, "all_min")[0] == 1:
            return out
        return _only_rank0(as_array(x, "all_min"), group)

    return {"all_min": all_min}


#: sum_scatter's reduce-scatter step is skipped for output blocks of this many elements or more.
_SCATTER_ELEMENTS = 24_000


@_fault(
    "sum_scatter_local_large",
    f"sum_scatter with an output block of {_SCATTER_ELEMENTS} elements or more returns the "
    "caller's own slice of its input, unreduced",
    "sum_scatter: output = all_sum(x)[r*c:(r+1)*c] on rank r",
    ("test_size_sweep.py",),
)
def _sum_scatter_local_large() -> dict[str, Any]:
    def sum_scatter(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        out = reference.sum_scatter(x, group=group, stream=stream)
        size, rank = _size_rank(group, "sum_scatter")
        if out.size < _SCATTER_ELEMENTS or size == 1:
            return out
        rows = out.shape[0]
        return np.array(as_array(x, "sum_scatter")[rank * rows : (rank + 1) * rows], copy=True)

    return {"sum_scatter": sum_scatter}


#: send splits payloads into 2 MiB frames and drops every frame past the third.
_FRAME_BYTES, _FRAMES = 2**21, 3


@_fault(
    "send_truncates_large",
    f"send of more than {_FRAME_BYTES * _FRAMES} bytes delivers only the first "
    f"{_FRAME_BYTES * _FRAMES} bytes (the rest arrives as zeros: a frame counter that wraps)",
    "send / recv: recv returns what src sent, every element",
    ("test_size_sweep.py",),
)
def _send_truncates_large() -> dict[str, Any]:
    def send(x: Any, dst: int, *, group: Any = None, stream: Any = None) -> Any:
        try:
            array = as_array(x, "send")
        except (TypeError, ValueError):
            return reference.send(x, dst, group=group, stream=stream)  # the reference's error
        if array.nbytes <= _FRAME_BYTES * _FRAMES:
            return reference.send(array, dst, group=group, stream=stream)
        wire = np.array(array, order="C", copy=True)
        wire.reshape(-1).view(np.uint8)[_FRAME_BYTES * _FRAMES :] = 0
        reference.send(wire, dst, group=group, stream=stream)
        out = array.view()
        out.flags.writeable = False
        return out

    return {"send": send}


# -- subtle faults: values and dtypes ----------------------------------------------------------


@_fault(
    "float64_sum_in_float32",
    "all_sum of float64 is reduced in float32 and widened back (a 4-byte MPI type for a "
    "8-byte dtype only where the values need more than float32 keeps)",
    "Reductions: float64 sums within the float64 tolerance",
    ("test_values.py",),
)
def _float64_sum_in_float32() -> dict[str, Any]:
    def all_sum(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        array = as_array(x, "all_sum")
        if array.dtype != np.float64 or _size_rank(group, "all_sum")[0] == 1:
            return reference.all_sum(array, group=group, stream=stream)
        with np.errstate(all="ignore"):
            narrow = reference.all_sum(array.astype(np.float32), group=group, stream=stream)
        return narrow.astype(np.float64)

    return {"all_sum": all_sum}


#: bfloat16 sums of this many elements or more go through a float16 accumulator.
_HALF_ELEMENTS = 2048


@_fault(
    "bfloat16_sum_through_float16_large",
    f"all_sum of bfloat16 with {_HALF_ELEMENTS} or more elements converts to float16 and back "
    "(overflows past 65504, flushes tiny values, drops low bits)",
    "Reductions: bfloat16 sums within the bfloat16 tolerance",
    ("test_values.py", "test_size_sweep.py"),
)
def _bfloat16_sum_through_float16_large() -> dict[str, Any]:
    bfloat16 = np.dtype(ml_dtypes.bfloat16)

    def all_sum(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        array = as_array(x, "all_sum")
        if array.dtype != bfloat16 or array.size < _HALF_ELEMENTS:
            return reference.all_sum(array, group=group, stream=stream)
        if _size_rank(group, "all_sum")[0] == 1:
            return reference.all_sum(array, group=group, stream=stream)
        with np.errstate(all="ignore"):
            half = reference.all_sum(array.astype(np.float16), group=group, stream=stream)
            return half.astype(bfloat16)

    return {"all_sum": all_sum}


#: Lanes of a 128-bit vector register, per small integer width: the vector body saturates.
_VECTOR_BYTES = 16


@_fault(
    "small_int_sum_saturates_vectorized",
    "all_sum of 8- and 16-bit integers saturates in the vectorised body (16 int8 or 8 int16 "
    "lanes per step, so from 8 int16 elements on) and wraps only in the scalar tail",
    "Reductions: integers wrap around on overflow",
    ("test_values.py", "test_all_sum.py"),
)
def _small_int_sum_saturates_vectorized() -> dict[str, Any]:
    def all_sum(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        out = reference.all_sum(x, group=group, stream=stream)
        if out.dtype.kind not in "iu" or out.dtype.itemsize > 2:
            return out
        body = out.size - out.size % (_VECTOR_BYTES // out.dtype.itemsize)
        if body == 0 or _size_rank(group, "all_sum")[0] == 1:
            return out
        wide = reference.all_sum(as_array(x, "all_sum").astype(np.int64), group=group)
        info = np.iinfo(out.dtype)
        flat = out.reshape(-1)
        flat[:body] = np.clip(wide.reshape(-1)[:body], info.min, info.max)
        return out

    return {"all_sum": all_sum}


def _c_style_fold(rows: np.ndarray, larger: bool) -> np.ndarray:
    """``acc = x > acc ? x : acc`` over the ranks in order (the textbook MPI user op): NaN
    survives only in the accumulator, and of two equal zeros the earlier rank's sign wins."""
    acc = rows[0].copy()
    for row in rows[1:]:
        better = row > acc if larger else row < acc
        acc = np.where(better, row, acc)
    return acc


@_fault(
    "float_extreme_c_style",
    "all_max/all_min of floats use a C comparison fold in rank order: a NaN propagates only "
    "when rank 0 holds it, and -0.0 vs 0.0 depends on which rank holds which",
    "Reductions: NaN propagates in max/min, whichever rank holds it",
    ("test_values.py",),
)
def _float_extreme_c_style() -> dict[str, Any]:
    def extreme(op: str, larger: bool) -> Callable[..., np.ndarray]:
        correct = getattr(reference, op)

        def reduce(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
            out = correct(x, group=group, stream=stream)
            array = as_array(x, op)
            floating = array.dtype.kind == "f" or array.dtype == np.dtype(ml_dtypes.bfloat16)
            if not floating or _size_rank(group, op)[0] == 1:
                return out
            return _c_style_fold(_gather_rows(array, group), larger).astype(out.dtype)

        return reduce

    return {"all_max": extreme("all_max", True), "all_min": extreme("all_min", False)}


# -- subtle faults: layouts --------------------------------------------------------------------


# numpy 2 moved byte_bounds out of the main namespace.
_byte_bounds = getattr(getattr(np.lib, "array_utils", np), "byte_bounds", None) or np.byte_bounds


def _storage_order(x: np.ndarray) -> np.ndarray:
    """What a transport that takes the lowest address and the element count sees of ``x``: the
    elements in memory order (Fortran order transposed, reversed views reversed back, strided
    views with their gaps), shaped like ``x``."""
    if x.flags.f_contiguous:
        return x.ravel(order="F").reshape(x.shape)
    reversed_axes = tuple(axis for axis, stride in enumerate(x.strides) if stride < 0)
    forward = np.flip(x, axis=reversed_axes) if reversed_axes else x
    if forward.flags.c_contiguous:
        return np.array(forward)
    base = forward
    while isinstance(base.base, np.ndarray):
        base = base.base
    low, high = _byte_bounds(base)
    start = _byte_bounds(forward)[0]
    if low <= start and start + forward.nbytes <= high:
        dense = np.lib.stride_tricks.as_strided(
            forward, shape=x.shape, strides=np.empty(x.shape, x.dtype).strides, writeable=False
        )
        return np.array(dense)
    return forward.ravel(order="K").reshape(x.shape)


@_fault(
    "all_gather_reads_storage_order",
    "all_gather of a non-C-contiguous input sends its buffer in memory order (Fortran-order "
    "inputs arrive transposed, strided views send their gaps, reversed views come back reversed)",
    "all_gather: any input layout gives the same result as its C-contiguous copy",
    ("test_layouts.py",),
)
def _all_gather_reads_storage_order() -> dict[str, Any]:
    def all_gather(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        if isinstance(x, np.ndarray) and x.ndim and x.size and not x.flags.c_contiguous:
            x = _storage_order(x)
        return reference.all_gather(x, group=group, stream=stream)

    return {"all_gather": all_gather}


#: all_sum reduces in place (MPI_IN_PLACE on the caller's buffer) from this many elements on.
_IN_PLACE_ELEMENTS = 1000


@_fault(
    "all_sum_in_place_large",
    f"all_sum of a writable C-contiguous input of {_IN_PLACE_ELEMENTS} or more elements "
    "writes the sum into the caller's array (MPI_IN_PLACE) and returns it",
    "Inputs are not modified by any operation",
    ("test_layouts.py",),
)
def _all_sum_in_place_large() -> dict[str, Any]:
    def all_sum(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        out = reference.all_sum(x, group=group, stream=stream)
        usable = isinstance(x, np.ndarray) and x.flags.c_contiguous and x.flags.writeable
        if not usable or x.size < _IN_PLACE_ELEMENTS or x.dtype != out.dtype:
            return out
        x[...] = out
        return x

    return {"all_sum": all_sum}


# -- subtle faults: groups and call counts -----------------------------------------------------

_COLLECTIVES = ("all_sum", "all_max", "all_min", "all_gather", "sum_scatter")


class _CommCache:
    """Communicators cached by group size while the group lives: the second live subgroup of a
    size a rank is in runs its collectives on the first one."""

    def __init__(self) -> None:
        self.by_size: weakref.WeakValueDictionary[int, reference.Group] = (
            weakref.WeakValueDictionary()
        )

    def lookup(self, group: Any, op: str) -> Any:
        g = resolve_group(group, op)
        if g.size() == 1 or g is _group_mod.cached_default():
            return group
        return self.by_size.setdefault(g.size(), g)


@_fault(
    "subgroup_cache_by_size",
    "collectives on a subgroup run on the first live subgroup of the same size the rank is in "
    "(a communicator cache keyed by size): two same-size subgroups used alternately mix up",
    "Group.split: a collective on a group involves exactly its members, in its rank order",
    ("test_group_axis.py",),
)
def _subgroup_cache_by_size() -> dict[str, Any]:
    cache = _CommCache()

    def cached(op: str) -> Callable[..., Any]:
        correct = getattr(reference, op)

        def run(x: Any, *, group: Any = None, stream: Any = None) -> Any:
            return correct(x, group=cache.lookup(group, op), stream=stream)

        return run

    return {op: cached(op) for op in _COLLECTIVES}


#: Collective calls per group carry an 8-bit sequence number.
_SEQUENCE_WRAP = 256


@_fault(
    "stale_result_after_wrap",
    f"every {_SEQUENCE_WRAP}th collective call on a group returns the previous call's result "
    "when shape and dtype match (an 8-bit sequence number wraps and matches a stale buffer)",
    "Reductions / all_gather / sum_scatter: every call's result is its own inputs' result",
    ("test_call_sequences.py",),
)
def _stale_result_after_wrap() -> dict[str, Any]:
    def sequenced(op: str) -> Callable[..., Any]:
        correct = getattr(reference, op)

        def run(x: Any, *, group: Any = None, stream: Any = None) -> Any:
            out = correct(x, group=group, stream=stream)
            g = resolve_group(group, op)
            if g.size() == 1:
                return out
            calls = getattr(g, "_fault_calls", 0) + 1
            previous = getattr(g, "_fault_previous", None)
            g._fault_calls, g._fault_previous = calls, out.copy()
            stale = previous is not None and calls % _SEQUENCE_WRAP == 0
            if stale and previous.shape == out.shape and previous.dtype == out.dtype:
                return previous
            return out

        return run

    return {op: sequenced(op) for op in _COLLECTIVES}


#: One all_sum call in this many deadlocks at 3+ ranks (upstream ml-explore/mlx#4475).
_DEADLOCK_PERIOD = 37


@_fault(
    "all_sum_deadlocks_sometimes",
    f"one all_sum call in {_DEADLOCK_PERIOD} on a group of 3+ ranks deadlocks: the last rank "
    "never joins, and the backend's deadline ends the call with TimeoutError on every rank",
    "Hangs (robust) / Reductions: when every rank calls, every rank gets the result",
    ("test_call_sequences.py",),
    min_np=3,
    hangs=True,
)
def _all_sum_deadlocks_sometimes() -> dict[str, Any]:
    def all_sum(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        g = resolve_group(group, "all_sum")
        if g.size() >= 3:
            g._fault_sums = getattr(g, "_fault_sums", 0) + 1
            if g._fault_sums % _DEADLOCK_PERIOD == 0 and g.rank() == g.size() - 1:
                _never_completes("all_sum")
        return reference.all_sum(x, group=group, stream=stream)

    return {"all_sum": all_sum}


# -- controls ----------------------------------------------------------------------------------


@_fault(
    "none",
    "no fault at all: the reference itself (a control, never run by default)",
    "(none)",
    ("test_all_sum.py",),
    control=True,
)
def _none() -> dict[str, Any]:
    return {}


# -- data verdicts: ownership, precision, dtypes past the thresholds, special values -----------
# Each shows only past a size, for some dtypes or some values, or after some number of calls.
# The sizes and counts are this section's own; none is a spec's threshold.

_RESULT_OPS = ("all_sum", "all_max", "all_min", "all_gather", "sum_scatter")


def _results(transform: Callable[[str, np.ndarray, np.ndarray, Any], np.ndarray]) -> dict:
    """Every collective as the reference's, its result passed through
    ``transform(op, input, result, group)`` (the input as a numpy array)."""

    def wrapped(op: str) -> Callable[..., Any]:
        correct = getattr(reference, op)

        def run(x: Any, *, group: Any = None, stream: Any = None) -> Any:
            out = correct(x, group=group, stream=stream)
            return transform(op, as_array(x, op), out, group)

        return run

    return {op: wrapped(op) for op in _RESULT_OPS}


#: Results of this many bytes or more come from the faulty pool.
_POOL_BYTES = 64 * 1024


@_fault(
    "result_pool_ignores_holders",
    f"collective results of {_POOL_BYTES} bytes or more come from a pool keyed by shape and "
    "dtype that hands out the same buffer on every call, whether or not the caller still holds "
    "the array an earlier call returned (a buffer cache that forgets reference counts)",
    "Inputs: layouts and ownership: a returned array is never changed by a later call",
    ("test_size_sweep.py",),
)
def _result_pool_ignores_holders() -> dict[str, Any]:
    pool: dict[tuple, np.ndarray] = {}

    def pooled(op: str, x: np.ndarray, out: np.ndarray, group: Any) -> np.ndarray:
        if out.nbytes < _POOL_BYTES or _size_rank(group, op)[0] == 1:
            return out
        buffer = pool.setdefault((op, out.shape, out.dtype.str), np.empty_like(out))
        buffer[...] = out
        return buffer

    return _results(pooled)


#: all_sum and sum_scatter reduce in the caller's buffer from this many bytes of input.
_IN_PLACE_BYTES = 64 * 1024


@_fault(
    "reduce_into_input_large",
    f"all_sum and sum_scatter of {_IN_PLACE_BYTES} bytes or more write the reduction into the "
    "caller's (writable) input and return a copy (MPI_IN_PLACE on the caller's buffer)",
    "Inputs: layouts and ownership: an op never changes its inputs",
    ("test_size_sweep.py",),
)
def _reduce_into_input_large() -> dict[str, Any]:
    def in_place(op: str, x: np.ndarray, out: np.ndarray, group: Any) -> np.ndarray:
        if op not in ("all_sum", "sum_scatter") or x.nbytes < _IN_PLACE_BYTES:
            return out
        if not x.flags.writeable or _size_rank(group, op)[0] == 1 or x.dtype != out.dtype:
            return out
        x.reshape(-1)[: out.size] = out.reshape(-1)
        return out.copy()

    return _results(in_place)


#: Float messages of this many bytes or more are "compressed" to bfloat16 on the wire.
_COMPRESS_BYTES = 256 * 1024


def _bfloat16_rounded(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "c":
        parts = [_bfloat16_rounded(np.ascontiguousarray(p)) for p in (a.real, a.imag)]
        return (parts[0] + 1j * parts[1]).astype(a.dtype)
    with np.errstate(all="ignore"):
        return a.astype(ml_dtypes.bfloat16).astype(a.dtype)


@_fault(
    "float_results_bfloat16_large",
    f"float32, float64 and complex64 results of {_COMPRESS_BYTES} bytes or more are rounded to "
    "bfloat16 (a compressed transport for large float messages)",
    "Values: every bit counts; Reductions: float sums within the dtype's tolerance",
    ("test_size_sweep.py",),
)
def _float_results_bfloat16_large() -> dict[str, Any]:
    wide = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.complex64))

    def compressed(op: str, x: np.ndarray, out: np.ndarray, group: Any) -> np.ndarray:
        if out.dtype not in wide or x.nbytes < _COMPRESS_BYTES or _size_rank(group, op)[0] == 1:
            return out
        return _bfloat16_rounded(out)

    return _results(compressed)


#: Results of more than this many elements of a 1-, 2- or 8-byte dtype lose their last element.
_TAIL_ELEMENTS = 70_000


@_fault(
    "last_element_wrong_odd_widths",
    f"results of more than {_TAIL_ELEMENTS} elements of a 1-, 2- or 8-byte dtype have the low "
    "bit of their last element flipped (a tail loop written for 4-byte words)",
    "Sizes, groups and call sequences: every rule holds at every element count, every element",
    ("test_size_sweep.py",),
)
def _last_element_wrong_odd_widths() -> dict[str, Any]:
    def tail(op: str, x: np.ndarray, out: np.ndarray, group: Any) -> np.ndarray:
        if out.dtype.itemsize not in (1, 2, 8) or out.size <= _TAIL_ELEMENTS:
            return out
        if _size_rank(group, op)[0] == 1:
            return out
        flat = np.ascontiguousarray(out).reshape(-1)
        word = flat.view(np.dtype(f"u{flat.dtype.itemsize}"))
        word[-1] ^= 1
        return flat.reshape(out.shape)

    return _results(tail)


def _float_kind(a: np.ndarray) -> bool:
    return a.dtype.kind == "f" or a.dtype == np.dtype(ml_dtypes.bfloat16)


def _anywhere(mask: np.ndarray, group: Any) -> np.ndarray:
    """Where ``mask`` is True on some rank of ``group`` (through the reference's all_max)."""
    return reference.all_max(mask.astype(np.uint8), group=group).astype(bool)


@_fault(
    "inf_plus_minus_inf_is_inf",
    "all_sum and sum_scatter give +inf where +inf meets -inf (an accumulator that saturates "
    "infinities instead of following IEEE 754)",
    "Values: special values follow IEEE 754 arithmetic (+inf with -inf gives NaN)",
    ("test_values.py",),
)
def _inf_plus_minus_inf_is_inf() -> dict[str, Any]:
    def saturated(op: str, x: np.ndarray, out: np.ndarray, group: Any) -> np.ndarray:
        if op not in ("all_sum", "sum_scatter") or not _float_kind(x):
            return out
        if _size_rank(group, op)[0] == 1:
            return out
        with np.errstate(all="ignore"):
            both = _anywhere(np.isposinf(x.astype(np.float64)), group) & _anywhere(
                np.isneginf(x.astype(np.float64)), group
            )
        if op == "sum_scatter":
            rows = out.shape[0]
            both = both[_size_rank(group, op)[1] * rows :][:rows]
        out = np.array(out)
        out[both] = np.inf
        return out

    return _results(saturated)


def _canonical(a: np.ndarray) -> np.ndarray:
    """NaNs as the default NaN, subnormals flushed to zero, -0.0 as +0.0 (an FTZ/DAZ copy)."""
    out = np.array(a)
    parts = (out.real, out.imag) if out.dtype.kind == "c" else (out,)
    for part in parts:
        wide = part.astype(np.float64)
        tiny = float(ml_dtypes.finfo(part.dtype).smallest_normal)
        with np.errstate(all="ignore"):
            part[np.isnan(wide)] = np.nan
            part[np.abs(wide) < tiny] = 0.0
    return out


@_fault(
    "recv_like_canonicalises",
    "recv_like copies floats through an FTZ/DAZ float unit: NaN payloads become the default "
    "NaN, subnormals and -0.0 become +0.0 (recv moves the bytes untouched)",
    "Values: send, recv and recv_like move values bit for bit",
    ("test_values.py", "test_size_sweep.py"),
)
def _recv_like_canonicalises() -> dict[str, Any]:
    def recv_like(x: Any, src: int, *, group: Any = None, stream: Any = None) -> Any:
        got = reference.recv_like(x, src, group=group, stream=stream)
        return _canonical(got) if _float_kind(got) or got.dtype.kind == "c" else got

    return {"recv_like": recv_like}


#: all_gather serves stale results once a process has made this many all_gather calls.
_GATHER_CACHE_CALLS = 512


@_fault(
    "all_gather_stale_after_512",
    f"after {_GATHER_CACHE_CALLS} all_gather calls in a process, an all_gather whose shape and "
    "dtype match the previous one returns the previous result (a result cache that starts "
    "matching on shape once its table is full)",
    "Sizes, groups and call sequences: results do not depend on earlier calls",
    ("test_programs.py",),
)
def _all_gather_stale_after_512() -> dict[str, Any]:
    state: dict[str, Any] = {"calls": 0, "previous": None}

    def all_gather(x: Any, *, group: Any = None, stream: Any = None) -> Any:
        out = reference.all_gather(x, group=group, stream=stream)
        state["calls"] += 1
        previous, state["previous"] = state["previous"], out.copy()
        if state["calls"] <= _GATHER_CACHE_CALLS or previous is None:
            return out
        if _size_rank(group, "all_gather")[0] == 1:
            return out
        same = previous.shape == out.shape and previous.dtype == out.dtype
        return previous if same else out

    return {"all_gather": all_gather}


# Faults of the same kinds that no spec above was written around (each checked to be caught).


@_fault(
    "recv_pool_by_bytes",
    "recv and recv_like of 100,000 bytes or more land in one buffer per byte size, reused by "
    "the next receive of that many bytes while the caller still holds the earlier message",
    "Inputs: layouts and ownership: a returned array is never changed by a later call",
    ("test_size_sweep.py",),
)
def _recv_pool_by_bytes() -> dict[str, Any]:
    pool: dict[int, np.ndarray] = {}

    def pooled(got: np.ndarray) -> np.ndarray:
        if got.nbytes < 100_000:
            return got
        raw = pool.setdefault(got.nbytes, np.empty(got.nbytes, np.uint8))
        raw[...] = np.ascontiguousarray(got).reshape(-1).view(np.uint8)
        return raw.view(got.dtype).reshape(got.shape)

    def recv(shape: Any, dtype: Any, src: int, *, group: Any = None, stream: Any = None) -> Any:
        return pooled(reference.recv(shape, dtype, src, group=group, stream=stream))

    def recv_like(x: Any, src: int, *, group: Any = None, stream: Any = None) -> Any:
        return pooled(reference.recv_like(x, src, group=group, stream=stream))

    return {"recv": recv, "recv_like": recv_like}


@_fault(
    "half_width_sum_word_tail",
    "all_sum of 2-byte dtypes past 600,000 bytes moves whole 8-byte words: the last (bytes mod "
    "8) bytes keep the caller's own input",
    "Sizes, groups and call sequences: every rule holds at every element count",
    ("test_size_sweep.py",),
)
def _half_width_sum_word_tail() -> dict[str, Any]:
    def words(op: str, x: np.ndarray, out: np.ndarray, group: Any) -> np.ndarray:
        if op != "all_sum" or out.dtype.itemsize != 2 or out.nbytes <= 600_000:
            return out
        tail = (out.nbytes % 8) // 2
        if tail == 0 or _size_rank(group, op)[0] == 1:
            return out
        out = np.array(out)
        out.reshape(-1)[-tail:] = x.reshape(-1)[-tail:]
        return out

    return _results(words)


@_fault(
    "nan_meets_inf_gives_inf",
    "all_sum gives the infinity where NaN meets +-inf on another rank (a NaN-skipping "
    "accumulator that only checks for infinities)",
    "Values: special values follow IEEE 754 arithmetic (a NaN on any rank gives NaN)",
    ("test_values.py",),
)
def _nan_meets_inf_gives_inf() -> dict[str, Any]:
    def skipping(op: str, x: np.ndarray, out: np.ndarray, group: Any) -> np.ndarray:
        if op != "all_sum" or not _float_kind(x) or _size_rank(group, op)[0] == 1:
            return out
        wide = x.astype(np.float64)
        nan = _anywhere(np.isnan(wide), group)
        pos, neg = _anywhere(np.isposinf(wide), group), _anywhere(np.isneginf(wide), group)
        out = np.array(out)
        out[nan & pos & ~neg] = np.inf
        out[nan & neg & ~pos] = -np.inf
        return out

    return _results(skipping)


@_fault(
    "float64_extremes_through_float32_large",
    "all_max and all_min of float64 above 200,000 elements compare and return values in "
    "float32 (a vectorised path for wide types that narrows)",
    "Values: all_max and all_min return one of the inputs bit for bit",
    ("test_size_sweep.py",),
)
def _float64_extremes_through_float32_large() -> dict[str, Any]:
    def narrowed(op: str, x: np.ndarray, out: np.ndarray, group: Any) -> np.ndarray:
        if op not in ("all_max", "all_min") or out.dtype != np.float64 or out.size <= 200_000:
            return out
        if _size_rank(group, op)[0] == 1:
            return out
        with np.errstate(all="ignore"):
            return out.astype(np.float32).astype(np.float64)

    return _results(narrowed)


# -- deadlines and dead peers (robust) ---------------------------------------------------------

#: How many times the deadline it was given ``deadline_tripled`` keeps.
_DEADLINE_FACTOR = 3


@_fault(
    "deadline_tripled",
    f"set_timeout(s) sets a deadline of {_DEADLINE_FACTOR}*s (a unit mix-up): every TimeoutError "
    "comes, naming the right peers, long after the deadline that was asked for",
    "Hangs (robust): TimeoutError within the deadline plus the allowance",
    ("test_deadlines.py",),
)
def _deadline_tripled() -> dict[str, Any]:
    def set_timeout(seconds: float) -> float:
        # Returns what it was given, so a caller restoring the previous value gets it back.
        return reference.set_timeout(seconds * _DEADLINE_FACTOR) / _DEADLINE_FACTOR

    return {"set_timeout": set_timeout}


#: Seconds a survivor of ``survivors_block`` stays blocked: far past any deadline of the suite.
_BLOCKED_FOR = 3600.0


def _blocks_when_peer_is_gone(op: str) -> Callable[..., Any]:
    correct = getattr(reference, op)

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return correct(*args, **kwargs)
        except TimeoutError:
            # Keeps waiting for the peer instead of raising, as if the deadline were not armed.
            time.sleep(_BLOCKED_FOR)
            raise

    return run


@_fault(
    "survivors_block",
    "once a peer is gone, a blocking call keeps waiting for it far past the deadline instead of "
    "raising TimeoutError (survivors of a dead rank spin forever, ml-explore/mlx#3862)",
    "Dead and stalled peers (robust): no survivor blocks forever; it raises within the deadline",
    ("test_faults.py",),
)
def _survivors_block() -> dict[str, Any]:
    return {op: _blocks_when_peer_is_gone(op) for op in ("all_sum", "recv", "recv_like", "send")}


# -- verdicts: faults that must not read as PASS through skips or deviations --------------------

#: Inputs past this many elements make the skipping backend skip (a backend author's shortcut).
_SKIP_ELEMENTS = 1024


@_fault(
    "skips_past_1024",
    f"every data op calls pytest.skip() for inputs past {_SKIP_ELEMENTS} elements (an adapter "
    "that hides what it cannot do as skips), so every large case would read skipped",
    "Sizes, groups and call sequences: every rule holds at every element count",
    ("test_size_sweep.py",),
)
def _skips_past_1024() -> dict[str, Any]:
    import pytest

    def skipping(op: str) -> Callable[..., Any]:
        correct = getattr(reference, op)

        def run(x: Any, *args: Any, **kwargs: Any) -> Any:
            if np.size(x) > _SKIP_ELEMENTS:
                pytest.skip(f"{op}: large messages not supported")
            return correct(x, *args, **kwargs)

        return run

    return {op: skipping(op) for op in (*_COLLECTIVES, "send", "recv_like")}


def _bool_reduced_as_own_input(op: str) -> Callable[..., Any]:
    # MLX mpi's defect (docs/conformance/mlx-0.32.4-mpi.md): bool all_max/all_min return the
    # rank's own input.
    correct = getattr(reference, op)

    def run(x: Any, *, group: Any = None, stream: Any = None) -> Any:
        array = as_array(x, op)
        out = correct(array, group=group, stream=stream)
        if array.dtype == np.bool_ and _size_rank(group, op)[0] > 1:
            return np.array(array, copy=True)
        return out

    return run


@_fault(
    "bool_extremes_and_strided_float64",
    "two faults: MLX mpi's bool all_max/all_min (each rank's own input), which a deviation "
    "entry may excuse, and all_sum of a non-contiguous float64 view reads the buffer in "
    "storage order (a second defect in the same loop tests, which no entry names)",
    "Inputs: layouts and ownership: the result equals the result for the C-contiguous copy",
    ("test_layouts.py",),
)
def _bool_extremes_and_strided_float64() -> dict[str, Any]:
    def all_sum(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        strided = isinstance(x, np.ndarray) and x.ndim and x.size and not x.flags.c_contiguous
        if strided and x.dtype == np.float64:
            x = _storage_order(x)
        return reference.all_sum(x, group=group, stream=stream)

    return {
        "all_sum": all_sum,
        "all_max": _bool_reduced_as_own_input("all_max"),
        "all_min": _bool_reduced_as_own_input("all_min"),
    }


@_fault(
    "keeps_results_alive",
    "all_sum keeps a reference to every result it returned (a completion cache with no bound): "
    "memory grows by the result's size with every call, until the process runs out",
    "Sizes, groups and call sequences: results do not depend on earlier calls (thousands of "
    "calls in a row)",
    ("test_resources.py",),
    tiers=("soak",),
)
def _keeps_results_alive() -> dict[str, Any]:
    kept: list[np.ndarray] = []

    def all_sum(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        out = reference.all_sum(x, group=group, stream=stream)
        kept.append(out.copy())  # a copy: the caller's result is untouched, only memory grows
        return out

    return {"all_sum": all_sum}


@_fault(
    "leaks_a_descriptor_per_gather",
    "all_gather opens a descriptor per call (a shared-memory segment or socket for the call's "
    "buffer) and never closes it: the process runs out of descriptors after some thousands",
    "Sizes, groups and call sequences: results do not depend on earlier calls (thousands of "
    "calls in a row)",
    ("test_resources.py",),
    tiers=("soak",),
)
def _leaks_a_descriptor_per_gather() -> dict[str, Any]:
    import os

    opened: list[int] = []

    def all_gather(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        opened.append(os.open(os.devnull, os.O_RDONLY))
        return reference.all_gather(x, group=group, stream=stream)

    return {"all_gather": all_gather}
