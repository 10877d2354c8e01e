"""Deliberately faulty backends: the reference with ONE realistic fault each.

``load_backend("faulty:<name>")`` calls ``make_backend(name)``. Each fault is a thin wrapper over
``reference`` that breaks exactly one rule of SEMANTICS.md, the way a real transport gets it wrong
(a wrong MPI datatype, a cached value that is not, an off-by-one in a member list). The suite must
fail on every one of them: ``python -m conformance selftest`` checks that it does.

Every fault is described by a ``Fault`` in ``FAULTS``: what is wrong, the rule it breaks, the spec
modules expected to catch it (the selftest runs only those), and the smallest world size at which
the fault shows at all (below it the backend behaves like the reference).

Faults stay collective-safe where a real bug would: every rank makes the same calls, so a wrong
result never leaves a peer waiting. The two exceptions are the point of their faults
(``hang_all_min`` blocks one rank forever; the harness watchdog must end the test) and they touch
one op only, so they hang only tests that use it.

``CONTROLS`` holds backends that are *not* faulty (``none``: the reference itself); they are not
run by default and exist so the selftest's own tests can check that a fault that is no fault is
reported as not caught.
"""

from __future__ import annotations

import threading
import time
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

    def active_at(self, np_: int) -> bool:
        """Whether the fault shows with ``np_`` ranks (below ``min_np`` it is the reference)."""
        return np_ >= self.min_np


FAULTS: dict[str, Fault] = {}
CONTROLS: dict[str, Fault] = {}


def _fault(
    name: str, fault: str, rule: str, specs: tuple[str, ...], min_np: int = 2, control=False
):
    """Register the decorated builder as the faulty backend ``name`` (its docstring is set from
    the fault and the rule it breaks, so ``help()`` on the backend says what is wrong)."""

    def register(build: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        build.__doc__ = f"faulty:{name}: {fault}. Breaks SEMANTICS.md, {rule}."
        table = CONTROLS if control else FAULTS
        table[name] = Fault(name, fault, rule, specs, build, min_np)
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
    return Backend(
        f"faulty:{name}",
        _Api(api),
        version=f"{reference.__version__}+faulty.{name}",
        set_timeout=reference.set_timeout,
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
    ("test_all_max.py",),
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
    ("test_all_max.py",),
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
    "all_min blocks forever on the last rank (waits for a completion that never comes)",
    "Hangs (robust): a blocking operation ends, by result or by TimeoutError",
    ("test_all_min.py",),
)
def _hang_all_min() -> dict[str, Any]:
    def all_min(x: Any, *, group: Any = None, stream: Any = None) -> np.ndarray:
        size, rank = _size_rank(group, "all_min")
        if size > 1 and rank == size - 1:
            threading.Event().wait()  # no deadline: only the harness watchdog ends this
        return reference.all_min(x, group=group, stream=stream)

    return {"all_min": all_min}


@_fault(
    "all_max_raises_on_last_rank",
    "all_max raises RuntimeError on the last rank only, after the data moved",
    "Reductions: every rank gets the same result",
    ("test_all_max.py",),
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
